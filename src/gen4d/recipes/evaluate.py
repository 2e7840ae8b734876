"""``gen4d eval``: score a finished video-to-4D run on the Consistent4D benchmark, or any folder of renders.

What :func:`run_eval` does:

1. finds the object's ground truth (:func:`gen4d.data.consistent4d.find_object`): views ``eval_0 .. eval_3`` of
   ``T`` frames each, RGBA, composited on white (as Consistent4D's evaluation requires);
2. loads the run's final scene (:func:`gen4d.runs.load_finished_run`), then the metric networks
   (missing weights stop it before any rendering);
3. renders the scene at the
   evaluation cameras (azimuths -75, 15, 105, 195 deg, elevation 0, vertical fov 49.1 deg, at the ground
   truth's resolution) and times ``t = i / (T - 1)``, on white, moved into the run's world by
   :func:`gen4d.data.consistent4d.input_alignment` (the run recentred its input frames; the ground truth did not);
4. writes the renders to ``DIR/eval/consistent4d/<view>/<i>.png`` and scores those files with
   :func:`score_renders`, the same function that scores anyone's renders;
5. writes every number to ``DIR/eval/metrics.json`` and merges the headline numbers into ``DIR/metrics.json``
   (a ``consistent4d`` section; plus top-level ``psnr`` / ``ssim`` when the run has no test split of its own).

Metrics (Consistent4D's ``evaluation/`` scripts; differences are listed):

* ``psnr``, ``ssim``, ``lpips``, ``clip``: per frame, averaged over the frames of a view, then over the views.
  Both images are first resized to ``metric_size`` x ``metric_size`` (512, bicubic, as the scripts do). PSNR uses
  a data range of 1 (images in [0, 1]); identical images score 100 dB (MSE floored at 1e-10, so metrics.json stays
  plain JSON). SSIM: Gaussian window 11, sigma 1.5 (torchmetrics there, :func:`gen4d.eval.metrics.ssim` here,
  which averages over the valid region). LPIPS: **AlexNet** v0.1 here; Consistent4D uses the VGG variant, so the
  values are not comparable with published tables. CLIP: cosine similarity of the image embeddings of render and
  ground truth of the same frame, ``openai/clip-vit-base-patch32`` (as Consistent4D).
* ``fvd``: Consistent4D's I3D protocol (``i3d_pretrained_400.pt``; frames resized to 224 x 224, bicubic, in
  [-1, 1], all frames in one clip, the 400-d logits averaged over time). Consistent4D's script compares one
  rendered video with one ground-truth video per view; a covariance of one sample is undefined (``np.cov`` of one
  row is NaN), so here one Frechet distance per object compares the set of its rendered view videos with the set
  of its ground-truth view videos (4 videos each).

With ``--models tiny`` (:func:`gen4d.models.registry.set_model_set`) every network is a tiny random one of the
same class (:func:`gen4d.testing.tiny_metrics_dir`): the command runs anywhere, its numbers mean nothing.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import track
from torch import Tensor
from transformers import CLIPModel

from .. import Gen4DError
from ..cameras import frame_times
from ..config import merge_config
from ..data.consistent4d import (
    EVAL_AZIMUTHS_DEG,
    EVAL_ELEVATION_DEG,
    FOVY_DEG,
    Consistent4DObject,
    aligned_eval_cameras,
    find_object,
    frame_files,
    input_alignment,
    read_frames,
)
from ..devices import resolve_device
from ..eval.clip_score import clip_similarity
from ..eval.fvd import I3D_STATE_DICT_FILE, frechet_distance_from_features, i3d_features, load_i3d
from ..eval.i3d import InceptionI3d
from ..eval.lpips import ALEXNET_FILE, LPIPS_ALEX_FILE, load_lpips
from ..eval.metrics import psnr, ssim
from ..export.images import save_png
from ..files import write_json
from ..models.registry import METRIC_WEIGHTS, load_pretrained, model_set, model_set_folder
from ..runs import load_finished_run

__all__ = ["CLIP_MODEL", "METRICS", "EvalConfig", "MetricModels", "build_eval_config", "load_metric_models", "run_eval", "score_renders"]

#: Metrics :func:`run_eval` and :func:`score_renders` can compute.
METRICS = ("psnr", "ssim", "lpips", "clip", "fvd")
#: The CLIP model of Consistent4D's image-level script.
CLIP_MODEL = "openai/clip-vit-base-patch32"
#: PSNR of identical images (MSE floored at 1e-10).
PSNR_CAP = 100.0
_WHITE = (1.0, 1.0, 1.0)


@dataclass
class EvalConfig:
    """Everything ``gen4d eval`` does; every field can be set as ``key=value``."""

    data: str = ""
    """Consistent4D data: an object's ground-truth folder (holding ``eval_0`` ...), its input-frame folder, or the
    dataset root together with ``object``."""
    object: str = ""
    """Object name when ``data`` is the dataset root (e.g. ``aurorus``)."""
    metrics: str = ",".join(METRICS)
    """Comma-separated metrics to compute: any of psnr, ssim, lpips, clip, fvd."""
    azimuths_deg: list[float] = field(default_factory=lambda: list(EVAL_AZIMUTHS_DEG))
    """Azimuth of view ``eval_<k>`` is entry ``k`` (degrees from the input camera, +x towards +y, z up)."""
    elevation_deg: float = EVAL_ELEVATION_DEG
    """Elevation of the evaluation cameras in degrees."""
    fovy_deg: float = FOVY_DEG
    """Vertical field of view of the ground-truth (and input) cameras in degrees."""
    align_input: bool = True
    """Undo the run's recentring of its input frames (gen4d video does it); false: the run saw them uncropped."""
    input_frames: str = ""
    """The frame folder the run was fitted to, for the alignment; empty: the object's input frames, else the run's
    ``input``."""
    run_radius: float = 0.0
    """Distance of the run's input camera from the origin; 0: the run's ``camera_radius``."""
    run_fov_deg: float = 0.0
    """Field of view of the run's input camera in degrees; 0: the run's ``fov_deg``."""
    render_size: int = 0
    """Height of the renders in pixels (width by the ground truth's aspect); 0: the ground truth's size."""
    metric_size: int = 512
    """Side images are resized to (bicubic) before PSNR, SSIM, LPIPS and CLIP, as Consistent4D does; 0: the ground
    truth's size."""
    fvd_resolution: int = 224
    """Side the I3D sees (frames resized to it, aspect not kept)."""
    lpips_alexnet: str = ""
    """torchvision AlexNet weights (alexnet-owt-7be5be79.pth); empty: the metrics folder."""
    lpips_heads: str = ""
    """lpips v0.1 linear heads (alex.pth); empty: the metrics folder."""
    clip_model: str = ""
    """CLIP Hub id or folder; empty: openai/clip-vit-base-patch32."""
    i3d: str = ""
    """FVD detector file: i3d_pretrained_400.pt or i3d_torchscript.pt (told apart by content); empty: the metrics
    folder."""
    device: str = "auto"
    """auto | cpu | cuda."""
    batch_size: int = 8
    """Images per rendering / network call."""


PRESETS: dict[str, list[str]] = {"default": []}


def build_eval_config(overrides: list[str] | None = None, base: dict | None = None, preset: str = "default") -> EvalConfig:
    """Defaults <- ``base`` (e.g. CLI flags) <- ``key=value`` overrides; errors name the bad key."""
    return merge_config(EvalConfig, PRESETS, preset, list(overrides or []), base)


def selected_metrics(cfg: EvalConfig) -> list[str]:
    names = [m.strip().lower() for m in str(cfg.metrics).split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise Gen4DError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}, e.g. metrics=psnr,ssim")
    return [m for m in METRICS if m in names]


# --------------------------------------------------------------------------------------------------------------
# Metric networks


@dataclass
class MetricModels:
    """The loaded networks (None for metrics not asked for) and what they are, for metrics.json."""

    lpips: Any = None
    clip: Any = None
    i3d: Any = None
    info: dict = field(default_factory=dict)


def load_metric_models(cfg: EvalConfig, metrics: list[str], device: torch.device) -> MetricModels:
    """Load the networks ``metrics`` need, from the files named in ``cfg`` or the default folders; with the tiny
    model set, tiny random networks of the same classes. Missing weights raise one :class:`Gen4DError`."""
    tiny = model_set() != "real"
    folder = None
    if tiny and any(m in metrics for m in ("lpips", "clip", "fvd")):
        folder = model_set_folder(METRIC_WEIGHTS)
    models = MetricModels(info={"models": model_set()})
    if "lpips" in metrics:
        alex = cfg.lpips_alexnet or (str(folder / ALEXNET_FILE) if tiny else None)
        heads = cfg.lpips_heads or (str(folder / LPIPS_ALEX_FILE) if tiny else None)
        models.lpips = load_lpips(alex, heads, device=device)
        models.info["lpips"] = "alex (lpips v0.1)"
    if "clip" in metrics:
        name = cfg.clip_model or (str(folder / "clip") if tiny else CLIP_MODEL)
        models.clip = load_pretrained(CLIPModel, name).eval().requires_grad_(False).to(device)
        models.info["clip"] = name
    if "fvd" in metrics:
        path = cfg.i3d or (str(folder / I3D_STATE_DICT_FILE) if tiny else None)
        models.i3d = load_i3d(path, device=device)
        protocol = "consistent4d (InceptionI3d state dict)" if isinstance(models.i3d, InceptionI3d) else "stylegan-v (TorchScript I3D)"
        models.info["fvd"] = f"{protocol}, {cfg.fvd_resolution} px, one distance per object over its views"
    return models


# --------------------------------------------------------------------------------------------------------------
# Scoring


def _resize(images: Tensor, height: int, width: int) -> Tensor:
    """``[N, H, W, 3]`` -> ``[N, height, width, 3]``: bicubic (antialiased when shrinking), clamped, 8-bit rounded
    (what resizing an 8-bit image with PIL gives)."""
    if images.shape[1:3] == (height, width):
        return images
    x = F.interpolate(images.permute(0, 3, 1, 2), size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 255.0).round().div(255.0).permute(0, 2, 3, 1).contiguous()


def _view_image_metrics(pred: Tensor, gt: Tensor, metrics: list[str], models: MetricModels, cfg: EvalConfig) -> dict[str, float]:
    """Image metrics of one view: ``pred`` and ``gt`` ``[T, H, W, 3]`` -> {metric: mean over frames}."""
    if cfg.metric_size:
        pred, gt = _resize(pred, cfg.metric_size, cfg.metric_size), _resize(gt, cfg.metric_size, cfg.metric_size)
    out: dict[str, float] = {}
    if "psnr" in metrics:
        out["psnr"] = float(psnr(pred, gt).clamp(max=PSNR_CAP).mean())
    if "ssim" in metrics:
        out["ssim"] = float(ssim(pred, gt).mean())
    if "lpips" in metrics:
        out["lpips"] = float(models.lpips(pred, gt, batch_size=cfg.batch_size).mean())
    if "clip" in metrics:
        out["clip"] = float(clip_similarity(pred, gt, models.clip, reduction="none", batch_size=cfg.batch_size).mean())
    return out


def _score_object(pred_dir: Path, gt_dir: Path, metrics: list[str], models: MetricModels, cfg: EvalConfig, device: torch.device) -> dict:
    """All metrics of one object: ``pred_dir/<view>/<i>.png`` against ``gt_dir/<view>/<i>.png``, one view in
    memory at a time (FVD keeps only each video's I3D features)."""
    views = Consistent4DObject(gt_dir.name, None, gt_dir).views()
    counts: dict[str, int] = {}
    sizes: set[tuple[int, int]] = set()
    per_view: dict[str, dict[str, float]] = {}
    features: dict[str, list[Tensor]] = {"pred": [], "gt": []}
    for view in views:
        gt_files = frame_files(gt_dir / view)
        if not (pred_dir / view).is_dir():
            raise Gen4DError(f"renders have no {view} folder: expected {pred_dir / view}/0.png ... like the ground truth {gt_dir / view}")
        pred_files = frame_files(pred_dir / view)
        if len(pred_files) != len(gt_files):
            raise Gen4DError(f"{pred_dir / view} has {len(pred_files)} frames, the ground truth {gt_dir / view} has {len(gt_files)}")
        counts[view] = len(gt_files)
        if len(set(counts.values())) != 1:
            raise Gen4DError(f"ground-truth views of {gt_dir} have different frame counts: {counts}")
        gt = read_frames(gt_files, _WHITE).to(device)
        sizes.add(tuple(gt.shape[1:3]))
        if len(sizes) != 1:
            raise Gen4DError(f"ground-truth views of {gt_dir} have different image sizes: {sorted(sizes)}")
        pred = _resize(read_frames(pred_files, _WHITE).to(device), gt.shape[1], gt.shape[2])
        per_view[view] = _view_image_metrics(pred, gt, metrics, models, cfg)
        if "fvd" in metrics:
            for key, video in (("pred", pred), ("gt", gt)):
                features[key].append(i3d_features(video[None], models.i3d, resolution=cfg.fvd_resolution, batch_size=1))
    result: dict[str, Any] = {"object": gt_dir.name, "views": views, "frames": counts[views[0]]}
    for m in metrics:
        if m != "fvd":
            result[m] = sum(per_view[v][m] for v in views) / len(views)
    if "fvd" in metrics:
        if len(views) < 2:
            raise Gen4DError(f"fvd compares sets of videos and needs at least 2 views; {gt_dir} has {len(views)}")
        result["fvd"] = frechet_distance_from_features(torch.cat(features["pred"]), torch.cat(features["gt"]))
    result["per_view"] = per_view
    return result


def _has_views(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() and p.name.startswith("eval_") for p in folder.iterdir())


def score_renders(
    renders: str | Path, ground_truth: str | Path, cfg: EvalConfig | None = None, models: MetricModels | None = None
) -> dict:
    """Score a folder of renders against Consistent4D ground truth, Consistent4D's layout on both sides.

    * one object: ``ground_truth`` holds ``eval_<k>/<i>.png`` (RGBA or RGB) and ``renders`` holds
      ``eval_<k>/<i>.png`` with the same frame counts;
    * several objects: ``ground_truth`` holds ``<object>/eval_<k>/`` and ``renders`` ``<object>/eval_<k>/``
      (Consistent4D's ``gt`` and ``pred`` folders); every metric is also averaged over the objects
      (``average``).

    Both sides are composited on white. ``cfg`` picks the metrics and the metric networks (default
    :class:`EvalConfig`); ``models`` passes already loaded networks. Returns the numbers (see :func:`run_eval`).
    """
    cfg = cfg or EvalConfig()
    metrics = selected_metrics(cfg)
    renders, ground_truth = Path(renders), Path(ground_truth)
    for p, what in ((renders, "renders"), (ground_truth, "ground truth")):
        if not p.is_dir():
            raise Gen4DError(f"{what} folder not found: {p}")
    device = resolve_device(cfg.device)
    models = models or load_metric_models(cfg, metrics, device)
    t0 = time.perf_counter()
    settings = {
        "metrics": metrics, "metric_size": cfg.metric_size, "fvd_resolution": cfg.fvd_resolution, **models.info,
    }
    if _has_views(ground_truth):
        result = _score_object(renders, ground_truth, metrics, models, cfg, device)
    else:
        objects = sorted(p.name for p in ground_truth.iterdir() if _has_views(p))
        if not objects:
            raise Gen4DError(f"{ground_truth} holds no ground truth: expected eval_0/0.png ... or <object>/eval_0/0.png ...")
        missing = [o for o in objects if not (renders / o).is_dir()]
        if missing:
            raise Gen4DError(f"renders for {', '.join(missing)} are missing in {renders} (expected {renders}/<object>/eval_0/0.png ...)")
        per_object = {o: _score_object(renders / o, ground_truth / o, metrics, models, cfg, device) for o in objects}
        result = {"objects": per_object, "average": {m: sum(r[m] for r in per_object.values()) / len(objects) for m in metrics}}
        result.update(result["average"])
    result["settings"] = settings
    result["scoring_seconds"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------------------------------------------
# Evaluating a run


def _run_setting(cfg_value: float, run_config: dict, key: str, flag: str) -> float:
    value = cfg_value or run_config.get(key)
    if not value:
        raise Gen4DError(f"the run's config.yaml has no {key}; pass {flag}=... (the run's input camera)")
    return float(value)


def _alignment_frames(cfg: EvalConfig, obj, run_config: dict) -> list[Path] | None:
    if cfg.input_frames:
        return frame_files(cfg.input_frames)
    if obj.input_dir is not None:
        return obj.input_frames()
    run_input = Path(str(run_config.get("input", "")))
    if run_config.get("input") and run_input.is_dir():
        return frame_files(run_input)
    return None


def _merge_run_metrics(metrics_path: Path, result: dict, metrics: list[str]) -> None:
    existing = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    summary = {m: result[m] for m in metrics}
    summary.update(object=result["object"], frames=result["frames"], details="eval/metrics.json")
    existing["consistent4d"] = summary
    if "eval_views" not in existing:  # no test split of its own (a reconstruction's stays as it is)
        for m in ("psnr", "ssim"):
            if m in summary:
                existing[m] = summary[m]
                existing["psnr_views"] = "Consistent4D evaluation cameras (eval/metrics.json)"
    write_json(metrics_path, _finite(existing))


@torch.no_grad()
def run_eval(cfg: EvalConfig, run_dir: str | Path, quiet: bool = True) -> dict:
    """Render a finished run at the Consistent4D evaluation cameras and score it (see the module docstring).

    Returns (and writes to ``run_dir/eval/metrics.json``) a dict with the object-level ``psnr``, ``ssim``,
    ``lpips``, ``clip``, ``fvd`` (those selected), ``per_view`` image metrics, ``object``, ``views``, ``frames``,
    ``renders`` (the folder), ``alignment``, ``settings`` and timings. Bad input raises :class:`Gen4DError`
    before anything is written.
    """

    t0 = time.perf_counter()
    metrics = selected_metrics(cfg)
    if not cfg.data:
        raise Gen4DError("eval needs the Consistent4D data: data=PATH (an object's ground-truth folder, its input folder, or the dataset root with object=NAME)")
    obj = find_object(cfg.data, cfg.object or None)
    views = obj.views()
    gt_files = {v: obj.view_frames(v) for v in views}
    counts = {v: len(f) for v, f in gt_files.items()}
    if len(set(counts.values())) != 1:
        raise Gen4DError(f"ground-truth views of {obj.gt_dir} have different frame counts: {counts}")
    n_frames = counts[views[0]]
    if n_frames < 2:
        raise Gen4DError(f"ground truth {obj.gt_dir} has {n_frames} frame per view; a 4D evaluation needs at least 2")
    azimuths = []
    for v in views:
        k = obj.view_index(v)
        if k >= len(cfg.azimuths_deg):
            raise Gen4DError(f"no azimuth for view {v}: azimuths_deg has {len(cfg.azimuths_deg)} entries; set azimuths_deg=[...]")
        azimuths.append(float(cfg.azimuths_deg[k]))
    gt_height, gt_width = read_frames(gt_files[views[0]][:1]).shape[1:3]

    device = resolve_device(cfg.device)
    finished = load_finished_run(run_dir, device)
    run_config = finished.config
    driving = finished.run.stage_dir("driving") / "frames"
    if driving.is_dir():
        n_driving = len(list(driving.glob("*.png")))
        if n_driving != n_frames:
            raise Gen4DError(
                f"the run was fitted to {n_driving} frames but the ground truth has {n_frames} per view; "
                "evaluate a run made from the object's whole input video"
            )
    radius = _run_setting(cfg.run_radius, run_config, "camera_radius", "run_radius")
    fov = _run_setting(cfg.run_fov_deg, run_config, "fov_deg", "run_fov_deg")
    frames = _alignment_frames(cfg, obj, run_config)
    if frames is None:
        if cfg.align_input:
            raise Gen4DError(
                "cannot find the input frames the run was fitted to (needed to undo its recentring); pass "
                "input_frames=FOLDER, or align_input=false if the run saw the frames uncropped"
            )
        frames = gt_files[views[0]][:1]  # only their size matters without recentring
    size = int(run_config.get("size") or 0)
    border = float(run_config.get("border_ratio", 0.2))
    if cfg.align_input and size < 1:
        raise Gen4DError("the run's config.yaml has no input size; pass align_input=false to evaluate without undoing a recentring")
    alignment = input_alignment(frames, size or gt_height, border, radius, fov, cfg.fovy_deg, recentred=cfg.align_input)
    models = load_metric_models(cfg, metrics, device)  # before rendering: missing weights stop here

    height = cfg.render_size or gt_height
    width = max(1, round(height * gt_width / gt_height))
    cameras = aligned_eval_cameras(alignment, width, height, frame_times(n_frames).float(), azimuths, cfg.elevation_deg, cfg.fovy_deg)
    out_dir = finished.run.root / "eval" / "consistent4d"
    background = torch.tensor(_WHITE, device=device)
    t_render = time.perf_counter()
    for view, cams in track(list(zip(views, cameras)), description="render eval views", disable=quiet):
        folder = out_dir / view
        if folder.is_dir():  # renders of an earlier evaluation (maybe another frame count)
            for stale in folder.glob("*.png"):
                stale.unlink()
        for start in range(0, n_frames, cfg.batch_size):
            batch = cams[start : start + cfg.batch_size].to(device)
            rgb = finished.scene.render(batch, background=background).rgb.clamp(0, 1)
            for j in range(rgb.shape[0]):
                save_png(folder / f"{start + j}.png", rgb[j])
    render_seconds = time.perf_counter() - t_render

    result = score_renders(out_dir, obj.gt_dir, cfg, models)
    result.update(
        benchmark="consistent4d",
        run=str(finished.run.root),
        stage=finished.asset.final_stage,
        renders=str(out_dir),
        ground_truth=str(obj.gt_dir),
        alignment=asdict(alignment) | {"input_frames": str(Path(frames[0]).parent), "recentred": cfg.align_input},
        render_seconds=render_seconds,
        seconds=time.perf_counter() - t0,
    )
    result["settings"].update(azimuths_deg=azimuths, elevation_deg=cfg.elevation_deg, fovy_deg=cfg.fovy_deg, render_size=[width, height])
    write_json(finished.run.root / "eval" / "metrics.json", _finite(result))
    _merge_run_metrics(finished.run.metrics_path, result, metrics)
    finished.run.log(f"eval consistent4d {result['object']}: " + ", ".join(f"{m} {result[m]:.4g}" for m in metrics))
    return result


def _finite(x: Any) -> Any:
    """Non-finite floats (a degenerate FVD) become None, so metrics.json stays plain JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
