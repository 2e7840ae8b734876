"""``reconstruct``: multi-view video (D-NeRF format) -> 4D Gaussians (canonical Gaussians + HexPlane field).

Stages (4D Gaussian Splatting, Wu et al. 2024):
  1. ``static``  - 3D Gaussians fitted to the training images within ``train.canonical_window`` of the clip around
     ``train.reference_time`` (1: every image), time ignored (a warm-up of the canonical space);
  2. ``dynamic`` - a zero-initialised deformation field is attached (so the stage starts exactly at the static
     result) and trained jointly with the Gaussians, each image rendered at its own time; the images are drawn
     from a time window that widens to the whole clip over ``train.time_curriculum`` of the stage;
then evaluation on the test split and the exports.
Loss: ``(1 - w) L1 + w D-SSIM`` (w = 0: L1 alone, as 4DGaussians), plus plane total variation, time smoothness and
time-plane L1 on the field. ``deformation.type=nodes`` swaps the HexPlane field for sparse control nodes blended
onto the Gaussians; its loss has the nodes' as-rigid-as-possible term (``deformation.nodes.arap_weight``) instead of
the plane terms; ``deformation.type=bases`` for a few scene-wide rigid motion bases blended per Gaussian (no field
terms).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from .. import Gen4DError
from ..cameras import Cameras
from ..data.dnerf import MultiViewVideo, read_dnerf_scene
from ..devices import resolve_device
from ..eval.metrics import psnr, ssim
from ..export.images import save_png
from ..export.scene import ExportConfig
from ..fields.deformation import DEFORMATION_TYPES, DeformationConfig
from ..gaussians.model import GaussianModel
from ..gaussians.strategy import DensifyConfig, DensifyStrategy
from ..runs import AssetInfo, RunDir, export_asset, write_asset_info
from ..scene import Scene4D
from ..training.loop import Stage, run_stages
from ..training.losses import field_regularisers, photometric_loss, regulariser_losses
from ..training.optim import LearningRates, deformation_optimizer, exp_decay, gaussian_optimizers
from .recipe import Recipe


@dataclass
class ModelConfig:
    """The Gaussians."""

    sh_degree: int = 0
    """Spherical-harmonics degree of colours (0: view-independent colour; up to 3)."""
    init_points: int = 5000
    """Gaussians at initialisation (uniform in a ball)."""
    init_radius: float = 0.0
    """Radius of the initial ball; 0: 0.3 x the mean camera distance from the origin."""
    init_opacity: float = 0.1
    """Initial opacity."""
    antialiased: bool = False
    """Render with antialiasing compensation of the 2D low-pass filter (Mip-Splatting style; gsplat "antialiased")."""


@dataclass
class LossConfig:
    """Loss weights."""

    ssim_weight: float = 0.0
    """Weight w of D-SSIM in (1 - w) L1 + w D-SSIM. 0, L1 alone, as 4DGaussians' D-NeRF recipe (``lambda_dssim = 0``,
    arguments/__init__.py): against 3D Gaussian Splatting's 0.2 it measured the same on the large-motion bench scenes
    (windmill +0.1 dB over four seeds, the others within -0.35 to +0.45 dB) and its runs took 13-39 % less time
    (bench/RESULTS.md)."""
    plane_tv_weight: float = 2e-4
    """Total variation of the spatial feature planes (4DGaussians' DyNeRF value, ``arguments/dynerf/default.py``; its
    D-NeRF recipe has 1e-4)."""
    time_smoothness_weight: float = 1e-3
    """Second-order smoothness of the time planes along t (4DGaussians' DyNeRF value; its D-NeRF recipe has 1e-2,
    ``arguments/dnerf/dnerf_default.py``: on the windmill bench scene the D-NeRF weights measured the same over four
    seeds, bench/RESULTS.md)."""
    time_l1_weight: float = 1e-4
    """Pull of the time planes towards 1 (no motion; 4DGaussians' ``l1_time_planes`` in both recipes)."""


@dataclass
class TrainConfig:
    """Optimisation schedule."""

    LEGACY: ClassVar[dict] = {"canonical_window": 1.0, "time_curriculum": 0.0, "hold_unreached": False, "edge_share": 0.0}
    """What runs made before these options existed did (every frame at once): such runs resume with these."""

    iterations: int = 20_000
    """Total steps over both stages."""
    static_fraction: float = 0.15
    """Share of the steps spent in the static warm-up."""
    batch_size: int = 2
    """Images per step (drawn at one time when the data has several views per time)."""
    densify_until: float = 0.6
    """Densification stops at this fraction of the dynamic stage (and runs through the whole static stage)."""
    reference_time: float = 0.5
    """Time of the canonical space when ``canonical_window`` < 1 (normalised clip time in [0, 1])."""
    canonical_window: float = 0.1
    """Share of the clip the static stage sees, around ``reference_time`` (1: every training image, time ignored;
    smaller: the canonical Gaussians fit the scene as it is near the reference time, not its average over the clip;
    0.1 rather than 0.05 gives them twice the views, which measured better or the same on the large-motion bench
    scenes, bench/RESULTS.md)."""
    time_curriculum: float = 0.25
    """Share of the dynamic stage over which its time window widens from ``canonical_window`` to the whole clip
    (coarse-to-fine in time: motion is learnt outwards from the reference time; 0: the whole clip from the start)."""
    hold_unreached: bool = True
    """During the time curriculum, the field's time knots not reached yet (a HexPlane field's time nodes, a node
    field's or the motion bases' motion table) hold the motion at the window's edge, so they start from it when
    reached, not from the canonical pose."""
    extrapolate_unreached: bool = False
    """With ``hold_unreached``: the knots not reached yet continue the motion's last change at the window's edge
    (constant velocity) instead of holding it."""
    edge_share: float = 0.5
    """During the time curriculum, the share of steps whose first image is drawn from the times the window reached
    last (within ``edge_band`` of its edges) rather than uniformly from the window: newly reached frames are
    fitted before the window moves on (frame-to-frame tracking; 0: uniformly from the window)."""
    edge_band: float = 0.05
    """Width (share of the clip) of the band at each edge of the time window that ``edge_share`` draws from."""
    pace_tolerance: float = 0.0
    """Window pace from the fit: > 0, the window widens at the ``time_curriculum`` pace only while the L1 error of
    the newly reached frames (those within ``edge_band`` of its edges, a running mean) is at most this many times
    that of the frames inside it, and otherwise waits for them to be fitted, though never falling behind the
    ``slowest_curriculum`` pace; 0: always at the ``time_curriculum`` pace. On the large-motion bench scenes 1.5
    gained the windmill 1.2 dB on average over two seeds, moved the others by -0.35 to -0.1 dB, and made every run
    slower (two of the four past 300 s), so it is off (bench/RESULTS.md)."""
    slowest_curriculum: float = 0.5
    """With ``pace_tolerance``: share of the dynamic stage by which the window has reached the whole clip however
    the newly reached frames fit."""
    checkpoint_every: int = 500
    """Steps between checkpoints (resume points)."""
    preview_every: int = 500
    """Steps between preview images (0: only at the end of a stage)."""


@dataclass
class ReconstructConfig:
    """Everything ``gen4d reconstruct`` does; every field can be set as ``key=value`` on the command line."""

    data: str = ""
    """D-NeRF scene folder (transforms_{train,test}.json + images)."""
    downscale: int = 1
    """Integer image downscale factor."""
    background: str = "white"
    """Background the images are composited on and rendered over: white | black | random (train on a random
    colour each step, against semi-transparent floaters; evaluate and export on white)."""
    seed: int = 0
    """Random seed."""
    device: str = "auto"
    """auto | cpu | cuda."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lr: LearningRates = field(default_factory=lambda: LearningRates(grid_final=1.6e-4, mlp_final=1.6e-5))
    """Learning rates. The deformation field's rates decay 10x over the dynamic stage (4DGaussians': 100x): under the
    time curriculum the clip's ends are reached a quarter of the way or later, and they are tracked better at the
    higher rate (on the large-motion bench scenes -0.1 to +2.4 dB, bench/RESULTS.md)."""
    loss: LossConfig = field(default_factory=LossConfig)
    densify: DensifyConfig = field(default_factory=lambda: DensifyConfig(refine_start=500, refine_every=100, reset_opacity_every=3000, max_gaussians=200_000))
    deformation: DeformationConfig = field(default_factory=DeformationConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


# Named presets: dotlist overrides of the defaults above.
PRESETS: dict[str, list[str]] = {
    "default": [],
    # A CPU-friendly schedule: fewer steps, smaller field and point budget. The Gaussians are densified in a
    # 500-step static stage only, so the dynamic stage keeps few of them (350-600 on the bench scenes: fewer
    # canonical Gaussians follow a turning rotor better) and its steps stay cheap, so there are 9,500 of them (the
    # time L1 alone saves), and the time window widens over half of it, so each newly reached frame gets the steps
    # to be tracked (bench/RESULTS.md: the windmill 30.0 dB on average over seven runs, 29.2-30.5; 29.7 with
    # 8,000 steps).
    "fast": [
        "train.iterations=10000", "train.static_fraction=0.05", "train.time_curriculum=0.5", "train.densify_until=0",
        "train.checkpoint_every=250", "train.preview_every=500",
        "densify.refine_start=100", "densify.refine_every=100", "densify.reset_opacity_every=0",
        "densify.max_gaussians=20000", "model.init_points=3000",
        "deformation.hexplane.resolution=[32,32,32,16]", "deformation.hexplane.feature_dim=16",
        "export.mesh_resolution=64",
    ],
    # `gen4d demo`: a small synthetic scene fitted on two CPU cores in under three minutes.
    "demo": [
        "train.iterations=3400", "train.static_fraction=0.2", "train.batch_size=4",
        "loss.ssim_weight=0.2",  # as measured (3D Gaussian Splatting's weight)
        "train.checkpoint_every=250", "train.preview_every=250", "train.densify_until=0.5",
        "densify.refine_start=100", "densify.refine_every=100", "densify.reset_opacity_every=0",
        "densify.max_gaussians=4000", "model.init_points=2000",
        # several views per time: every frame at once did better here (31.8 dB against 30.8 with the curriculum)
        "train.canonical_window=1.0", "train.time_curriculum=0.0",
        "lr.means=1.6e-3", "lr.means_final=1.6e-5", "lr.grid=4e-3", "lr.mlp=4e-4",
        "lr.grid_final=1.6e-5", "lr.mlp_final=1.6e-6",  # as measured (every frame at once: no curriculum to track)
        "deformation.hexplane.resolution=[32,32,32,16]", "deformation.hexplane.feature_dim=16",
        "deformation.hexplane.multires=[1,2]",
        "export.mesh_resolution=64", "export.video_size=192", "export.video_frames=36",
    ],
}



def build_config(preset: str, overrides: list[str], base: dict | None = None) -> ReconstructConfig:
    """Defaults <- preset <- ``base`` (e.g. CLI flags) <- ``key=value`` overrides; errors name the bad key."""
    return RECIPE.build_config(preset, overrides, base)


class TrainingData:
    """Training images on the device, with a sampler that draws a batch of views sharing one time."""

    def __init__(self, split: MultiViewVideo, device: torch.device, keep_alpha: bool = False):
        self.images = split.images.to(device)
        if keep_alpha:  # for recompositing on other backgrounds
            self.premultiplied = split.premultiplied().to(device)
            self.alphas = split.alphas.to(device)
        self.cameras = split.cameras.to(device)
        times = split.times
        self.times = times
        self.groups = [torch.nonzero(times == t).squeeze(-1) for t in torch.unique(times)]
        self.group_of = torch.empty(len(times), dtype=torch.long)
        for g, idx in enumerate(self.groups):
            self.group_of[idx] = g

    def in_window(self, window: tuple[float, float] | None) -> torch.Tensor | None:
        """Indices of the images whose time lies in ``[lo, hi]`` (at least those of the time nearest to the window)."""
        if window is None:
            return None
        lo, hi = window
        inside = torch.nonzero((self.times >= lo) & (self.times <= hi)).squeeze(-1)
        if len(inside) == 0:
            gap = torch.minimum((self.times - lo).abs(), (self.times - hi).abs())
            inside = torch.nonzero(gap == gap.min()).squeeze(-1)
        return inside

    def edge_band(self, window: tuple[float, float] | None, band: float) -> torch.Tensor | None:
        """Indices of the images inside ``window`` within ``band`` (clip time) of its inner edges, the times the
        window reached last (an edge at 0 or 1 reaches nothing new); None when there are none or no window."""
        if window is None or band <= 0:
            return None
        lo, hi = window
        near = torch.zeros_like(self.times, dtype=torch.bool)
        if lo > 0.0:
            near |= (self.times >= lo) & (self.times <= lo + band)
        if hi < 1.0:
            near |= (self.times <= hi) & (self.times >= hi - band)
        idx = torch.nonzero(near).squeeze(-1)
        return idx if len(idx) else None

    def sample(self, batch_size: int, generator: torch.Generator, window: tuple[float, float] | None = None,
               edge: torch.Tensor | None = None, edge_share: float = 0.0) -> torch.Tensor:
        """A batch of image indices: the first drawn uniformly (from the images inside the time ``window``, if given;
        with probability ``edge_share`` from ``edge`` instead), the rest at its time; with one view per time
        (monocular) the rest are drawn uniformly from the window."""
        pool = self.in_window(window)
        draw = len(self.images) if pool is None else len(pool)
        first_pool = pool
        if edge is not None and edge_share > 0 and float(torch.rand((), generator=generator)) < edge_share:
            first_pool = edge
        if first_pool is None:
            first = int(torch.randint(draw, (1,), generator=generator))
        else:
            first = int(first_pool[int(torch.randint(len(first_pool), (1,), generator=generator))])
        same_time = self.groups[int(self.group_of[first])]
        others = same_time[same_time != first]
        others = others[torch.randperm(len(others), generator=generator)][: batch_size - 1]
        if len(others) < batch_size - 1:  # one view per time (monocular): fill with any images
            extra = torch.randint(draw, (batch_size - 1 - len(others),), generator=generator)
            others = torch.cat([others, extra if pool is None else pool[extra]])
        return torch.cat([torch.tensor([first]), others])


def time_window(reference: float, width: float) -> tuple[float, float] | None:
    """The window of clip times of relative ``width`` holding ``reference``: it widens towards both ends in
    proportion to their distances, so that width 1 is the whole clip [0, 1] (returned as None)."""
    if width >= 1.0:
        return None
    return reference - width * reference, reference + width * (1.0 - reference)


class WindowPace:
    """The time window's width through the dynamic stage. At a fixed pace it is :func:`curriculum_width`. Chosen from
    the data (``tolerance`` > 0), it widens by the fixed pace's step only while the running mean L1 error of the
    images near its edges (the frames reached last) is within ``tolerance`` times that of the images inside it,
    and never lags the ``slowest`` share's pace; its state is checkpointed (:meth:`state`, :meth:`load`)."""

    def __init__(self, total: int, start: float, share: float, tolerance: float = 0.0, slowest: float = 1.0, momentum: float = 0.9):
        self.total, self.start, self.share = total, start, share
        self.tolerance, self.slowest, self.momentum = tolerance, max(share, slowest), momentum
        self.width, self.edge_error, self.inner_error = start, None, None
        self.just_reached = False

    def at(self, step: int) -> float:
        """Width for ``step``; call once per step, in order (``just_reached`` then tells whether this step is the
        first with the whole clip)."""
        if self.tolerance <= 0 or self.share <= 0 or self.start >= 1.0:  # a fixed pace, or no window to widen
            self.width = curriculum_width(step, self.total, self.start, self.share)
            previous = curriculum_width(step - 1, self.total, self.start, self.share) if step > 0 else self.start
            self.just_reached = previous < 1.0 <= self.width
            return self.width
        before = self.width
        ready = self.edge_error is None or self.inner_error is None or self.edge_error <= self.tolerance * self.inner_error
        if ready and step > 0:
            self.width = min(1.0, self.width + (curriculum_width(1, self.total, self.start, self.share) - self.start))
        self.width = max(self.width, curriculum_width(step, self.total, self.start, self.slowest))
        self.just_reached = before < 1.0 <= self.width
        return self.width

    def observe(self, errors: torch.Tensor, near_edge: torch.Tensor) -> None:
        """Fold one step's per-image errors in, split by whether each image lies near the window's edges (only a
        pace with a tolerance reads them; the caller skips the errors' cost otherwise)."""
        for mask, name in ((near_edge, "edge_error"), (~near_edge, "inner_error")):
            if bool(mask.any()):
                value, old = float(errors[mask].mean()), getattr(self, name)
                setattr(self, name, value if old is None else self.momentum * old + (1.0 - self.momentum) * value)

    def state(self) -> dict:
        return {"width": self.width, "edge_error": self.edge_error, "inner_error": self.inner_error}

    def load(self, state: dict) -> None:
        self.width, self.edge_error, self.inner_error = state["width"], state["edge_error"], state["inner_error"]


def curriculum_width(step: int, total: int, start: float, share: float) -> float:
    """Window width at ``step`` of ``total``: ``start`` at step 0, growing linearly to 1 at ``share`` of the stage."""
    if share <= 0 or start >= 1.0:
        return 1.0
    return min(1.0, start + (1.0 - start) * step / max(1.0, share * total))


def scene_extent(cameras: Cameras) -> float:
    """1.1 x the largest distance of a camera from the cameras' mean centre (3DGS), at least the mean distance."""
    centers = cameras.centers.double()
    spread = (centers - centers.mean(0)).norm(dim=-1).max()
    return float(1.1 * torch.maximum(spread, centers.norm(dim=-1).mean()))


def run_reconstruct(cfg: ReconstructConfig, out: str | Path, command: str = "gen4d reconstruct", quiet: bool = False, stop_after_step: int | None = None) -> dict:
    """Fit, evaluate and export. Validates the data before touching ``out``; resumes a run in ``out``."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    if cfg.background not in ("white", "black", "random"):
        raise Gen4DError(f"background must be white, black or random, got {cfg.background!r}")
    if cfg.model.init_points < 1:
        raise Gen4DError(f"model.init_points must be at least 1, got {cfg.model.init_points}")
    t_cfg = cfg.train
    shares = (t_cfg.reference_time, t_cfg.canonical_window, t_cfg.time_curriculum, t_cfg.slowest_curriculum)
    if not all(0.0 <= v <= 1.0 for v in shares):
        raise Gen4DError("train.reference_time, train.canonical_window, train.time_curriculum and train.slowest_curriculum "
                         f"must lie in [0, 1], got {', '.join(str(v) for v in shares)}")
    if t_cfg.pace_tolerance < 0:
        raise Gen4DError(f"train.pace_tolerance must be 0 (a fixed pace) or positive, got {t_cfg.pace_tolerance}")
    if cfg.deformation.type not in DEFORMATION_TYPES:
        raise Gen4DError(f"deformation.type must be one of {', '.join(DEFORMATION_TYPES)}, got {cfg.deformation.type!r}")
    random_bg = cfg.background == "random"
    splits = read_dnerf_scene(cfg.data, downscale=cfg.downscale, background="white" if random_bg else cfg.background)
    train, test = splits["train"], splits["test"]
    run = RunDir(out)
    run.prepare(cfg, command)

    data = TrainingData(train, device, keep_alpha=random_bg)
    bg = torch.tensor(train.background, dtype=torch.float32, device=device)
    extent = scene_extent(train.cameras)
    cam_dist = float(train.cameras.centers.norm(dim=-1).mean())
    n_total = cfg.train.iterations
    n_static = max(1, round(n_total * cfg.train.static_fraction))
    n_dynamic = max(0, n_total - n_static)
    lr = cfg.lr
    preview_cam = test.cameras[0].to(device)
    preview_gt = test.images[0].to(device)

    def init_scene() -> Scene4D:
        g = torch.Generator().manual_seed(cfg.seed)
        radius = cfg.model.init_radius or 0.3 * cam_dist
        model = GaussianModel.random_in_sphere(cfg.model.init_points, radius, cfg.model.sh_degree, g, cfg.model.init_opacity)
        return Scene4D(model, antialiased=cfg.model.antialiased).to(device)

    def load_scene(tensors) -> Scene4D:
        return Scene4D.from_tensors(tensors, cfg.model.sh_degree, cfg.deformation, cfg.model.antialiased).to(device)

    def preview(scene: Scene4D, step: int, folder: Path) -> None:
        with torch.no_grad():
            img = scene.render(preview_cam, background=bg).rgb[0]
        save_png(folder / f"step_{step:06d}.png", torch.cat([img, preview_gt], dim=1))

    pace = WindowPace(n_dynamic, t_cfg.canonical_window, t_cfg.time_curriculum, t_cfg.pace_tolerance, t_cfg.slowest_curriculum)

    def losses(deform: bool):
        def fn(scene: Scene4D, step: int, generator: torch.Generator):
            width = pace.at(step) if deform else t_cfg.canonical_window
            if deform and pace.just_reached:
                run.log(f"stage dynamic: the time window reached the whole clip at step {step + 1} of {n_dynamic}")
            window = time_window(t_cfg.reference_time, width)
            hold = getattr(scene.deformation, "hold_times_outside", None)
            if deform and window is not None and hold is not None and t_cfg.hold_unreached:
                hold(*window, t_cfg.extrapolate_unreached)  # times not reached yet start from the motion at the window's edge
            edge = data.edge_band(window, t_cfg.edge_band) if deform else None
            idx = data.sample(cfg.train.batch_size, generator, window, edge, t_cfg.edge_share)
            if random_bg:
                step_bg = torch.rand(3, generator=generator).to(device)
                target = data.premultiplied[idx] + (1.0 - data.alphas[idx]) * step_bg
            else:
                step_bg, target = bg, data.images[idx]
            cams = _select(data.cameras, idx)
            out = scene.render(cams, background=step_bg, deform=deform)
            terms = photometric_loss(out.rgb, target, cfg.loss.ssim_weight)
            if deform and edge is not None and pace.tolerance > 0:
                pace.observe((out.rgb.detach() - target).abs().mean((1, 2, 3)).cpu(), torch.isin(idx, edge))
            if deform:
                terms.update(regulariser_losses(scene, {
                    "plane_tv": cfg.loss.plane_tv_weight, "time_smoothness": cfg.loss.time_smoothness_weight,
                    "time_l1": cfg.loss.time_l1_weight,
                }))
                terms.update(field_regularisers(scene, cams.times))
            return terms, out.meta

        return fn

    def attach_field(scene: Scene4D) -> Scene4D:
        return scene.attach_deformation(cfg.deformation, cfg.seed)

    def gauss_lrs(total: int):
        return lambda step: {"means": exp_decay(step, total, lr.means * extent, lr.means_final * extent)}

    def dynamic_optimizers(scene: Scene4D):
        opts = gaussian_optimizers(scene, lr, extent)
        opts["deformation"] = deformation_optimizer(scene, lr, extent)
        return opts

    def dynamic_lrs(step: int) -> dict:
        rates: dict = gauss_lrs(n_dynamic)(step)
        rates["deformation"] = [  # per parameter group: feature planes (or nodes), MLP
            exp_decay(step, n_dynamic, lr.grid * extent, lr.grid_final * extent),
            exp_decay(step, n_dynamic, lr.mlp * extent, lr.mlp_final * extent),
        ]
        return rates

    static_densify = dataclasses.replace(cfg.densify, refine_stop=n_static)
    dynamic_densify = dataclasses.replace(cfg.densify, refine_start=0, refine_stop=int(cfg.train.densify_until * n_dynamic))
    stages = [
        Stage(
            name="static", iterations=n_static, seed=cfg.seed * 1000 + 1,
            make_optimizers=lambda s: gaussian_optimizers(s, lr, extent),
            learning_rates=gauss_lrs(n_static), losses=losses(deform=False),
            strategy=DensifyStrategy(static_densify, extent), preview=preview,
            checkpoint_every=cfg.train.checkpoint_every, preview_every=cfg.train.preview_every,
        ),
    ]
    if n_dynamic > 0:
        stages.append(
            Stage(
                name="dynamic", iterations=n_dynamic, seed=cfg.seed * 1000 + 2, prepare=attach_field,
                make_optimizers=dynamic_optimizers, learning_rates=dynamic_lrs, losses=losses(deform=True),
                extra_state=(pace.state, pace.load),
                strategy=DensifyStrategy(dynamic_densify, extent), preview=preview,
                checkpoint_every=cfg.train.checkpoint_every, preview_every=cfg.train.preview_every,
            )
        )
    asset = AssetInfo(
        final_stage=stages[-1].name, frames=len(torch.unique(train.times)), radius=cam_dist, background=[float(c) for c in train.background],
        antialiased=cfg.model.antialiased, deformation=dataclasses.asdict(cfg.deformation), export=dataclasses.asdict(cfg.export),
        device=cfg.device,
    )
    write_asset_info(run, asset)
    scene, stats = run_stages(run, stages, init_scene, load_scene, quiet=quiet, stop_after_step=stop_after_step)
    if stop_after_step is not None and any(not run.stage_complete(s.name) for s in stages):
        return {}
    train_seconds = sum(s["seconds"] for s in stats.values())

    scene.eval()
    metrics = evaluate(scene, test, bg, run.root / "eval" / "test", device)
    metrics.update(
        seconds=train_seconds,
        wall_seconds=time.perf_counter() - t0,
        num_gaussians=len(scene.gaussians),
        iterations=n_static + n_dynamic,
        stages=stats,
        device=str(device),
    )
    run.write_metrics(metrics)
    written = export_asset(scene, run, asset, quiet=quiet)
    metrics["exports"] = written
    metrics["wall_seconds"] = time.perf_counter() - t0
    run.write_metrics(metrics)
    run.log(f"done: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, {metrics['num_gaussians']} Gaussians")
    return metrics


def _select(cameras: Cameras, idx: torch.Tensor) -> Cameras:
    idx = idx.to(cameras.viewmats.device)
    return Cameras(cameras.viewmats[idx], cameras.Ks[idx], cameras.width, cameras.height, cameras.times[idx])


@torch.no_grad()
def evaluate(scene: Scene4D, split: MultiViewVideo, bg: torch.Tensor, image_dir: Path, device: torch.device, chunk: int = 8) -> dict:
    """Render every view of ``split`` at its time; PSNR / SSIM against the ground truth; PNGs to ``image_dir``."""
    psnrs, ssims = [], []
    render_seconds = 0.0
    for start in range(0, len(split), chunk):
        idx = torch.arange(start, min(start + chunk, len(split)))
        cams = _select(split.cameras, idx).to(device)
        t = time.perf_counter()
        rgb = scene.render(cams, background=bg).rgb.clamp(0, 1)
        render_seconds += time.perf_counter() - t
        gt = split.images[idx].to(device)
        psnrs.append(psnr(rgb, gt).cpu())
        ssims.append(ssim(rgb, gt).cpu())
        for j, i in enumerate(idx.tolist()):
            save_png(image_dir / f"{split.names[i]}.png", rgb[j])
    p, s = torch.cat(psnrs), torch.cat(ssims)
    return {
        "psnr": float(p.mean()),
        "ssim": float(s.mean()),
        "psnr_per_view": [round(float(v), 3) for v in p],
        "render_fps": len(split) / max(render_seconds, 1e-9),
        "eval_views": len(split),
        "eval_resolution": [split.width, split.height],
    }


def headline(metrics: dict) -> str:
    return (f"PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.4f}  {metrics['num_gaussians']} Gaussians  "
            f"{metrics['iterations']} steps  {metrics['seconds']:.0f} s training")


RECIPE = Recipe(
    name="reconstruct",
    commands=("reconstruct",),
    description="4D Gaussian Splatting: canonical Gaussians + HexPlane deformation fitted to a multi-view video",
    config=ReconstructConfig,
    presets=PRESETS,
    run=run_reconstruct,
    input_key="data",
    iters=lambda n: {"train": {"iterations": n}},
    headline=headline,
    evaluated=True,
)
