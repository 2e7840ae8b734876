"""``dg4d``: DreamGaussian4D, image -> 4D and video -> 4D with 4D Gaussians (Ren et al. 2023).

Stages, chained in one resumable run directory:
  0. ``driving`` - the driving video as RGBA frames: the input video (video mode), ``driving_video`` (a file or a
     folder of frames), or Stable Video Diffusion from the image; frames are recentred like the image;
  1. ``static``  - 3D Gaussians from the reference image: reference RGB + mask losses at the input camera and
     Zero123 SDS at random views (DreamGaussian's recipe), densification, a render-resolution ramp;
  2. ``dynamic`` - a zero-initialised deformation field (the stage starts exactly at the static result) fitted
     to every driving frame at the reference camera, with Zero123 SDS at random views conditioned on the frame
     of the same time; time t = i / (T - 1) for frame i of any T;
then the exports (per-frame PLY and meshes, animated GLB, orbit video) at any frame count.

Conventions: the input camera looks at the origin from azimuth 0 deg, elevation 0 deg (``camera_radius`` away);
random views take azimuths in [-180, 180) and elevations in ``[min_elevation, max_elevation]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import Gen4DError
from ..cameras import Cameras, orbit_cameras
from ..data.preprocess import composite, load_image_rgba, load_video_frames, save_rgba_png
from ..fields.deformation import DeformationConfig
from ..gaussians.model import GaussianModel
from ..gaussians.strategy import DensifyConfig, DensifyStrategy
from ..guidance.sds import TimestepSchedule
from ..runs import RunDir
from ..sh import sh_degree_from_bases
from .common import LearningRates, config_yaml, deformation_optimizer, exp_decay, gaussian_optimizers, merge_config, resolve_device, save_png
from .exporting import ExportConfig, export_scene
from .loop import Stage, run_stages
from .scene import Scene4D


@dataclass
class DrivingVideoConfig:
    """Where the motion comes from."""

    path: str = ""
    """A video file or a folder of frames; empty: generate one with Stable Video Diffusion (image mode)."""
    model: str = "svd"
    """Stable Video Diffusion weights (registry name, Hub id or folder)."""
    num_frames: int = 14
    """Frames to generate (any count)."""
    height: int = 576
    """Generation height in pixels (square by default: the recentred input image is square)."""
    width: int = 576
    """Generation width in pixels."""
    steps: int = 25
    """Denoising steps."""
    motion_bucket_id: int = 127
    """SVD motion strength conditioning."""
    fps: int = 7
    """SVD frame-rate conditioning."""
    noise_aug_strength: float = 0.02
    """Noise added to the conditioning image."""
    alpha: str = "rembg"
    """Foreground masks of generated frames: rembg (background removal) | reference (the image's mask for every
    frame; no extra dependency, but the silhouette cannot move)."""


@dataclass
class SDSConfig:
    """Zero123 score distillation at random views."""

    model: str = "zero123-xl"
    """Zero123 weights (registry name, Hub id or folder)."""
    guidance_scale: float = 5.0
    """Classifier-free guidance scale (DreamGaussian's image-to-3D stage)."""
    weight: float = 1.0
    """Weight of the SDS loss (per view, averaged over the batch)."""
    views: int = 4
    """Random views per step."""
    min_elevation: float = -30.0
    """Lowest random-view elevation in degrees."""
    max_elevation: float = 30.0
    """Highest random-view elevation in degrees."""
    t_max_start: float = 0.98
    """Upper bound of t / T at the start of each stage, annealed linearly to ``t_max_end``."""
    t_max_end: float = 0.5
    """Upper bound of t / T at the end of each stage."""
    t_min: float = 0.02
    """Lower bound of t / T."""


@dataclass
class StageSettings:
    """One optimisation stage."""

    iterations: int = 500
    """Steps."""
    rgb_weight: float = 10_000.0
    """Weight of the reference-view MSE on colour."""
    mask_weight: float = 1_000.0
    """Weight of the reference-view MSE on alpha."""
    resolution_start: int = 128
    """Render resolution of the random views at the start of the stage."""
    resolution_end: int = 512
    """Render resolution at the end (a linear ramp, rounded to multiples of 16)."""
    train_gaussians: bool = True
    """Also optimise the Gaussians (in the dynamic stage: False trains the deformation field alone)."""


@dataclass
class DG4DConfig:
    """Everything ``gen4d image`` / ``gen4d video`` do; every field can be set as ``key=value``."""

    input: str = ""
    """The input image (image mode) or video / folder of frames (video mode)."""
    mode: str = "image"
    """image | video."""
    size: int = 256
    """Reference resolution (the preprocessed image and frames are size x size)."""
    border_ratio: float = 0.2
    """Empty border around the recentred object, as a fraction of ``size``."""
    seed: int = 0
    """Random seed."""
    device: str = "auto"
    """auto | cpu | cuda."""
    camera_radius: float = 2.5
    """Distance of every camera from the origin."""
    fov_deg: float = 49.1
    """Field of view of every camera (DreamGaussian's)."""
    init_points: int = 5000
    """Gaussians at initialisation, uniform in a ball of radius ``init_radius``."""
    init_radius: float = 0.5
    """Radius of the initial ball."""
    static_ply: str = ""
    """Start from these static Gaussians (a 3DGS PLY, e.g. from a feed-forward image-to-3D model) instead of
    random ones; with ``static.iterations=0`` the static stage is skipped entirely."""
    driving: DrivingVideoConfig = field(default_factory=DrivingVideoConfig)
    sds: SDSConfig = field(default_factory=SDSConfig)
    static: StageSettings = field(default_factory=StageSettings)
    dynamic: StageSettings = field(default_factory=lambda: StageSettings(iterations=500, resolution_start=256, resolution_end=256))
    lr: LearningRates = field(default_factory=lambda: LearningRates(means=1e-3 / 2.5, means_final=2e-5 / 2.5, sh0=0.01, opacity=0.05, scales=0.005, quats=0.005))
    densify: DensifyConfig = field(default_factory=lambda: DensifyConfig(refine_start=100, refine_every=50, grow_grad2d=0.0002, reset_opacity_every=0, max_gaussians=50_000))
    deformation: DeformationConfig = field(default_factory=DeformationConfig)
    export: ExportConfig = field(default_factory=lambda: ExportConfig(video_size=256))
    checkpoint_every: int = 100
    """Steps between checkpoints."""
    preview_every: int = 100
    """Steps between preview images."""


PRESETS: dict[str, list[str]] = {
    "default": [],
    # Fewer views and steps: a quick look.
    "fast": ["static.iterations=250", "dynamic.iterations=250", "sds.views=2", "static.resolution_end=256"],
    # Lower peak memory: one random view per step, lower render resolution.
    "low-memory": ["sds.views=1", "static.resolution_end=256"],
}


def build_config(preset: str, overrides: list[str], base: dict | None = None) -> DG4DConfig:
    return merge_config(DG4DConfig, PRESETS, preset, overrides, base)


def _ramp(step: int, total: int, lo: int, hi: int) -> int:
    f = step / max(total - 1, 1)
    return max(16, int(round((lo + f * (hi - lo)) / 16)) * 16)


def gaussians_from_ply(path: str) -> GaussianModel:
    """Static Gaussians from a 3DGS PLY (INRIA layout), as trainable parameters."""
    from ..export.ply import load_inria_ply

    f = load_inria_ply(path)
    params = {
        "means": f.means, "quats": f.quats, "log_scales": torch.log(f.scales),
        "opacity_logits": torch.logit(f.opacities.clamp(1e-6, 1 - 1e-6)), "sh0": f.sh[:, :1], "shN": f.sh[:, 1:],
    }
    return GaussianModel(params, f.sh_degree)


def driving_frames(cfg: DG4DConfig, run: RunDir, reference: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``[T, 4, S, S]`` RGBA driving frames, made once and kept in ``stages/driving/frames``."""
    folder = run.stage_dir("driving") / "frames"
    done = run.stage_dir("driving") / "done"
    if done.exists():  # already recentred: read back as they are
        paths = sorted(folder.glob("frame_*.png"))
        return torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGBA"), dtype=np.float32) / 255.0).permute(2, 0, 1) for p in paths])
    d = cfg.driving
    if cfg.mode == "video":
        frames = load_video_frames(cfg.input, size=cfg.size, border_ratio=cfg.border_ratio)
    elif d.path:
        frames = load_video_frames(d.path, size=cfg.size, border_ratio=cfg.border_ratio)
    else:
        from ..export.video import write_video
        from ..guidance.svd import StableVideoDiffusion, SVDConfig

        svd = StableVideoDiffusion(SVDConfig(model=d.model), device=device)
        video = svd.generate_video(
            composite(reference)[None].to(device), num_frames=d.num_frames, height=d.height, width=d.width, steps=d.steps,
            motion_bucket_id=d.motion_bucket_id, fps=d.fps, noise_aug_strength=d.noise_aug_strength, seed=cfg.seed,
        )
        del svd
        raw = run.stage_dir("driving") / "generated.mp4"
        write_video(raw, (video.permute(0, 2, 3, 1).clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8), fps=d.fps)
        if d.alpha == "reference":
            rgb = torch.nn.functional.interpolate(video.float().cpu(), size=(cfg.size, cfg.size), mode="area")
            frames = torch.cat([rgb, reference[3:].expand(len(rgb), 1, -1, -1)], dim=1)
        elif d.alpha == "rembg":
            frames = load_video_frames(raw, size=cfg.size, border_ratio=cfg.border_ratio, remove_background=True)
        else:
            raise Gen4DError(f"driving.alpha must be rembg or reference, got {d.alpha!r}")
    for i, f in enumerate(frames):
        save_rgba_png(folder / f"frame_{i:04d}.png", f)
    done.write_text(f"{len(frames)} frames\n")
    return frames


def run_dg4d(
    cfg: DG4DConfig, out: str | Path, command: str = "gen4d image", quiet: bool = False, stop_after_step: int | None = None,
    run: RunDir | None = None,
) -> dict:
    """Image or video -> 4D Gaussians -> exports. Validates the input before touching ``out``.

    ``run``: an already prepared run directory (a recipe that chains this one, e.g. text -> video -> 4D, prepares
    ``out`` with its own configuration); None prepares ``out`` with ``cfg``.
    """
    from ..guidance.zero123 import Zero123Config, Zero123Guidance

    if cfg.mode not in ("image", "video"):
        raise Gen4DError(f"mode must be image or video, got {cfg.mode!r}")
    device = resolve_device(cfg.device)
    if cfg.mode == "image":
        reference = load_image_rgba(cfg.input, size=cfg.size, border_ratio=cfg.border_ratio)
    else:
        reference = load_video_frames(cfg.input, size=cfg.size, border_ratio=cfg.border_ratio)[0]
    if run is None:
        run = RunDir(out)
        run.prepare(config_yaml(cfg), command)
    save_rgba_png(run.root / "input.png", reference)
    frames = driving_frames(cfg, run, reference, device).to(device)
    n_frames = len(frames)
    if n_frames < 2:
        raise Gen4DError(f"the driving video has {n_frames} frame; a 4D asset needs at least 2")

    fov = math.radians(cfg.fov_deg)
    R = cfg.camera_radius
    white = torch.ones(3, device=device)
    ref_rgb = composite(frames).permute(0, 2, 3, 1)  # [T, S, S, 3] on white
    ref_alpha = frames[:, 3:].permute(0, 2, 3, 1)  # [T, S, S, 1]
    image_rgb = composite(reference.to(device)).permute(1, 2, 0)
    image_alpha = reference[3:].to(device).permute(1, 2, 0)

    zero123 = Zero123Guidance(
        Zero123Config(
            model=cfg.sds.model, guidance_scale=cfg.sds.guidance_scale,
            timesteps=TimestepSchedule(min_start=cfg.sds.t_min, max_start=cfg.sds.t_max_start, min_end=cfg.sds.t_min, max_end=cfg.sds.t_max_end),
        ),
        device=device,
    )
    image_reference = zero123.prepare_reference(composite(reference)[None], 0.0, 0.0, R)

    def ref_camera(size: int, t: float) -> Cameras:
        return orbit_cameras([0.0], [0.0], R, fov, size, size, times=t).to(device)

    def random_views(generator: torch.Generator, size: int, t: float) -> tuple[Cameras, torch.Tensor, torch.Tensor]:
        n = cfg.sds.views
        az = torch.rand(n, generator=generator) * 360.0 - 180.0
        el = cfg.sds.min_elevation + torch.rand(n, generator=generator) * (cfg.sds.max_elevation - cfg.sds.min_elevation)
        return orbit_cameras(az, el, R, fov, size, size, times=t).to(device), el, az

    def stage_losses(settings: StageSettings, deform: bool, frame_references):
        def fn(scene: Scene4D, step: int, generator: torch.Generator):
            if deform:
                i = int(torch.randint(n_frames, (1,), generator=generator))
                t, target_rgb, target_alpha, zref = i / (n_frames - 1), ref_rgb[i], ref_alpha[i], frame_references[i]
            else:
                t, target_rgb, target_alpha, zref = 0.0, image_rgb, image_alpha, image_reference
            ref = scene.render(ref_camera(cfg.size, t), background=white, deform=deform)
            terms = {
                "rgb": settings.rgb_weight * (ref.rgb[0] - target_rgb).square().mean(),
                "mask": settings.mask_weight * (ref.alpha[0] - target_alpha).square().mean(),
            }
            if cfg.sds.weight > 0 and cfg.sds.views > 0:
                size = _ramp(step, settings.iterations, settings.resolution_start, settings.resolution_end)
                cams, el, az = random_views(generator, size, t)
                views = scene.render(cams, background=white, deform=deform)
                images = views.rgb.permute(0, 3, 1, 2)
                sds = zero123(images, el.to(device), az.to(device), torch.full_like(el, R).to(device), step, generator=generator, reference=zref)
                terms["sds"] = cfg.sds.weight * sds["loss_sds"] / cfg.sds.views
            return terms, ref.meta

        return fn

    def preview(scene: Scene4D, step: int, folder: Path) -> None:
        with torch.no_grad():
            cams = orbit_cameras([0.0, 90.0, 180.0, 270.0], [0.0] * 4, R, fov, cfg.size, cfg.size, times=0.5).to(device)
            img = scene.render(cams, background=white).rgb
        save_png(folder / f"step_{step:06d}.png", torch.cat(list(img), dim=1))

    def init_scene() -> Scene4D:
        if cfg.static_ply:
            return Scene4D(gaussians_from_ply(cfg.static_ply)).to(device)
        g = torch.Generator().manual_seed(cfg.seed)
        return Scene4D(GaussianModel.random_in_sphere(cfg.init_points, cfg.init_radius, 0, g)).to(device)

    def load_scene(tensors) -> Scene4D:
        degree = sh_degree_from_bases(1 + tensors["gaussians.shN"].shape[1])
        return Scene4D.from_tensors(tensors, degree, cfg.deformation).to(device)

    def attach_field(scene: Scene4D) -> Scene4D:
        return scene.attach_deformation(cfg.deformation, cfg.seed)

    extent = 1.0  # the object is normalised to the unit ball; learning rates are absolute
    lr = cfg.lr
    n_static, n_dynamic = cfg.static.iterations, cfg.dynamic.iterations
    frame_refs: list = []

    def dynamic_optimizers(scene: Scene4D):
        if not frame_refs:  # Zero123 conditioning for every driving frame, computed once per run
            frame_refs.extend(zero123.prepare_reference(ref_rgb[i].permute(2, 0, 1)[None], 0.0, 0.0, R) for i in range(n_frames))
        opts = gaussian_optimizers(scene, lr, extent) if cfg.dynamic.train_gaussians else {}
        scene.gaussians.requires_grad_(cfg.dynamic.train_gaussians)
        opts["deformation"] = deformation_optimizer(scene, lr, extent)
        return opts

    stages = [] if n_static == 0 else [
        Stage(
            name="static", iterations=n_static, seed=cfg.seed * 1000 + 1,
            make_optimizers=lambda s: gaussian_optimizers(s, lr, extent),
            learning_rates=lambda step: {"means": exp_decay(step, n_static, lr.means, lr.means_final)},
            losses=stage_losses(cfg.static, False, None),
            strategy=DensifyStrategy(dataclasses.replace(cfg.densify, refine_stop=int(0.6 * n_static)), 1.0),
            preview=preview, checkpoint_every=cfg.checkpoint_every, preview_every=cfg.preview_every,
        ),
    ]
    stages += [
        Stage(
            name="dynamic", iterations=n_dynamic, seed=cfg.seed * 1000 + 2, prepare=attach_field,
            make_optimizers=dynamic_optimizers,
            learning_rates=lambda step: {
                **({"means": exp_decay(step, n_dynamic, lr.means, lr.means_final)} if cfg.dynamic.train_gaussians else {}),
                "deformation": [exp_decay(step, n_dynamic, lr.grid, lr.grid_final), exp_decay(step, n_dynamic, lr.mlp, lr.mlp_final)],
            },
            losses=stage_losses(cfg.dynamic, True, frame_refs),
            preview=preview, checkpoint_every=cfg.checkpoint_every, preview_every=cfg.preview_every,
        ),
    ]
    scene, stats = run_stages(run, stages, init_scene, load_scene, quiet=quiet, stop_after_step=stop_after_step)
    if not run.stage_complete("dynamic"):  # stopped on request (tests)
        return {}
    scene.eval()
    written = export_scene(scene, run.exports, cfg.export, (1.0, 1.0, 1.0), default_frames=n_frames, default_radius=R, quiet=quiet)
    metrics = {
        "seconds": sum(s["seconds"] for s in stats.values()),
        "stages": stats,
        "num_gaussians": len(scene.gaussians),
        "iterations": n_static + n_dynamic,
        "driving_frames": n_frames,
        "exports": written,
        "device": str(device),
    }
    run.write_metrics(metrics)
    run.log(f"done: {len(scene.gaussians)} Gaussians, {n_frames} driving frames")
    return metrics
