"""``animate124``: Animate124 (Zhao et al. 2023), one image + a prompt -> 4D, on 4D Gaussians.

Animate124 is a 4D hash-grid NeRF trained in three stages (threestudio branch, ``configs/animate124-stage*.yaml``);
here the engine's 4D asset, canonical Gaussians moved by a deformation field, learns the same losses in the same
order, each stage a score-distillation stage (:mod:`gen4d.distill.stage`), chained in one resumable run directory:

  0. ``invert``  - textual inversion (:mod:`gen4d.recipes.invert`): a token for SD 1.5 learned from the image, saved
     as ``stages/invert/learned_embeds.safetensors`` (skipped with ``textual_inversion.path=FILE`` or
     ``textual_inversion.iterations=0``);
  1. ``static``  - the reference view (RGB 1000, mask 100, optional depth), Zero123-XL SDS at a random view (weight 1,
     CFG 5, t in [0.2, 0.6]) and SD 1.5 SDS at a random view (weight 0.025, CFG 100, t in [0.2, 0.6]), 128 px;
     canonical Gaussians, densified;
  2. ``dynamic`` - a zero-initialised deformation field; every step a 16-frame clip of one slightly moving camera at
     128 px (ModelScope; 144 x 80 for ZeroScope), frames on a 256-step time grid with a random stride and start,
     mirrored (t -> 1 - t) with p = 0.5 (``sample_rand_frames: fps``, :func:`gen4d.distill.views.strided_clip_times`),
     video SDS weight 1 (CFG 100 on top of the text branch, t in [0.02, 0.98]). A clip that starts at t = 0 (p = 0.2,
     and not mirrored) also gets the reference-view losses at t = 0 and Zero123 SDS (weight 40) at a random view at
     t = 0 - Animate124's anchor of the first frame to the image. The Gaussians learn at 1/100 of stage 1's rates
     (Animate124's static grid: 0.01 -> 1e-4), the field at the time grid's 0.01;
  3. ``semantic`` - as ``dynamic``, plus ControlNet-tile SDS on SD 1.5 (weight 3, CFG 7.5, t in [0.02, 0.98]) on
     ``fixed_frames`` random frames of the same clip, centre-cropped and resized to ``fixed_size``, each conditioned
     on its own detached render; the prompt carries the learned token;
then the exports (per-frame PLY and meshes, animated GLB, UV-textured mesh sequence, orbit video).

Cameras: distance 2.5, field of view 40 degrees, elevation in [-45, 45], azimuth uniform; the input view is
azimuth 0, elevation 0; renders on white. Each stage loads only its own priors and releases the others'.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .. import Gen4DError
from ..cameras import orbit_cameras
from ..data.preprocess import composite, load_image_rgba, read_image_file, save_rgba_png
from ..devices import resolve_device, resolve_precision
from ..distill.stage import GuidanceTerm, ReferenceViews, ScoreDistillation
from ..distill.views import ViewSampling
from ..export.images import save_png
from ..export.scene import ExportConfig
from ..fields.deformation import DeformationConfig
from ..gaussians.strategy import DensifyConfig, DensifyStrategy
from ..guidance.base import Conditioning
from ..guidance.controlnet_tile import ControlNetTileConfig
from ..guidance.priors import PriorFactory, build_prior
from ..guidance.sds import TimestepSchedule
from ..guidance.stable_diffusion import StableDiffusionConfig
from ..guidance.textual_inversion import expand_textual_inversion_prompt, read_textual_inversion
from ..guidance.video_sds import VideoSDSConfig
from ..guidance.zero123 import Zero123Config
from ..models.preflight import ModelRequirement, Requirement
from ..runs import AssetInfo, RunDir, export_asset, write_asset_info
from ..scene import Scene4D
from ..training.loop import Stage, StepLosses, run_stages
from ..training.optim import LearningRates, deformation_optimizer, exp_decay, gaussian_optimizers
from .distilled import DistilledRun, distilled_deformation, distilled_densify
from .invert import InvertConfig, learn_token
from .recipe import Option, Recipe

VIDEO_SIZES = {"modelscope": (256, 256), "zeroscope": (576, 320)}
"""The video models' own frame size (Animate124's ``spatial_size``): renders are resized to it before encoding."""


@dataclass
class CameraSettings:
    """Input and random views (``data.image.default_*``, ``data.single_view.*_range``)."""

    radius: float = 2.5
    fov_deg: float = 40.0
    elevation_deg: tuple[float, float] = (-45.0, 45.0)


@dataclass
class ReferenceSettings:
    """The input image and its losses (``lambda_rgb``, ``lambda_mask``)."""

    size: int = 128
    """Side of the preprocessed input (``data.image.height / width``) and of the reference render."""
    border_ratio: float = 0.0
    """Empty border around the recentred object (Animate124's ``image_preprocess.py --border_ratio 0.0``)."""
    recenter: bool = True
    rgb_weight: float = 1000.0
    mask_weight: float = 100.0
    depth: str = ""
    """Optional depth map of the input (any scale; e.g. Animate124's ``_depth.png``): adds a depth-correlation loss."""
    depth_weight: float = 0.0
    """Weight of that loss (Animate124's configs set no depth loss)."""


@dataclass
class TextualInversionSettings:
    """Stage 0 (:class:`gen4d.recipes.invert.InvertConfig`'s fields of the same names)."""

    path: str = ""
    """An existing ``learned_embeds.bin`` / ``.safetensors`` (e.g. from diffusers' script): no training."""
    token: str = "<object>"
    init_token: str = "object"
    iterations: int = 3000
    batch_size: int = 16
    resolution: int = 512
    lr: float = 1e-4
    augment: bool = True
    gradient_checkpointing: bool = True


@dataclass
class StaticSettings:
    """Stage 1 (``animate124-stage1.yaml``)."""

    iterations: int = 10_000
    resolution: int = 128
    zero123_model: str = "zero123-xl-bennyguo"
    zero123_weight: float = 1.0
    zero123_guidance_scale: float = 5.0
    sd_model: str = "sd15"
    sd_weight: float = 0.025
    sd_guidance_scale: float = 100.0
    timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.2, 0.6, 0.2, 0.6))


@dataclass
class VideoSettings:
    """The video prior and its clips (``guidance``, ``data.single_view``)."""

    model: str = "modelscope"
    """modelscope (``-ms`` configs, 128 x 128 renders) | zeroscope (``-zs``, 144 x 80)."""
    width: int = 128
    height: int = 128
    model_size: tuple[int, int] = (0, 0)
    """``(width, height)`` the frames are resized to before encoding; (0, 0): the model's own (ModelScope 256 x 256,
    ZeroScope 576 x 320; 256 x 256 for a folder of another name)."""
    frames: int = 16
    guidance_scale: float = 101.0
    """Animate124's video guidance computes ``eps_text + 100 (eps_text - eps_uncond)``: CFG ``s = 101``."""
    weight: float = 1.0
    time_grid: int = 256
    zero_start_probability: float = 0.2
    reverse_probability: float = 0.5
    frame_motion_deg: tuple[float, float] = (180.0 / 256, 180.0 / 256)
    """Per-frame camera drift bounds (elevation, azimuth) in degrees: ``train_dynamic_camera``'s
    ``180 / (16 num_frames)`` (see the README on the azimuth)."""
    timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.02, 0.98, 0.02, 0.98))
    grad_frames: int = 0
    """Frames encoded with a gradient (Animate124's ``low_ram_vae``); 0: all."""
    cpu_offload: bool = False


@dataclass
class DynamicSettings:
    """Stage 2 (``animate124-stage2-ms.yaml``)."""

    iterations: int = 10_000
    zero123_model: str = "zero123"
    """Stages 2 and 3 use Zero123 (bennyguo/zero123-diffusers), not XL."""
    zero123_weight: float = 40.0
    zero123_guidance_scale: float = 5.0
    static_lr_scale: float = 0.01
    """The Gaussians' learning rates relative to stage 1 (Animate124's static grid: 0.01 -> 1e-4)."""


@dataclass
class SemanticSettings:
    """Stage 3 (``animate124-stage3-ms.yaml``): ControlNet-tile SDS; 0 iterations skips it."""

    iterations: int = 5000
    model: str = "sd15"
    controlnet: str = "controlnet-tile"
    weight: float = 3.0
    guidance_scale: float = 7.5
    timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.02, 0.98, 0.02, 0.98))
    fixed_frames: int = 2
    """Frames of the clip judged per step."""
    fixed_size: int = 1024
    """Side they are resized to before encoding (memory: 896 fits 32 GB in Animate124's notes)."""
    prompt: str = ""
    """The ControlNet prompt; empty: the prompt with ``init_token`` replaced by the learned token (or, without it
    in the prompt, "a <token>, <prompt>")."""


@dataclass
class Animate124Config:
    """Everything ``gen4d image --recipe animate124`` does; every field can be set as ``key=value``."""

    input: str = ""
    prompt: str = ""
    """The motion (``system.prompt_processor.prompt`` of stages 2 and 3), e.g. "a panda is dancing"."""
    static_prompt: str = ""
    """Stage 1's SD prompt; empty: "a high resolution DSLR image of <init_token>"."""
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    """Weights of the priors: auto (fp16 on CUDA, fp32 on the CPU) | fp32 | fp16 | bf16."""
    init_points: int = 5000
    init_radius: float = 0.5
    cameras: CameraSettings = field(default_factory=CameraSettings)
    reference: ReferenceSettings = field(default_factory=ReferenceSettings)
    textual_inversion: TextualInversionSettings = field(default_factory=TextualInversionSettings)
    static: StaticSettings = field(default_factory=StaticSettings)
    video: VideoSettings = field(default_factory=VideoSettings)
    dynamic: DynamicSettings = field(default_factory=DynamicSettings)
    semantic: SemanticSettings = field(default_factory=SemanticSettings)
    # positions 1e-2 decaying to 2e-4 (DreamGaussian's image-to-3D rates, as gen4d's dg4d); Animate124's grid rate
    # 0.01 for the field's planes, its MLP rate 1e-3
    lr: LearningRates = field(default_factory=lambda: LearningRates(
        means=1e-2, means_final=2e-4, sh0=0.01, opacity=0.05, scales=0.005, quats=0.005,
        grid=0.01, grid_final=0.01, mlp=1e-3, mlp_final=1e-3))
    densify: DensifyConfig = field(default_factory=distilled_densify)
    densify_until: float = 0.5
    """Densify during this fraction of the static stage."""
    deformation: DeformationConfig = field(default_factory=lambda: dataclasses.replace(distilled_deformation(), deform_shape=False))
    """A displacement field: with rotation and scale heads, 1,500 dynamic steps of the oracle demo grew Gaussians to
    10^5 times their size at some times (bench/RESULTS.md)."""
    export: ExportConfig = field(default_factory=lambda: ExportConfig(frames=16, video_size=256, video_radius=2.5))
    checkpoint_every: int = 200
    preview_every: int = 500
    preview_size: int = 128


PRESETS: dict[str, list[str]] = {
    # the published schedule: 3,000 + 10,000 + 10,000 + 5,000 steps, ControlNet frames at 1024 px
    "paper": [],
    # a 45-minute budget on one H100 (bench/): a fifth of each stage, the token from the fast preset, ControlNet at 512
    "default": ["textual_inversion.iterations=500", "textual_inversion.batch_size=8", "textual_inversion.lr=5e-4",
                "static.iterations=2000", "dynamic.iterations=2000", "semantic.iterations=1000", "semantic.fixed_size=512"],
    "fast": ["textual_inversion.iterations=250", "textual_inversion.batch_size=4", "textual_inversion.lr=1e-3",
             "static.iterations=600", "dynamic.iterations=600", "semantic.iterations=300", "semantic.fixed_size=512",
             "semantic.fixed_frames=1"],
    # Animate124's "less VRAM" notes: 8 of 16 frames with a gradient, ControlNet frames at 512, video model off the GPU
    "low-memory": ["textual_inversion.iterations=500", "textual_inversion.batch_size=4", "textual_inversion.lr=5e-4",
                   "static.iterations=2000", "dynamic.iterations=2000", "semantic.iterations=1000", "semantic.fixed_size=512",
                   "semantic.fixed_frames=1", "video.grad_frames=8", "video.cpu_offload=true"],
}


def iters_overrides(iters: int) -> dict:
    """``--iters N``: the scene stages split 2 : 2 : 1 (the published 10k : 10k : 5k)."""
    s = max(1, round(0.4 * iters))
    d = max(1, round(0.4 * iters))
    return {"static": {"iterations": s}, "dynamic": {"iterations": d}, "semantic": {"iterations": max(0, iters - s - d)}}


def check(cfg: Animate124Config) -> None:
    if not cfg.prompt.strip():
        raise Gen4DError('Animate124 needs a prompt: gen4d image IMAGE --recipe animate124 --prompt "a panda is dancing" --out DIR')
    read_image_file(Path(cfg.input))
    if cfg.video.model not in VIDEO_SIZES and not Path(cfg.video.model).exists():
        raise Gen4DError(f"video.model must be modelscope, zeroscope or a local folder, got {cfg.video.model!r}")
    if cfg.static.iterations < 1 or cfg.dynamic.iterations < 1 or cfg.semantic.iterations < 0:
        raise Gen4DError("static.iterations and dynamic.iterations must be >= 1, semantic.iterations >= 0")
    if cfg.video.frames < 2 or cfg.video.time_grid < cfg.video.frames:
        raise Gen4DError(f"video.frames must be >= 2 and <= video.time_grid, got {cfg.video.frames} and {cfg.video.time_grid}")
    if not 1 <= cfg.semantic.fixed_frames <= cfg.video.frames:
        raise Gen4DError(f"semantic.fixed_frames must be in 1 .. video.frames, got {cfg.semantic.fixed_frames}")
    ti = cfg.textual_inversion
    if ti.path and not Path(ti.path).exists():
        raise Gen4DError(f"textual_inversion.path {ti.path!r} does not exist")
    if cfg.reference.depth and not Path(cfg.reference.depth).is_file():
        raise Gen4DError(f"reference.depth {cfg.reference.depth!r} does not exist")
    resolve_precision(cfg.precision, resolve_device(cfg.device))


def learns_token(cfg: Animate124Config) -> bool:
    return cfg.semantic.iterations > 0 and not cfg.textual_inversion.path and cfg.textual_inversion.iterations > 0


def requirements(cfg: Animate124Config) -> list[Requirement]:
    s = cfg.static
    needs: list[Requirement] = [ModelRequirement(s.zero123_model, "stage 1 novel views (Zero123-XL)"),
                                ModelRequirement(s.sd_model, "stage 1 text-to-image SDS (SD 1.5)"),
                                ModelRequirement(cfg.video.model, "stages 2-3 video SDS"),
                                ModelRequirement(cfg.dynamic.zero123_model, "stages 2-3 first-frame novel views (Zero123)")]
    if cfg.semantic.iterations > 0:
        needs.append(ModelRequirement(cfg.semantic.controlnet, "stage 3 ControlNet-tile SDS"))
        if cfg.semantic.model != s.sd_model:
            needs.append(ModelRequirement(cfg.semantic.model, "stage 3 ControlNet base (SD 1.5)"))
    return needs


def static_prompt(cfg: Animate124Config) -> str:
    return cfg.static_prompt or f"a high resolution DSLR image of {cfg.textual_inversion.init_token}"


def controlnet_prompt(cfg: Animate124Config, token: str | None) -> str:
    """The semantic stage's prompt (``prompt_processor_cn.prompt``, e.g. "a <panda> is dancing")."""
    if cfg.semantic.prompt:
        return cfg.semantic.prompt
    if token is None:
        return cfg.prompt
    words = cfg.prompt.split(" ")
    init = cfg.textual_inversion.init_token
    if init in words:
        return " ".join(token if w == init else w for w in words)
    return f"a {token}, {cfg.prompt}"


# ------------------------------------------------------------------------------------------------ the semantic term
def select_views(cond: Conditioning, index: Tensor) -> Conditioning:
    """The rows ``index`` of every per-view field of ``cond`` (prompt and reference kept as they are)."""
    n = None if cond.c2w is None else cond.c2w.shape[0]
    picked = {}
    for f in dataclasses.fields(cond):
        v = getattr(cond, f.name)
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n:
            picked[f.name] = v[index.to(v.device)]
    return dataclasses.replace(cond, **picked, num_views=1)


def center_square(images: Tensor) -> Tensor:
    """The central square of ``images [..., H, W]`` (Animate124's ``center_crop_to_square``)."""
    H, W = images.shape[-2:]
    s = min(H, W)
    top, left = (H - s) // 2, (W - s) // 2
    return images[..., top:top + s, left:left + s]


class ClipWithTileFrames:
    """A video prior that also scores ``frames`` random frames of each clip with ControlNet-tile SDS.

    Animate124's stage 3 applies both priors to one render of the clip: video SDS on all frames, and ControlNet-tile
    SDS on a few of them, upsampled to the ControlNet's resolution and conditioned on their own detached copies.
    Returns the video loss under the video prior's name and ``weight x`` the tile loss as ``loss_tile``.
    """

    def __init__(self, video, tile, prompt, frames: int, weight: float, timesteps: TimestepSchedule):
        self.video, self.tile, self.prompt = video, tile, prompt
        self.frames, self.weight, self.timesteps = frames, weight, timesteps
        self.loss_name = video.loss_name

    def __call__(self, clips: Tensor, cond: Conditioning, step: int, generator: torch.Generator,
                 schedule: TimestepSchedule | None = None) -> dict[str, Tensor]:
        out = dict(self.video(clips, cond, step, generator, schedule=schedule))
        B, T = clips.shape[:2]
        pick = torch.stack([torch.randperm(T, generator=generator)[: self.frames] for _ in range(B)])  # [B, k]
        flat = (pick + torch.arange(B)[:, None] * T).reshape(-1)
        frames = center_square(clips.reshape(B * T, *clips.shape[2:])[flat.to(clips.device)])
        tile_cond = dataclasses.replace(select_views(cond, flat), prompt=self.prompt)
        tile = self.tile(frames, tile_cond, step, generator, schedule=self.timesteps)
        out["loss_tile"] = self.weight * tile[self.tile.loss_name]
        return out


# ------------------------------------------------------------------------------------------------ stage losses
class AnchoredClipLosses:
    """Stages 2 and 3: the clip term every step; the anchor (reference view + Zero123 at t = 0) when the clip
    starts at t = 0 (Animate124's ``start_from_zero``)."""

    def __init__(self, clip: ScoreDistillation, anchor: ScoreDistillation, counter: dict | None = None, clip_term: str = "video"):
        self.clip, self.anchor, self.clip_term = clip, anchor, clip_term
        self.counter = counter if counter is not None else {"anchored": 0}
        """How many steps ran the anchor (kept in the stage's checkpoint)."""

    def __call__(self, scene: Scene4D, step: int, generator: torch.Generator) -> StepLosses:
        out = self.clip(scene, step, generator)
        if not self.clip.last_views[self.clip_term].starts_at_zero:
            return out
        self.counter["anchored"] += 1
        extra = self.anchor(scene, step, generator)
        losses = {**out.losses, **extra.losses}
        return StepLosses(losses, None, None, out.lr_scale)


class LazyLosses:
    """A stage's loss function built on its first call (so a stage loads its priors only when it runs)."""

    def __init__(self, build: Callable[[], Callable]):
        self.build, self.fn = build, None

    def __call__(self, scene, step, generator):
        if self.fn is None:
            self.fn = self.build()
        return self.fn(scene, step, generator)


# ------------------------------------------------------------------------------------------------ the run
class Animate124Run(DistilledRun):
    """What the stages of one run share: the input view, the priors (built per stage), the stages."""

    def __init__(self, cfg: Animate124Config, device: torch.device, priors: PriorFactory, rgba: Tensor,
                 depth: Tensor | None = None, embeds: str | Path | None = None):
        super().__init__(cfg, device)
        self.factory = priors
        self.precision = resolve_precision(cfg.precision, device)
        self.rgba = rgba
        self.depth = depth
        self.embeds = embeds
        self.built: dict[str, object] = {}

    # -------------------------------------------------------------------------------- priors
    def prior(self, key: str, kind: str, config):
        """The prior ``key`` (built once); building one drops those of the other stages."""
        if key not in self.built:
            self.built[key] = self.factory(kind, config, self.device)
        return self.built[key]

    def release(self, keep: tuple[str, ...]) -> None:
        for k in [k for k in self.built if k not in keep]:
            del self.built[k]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def zero123(self, key: str, model: str, scale: float):
        z = self.prior(key, "zero123", Zero123Config(model=model, guidance_scale=scale, precision=self.precision))
        reference = z.prepare_reference(composite(self.rgba)[None].to(self.device), 0.0, 0.0, self.cfg.cameras.radius)
        return z, reference

    def video_prior(self):
        v = self.cfg.video
        w, h = tuple(v.model_size) if v.model_size[0] > 0 else VIDEO_SIZES.get(v.model, (256, 256))
        return self.prior("video", "video", VideoSDSConfig(
            model=v.model, guidance_scale=v.guidance_scale, precision=self.precision, timesteps=v.timesteps, model_width=w,
            model_height=h, grad_frames=v.grad_frames, cpu_offload=v.cpu_offload))

    # -------------------------------------------------------------------------------- views and terms
    def views(self, **kw) -> ViewSampling:
        c = self.cfg.cameras
        return ViewSampling(views=1, elevation_deg=c.elevation_deg, radius=(c.radius, c.radius), fov_deg=(c.fov_deg, c.fov_deg), **kw)

    def reference_views(self, deform: bool) -> ReferenceViews:
        r, c = self.cfg.reference, self.cfg.cameras
        S = r.size
        cams = orbit_cameras([0.0], 0.0, c.radius, math.radians(c.fov_deg), S, S, times=0.0).to(self.device)
        rgba = self.rgba.to(self.device)
        depth = None if self.depth is None else self.depth.to(self.device)[None, ..., None]
        return ReferenceViews(cams, composite(rgba).permute(1, 2, 0)[None], rgba[3:].permute(1, 2, 0)[None],
                              r.rgb_weight, r.mask_weight, depth, r.depth_weight if depth is not None else 0.0, deform=deform)

    def zero123_term(self, key: str, model: str, scale: float, weight: float, resolution: int, deform: bool) -> GuidanceTerm:
        z, reference = self.zero123(key, model, scale)
        return GuidanceTerm(name="zero123", prior=z, views=self.views(times="zero"), weight=weight, resolution=resolution,
                            timesteps=self.cfg.static.timesteps, references=reference, deform=deform)

    def clip_term(self, prior, prompt) -> GuidanceTerm:
        v = self.cfg.video
        views = self.views(times="strided_clip", frames=v.frames, time_grid=v.time_grid, zero_start_probability=v.zero_start_probability,
                           reverse_probability=v.reverse_probability, frame_motion_deg=tuple(v.frame_motion_deg))
        return GuidanceTerm(name="video", prior=prior, prompt=prompt, views=views, weight=v.weight, resolution=(v.width, v.height),
                            timesteps=v.timesteps, densify=False)

    # -------------------------------------------------------------------------------- stages
    def preview(self, scene: Scene4D, step: int, folder: Path) -> None:
        S, c = self.cfg.preview_size, self.cfg.cameras
        with torch.no_grad():
            cams = orbit_cameras([0.0, 90.0, 180.0, 270.0], [0.0] * 4, c.radius, math.radians(c.fov_deg), S, S,
                                 times=[0.0, 1 / 3, 2 / 3, 1.0]).to(self.device)
            img = scene.render(cams, background=self.white).rgb
        save_png(folder / f"step_{step:06d}.png", torch.cat(list(img), dim=1))

    def static_losses(self) -> ScoreDistillation:
        cfg, s = self.cfg, self.cfg.static
        self.release(("zero123-xl", "sd"))
        z = self.zero123_term("zero123-xl", s.zero123_model, s.zero123_guidance_scale, s.zero123_weight, s.resolution, False)
        sd = self.prior("sd", "sd", StableDiffusionConfig(model=s.sd_model, guidance_scale=s.sd_guidance_scale, precision=self.precision))
        sd_term = GuidanceTerm(name="sd", prior=sd, prompt=sd.encode_prompt(static_prompt(cfg)), views=self.views(times="zero"),
                               weight=s.sd_weight, resolution=s.resolution, timesteps=s.timesteps, deform=False)
        return ScoreDistillation([z, sd_term], self.reference_views(deform=False), background=self.white)

    def static_stage(self) -> Stage:
        cfg, lr, n = self.cfg, self.cfg.lr, self.cfg.static.iterations
        strategy = DensifyStrategy(dataclasses.replace(cfg.densify, refine_stop=int(cfg.densify_until * n)), 1.0)
        return Stage(name="static", iterations=n, seed=cfg.seed * 1000 + 1,
                     make_optimizers=lambda scene: gaussian_optimizers(scene, lr, 1.0),
                     learning_rates=lambda step: {"means": exp_decay(step, n, lr.means, lr.means_final)},
                     losses=LazyLosses(self.static_losses), strategy=strategy, preview=self.preview,
                     checkpoint_every=cfg.checkpoint_every, preview_every=cfg.preview_every)

    def anchor(self, resolution: int) -> ScoreDistillation:
        d = self.cfg.dynamic
        z = self.zero123_term("zero123", d.zero123_model, d.zero123_guidance_scale, d.zero123_weight, resolution, True)
        return ScoreDistillation([z], self.reference_views(deform=True), background=self.white)

    def clip_losses(self, semantic: bool, counter: dict | None = None) -> AnchoredClipLosses:
        cfg = self.cfg
        self.release(("video", "zero123") + (("tile",) if semantic else ()))
        video = self.video_prior()
        prior = video
        if semantic:
            s = cfg.semantic
            token, vectors = read_textual_inversion(self.embeds) if self.embeds is not None else (None, None)
            # the token is loaded at construction, so that the prior's prompt cache is keyed on its vector
            tile = self.prior("tile", "controlnet-tile", ControlNetTileConfig(
                model=s.model, controlnet=s.controlnet, guidance_scale=s.guidance_scale, resolution=s.fixed_size,
                precision=self.precision, textual_inversion=None if self.embeds is None else str(self.embeds)))
            prompt_text = controlnet_prompt(cfg, token)
            if token is not None:
                prompt_text = expand_textual_inversion_prompt(prompt_text, token, len(vectors))
            self.controlnet_prompt = prompt_text
            prior = ClipWithTileFrames(video, tile, tile.encode_prompt(prompt_text), s.fixed_frames, s.weight, s.timesteps)
        term = self.clip_term(prior, video.encode_prompt(cfg.prompt))
        return AnchoredClipLosses(ScoreDistillation([term], background=self.white), self.anchor(cfg.reference.size), counter)

    def clip_stage(self, name: str, iterations: int, semantic: bool, seed: int) -> Stage:
        cfg, lr, d = self.cfg, self.cfg.lr, self.cfg.dynamic
        static_lr = {k: v * d.static_lr_scale for k, v in dataclasses.asdict(lr).items()}
        counter = {"anchored": 0}

        def optimizers(scene: Scene4D):
            opts = gaussian_optimizers(scene, LearningRates(**static_lr), 1.0)
            opts["deformation"] = deformation_optimizer(scene, lr, 1.0)
            return opts

        return Stage(
            name=name, iterations=iterations, seed=seed,
            prepare=(lambda scene: scene.attach_deformation(cfg.deformation, cfg.seed)) if not semantic else None,
            make_optimizers=optimizers,
            learning_rates=lambda step: {"means": static_lr["means"], "deformation": [
                exp_decay(step, iterations, lr.grid, lr.grid_final), exp_decay(step, iterations, lr.mlp, lr.mlp_final)]},
            losses=LazyLosses(lambda: self.clip_losses(semantic, counter)), preview=self.preview,
            checkpoint_every=cfg.checkpoint_every, preview_every=cfg.preview_every,
            extra_state=(lambda: dict(counter), lambda state: counter.update(anchored=int(state.get("anchored", 0)))),
        )


def read_depth(path: str, size: int) -> Tensor:
    """``[size, size]`` depth in [0, 1] from an image (any scale: the loss is a correlation)."""
    d = torch.from_numpy(np.asarray(Image.open(path).convert("F"), dtype=np.float32))
    d = F.interpolate(d[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return (d - d.min()) / (d.max() - d.min()).clamp_min(1e-8)


def invert_config(cfg: Animate124Config) -> InvertConfig:
    ti = cfg.textual_inversion
    return InvertConfig(input=cfg.input, token=ti.token, init_token=ti.init_token, model=cfg.semantic.model,
                        resolution=ti.resolution, batch_size=ti.batch_size, iterations=ti.iterations, lr=ti.lr, augment=ti.augment,
                        gradient_checkpointing=ti.gradient_checkpointing, seed=cfg.seed, device=cfg.device, precision=cfg.precision,
                        checkpoint_every=cfg.checkpoint_every)


def run_animate124(cfg: Animate124Config, out: str | Path, command: str = "gen4d image --recipe animate124", quiet: bool = False,
                   stop_after_step: int | None = None, priors: PriorFactory = build_prior) -> dict:
    """Image + prompt -> 4D Gaussians by Animate124's stages -> exports (module doc)."""
    check(cfg)
    r = cfg.reference
    rgba = load_image_rgba(cfg.input, size=r.size, border_ratio=r.border_ratio, recenter=r.recenter)
    depth = read_depth(r.depth, r.size) if r.depth else None
    device = resolve_device(cfg.device)
    run = RunDir(out)
    run.prepare(cfg, command)
    save_rgba_png(run.root / "input.png", rgba)
    embeds: Path | None = Path(cfg.textual_inversion.path) if cfg.textual_inversion.path else None
    ti_steps = 0
    if learns_token(cfg):
        ti_steps = cfg.textual_inversion.iterations
        embeds = learn_token(invert_config(cfg), run, device, "invert", quiet=quiet, stop_after_step=stop_after_step)
        if embeds is None:
            return {}
    ar = Animate124Run(cfg, device, priors, rgba, depth, embeds)
    stages = [ar.static_stage(), ar.clip_stage("dynamic", cfg.dynamic.iterations, False, cfg.seed * 1000 + 2)]
    if cfg.semantic.iterations > 0:
        stages.append(ar.clip_stage("semantic", cfg.semantic.iterations, True, cfg.seed * 1000 + 3))
    final = stages[-1].name
    asset = AssetInfo(final_stage=final, frames=cfg.export.frames or cfg.video.frames, radius=cfg.cameras.radius,
                      deformation=dataclasses.asdict(cfg.deformation), export=dataclasses.asdict(cfg.export), device=cfg.device)
    write_asset_info(run, asset)
    stop = None if stop_after_step is None else stop_after_step - ti_steps
    scene, stats = run_stages(run, stages, ar.init_scene, ar.load_scene, quiet=quiet, stop_after_step=stop)
    if not run.stage_complete(final):
        return {}
    ar.release(())
    scene.eval()
    written = export_asset(scene, run, asset, quiet=quiet)
    if embeds is not None:
        written["embeddings"] = [str(embeds)]
    anchored = {s.name: (run.stage_state(s.name) or {}).get("extra", {}).get("anchored") for s in stages[1:]}
    metrics = {
        "seconds": sum(s["seconds"] for s in stats.values()) + ((run.stage_state("invert") or {}).get("seconds", 0.0) if ti_steps else 0.0),
        "stages": stats,
        "anchored_steps": anchored,
        "num_gaussians": len(scene.gaussians),
        "iterations": ti_steps + sum(s.iterations for s in stages),
        "exports": written,
        "device": str(device),
    }
    run.write_metrics(metrics)
    run.log(f"done: {len(scene.gaussians)} Gaussians")
    return metrics


RECIPE = Recipe(
    name="animate124",
    commands=("image",),
    description="Animate124: textual inversion, static (reference + Zero123 + SD), dynamic (video SDS), semantic (ControlNet-tile)",
    config=Animate124Config,
    presets=PRESETS,
    run=run_animate124,
    input_key="input",
    options=(Option("--prompt", "prompt", "what happens (animate124: the motion prompt)"),
             Option("--static-prompt", "static_prompt", "animate124: stage 1's image prompt"),
             Option("--token", "textual_inversion.token", 'animate124: the learned token, e.g. "<panda>"'),
             Option("--init-token", "textual_inversion.init_token", "animate124: the word the token starts from")),
    iters=iters_overrides,
    check=check,
    requirements=requirements,
    headline=lambda m: f"{m['num_gaussians']} Gaussians  {m['seconds']:.0f} s training",
)
