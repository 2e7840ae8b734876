"""``dreamin4d``: Dream-in-4D (Zheng et al. 2024), text / image / personalised subject -> static 3D -> motion by
video score distillation, on 4D Gaussians.

Two stages in one resumable run directory, each a score-distillation stage (:mod:`gen4d.distill.stage`):

  1. ``static`` (canonical Gaussians, densified), by variant:

     * **text** (``gen4d text PROMPT --recipe dreamin4d``; ``configs/stage_1/mvdream-sd21-sd.yaml``): MVDream SDS
       (x0 loss, std rescale 0.5, CFG 50, weight 2) on 4 views 90 degrees apart sharing one camera, plus SD 2.1 SDS
       (CFG 100, t in [0.2, 0.6], weight 1) on the *same* views, summed every step; SD only judges the views within
       ``sd_view`` degrees of the front (``SD_view``; 180 = all). Renders 64 px, then 256 px; MVDream's t anneals from
       0.98 to [0.02, 0.5]. Both losses are per image (threestudio divides by the batch);
     * **subject** (``--subject DIR``): the same, with SD carrying a DreamBooth LoRA of the subject
       (:mod:`gen4d.guidance.subject_lora`); MVDream gets the prompt without its ``sks`` token;
     * **image** (``gen4d image IMAGE --recipe dreamin4d --prompt ...``; ``configs/stage_1/magic123-coarse-if-new.yaml``):
       the input view's RGB (weight 500) and mask (50) losses, Zero123 SDS (CFG 3, weight 0.1, t from [0.4, 0.85] to
       [0.2, 0.5] over 200 steps) on random views, and a text-to-image prior on the same views (weight 0.1);
  2. ``dynamic`` (``configs/stage_2/stage2_zeroscope_144x80.yaml``): a deformation field (the identity at the start)
     over the frozen static Gaussians, trained by ZeroScope on 24-frame clips of one camera rendered at 144 x 80
     (upsampled to 576 x 320), each clip spanning a random 80-100 % of the time line, with HiFA's target
     (``num_hifa_steps`` DDIM steps) and its image-space loss (weight 0.1), and the smoothness of the displacement
     rendered at the clip's cameras (differences along time, height and width, weight 1000). t anneals from 0.99
     to [0.2, 0.5]; learning rates halve at 80 % and 90 % of the stage. ``deformation_scale`` enlarges the static
     model about the origin first (Dream-in-4D's ``deformation_scale``, for a static scene that came out too small);

then the exports (per-frame PLY and meshes, animated GLB, UV-textured mesh sequence, orbit video).

Cameras: threestudio's relative distances (``camera_distance_range`` times 1 / tan(fovy / 2)) with vertical fields of
view; renders on white.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import Gen4DError
from ..cameras import orbit_cameras
from ..data.preprocess import composite, load_image_rgba, read_image_file, save_rgba_png
from ..devices import resolve_device, resolve_precision
from ..distill.stage import GuidanceTerm, ReferenceViews, ScoreDistillation
from ..distill.views import ViewBatch, ViewSampling
from ..export.scene import ExportConfig
from ..fields.deformation import DeformationConfig
from ..gaussians.strategy import DensifyConfig, DensifyStrategy
from ..guidance.deepfloyd import DeepFloydConfig
from ..guidance.mvdream import MVDreamConfig
from ..guidance.priors import PriorFactory, build_prior
from ..guidance.sds import TimestepSchedule
from ..guidance.stable_diffusion import StableDiffusionConfig
from ..guidance.subject_lora import find_lora_file
from ..guidance.video_sds import VideoSDSConfig
from ..guidance.zero123 import Zero123Config
from ..models.preflight import ModelRequirement, Requirement
from ..render import RenderOutput
from ..runs import AssetInfo, RunDir, export_asset, write_asset_info
from ..scene import Scene4D
from ..training.loop import Stage, run_stages
from ..training.optim import LearningRates, deformation_optimizer, exp_decay, gaussian_optimizers
from .distilled import DistilledRun, distilled_deformation, distilled_densify
from .fourdfy import MVDREAM_NEGATIVE, CameraRanges, milestone_resolution
from .fourdfy import MultiViewSettings as FourDfyMultiView
from .recipe import Option, Recipe

NEGATIVE = MVDREAM_NEGATIVE
"""Dream-in-4D's negative prompt (``prompt_processor.negative_prompt`` of both stages; the same as MVDream's)."""


@dataclass
class TextCameras(CameraRanges):
    """Random views of the text / subject static stage (``data.*`` of ``mvdream-sd21-sd.yaml``): ``radius`` is
    relative (``camera_distance_range``: the distance is r / tan(fovy / 2)), ``fov_deg`` vertical (``fovy_range``)."""

    radius: tuple[float, float] = (0.8, 1.0)


@dataclass
class MultiViewSettings(FourDfyMultiView):
    """MVDream (``system.guidance``, ``system.loss.lambda_sds``)."""

    weight: float = 2.0
    timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.98, 0.98, 0.02, 0.5, 0, 8000))
    """``min_step_percent [0, 0.98, 0.02, 8000]``, ``max_step_percent [0, 0.98, 0.50, 8000]``."""


@dataclass
class StableDiffusionSettings:
    """SD 2.1 beside MVDream (``system.guidance_2d``, ``system.loss.lambda_2d_sds``, ``system.SD_view``)."""

    model: str = "sd21"
    guidance_scale: float = 100.0
    weight: float = 1.0
    timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.2, 0.6, 0.2, 0.6))
    sd_view: float = 180.0
    """SD judges only views whose azimuth is strictly within this of the front (180: all, 145: no back views)."""


@dataclass
class TextStatic:
    """The text / subject static stage."""

    iterations: int = 10_000
    resolutions: list[int] = field(default_factory=lambda: [64, 256])
    resolution_milestones: list[int] = field(default_factory=lambda: [5000])


@dataclass
class ImageStatic:
    """The image variant's static stage (``magic123-coarse-if-new.yaml``)."""

    iterations: int = 2000
    size: int = 256
    """Side of the preprocessed input view (the reference loss renders at this size)."""
    radius: float = 3.8
    """``default_camera_distance`` (absolute) of the input view and the random views."""
    fov_deg: float = 20.0
    """``default_fovy_deg``."""
    elevation_deg: tuple[float, float] = (-10.0, 80.0)
    """``random_camera.elevation_range``."""
    views: int = 4
    resolutions: list[int] = field(default_factory=lambda: [64, 128, 256])
    """``random_camera.height`` at ``resolution_milestones [200, 300]``."""
    resolution_milestones: list[int] = field(default_factory=lambda: [200, 300])
    rgb_weight: float = 500.0
    mask_weight: float = 50.0
    zero123_model: str = "zero123-xl"
    zero123_guidance_scale: float = 3.0
    zero123_weight: float = 0.1
    zero123_timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.4, 0.85, 0.2, 0.5, 0, 200))
    """``min_step_percent [0, 0.4, 0.2, 200]``, ``max_step_percent [0, 0.85, 0.5, 200]``."""
    text_prior: str = "sd"
    """The text-to-image prior on the same views: ``if`` (DeepFloyd IF stage I, Dream-in-4D's; a gated model, with
    T5-XXL to encode the prompt once), ``sd`` (SD 2.1, CFG 100) or ``none``."""
    text_weight: float = 0.1
    """``lambda_sds_2d``."""
    if_model: str = "deepfloyd-if"
    if_guidance_scale: float = 20.0
    text_guidance_scale: float = 100.0
    """SD's CFG scale when ``text_prior=sd``."""
    text_timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.02, 0.5, 0.02, 0.5))
    border_ratio: float = 0.2
    recenter: bool = True


@dataclass
class DynamicSettings:
    """Stage 2 (``stage2_zeroscope_144x80.yaml``)."""

    iterations: int = 10_000
    model: str = "zeroscope"
    guidance_scale: float = 101.0
    """Dream-in-4D's ZeroScope guidance computes ``eps_text + 100 (eps_text - eps_uncond)``: CFG at s = 101."""
    frames: int = 24
    width: int = 144
    height: int = 80
    timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.99, 0.99, 0.2, 0.5, 0, 10_000))
    """``min_step_percent [0, 0.99, 0.2, 10000]``, ``max_step_percent [0, 0.99, 0.5, 10000]``."""
    hifa_steps: int = 1
    """``num_hifa_steps`` (4: steadier motion, slower)."""
    color_weight: float = 0.1
    """``lambda_sds_color``: HiFA's image-space loss."""
    smoothness_weight: float = 1000.0
    """``lambda_deformation_spatial_reg``: squared differences of the rendered displacement along t, y and x."""
    radius: tuple[float, float] = (0.8, 1.0)
    fov_deg: tuple[float, float] = (15.0, 60.0)
    elevation_deg: tuple[float, float] = (0.0, 45.0)
    azimuth_deg: tuple[float, float] = (-150.0, 150.0)
    clip_span: tuple[float, float] = (0.8, 1.0)
    """``delta_time 0.2``: each clip covers a random 80-100 % of [0, 1]."""
    lr_milestones: list[float] = field(default_factory=lambda: [0.8, 0.9])
    """``MultiStepLR milestones [8000, 9000]`` of 10,000 steps, as fractions of the stage; ``gamma 0.5``."""
    lr_gamma: float = 0.5
    deformation_scale: float = 1.0
    """Enlarge the static model by this factor about the origin before the motion is learnt."""
    cpu_offload: bool = False


@dataclass
class DreamIn4DConfig:
    """Everything ``gen4d text|image --recipe dreamin4d`` does; every field can be set as ``key=value``."""

    mode: str = "text"
    """text | image (set by the command)."""
    prompt: str = ""
    input: str = ""
    """The input image (``gen4d image``)."""
    subject: str = ""
    """A DreamBooth LoRA folder or file of a personalised subject (``--subject``): SD carries it."""
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    init_points: int = 5000
    init_radius: float = 0.5
    cameras: TextCameras = field(default_factory=TextCameras)
    multi_view: MultiViewSettings = field(default_factory=MultiViewSettings)
    sd: StableDiffusionSettings = field(default_factory=StableDiffusionSettings)
    static: TextStatic = field(default_factory=TextStatic)
    image: ImageStatic = field(default_factory=ImageStatic)
    dynamic: DynamicSettings = field(default_factory=DynamicSettings)
    lr: LearningRates = field(default_factory=lambda: LearningRates(
        means=1e-3, means_final=1e-4, sh0=0.01, opacity=0.05, scales=0.005, quats=0.005,
        grid=1e-3, grid_final=1e-3, mlp=1e-3, mlp_final=1e-3))
    """Gaussians: the text-to-3D Gaussian rates (as 4D-fy's); field: ``geometry.deformation_*: lr 0.001``."""
    densify: DensifyConfig = field(default_factory=distilled_densify)
    densify_until: float = 0.5
    deformation: DeformationConfig = field(default_factory=lambda: dataclasses.replace(distilled_deformation(), deform_shape=False))
    """A displacement field, as Dream-in-4D's (``warping`` moves points only); the Gaussians keep their shapes."""
    export: ExportConfig = field(default_factory=lambda: ExportConfig(frames=24, video_size=256, video_radius=3.0))
    checkpoint_every: int = 200
    preview_every: int = 500
    preview_size: int = 128


PRESETS: dict[str, list[str]] = {
    # the published schedule: 10,000 + 10,000 steps (image: 2,000 + 10,000)
    "paper": ["image.text_prior=if"],
    "default": ["static.iterations=2500", "static.resolution_milestones=[1250]", "multi_view.timesteps.anneal_end=2000",
                "dynamic.iterations=2500", "dynamic.timesteps.anneal_end=2500", "image.iterations=1000"],
    "fast": ["static.iterations=800", "static.resolution_milestones=[400]", "multi_view.timesteps.anneal_end=640",
             "dynamic.iterations=800", "dynamic.timesteps.anneal_end=800", "dynamic.frames=16", "image.iterations=500"],
    # the video model off the GPU between calls, 16-frame clips, 4 views of 128 px in the image variant
    "low-memory": ["static.iterations=2500", "static.resolution_milestones=[1250]", "multi_view.timesteps.anneal_end=2000",
                   "dynamic.iterations=2500", "dynamic.timesteps.anneal_end=2500", "image.iterations=1000",
                   "dynamic.frames=16", "dynamic.cpu_offload=true", "image.resolutions=[64,128,128]"],
}


def iters_overrides(iters: int) -> dict:
    """``--iters N``: half static, half dynamic, schedules scaled to them."""
    if iters < 2:
        raise Gen4DError(f"--iters must be at least 2 (static and dynamic steps), got {iters}")
    s = iters // 2
    d = iters - s
    return {"static": {"iterations": s, "resolution_milestones": [s // 2]}, "image": {"iterations": s},
            "multi_view": {"timesteps": {"anneal_end": max(1, int(0.8 * s))}},
            "dynamic": {"iterations": d, "timesteps": {"anneal_end": d}}}


def mv_prompt(prompt: str) -> str:
    """MVDream's prompt: the subject's ``sks`` token removed (Dream-in-4D's ``mvdream_sd.py``)."""
    return prompt.replace("sks ", "").replace("Sks ", "")


def static_iterations(cfg: DreamIn4DConfig) -> int:
    return cfg.image.iterations if cfg.mode == "image" else cfg.static.iterations


def check(cfg: DreamIn4DConfig) -> None:
    if cfg.mode not in ("text", "image"):
        raise Gen4DError(f"mode must be text or image, got {cfg.mode!r}")
    if cfg.mode == "text" and not cfg.prompt.strip():
        raise Gen4DError('Dream-in-4D needs a prompt: gen4d text "a dog running" --recipe dreamin4d --out DIR')
    if cfg.mode == "image":
        if not cfg.prompt.strip():
            raise Gen4DError('the image variant needs a prompt for its motion: gen4d image IMAGE --recipe dreamin4d --prompt "a corgi running"')
        if cfg.subject:
            raise Gen4DError("--subject personalises the text variant; the image variant takes its subject from the image")
        read_image_file(Path(cfg.input))
        if cfg.image.text_prior not in ("if", "sd", "none"):
            raise Gen4DError(f"image.text_prior must be if, sd or none, got {cfg.image.text_prior!r}")
        if len(cfg.image.resolutions) != len(cfg.image.resolution_milestones) + 1:
            raise Gen4DError("image.resolutions needs one entry more than image.resolution_milestones")
    if cfg.subject:
        find_lora_file(cfg.subject)
    if cfg.init_points < 1:
        raise Gen4DError(f"init_points must be at least 1, got {cfg.init_points}")
    if static_iterations(cfg) < 1 or cfg.dynamic.iterations < 1:
        raise Gen4DError("the static and dynamic stages need at least one step each")
    if len(cfg.static.resolutions) != len(cfg.static.resolution_milestones) + 1:
        raise Gen4DError("static.resolutions needs one entry more than static.resolution_milestones")
    if not 0 < cfg.sd.sd_view <= 180:
        raise Gen4DError(f"sd.sd_view must be in (0, 180], got {cfg.sd.sd_view}")
    if cfg.dynamic.frames < 2 or cfg.dynamic.hifa_steps < 1:
        raise Gen4DError("dynamic.frames must be >= 2 and dynamic.hifa_steps >= 1")
    if cfg.dynamic.deformation_scale <= 0:
        raise Gen4DError(f"dynamic.deformation_scale must be > 0, got {cfg.dynamic.deformation_scale}")


def requirements(cfg: DreamIn4DConfig) -> list[Requirement]:
    if cfg.mode == "image":
        needs: list[Requirement] = [ModelRequirement(cfg.image.zero123_model, "Zero123 (static stage)")]
        if cfg.image.text_prior == "sd":
            needs.append(ModelRequirement(cfg.sd.model, "SD 2.1 (static stage)"))
        elif cfg.image.text_prior == "if":
            needs.append(ModelRequirement(cfg.image.if_model, "DeepFloyd IF stage I (static stage)"))
    else:
        needs = [ModelRequirement(cfg.multi_view.model, "MVDream (static stage)"),
                 ModelRequirement(cfg.sd.model, "SD 2.1" + (" + the subject LoRA" if cfg.subject else "") + " (static stage)")]
    return needs + [ModelRequirement(cfg.dynamic.model, "ZeroScope (dynamic stage)")]


def displacement_smoothness(weight: float):
    """Dream-in-4D's ``deformation_spatial_reg`` on a clip's displacement maps ``D [B, T, H, W, 3]`` rendered at its
    cameras: ``sum over t, y, x, channels of mean over clips of (D[t+1] - D[t])^2 + (D[y+1] - D[y])^2 +
    (D[x+1] - D[x])^2``, times ``weight``. Its gradient reaches the displacement values only, not where the moved
    Gaussians are drawn: through their positions the term would shrink by carrying what moves out of sight, a
    feedback that collapsed the motion (bench/RESULTS.md)."""

    def losses(scene: Scene4D, views: ViewBatch, render: RenderOutput | None = None) -> dict[str, torch.Tensor]:
        d = scene.render_displacement(views.cameras, per_camera=None if render is None else render.meta.get("per_camera"),
                                      geometry_grad=False)
        d = d.reshape(-1, views.frames, *d.shape[1:])
        value = sum((a - b).square().mean(0).sum() for a, b in (
            (d[:, 1:], d[:, :-1]), (d[:, :, 1:], d[:, :, :-1]), (d[:, :, :, 1:], d[:, :, :, :-1])))
        return {"smoothness": weight * value}

    return losses


class DreamIn4DRun(DistilledRun):
    """What the stages of one run share: the priors, the inputs and the stages."""

    def __init__(self, cfg: DreamIn4DConfig, device: torch.device, priors: PriorFactory, reference: torch.Tensor | None = None):
        super().__init__(cfg, device)
        self.priors = priors
        self.precision = resolve_precision(cfg.precision, device)
        self.reference = reference
        d = cfg.dynamic
        self.video = priors("video", VideoSDSConfig(
            model=d.model, guidance_scale=d.guidance_scale, precision=self.precision, weighting="hifa", hifa_steps=d.hifa_steps,
            color_weight=d.color_weight, view_dependent=True, cpu_offload=d.cpu_offload), device)
        self.video_prompt = self.video.encode_prompt(cfg.prompt, NEGATIVE)

    # ------------------------------------------------------------------------------------------------ static
    def sd_prior(self, guidance_scale: float, timesteps: TimestepSchedule):
        s = self.cfg.sd
        prior = self.priors("sd", StableDiffusionConfig(model=s.model, guidance_scale=guidance_scale, timesteps=timesteps,
                                                        precision=self.precision, lora=self.cfg.subject), self.device)
        return prior, prior.encode_prompt(self.cfg.prompt, NEGATIVE)

    def text_terms(self) -> list[GuidanceTerm]:
        cfg, mv, s, st = self.cfg, self.cfg.multi_view, self.cfg.sd, self.cfg.static
        mvdream = self.priors("mvdream", MVDreamConfig(model=mv.model, guidance_scale=mv.guidance_scale, weighting="x0",
                                                       std_rescale=mv.std_rescale, precision=self.precision), self.device)
        c = cfg.cameras
        views = ViewSampling(views=4, azimuth_layout="even", shared_camera=True, elevation_deg=c.elevation_deg, radius=c.radius,
                             fov_deg=c.fov_deg, relative_radius=True, vertical_fov=True, times="zero")
        sd, sd_prompt = self.sd_prior(s.guidance_scale, s.timesteps)
        return [
            GuidanceTerm(name="multi_view", prior=mvdream, prompt=mvdream.encode_prompt(mv_prompt(cfg.prompt), mv.negative_prompt),
                         views=views, weight=mv.weight, per_view=True, timesteps=mv.timesteps, deform=False,
                         resolution=lambda step: milestone_resolution(step, st.resolutions, st.resolution_milestones)),
            GuidanceTerm(name="sd", prior=sd, prompt=sd_prompt, views=views, weight=s.weight, per_view=True,
                         timesteps=s.timesteps, deform=False, share_views="multi_view", azimuth_limit=s.sd_view),
        ]

    def image_losses(self) -> ScoreDistillation:
        cfg, im = self.cfg, self.cfg.image
        ref = self.reference.to(self.device)
        rgb = composite(ref).permute(1, 2, 0)[None]
        zero123 = self.priors("zero123", Zero123Config(model=im.zero123_model, guidance_scale=im.zero123_guidance_scale,
                                                       timesteps=im.zero123_timesteps, precision=self.precision), self.device)
        zero_ref = zero123.prepare_reference(composite(ref)[None], 0.0, 0.0, im.radius)
        views = ViewSampling(views=im.views, elevation_deg=im.elevation_deg, radius=(im.radius, im.radius),
                             fov_deg=(im.fov_deg, im.fov_deg), vertical_fov=True, times="zero")
        terms = [GuidanceTerm(name="zero123", prior=zero123, views=views, weight=im.zero123_weight, per_view=True,
                              timesteps=im.zero123_timesteps, references=zero_ref, deform=False,
                              resolution=lambda step: milestone_resolution(step, im.resolutions, im.resolution_milestones))]
        if im.text_prior != "none":
            if im.text_prior == "if":
                prior = self.priors("deepfloyd", DeepFloydConfig(model=im.if_model, guidance_scale=im.if_guidance_scale,
                                                                 timesteps=im.text_timesteps, precision=self.precision), self.device)
                prompt = prior.encode_prompt(cfg.prompt, "")
                release = getattr(getattr(prior, "prompt_encoder", None), "release_text_encoder", None)
                if callable(release):  # T5-XXL is needed only to encode the prompt
                    release()
            else:
                prior, prompt = self.sd_prior(im.text_guidance_scale, im.text_timesteps)
            terms.append(GuidanceTerm(name=im.text_prior, prior=prior, prompt=prompt, views=views, weight=im.text_weight,
                                      per_view=True, timesteps=im.text_timesteps, deform=False, share_views="zero123"))
        S = im.size
        cams = orbit_cameras([0.0], 0.0, im.radius, math.radians(im.fov_deg), S, S, times=0.0).to(self.device)
        reference = ReferenceViews(cams, rgb, ref[3:].permute(1, 2, 0)[None], im.rgb_weight, im.mask_weight, deform=False)
        return ScoreDistillation(terms, reference, background=self.white)

    def static_stage(self) -> Stage:
        cfg, lr = self.cfg, self.cfg.lr
        n = static_iterations(cfg)
        losses = self.image_losses() if cfg.mode == "image" else ScoreDistillation(self.text_terms(), background=self.white)
        return Stage(
            name="static", iterations=n, seed=cfg.seed * 1000 + 1,
            make_optimizers=lambda scene: gaussian_optimizers(scene, lr, 1.0),
            learning_rates=lambda step: {"means": exp_decay(step, n, lr.means, lr.means_final)},
            losses=losses, strategy=DensifyStrategy(dataclasses.replace(cfg.densify, refine_stop=int(cfg.densify_until * n)), 1.0),
            preview=self.preview, checkpoint_every=cfg.checkpoint_every, preview_every=cfg.preview_every,
        )

    # ------------------------------------------------------------------------------------------------ dynamic
    def dynamic_stage(self) -> Stage:
        cfg, d, lr = self.cfg, self.cfg.dynamic, self.cfg.lr
        n = d.iterations
        views = ViewSampling(views=1, azimuth_deg=d.azimuth_deg, elevation_deg=d.elevation_deg, radius=d.radius, fov_deg=d.fov_deg,
                             relative_radius=True, vertical_fov=True, times="clip", frames=d.frames, clip_span=d.clip_span)
        term = GuidanceTerm(name="video", prior=self.video, prompt=self.video_prompt, views=views, resolution=(d.width, d.height),
                            timesteps=d.timesteps, groups=("dynamic",), densify=False,
                            view_losses=displacement_smoothness(d.smoothness_weight) if d.smoothness_weight else None)
        losses = ScoreDistillation([term], background=self.white)

        def prepare(scene: Scene4D) -> Scene4D:
            if d.deformation_scale != 1.0:  # the static model enlarged about the origin
                with torch.no_grad():
                    p = scene.gaussians.params
                    p["means"].mul_(d.deformation_scale)
                    p["log_scales"].add_(math.log(d.deformation_scale))
            return scene.attach_deformation(cfg.deformation, cfg.seed)

        def rate(step: int, value: float) -> float:
            return value * d.lr_gamma ** sum(step >= round(m * n) for m in d.lr_milestones)

        return Stage(
            name="dynamic", iterations=n, seed=cfg.seed * 1000 + 2, prepare=prepare,
            make_optimizers=lambda scene: {"deformation": deformation_optimizer(scene, lr, 1.0)},
            learning_rates=lambda step: {"deformation": [rate(step, lr.grid), rate(step, lr.mlp)]},
            losses=losses, preview=self.preview, checkpoint_every=cfg.checkpoint_every, preview_every=cfg.preview_every,
        )



def run_dreamin4d(cfg: DreamIn4DConfig, out: str | Path, command: str = "gen4d text --recipe dreamin4d", quiet: bool = False,
                  stop_after_step: int | None = None, priors: PriorFactory = build_prior) -> dict:
    """Text, image or subject -> 4D Gaussians by Dream-in-4D's two stages -> exports (module doc)."""
    check(cfg)
    device = resolve_device(cfg.device)
    reference = None
    if cfg.mode == "image":
        reference = load_image_rgba(cfg.input, size=cfg.image.size, border_ratio=cfg.image.border_ratio, recenter=cfg.image.recenter)
    run = RunDir(out)
    run.prepare(cfg, command)
    if reference is not None:
        save_rgba_png(run.root / "input.png", reference)
    dr = DreamIn4DRun(cfg, device, priors, reference)
    stages = [dr.static_stage(), dr.dynamic_stage()]
    asset = AssetInfo(final_stage="dynamic", frames=cfg.export.frames or cfg.dynamic.frames, radius=3.0,
                      deformation=dataclasses.asdict(cfg.deformation), export=dataclasses.asdict(cfg.export), device=cfg.device)
    write_asset_info(run, asset)
    scene, stats = run_stages(run, stages, dr.init_scene, dr.load_scene, quiet=quiet, stop_after_step=stop_after_step)
    if not run.stage_complete("dynamic"):
        return {}
    scene.eval()
    written = export_asset(scene, run, asset, quiet=quiet)
    metrics = {
        "seconds": sum(s["seconds"] for s in stats.values()),
        "stages": stats,
        "variant": "subject" if cfg.subject else cfg.mode,
        "num_gaussians": len(scene.gaussians),
        "iterations": sum(s.iterations for s in stages),
        "exports": written,
        "device": str(device),
    }
    run.write_metrics(metrics)
    run.log(f"done: {len(scene.gaussians)} Gaussians")
    return metrics


RECIPE = Recipe(
    name="dreamin4d",
    commands=("text", "image"),
    description="Dream-in-4D: MVDream + SD (text, --subject LoRA) or Zero123 + reference (image) static 3D, then "
                "motion by ZeroScope video SDS (HiFA) on a deformation field",
    config=DreamIn4DConfig,
    presets=PRESETS,
    run=run_dreamin4d,
    inputs={"text": ("prompt", False), "image": ("input", True)},
    per_command={"text": {"mode": "text"}, "image": {"mode": "image"}},
    options=(Option("--prompt", "prompt", "image: what the object is and how it moves (the video prior's prompt)"),
             Option("--subject", "subject", "text: a DreamBooth LoRA folder (gen4d subject train) of a personalised subject", path=True)),
    iters=iters_overrides,
    check=check,
    requirements=requirements,
    headline=lambda m: f"{m['variant']}: {m['num_gaussians']} Gaussians  {m['seconds']:.0f} s training",
)
