"""``fourdfy``: 4D-fy (Bahmani et al. 2024), text -> 4D by hybrid score distillation, on 4D Gaussians.

4D-fy's representation is a static hash grid plus a dynamic (x, y, z, t) one whose features add up; here it is the
engine's 4D asset, canonical Gaussians (the static part) moved by a deformation field (the dynamic part), with
4D-fy's split of who learns what. Stages, chained in one resumable run directory, each a score-distillation stage
(:mod:`gen4d.distill.stage`) over the shared priors:

  1. ``static``  - MVDream SDS on 4 views 90 degrees apart sharing one camera distance, field of view and elevation
     (``configs/fourdfy_stage_1.yaml``): renders 64 px, then 256 px; x0-reconstruction loss with the std rescale;
     t annealed from 0.98 to [0.02, 0.5]; canonical Gaussians, densified. ``static.image_probability > 0`` adds the
     paper's text-to-image branch (SD 2.1 SDS or VSD) with the ``one`` rule;
  2. ``refine``  - optional (``refine.iterations > 0``; 4D-fy's stage 2, ``fourdfy_stage_2.yaml``): one branch per step,
     MVDream (p = 0.5) or VSD on one view (p = 0.5), static Gaussians only;
  3. ``dynamic`` - hybrid SDS (``fourdfy_stage_3.yaml``): one branch per step, MVDream on 4 views at one random time
     (p = 0.5), VSD on one view at one random time (p = 0.25), or ZeroScope on a 16-frame clip of one camera rendered at
     288 x 160 and upsampled to 576 x 320 (p = 0.25, weight 0.1). The multi-view and image branches update the canonical
     Gaussians only; the video branch updates the deformation field and the Gaussians. The Gaussians' learning rates
     are 1/100 of stage 1's (4D-fy: its static grid from 0.01 to 1e-4), the field's 4D-fy's dynamic-grid rate;
then the exports (per-frame PLY and meshes, animated GLB, UV-textured mesh sequence, orbit video).

Random views: distance in [2.5, 3.0], field of view in [15, 60] degrees, elevation in [0, 30] degrees, azimuth uniform;
renders on white. VSD's LoRA trains with the stage (lr 1e-4) and is checkpointed with it, so a resumed run ends as an
uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import Gen4DError
from ..devices import resolve_device, resolve_precision
from ..distill.stage import GuidanceTerm, ScoreDistillation
from ..distill.views import ViewSampling
from ..export.scene import ExportConfig
from ..fields.deformation import DeformationConfig
from ..gaussians.strategy import DensifyConfig, DensifyStrategy
from ..guidance.mvdream import MVDreamConfig
from ..guidance.priors import PriorFactory, build_prior
from ..guidance.sds import TimestepSchedule
from ..guidance.stable_diffusion import StableDiffusionConfig
from ..guidance.video_sds import VideoSDSConfig
from ..guidance.vsd import VSDConfig
from ..models.preflight import ModelRequirement, Requirement
from ..runs import AssetInfo, RunDir, export_asset, write_asset_info
from ..scene import Scene4D
from ..training.loop import Stage, run_stages
from ..training.optim import LearningRates, deformation_optimizer, exp_decay, gaussian_optimizers
from .distilled import DistilledRun, distilled_deformation, distilled_densify
from .recipe import Recipe

MVDREAM_NEGATIVE = ("ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and unclear, "
                    "cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn face, deformed, "
                    "dehydrated, bad proportions")
"""4D-fy's negative prompt of the multi-view branch (``prompt_processor_multi_view.negative_prompt``)."""


@dataclass
class CameraRanges:
    """Random views (4D-fy's ``data.*``: ``camera_distance_range``, ``fovy_range``, ``elevation_range``)."""

    radius: tuple[float, float] = (2.5, 3.0)
    fov_deg: tuple[float, float] = (15.0, 60.0)
    elevation_deg: tuple[float, float] = (0.0, 30.0)


@dataclass
class MultiViewSettings:
    """The multi-view branch (``guidance_multi_view``)."""

    model: str = "mvdream"
    guidance_scale: float = 50.0
    std_rescale: float = 0.5
    """``recon_std_rescale`` (with ``recon_loss: true``: the x0-reconstruction loss)."""
    negative_prompt: str = MVDREAM_NEGATIVE


@dataclass
class ImageSettings:
    """The single-view image branch (``guidance``): ``vsd`` (4D-fy's), ``sd`` (plain SDS) or ``none``."""

    kind: str = "vsd"
    model: str = "sd21"
    guidance_scale: float = 7.5
    """VSD's 7.5; plain SDS wants about 100."""
    lora_lr: float = 1e-4
    """VSD: learning rate of its LoRA (``guidance_single_view`` param group)."""
    resolution: int = 256


@dataclass
class VideoSettings:
    """The video branch (``guidance_video``, ZeroScope)."""

    model: str = "zeroscope"
    guidance_scale: float = 101.0
    """4D-fy's ZeroScope guidance computes ``eps_text + 100 (eps_text - eps_uncond)``, which is classifier-free
    guidance ``eps_uncond + s (eps_text - eps_uncond)`` at s = 101."""
    frames: int = 16
    width: int = 288
    """Render size of the clip (``width_vid``, ``height_vid``), upsampled to the model's 576 x 320."""
    height: int = 160
    weight: float = 0.1
    """``lambda_sds_video``."""
    cpu_offload: bool = False
    """Keep the video model on the CPU between calls (less GPU memory, slower)."""


@dataclass
class StaticSettings:
    """Stage 1 (``fourdfy_stage_1.yaml``)."""

    iterations: int = 10_000
    resolutions: list[int] = field(default_factory=lambda: [64, 256])
    """Multi-view render sizes, switched at ``resolution_milestones`` (steps)."""
    resolution_milestones: list[int] = field(default_factory=lambda: [5000])
    timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.98, 0.98, 0.02, 0.5, 0, 8000))
    """``min_step_percent [0, 0.98, 0.02, 8000]``, ``max_step_percent [0, 0.98, 0.50, 8000]``."""
    image_probability: float = 0.0
    """The paper's text-to-image branch in stage 1 (0: MVDream alone, as the public config)."""


@dataclass
class RefineSettings:
    """Stage 2 (``fourdfy_stage_2.yaml``: 25,000 steps; 0 skips it)."""

    iterations: int = 0
    multi_view_probability: float = 0.5
    resolutions: list[int] = field(default_factory=lambda: [64, 256])
    resolution_milestones: list[int] = field(default_factory=lambda: [5000])


@dataclass
class DynamicSettings:
    """Stage 3 (``fourdfy_stage_3.yaml``)."""

    iterations: int = 100_000
    multi_view_probability: float = 0.5
    image_probability: float = 0.25
    video_probability: float = 0.25
    resolution: int = 256
    """Multi-view and image render size."""
    static_lr_scale: float = 0.01
    """The Gaussians' learning rates relative to stage 1 (4D-fy's static grid: 0.01 -> 1e-4)."""


@dataclass
class FourDfyConfig:
    """Everything ``gen4d text --recipe fourdfy`` does; every field can be set as ``key=value``."""

    prompt: str = ""
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    """Weights of the priors: auto (fp16 on CUDA, fp32 on the CPU) | fp32 | fp16 | bf16."""
    init_points: int = 5000
    """Gaussians at initialisation, uniform in a ball (the text-to-3D Gaussian recipes' start)."""
    init_radius: float = 0.5
    cameras: CameraRanges = field(default_factory=CameraRanges)
    multi_view: MultiViewSettings = field(default_factory=MultiViewSettings)
    image: ImageSettings = field(default_factory=ImageSettings)
    video: VideoSettings = field(default_factory=VideoSettings)
    static: StaticSettings = field(default_factory=StaticSettings)
    refine: RefineSettings = field(default_factory=RefineSettings)
    dynamic: DynamicSettings = field(default_factory=DynamicSettings)
    mv_timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.02, 0.5, 0.02, 0.5))
    """MVDream in stages 2 and 3: t in [0.02, 0.5]."""
    image_timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.02, 0.98, 0.02, 0.5, 5000, 5001))
    """VSD: ``max_step_percent 0.98``, ``max_step_percent_annealed 0.5`` from ``anneal_start_step 5000``."""
    video_timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.02, 0.98, 0.02, 0.98))
    """ZeroScope: t in [0.02, 0.98], not annealed."""
    lr: LearningRates = field(default_factory=lambda: LearningRates(
        means=1e-3, means_final=1e-4, sh0=0.01, opacity=0.05, scales=0.005, quats=0.005,
        grid=0.01, grid_final=0.01, mlp=1e-3, mlp_final=1e-3))
    densify: DensifyConfig = field(default_factory=distilled_densify)
    # 4D-fy has no densification (a NeRF): distilled_densify's settings
    densify_until: float = 0.5
    """Densify during this fraction of the static stage."""
    deformation: DeformationConfig = field(default_factory=distilled_deformation)
    export: ExportConfig = field(default_factory=lambda: ExportConfig(frames=16, video_size=256, video_radius=3.0))
    checkpoint_every: int = 200
    preview_every: int = 500
    preview_size: int = 128


PRESETS: dict[str, list[str]] = {
    # the published schedule: 10,000 + 25,000 + 100,000 steps
    "paper": ["refine.iterations=25000"],
    "default": ["static.iterations=2000", "static.resolution_milestones=[1000]", "static.timesteps.anneal_end=1600",
                "dynamic.iterations=6000"],
    "fast": ["static.iterations=600", "static.resolution_milestones=[300]", "static.timesteps.anneal_end=480",
             "dynamic.iterations=1200", "image.kind=sd", "image.guidance_scale=100"],
    # smaller video renders, the video model off the GPU between calls, no VSD LoRA (4D-fy's low-VRAM branch mix)
    "low-memory": ["static.iterations=2000", "static.resolution_milestones=[1000]", "static.timesteps.anneal_end=1600",
                   "dynamic.iterations=6000", "video.width=144", "video.height=80", "video.cpu_offload=true",
                   "image.kind=none", "dynamic.multi_view_probability=0.75", "dynamic.image_probability=0"],
}


def iters_overrides(iters: int) -> dict:
    """``--iters N``: a quarter static, the rest dynamic (no refinement)."""
    if iters < 2:
        raise Gen4DError(f"--iters must be at least 2 (static and dynamic steps), got {iters}")
    s = max(1, iters // 4)
    return {"static": {"iterations": s, "resolution_milestones": [s // 2], "timesteps": {"anneal_end": max(1, int(0.8 * s))}},
            "refine": {"iterations": 0}, "dynamic": {"iterations": iters - s}}


def check(cfg: FourDfyConfig) -> None:
    if not cfg.prompt.strip():
        raise Gen4DError("4D-fy needs a prompt: gen4d text \"a panda dancing\" --recipe fourdfy --out DIR")
    if cfg.image.kind not in ("vsd", "sd", "none"):
        raise Gen4DError(f"image.kind must be vsd, sd or none, got {cfg.image.kind!r}")
    for name in ("static", "refine", "dynamic"):
        if getattr(cfg, name).iterations < 0:
            raise Gen4DError(f"{name}.iterations must be >= 0")
    if cfg.static.iterations < 1 or cfg.dynamic.iterations < 1:
        raise Gen4DError("static.iterations and dynamic.iterations must be >= 1")
    d = cfg.dynamic
    probs = (d.multi_view_probability, d.image_probability if cfg.image.kind != "none" else 0.0, d.video_probability)
    if min(probs) < 0 or sum(probs) <= 0:
        raise Gen4DError(f"the dynamic stage's branch probabilities must be >= 0 with a positive sum, got {probs}")
    if d.video_probability <= 0:
        raise Gen4DError("dynamic.video_probability must be > 0: only the video branch moves anything")
    if len(cfg.static.resolutions) != len(cfg.static.resolution_milestones) + 1:
        raise Gen4DError("static.resolutions needs one entry more than static.resolution_milestones")
    if cfg.video.frames < 2:
        raise Gen4DError(f"video.frames must be >= 2, got {cfg.video.frames}")


def uses_image(cfg: FourDfyConfig) -> bool:
    return cfg.image.kind != "none" and (cfg.static.image_probability > 0 or cfg.refine.iterations > 0 or cfg.dynamic.image_probability > 0)


def requirements(cfg: FourDfyConfig) -> list[Requirement]:
    """MVDream and the video model always; Stable Diffusion when a branch uses it."""
    needs: list[Requirement] = [ModelRequirement(cfg.multi_view.model, "the multi-view branch (MVDream)"),
                                ModelRequirement(cfg.video.model, "the video branch (ZeroScope)")]
    if uses_image(cfg):
        needs.insert(1, ModelRequirement(cfg.image.model, f"the image branch ({cfg.image.kind.upper()})"))
    return needs


def milestone_resolution(step: int, sizes: list[int], milestones: list[int]) -> int:
    """``sizes[k]`` with k the number of milestones reached (threestudio's ``resolution_milestones``)."""
    return sizes[sum(step >= m for m in milestones)]


class Branches:
    """The priors of a run (built once) and the guidance terms of each stage."""

    def __init__(self, cfg: FourDfyConfig, device: torch.device, priors: PriorFactory):
        self.cfg, self.device = cfg, device
        precision = resolve_precision(cfg.precision, device)
        mv = cfg.multi_view
        self.mvdream = priors("mvdream", MVDreamConfig(model=mv.model, guidance_scale=mv.guidance_scale, weighting="x0",
                                                       std_rescale=mv.std_rescale, precision=precision), device)
        self.mv_prompt = self.mvdream.encode_prompt(cfg.prompt, mv.negative_prompt)
        self.image = None
        if uses_image(cfg):
            im = cfg.image
            if im.kind == "vsd":
                self.image = priors("vsd", VSDConfig(model=im.model, guidance_scale=im.guidance_scale, precision=precision), device)
            else:
                self.image = priors("sd", StableDiffusionConfig(model=im.model, guidance_scale=im.guidance_scale, precision=precision), device)
            self.image_prompt = self.image.encode_prompt(cfg.prompt)
        v = cfg.video
        self.video = priors("video", VideoSDSConfig(model=v.model, guidance_scale=v.guidance_scale, precision=precision,
                                                    cpu_offload=v.cpu_offload), device)
        self.video_prompt = self.video.encode_prompt(cfg.prompt)

    def views(self, **kw) -> ViewSampling:
        c = self.cfg.cameras
        return ViewSampling(elevation_deg=c.elevation_deg, radius=c.radius, fov_deg=c.fov_deg, **kw)

    def multi_view(self, times: str, resolution, timesteps: TimestepSchedule, probability: float, groups) -> GuidanceTerm:
        return GuidanceTerm(
            name="multi_view", prior=self.mvdream, prompt=self.mv_prompt, resolution=resolution, timesteps=timesteps,
            views=self.views(views=4, azimuth_layout="even", shared_camera=True, times=times),
            probability=probability, groups=groups, deform=times != "zero",
        )

    def image_term(self, times: str, probability: float, groups) -> GuidanceTerm:
        return GuidanceTerm(
            name="image", prior=self.image, prompt=self.image_prompt, resolution=self.cfg.image.resolution,
            timesteps=self.cfg.image_timesteps, views=self.views(views=1, times=times), probability=probability,
            groups=groups, deform=times != "zero",
        )

    def video_term(self, probability: float) -> GuidanceTerm:
        v = self.cfg.video
        return GuidanceTerm(
            name="video", prior=self.video, prompt=self.video_prompt, weight=v.weight, resolution=(v.width, v.height),
            timesteps=self.cfg.video_timesteps, views=self.views(views=1, times="clip", frames=v.frames, clip_offset=True),
            probability=probability, densify=False,
        )

    def lora(self) -> list[torch.nn.Parameter]:
        """VSD's LoRA parameters (trained with the stage), or none."""
        get = getattr(self.image, "lora_parameters", None)
        return list(get()) if callable(get) else []

    def lora_state(self):
        """``(get, set)`` of VSD's LoRA tensors, checkpointed with the stage (:attr:`Stage.extra_tensors`)."""
        params = self.lora()
        if not params:
            return None

        def get() -> dict[str, torch.Tensor]:
            return {f"lora.{i}": p for i, p in enumerate(params)}

        def put(tensors: dict[str, torch.Tensor]) -> None:
            with torch.no_grad():
                for i, p in enumerate(params):
                    p.copy_(tensors[f"lora.{i}"])

        return get, put


def branch_counts(losses: ScoreDistillation):
    """``(get, set)`` of how often each branch ran, kept in the stage's checkpoint so a resumed run counts them all."""
    return (lambda: {"branches": dict(losses.history)}, lambda state: losses.history.update(state.get("branches", {})))


class FourDfyRun(DistilledRun):
    """What the stages of one run share."""

    def __init__(self, cfg: FourDfyConfig, device: torch.device, priors: PriorFactory, run: RunDir | None = None):
        super().__init__(cfg, device)
        self.run = run
        self.branches = Branches(cfg, device, priors)
        reset = getattr(self.branches.image, "reset_lora", None)
        if callable(reset):  # VSD's LoRA starts from the run's seed, whatever loading the models drew
            reset(torch.Generator().manual_seed(cfg.seed))

    def carry_lora(self, earlier: list[str]) -> None:
        """A stage starting fresh takes VSD's LoRA as the last earlier stage that trained it left it (read from that
        stage's checkpoint: the same numbers an uninterrupted run holds in memory, also after a restart)."""
        state = self.branches.lora_state()
        if state is None or self.run is None:
            return
        for name in reversed(earlier):
            ckpt = self.run.load_checkpoint(name)
            lora = {k[len("extra."):]: v for k, v in (ckpt[0] if ckpt else {}).items() if k.startswith("extra.lora.")}
            if lora:
                state[1]({k: v.to(self.device) for k, v in lora.items()})
                return

    def gaussian_stage(self, name: str, iterations: int, terms: list[GuidanceTerm], seed: int, densify: bool,
                       earlier: tuple[str, ...] = ()) -> Stage:
        cfg, lr = self.cfg, self.cfg.lr
        b = self.branches
        losses = ScoreDistillation(terms, rule="one" if len(terms) > 1 else "sum", background=self.white)
        lora = b.lora() if any(t.prior is b.image for t in terms) else []

        def optimizers(scene: Scene4D):
            opts = gaussian_optimizers(scene, lr, 1.0)
            if lora:
                opts["lora"] = torch.optim.AdamW(lora, lr=cfg.image.lora_lr)
            return opts

        strategy = None
        if densify:
            strategy = DensifyStrategy(dataclasses.replace(cfg.densify, refine_stop=int(cfg.densify_until * iterations)), 1.0)
        def prepare(scene: Scene4D) -> Scene4D:
            if lora:
                self.carry_lora(list(earlier))
            return scene

        return Stage(
            name=name, iterations=iterations, seed=seed, make_optimizers=optimizers, prepare=prepare,
            learning_rates=lambda step: {"means": exp_decay(step, iterations, lr.means, lr.means_final)},
            losses=losses, strategy=strategy, preview=self.preview, checkpoint_every=cfg.checkpoint_every,
            preview_every=cfg.preview_every, extra_tensors=b.lora_state() if lora else None, extra_state=branch_counts(losses),
        )

    def static_stage(self) -> Stage:
        cfg, b, s = self.cfg, self.branches, self.cfg.static
        terms = [b.multi_view("zero", lambda step: milestone_resolution(step, s.resolutions, s.resolution_milestones),
                              s.timesteps, 1.0 - s.image_probability, None)]
        if s.image_probability > 0 and b.image is not None:
            terms.append(b.image_term("zero", s.image_probability, None))
        return self.gaussian_stage("static", s.iterations, terms, cfg.seed * 1000 + 1, densify=True)

    def refine_stage(self) -> Stage:
        cfg, b, r = self.cfg, self.branches, self.cfg.refine
        terms = [b.multi_view("zero", lambda step: milestone_resolution(step, r.resolutions, r.resolution_milestones),
                              cfg.mv_timesteps, r.multi_view_probability, None)]
        if b.image is not None:
            terms.append(b.image_term("zero", 1.0 - r.multi_view_probability, None))
        return self.gaussian_stage("refine", r.iterations, terms, cfg.seed * 1000 + 2, densify=False, earlier=("static",))

    def dynamic_stage(self) -> Stage:
        cfg, b, d, lr = self.cfg, self.branches, self.cfg.dynamic, self.cfg.lr
        n = d.iterations
        terms = [b.multi_view("shared", d.resolution, cfg.mv_timesteps, d.multi_view_probability, ("static",))]
        if b.image is not None and d.image_probability > 0:
            terms.append(b.image_term("shared", d.image_probability, ("static",)))
        terms.append(b.video_term(d.video_probability))
        losses = ScoreDistillation(terms, rule="one", background=self.white)
        lora = b.lora() if b.image is not None and d.image_probability > 0 else []
        static_lr = {k: v * d.static_lr_scale for k, v in dataclasses.asdict(lr).items()}

        def prepare(scene: Scene4D) -> Scene4D:
            if lora:
                self.carry_lora(["static", "refine"])
            return scene.attach_deformation(cfg.deformation, cfg.seed)

        def optimizers(scene: Scene4D):
            opts = gaussian_optimizers(scene, LearningRates(**static_lr), 1.0)
            opts["deformation"] = deformation_optimizer(scene, lr, 1.0)
            if lora:
                opts["lora"] = torch.optim.AdamW(lora, lr=cfg.image.lora_lr)
            return opts

        return Stage(
            name="dynamic", iterations=n, seed=cfg.seed * 1000 + 3,
            prepare=prepare,
            make_optimizers=optimizers,
            learning_rates=lambda step: {"means": static_lr["means"],
                                         "deformation": [exp_decay(step, n, lr.grid, lr.grid_final), exp_decay(step, n, lr.mlp, lr.mlp_final)]},
            losses=losses, preview=self.preview, checkpoint_every=cfg.checkpoint_every, preview_every=cfg.preview_every,
            extra_tensors=b.lora_state() if lora else None, extra_state=branch_counts(losses),
        )


def run_fourdfy(cfg: FourDfyConfig, out: str | Path, command: str = "gen4d text --recipe fourdfy", quiet: bool = False,
                stop_after_step: int | None = None, priors: PriorFactory = build_prior) -> dict:
    """Text -> 4D Gaussians by 4D-fy's stages -> exports (module doc)."""
    check(cfg)
    device = resolve_device(cfg.device)
    run = RunDir(out)
    run.prepare(cfg, command)
    fr = FourDfyRun(cfg, device, priors, run)
    stages = [fr.static_stage()] + ([fr.refine_stage()] if cfg.refine.iterations > 0 else []) + [fr.dynamic_stage()]
    asset = AssetInfo(final_stage="dynamic", frames=cfg.export.frames or cfg.video.frames, radius=3.0,
                      deformation=dataclasses.asdict(cfg.deformation), export=dataclasses.asdict(cfg.export), device=cfg.device)
    write_asset_info(run, asset)
    scene, stats = run_stages(run, stages, fr.init_scene, fr.load_scene, quiet=quiet, stop_after_step=stop_after_step)
    if not run.stage_complete("dynamic"):
        return {}
    scene.eval()
    written = export_asset(scene, run, asset, quiet=quiet)
    history = {s.name: (run.stage_state(s.name) or {}).get("extra", {}).get("branches", {}) for s in stages}
    metrics = {
        "seconds": sum(s["seconds"] for s in stats.values()),
        "stages": stats,
        "branches": history,
        "num_gaussians": len(scene.gaussians),
        "iterations": sum(s.iterations for s in stages),
        "exports": written,
        "device": str(device),
    }
    run.write_metrics(metrics)
    run.log(f"done: {len(scene.gaussians)} Gaussians")
    return metrics


RECIPE = Recipe(
    name="fourdfy",
    commands=("text",),
    description="4D-fy: MVDream SDS (static), optional VSD refinement, hybrid SDS of MVDream / VSD / ZeroScope (dynamic)",
    config=FourDfyConfig,
    presets=PRESETS,
    run=run_fourdfy,
    input_key="prompt",
    input_is_path=False,
    iters=iters_overrides,
    check=check,
    requirements=requirements,
    headline=lambda m: f"{m['num_gaussians']} Gaussians  {m['seconds']:.0f} s training",
)
