"""``dg4d``: DreamGaussian4D, image -> 4D and video -> 4D with 4D Gaussians (Ren et al. 2023).

The recipe is configuration over the shared parts: the stage loop (:mod:`gen4d.training.loop`), the
score-distillation stage (:mod:`gen4d.distill.stage`, Zero123 as its only guidance term, the input view as its
reference views) and the priors (any factory, :mod:`gen4d.guidance.priors`). Stages, chained in one resumable run
directory:
  0. ``driving`` - the driving video as RGBA frames: the input video (video mode), ``driving_video`` (a file or a
     folder of frames), or Stable Video Diffusion from the image; frames are recentred like the image;
  1. ``static``  - 3D Gaussians from the reference image: reference RGB + mask losses at the input camera and
     Zero123 SDS at random views (DreamGaussian's recipe), densification, a render-resolution ramp;
  2. ``dynamic`` - a zero-initialised deformation field (the stage starts exactly at the static result) fitted
     to every driving frame at the reference camera, with Zero123 SDS at random views conditioned on the frame
     of the same time; time t = i / (T - 1) for frame i of any T;
  3. ``refine`` (optional: ``refine.iterations > 0``) - appearance refinement against Stable Video Diffusion
     partial-denoise ("SDEdit") targets, DreamGaussian4D's stage III (see below);
then the exports (per-frame PLY and meshes, animated GLB, UV-textured mesh sequence, orbit video) at any frame count.

Stage III: the Gaussians' colours, or DreamGaussian4D's mesh texture
---------------------------------------------------------------------
DreamGaussian4D refines the UV texture of its exported meshes, rendered with nvdiffrast (not pip-installable).
``refine.mode=texture`` does that with gen4d's own mesh renderer (:mod:`gen4d.render.mesh`: numba visibility,
texture sampling differentiable in PyTorch): the Gaussians at t = 0 give a coloured mesh, xatlas its UV atlas, their
colours its texture (:mod:`gen4d.export.texture`); the texture alone is trained, the mesh moves with the Gaussians
(one topology), and the ``textured`` export writes it. ``refine.mode=gaussians`` (the default) refines the Gaussians'
colours (``sh0``, ``shN``) instead, before any export, while means, scales, rotations, opacities and the
deformation field stay frozen: every export (PLY, meshes, animated GLB, video) then carries the refined appearance.
Each round of ``refine.regenerate_every`` steps:

    orbit clip   c_j: elevation 0, azimuth a0 + j * azimuth_step, time t_j = j / (F - 1), j = 0..F-1, a0 random
                 (time runs during the orbit, as in DreamGaussian4D; F = refine.frames, any count);
    targets      S = SVD.refine_video(render(c), image, strength): the renders' latents noised to the sigma of
                 step (1 - strength) * steps and denoised for the remaining steps, conditioned on the reference
                 image (video mode: the first frame); made once per round and kept as 8-bit frames in
                 ``stages/refine/targets/round_<k>.safetensors``, so a resumed run reads them back;
    loss         svd_weight * mean_j |render(c_j) - S_j|^2 + reference_weight * sum_i mean |m (render(ref, t_i) - I_i)|^2

with I_i the driving frames at the reference camera (DreamGaussian4D keeps the input view the same way) and m the
mesh's coverage (texture mode; 1 for the Gaussians). Plain MSE, as DreamGaussian4D. It makes a new target every
step (50 SVD calls, most of its 3.5-minute stage III); a round of 10 steps per target keeps the kind of target for a
tenth of the SVD work (``regenerate_every=1``: theirs).

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
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .. import Gen4DError
from ..cameras import Cameras, frame_times, orbit_cameras
from ..data.frames import read_image_file
from ..data.preprocess import (
    REMBG_INSTALL,
    composite,
    load_image_rgba,
    load_video_frames,
    rembg_model_problem,
    resolve_segmenter,
    save_rgba_png,
)
from ..devices import resolve_device, resolve_precision
from ..distill.stage import GuidanceTerm, ReferenceViews, ScoreDistillation
from ..distill.views import ViewSampling
from ..eval.metrics import psnr, ssim
from ..export.images import save_png, to_uint8
from ..export.mesh import extract_mesh, skin_to_gaussians
from ..export.ply import load_inria_ply
from ..export.scene import ExportConfig
from ..export.texture import textured_mesh
from ..export.video import write_video
from ..fields.deformation import DeformationConfig
from ..fields.hexplane import HexPlaneConfig
from ..files import atomic_path
from ..gaussians.model import GaussianModel
from ..gaussians.strategy import DensifyConfig, DensifyStrategy
from ..guidance.priors import PriorFactory, build_prior
from ..guidance.sds import TimestepSchedule
from ..guidance.svd import StableVideoDiffusion, SVDConfig
from ..guidance.zero123 import Zero123Config, Zero123Reference
from ..models.preflight import ModelRequirement, PackageRequirement, Requirement
from ..runs import AssetInfo, RunDir, export_asset, write_asset_info
from ..scene import Scene4D
from ..sh import sh_degree_from_bases
from ..training.loop import ArtifactStage, Stage, run_artifact, run_stages
from ..training.optim import LearningRates, deformation_optimizer, exp_decay, gaussian_optimizers
from .recipe import Option, Recipe


@dataclass
class DrivingVideoConfig:
    """Where the motion comes from."""

    path: str = ""
    """A video file or a folder of frames; empty: generate one with Stable Video Diffusion (image mode)."""
    model: str = "svd"
    """Stable Video Diffusion weights (registry name, Hub id or folder)."""
    num_frames: int = 14
    """Frames to generate (any count)."""
    height: int = 512
    """Generation height in pixels (DreamGaussian4D's ``gen_vid.py``: 512 x 512 from the input at that size)."""
    width: int = 512
    """Generation width in pixels."""
    steps: int = 25
    """Denoising steps."""
    motion_bucket_id: int = 127
    """SVD motion strength conditioning."""
    fps: int = 7
    """SVD frame-rate conditioning."""
    noise_aug_strength: float = 0.02
    """Noise added to the conditioning image."""
    alpha: str = "auto"
    """Foreground masks of generated (or RGB) driving frames: auto (rembg when it is installed, else plain) | rembg
    (background removal, DreamGaussian4D's) | plain (the background colour estimated from the frame border; SVD
    animates the input on white, so its frames have a plain background; no dependency) | reference (the input's mask
    on every frame: the silhouette cannot move)."""
    decode_chunk: int = 0
    """Frames the VAE decodes at a time (here and in ``refine``); 0: all at once, as the diffusers pipeline does
    (best temporal consistency); lower it to cut peak memory."""


@dataclass
class SDSConfig:
    """Zero123 score distillation at random views (settings shared by the static and dynamic stages)."""

    model: str = "zero123-xl"
    """Zero123 weights (registry name, Hub id or folder; DreamGaussian4D: ashawkey/zero123-xl-diffusers)."""
    guidance_scale: float = 5.0
    """Classifier-free guidance scale (DreamGaussian's)."""
    min_elevation: float = -30.0
    """Lowest random-view elevation in degrees."""
    max_elevation: float = 30.0
    """Highest random-view elevation in degrees."""
    t_min: float = 0.02
    """Lower bound of t / T."""
    schedule: str = "dreamgaussian"
    """dreamgaussian: one t per step, ``round((1 - r) T)`` clipped to ``[t_min, t_max]`` with ``r`` the stage's
    progress (DreamGaussian's annealing) | uniform: t drawn uniformly in ``[t_min, t_max]``."""


@dataclass
class StageSettings:
    """One optimisation stage (defaults: DreamGaussian's image-to-3D stage, ``configs/image.yaml``)."""

    iterations: int = 500
    """Steps."""
    views: int = 16
    """Random Zero123 views per step (the dynamic stage: per driving frame, see ``sds_times``)."""
    sds_weight: float = 1.0
    """Weight of the Zero123 SDS loss, averaged over the rendered views (``lambda_zero123``)."""
    t_max: float = 0.98
    """Upper bound of t / T (the 4D stage's ``t_max``: 0.5)."""
    sds_times: str = "reference"
    """Dynamic stage: frames (``views`` random cameras at every driving frame's time, each conditioned on its frame:
    DreamGaussian4D) | reference (the views at the time of the step's first fitted frame)."""
    rgb_weight: float = 10_000.0
    """Weight of the reference-view MSE on colour."""
    mask_weight: float = 1_000.0
    """Weight of the reference-view MSE on alpha (DreamGaussian4D's 4D stage has none: 0)."""
    ramp_reference: bool = True
    """Multiply the reference weights by the stage's progress ``r = step / iterations`` (DreamGaussian's)."""
    radius_jitter: float = 0.5
    """Random views at ``camera_radius`` plus or minus this (DreamGaussian: 0.5; its 4D stage: 0)."""
    resolutions: list[int] = field(default_factory=lambda: [128, 256, 512])
    """Render resolutions of the random views, switched at the progress values in ``resolution_switches``."""
    resolution_switches: list[float] = field(default_factory=lambda: [0.3, 0.6])
    """Progress ``r`` at which the next resolution starts (DreamGaussian: 128 until 0.3, 256 until 0.6, then 512)."""
    train_gaussians: bool = True
    """Also optimise the Gaussians (in the dynamic stage: False trains the deformation field alone)."""
    frames_per_step: int = 0
    """Dynamic stage: driving frames fitted at the input camera per step, drawn without replacement (0: all of
    them, DreamGaussian4D's batch)."""


@dataclass
class RefineConfig:
    """Stage III: the Gaussians' colours against SVD partial-denoise targets along an orbit (see the module doc).

    SVD settings (model, sampling steps, motion bucket, fps, noise augmentation, decode chunk) are ``driving``'s.
    """

    iterations: int = 0
    """Steps; 0 skips the stage (the default: DreamGaussian4D's refinement is an optional extra command). Its
    default is 50 (``refine.iterations=50``)."""
    regenerate_every: int = 10
    """Steps per round of targets (a new orbit start, rendered with the current colours and refined by SVD).
    1 is DreamGaussian4D's fresh target every step: ``iterations`` SVD calls instead of ``iterations / 10``."""
    frames: int = 0
    """Frames per SVD clip (any count); 0: as many as the driving video has (DreamGaussian4D: its 14)."""
    azimuth_step: float = 10.0
    """Degrees between consecutive clip frames (DreamGaussian4D's: 14 frames sweep 130 degrees)."""
    resolution: int = 512
    """Render and SVD resolution of the clip, a multiple of 8 (DreamGaussian4D's 512)."""
    strength: float = 0.32
    """Fraction of the ``driving.steps`` sampling steps re-run on the noised renders: 0.32 x 25 = the last 8, as
    DreamGaussian4D's ``strength=0.7`` (which restarts its 25-step schedule at step int(0.7 x 25) = 17)."""
    mode: str = "gaussians"
    """What the targets refine: ``gaussians`` (their colours; every export carries them) or ``texture``
    (DreamGaussian4D's own path: a mesh made at t = 0 from the Gaussians, its xatlas UV atlas and a texture baked from
    their colours, trained through the mesh rasterizer; the ``textured`` export is that mesh, moved by the Gaussians)."""
    lr: float = 0.025
    """``gaussians``: Adam learning rate of ``sh0`` (``shN``: 1/20 of it). A DC colour is 0.5 + 0.282 sh0, so 50 steps
    can move a colour by up to about 0.35 (the 0.01 of stages I-II would allow only 0.14)."""
    texture_lr: float = 0.2
    """``texture``: Adam learning rate of the texture's logits (DreamGaussian4D's ``texture_lr``)."""
    texture_size: int = 1024
    """``texture``: texels per side of the atlas (DreamGaussian4D's ``texture_size``)."""
    svd_weight: float = 1.0
    """Weight of the MSE between the clip's renders and their SVD targets."""
    reference_weight: float = 1.0
    """Weight of the reference-view colour MSE, summed over the driving frames (DreamGaussian4D's balance)."""


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
    recenter: bool = True
    """Recentre the object in the input (and driving frames) with ``border_ratio``; False keeps their framing."""
    seed: int = 0
    """Random seed."""
    device: str = "auto"
    """auto | cpu | cuda."""
    precision: str = "auto"
    """Weights and activations of Zero123 and SVD: auto (fp16 on CUDA, as DreamGaussian4D runs both; fp32 on the
    CPU) | fp32 | fp16 | bf16."""
    camera_radius: float = 2.0
    """Distance of the input camera from the origin (and the mean distance of the random views)."""
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
    # DreamGaussian4D's 4D stage (configs/4d.yaml): 200 steps over every driving frame, 4 Zero123 views at every
    # frame (weight 4, t <= 0.5), the reference colour only, no radius jitter, Gaussians frozen (train_geo: False)
    dynamic: StageSettings = field(default_factory=lambda: StageSettings(
        iterations=200, views=4, sds_weight=4.0, t_max=0.5, sds_times="frames", mask_weight=0.0, radius_jitter=0.0,
        train_gaussians=False))
    # position 1e-3 x spatial_lr_scale 10 (DreamGaussian's random init), decaying to 2e-5 x 10; deformation
    # constant (grid 6.4e-3, MLP 6.4e-4)
    lr: LearningRates = field(default_factory=lambda: LearningRates(
        means=1e-2, means_final=2e-4, sh0=0.01, opacity=0.05, scales=0.005, quats=0.005,
        grid=6.4e-3, grid_final=6.4e-3, mlp=6.4e-4, mlp_final=6.4e-4))
    # every 100 steps through the whole static stage; split / clone at scale 0.1 x extent 0.5; prune opacity < 0.01
    # and world size > 0.05 at every refinement
    densify: DensifyConfig = field(default_factory=lambda: DensifyConfig(
        refine_start=0, refine_every=100, grow_grad2d=0.05, grow_scale3d=0.05, prune_opacity=0.01, prune_scale3d=0.05,
        prune_large_always=True, reset_opacity_every=0, max_gaussians=50_000))
    refine: RefineConfig = field(default_factory=RefineConfig)
    # DreamGaussian4D's later field (configs/4d.yaml at HEAD): K-planes [32, 32, 32, 12], one scale, 32 features, a
    # fixed box of +-1.6; the seed's version had [64, 64, 64, 25] at scales 1, 2, 4, 8 (arguments/__init__.py), whose
    # 25 time nodes outnumber 14 driving frames (nodes between frames get no gradient)
    deformation: DeformationConfig = field(default_factory=lambda: DeformationConfig(
        hexplane=HexPlaneConfig(feature_dim=32, resolution=(32, 32, 32, 12), multires=(1,)), bounds=1.6))
    export: ExportConfig = field(default_factory=lambda: ExportConfig(video_size=256))
    checkpoint_every: int = 100
    """Steps between checkpoints."""
    preview_every: int = 100
    """Steps between preview images."""


PRESETS: dict[str, list[str]] = {
    "default": [],
    # Fewer views and steps: a quick look.
    "fast": ["static.iterations=250", "static.views=4", "static.resolutions=[128,256]", "dynamic.iterations=100",
             "dynamic.views=1"],
    # Lower peak memory: fewer random views per step, renders up to 256, SVD decoding 2 frames at a time.
    "low-memory": ["static.views=4", "static.resolutions=[128,256]", "dynamic.views=1", "dynamic.resolutions=[128,256]",
                   "driving.decode_chunk=2"],
    # The seed version's deformation field (arguments/__init__.py ModelHiddenParams): K-planes [64, 64, 64, 25] at
    # spatial scales 1, 2, 4, 8 (36M parameters against 0.15M). On the oracle demo (25 driving frames): +1.6 dB
    # held-out, 3.6x the dynamic stage's time on 2 CPU cores (bench/RESULTS.md).
    "seed-field": ["deformation.hexplane.resolution=[64,64,64,25]", "deformation.hexplane.multires=[1,2,4,8]"],
}


def iters_overrides(iters: int) -> dict:
    """``--iters N``: split like the seeds, equal static and dynamic steps."""
    return {"static": {"iterations": max(1, iters // 2)}, "dynamic": {"iterations": max(1, iters - iters // 2)}}


def requirements(cfg: DG4DConfig) -> list[Requirement]:
    """What a run of ``cfg`` loads: Zero123 always; SVD when it generates the driving video or refines; rembg (and its
    model) when the driving frames are cut out with it."""
    needs: list[Requirement] = [ModelRequirement(cfg.sds.model, "score distillation (Zero123)")]
    generates = cfg.mode == "image" and not cfg.driving.path
    if generates or cfg.refine.iterations > 0:
        needs.append(ModelRequirement(cfg.driving.model, "the driving video / stage III (Stable Video Diffusion)"))
    if cfg.mode == "image" and alpha_method(cfg) == "rembg":
        needs.append(PackageRequirement("rembg", REMBG_INSTALL, "cutting out the driving frames (or driving.alpha=plain)",
                                        rembg_model_problem))
    return needs


def stepped_resolution(step: int, settings: StageSettings) -> int:
    """DreamGaussian's render resolution: ``resolutions[k]`` where k counts the switches the progress
    ``(step + 1) / iterations`` has passed (128 / 256 / 512 at 0.3 and 0.6)."""
    r = (step + 1) / max(settings.iterations, 1)
    k = sum(r >= s for s in settings.resolution_switches)
    return settings.resolutions[min(k, len(settings.resolutions) - 1)]


def load_svd(cfg: DG4DConfig, device: torch.device) -> StableVideoDiffusion:
    """Stable Video Diffusion (``driving.model``) on ``device`` at the run's precision."""
    return StableVideoDiffusion(SVDConfig(model=cfg.driving.model, precision=resolve_precision(cfg.precision, device)), device=device)


def orbit_clip_cameras(start_azimuth: float, frames: int, size: int, radius: float, fov: float, azimuth_step: float) -> Cameras:
    """The stage-III clip: ``frames`` cameras at elevation 0, azimuths ``start + j * azimuth_step`` (degrees) and
    times ``j / (frames - 1)``, square ``size`` x ``size``; ``fov`` in radians."""
    az = start_azimuth + azimuth_step * torch.arange(frames, dtype=torch.float64)
    return orbit_cameras(az, 0.0, radius, fov, size, size, times=frame_times(frames).float())


def _check_refine(r: RefineConfig) -> None:
    if r.iterations < 0 or r.regenerate_every < 1 or r.frames < 0:
        raise Gen4DError("refine.iterations and refine.frames must be >= 0 and refine.regenerate_every >= 1")
    if r.resolution < 8 or r.resolution % 8:
        raise Gen4DError(f"refine.resolution must be a positive multiple of 8 (SVD's latent grid), got {r.resolution}")
    if not 0.0 <= r.strength <= 1.0:
        raise Gen4DError(f"refine.strength must be in [0, 1], got {r.strength}")
    if r.mode not in ("gaussians", "texture"):
        raise Gen4DError(f"refine.mode must be gaussians or texture, got {r.mode!r}")
    if r.texture_size < 8:
        raise Gen4DError(f"refine.texture_size must be >= 8, got {r.texture_size}")


def gaussians_from_ply(path: str) -> GaussianModel:
    """Static Gaussians from a 3DGS PLY (INRIA layout), as trainable parameters."""
    f = load_inria_ply(path)
    params = {
        "means": f.means, "quats": f.quats, "log_scales": torch.log(f.scales),
        "opacity_logits": torch.logit(f.opacities.clamp(1e-6, 1 - 1e-6)), "sh0": f.sh[:, :1], "shN": f.sh[:, 1:],
    }
    return GaussianModel(params, f.sh_degree)


# ------------------------------------------------------------------------------------------------ inputs
def check(cfg: DG4DConfig) -> None:
    """Validate ``cfg`` and that its input can be read (cheaply: no background removal; nothing is written)."""
    if cfg.mode not in ("image", "video"):
        raise Gen4DError(f"mode must be image or video, got {cfg.mode!r}")
    _check_refine(cfg.refine)
    alpha_method(cfg)
    resolve_precision(cfg.precision, resolve_device(cfg.device))
    if cfg.mode == "image":
        read_image_file(Path(cfg.input))
    elif not Path(cfg.input).exists():
        raise Gen4DError(f"video not found: {cfg.input}")


def load_reference(cfg: DG4DConfig) -> Tensor:
    """The preprocessed input view ``[4, S, S]`` RGBA (image mode: the image; video mode: the first frame)."""
    if cfg.mode == "image":
        return load_image_rgba(cfg.input, size=cfg.size, border_ratio=cfg.border_ratio, recenter=cfg.recenter)
    return load_video_frames(cfg.input, size=cfg.size, border_ratio=cfg.border_ratio, recenter=cfg.recenter)[0]


ALPHA_METHODS = ("auto", "rembg", "plain", "reference")


def alpha_method(cfg: DG4DConfig) -> str:
    """The segmenter of the driving frames (``driving.alpha``, ``auto`` resolved)."""
    if cfg.driving.alpha not in ALPHA_METHODS:
        raise Gen4DError(f"driving.alpha must be one of {', '.join(ALPHA_METHODS)}, got {cfg.driving.alpha!r}")
    return "reference" if cfg.driving.alpha == "reference" else resolve_segmenter(cfg.driving.alpha)


def _make_driving_frames(cfg: DG4DConfig, folder: Path, reference: Tensor, device: torch.device, say) -> Tensor:
    """The driving frames ``[T, 4, S, S]``, framed like the input view: in image mode frame 0 lines up with it."""
    d = cfg.driving
    if cfg.mode == "video":
        return load_video_frames(cfg.input, size=cfg.size, border_ratio=cfg.border_ratio, recenter=cfg.recenter)
    method = alpha_method(cfg)
    segmenter = "plain" if method == "reference" else method
    if d.path:  # a given video of the input: cropped as the input image was
        _, region = load_image_rgba(cfg.input, size=cfg.size, border_ratio=cfg.border_ratio, recenter=cfg.recenter, return_region=True)
        frames = load_video_frames(d.path, size=cfg.size, border_ratio=cfg.border_ratio, region=region, segmenter=segmenter)
    else:
        # SVD animates the input framed like the reference view, at its own resolution (not the 256-px reference
        # upsampled), so its frames are used whole
        side = max(d.height, d.width)
        conditioning = load_image_rgba(cfg.input, size=side, border_ratio=cfg.border_ratio, recenter=cfg.recenter)
        svd = load_svd(cfg, device)
        video = svd.generate_video(
            composite(conditioning)[None].to(device), num_frames=d.num_frames, height=d.height, width=d.width, steps=d.steps,
            motion_bucket_id=d.motion_bucket_id, fps=d.fps, noise_aug_strength=d.noise_aug_strength, seed=cfg.seed,
            decode_chunk_size=d.decode_chunk or None,
        )
        del svd
        rgb = video.float().cpu()
        write_video(folder / "generated.mp4", to_uint8(rgb.permute(0, 2, 3, 1)), fps=d.fps)
        for i, frame in enumerate(rgb):  # lossless copies: the cut-out reads these, not the mp4
            save_png(folder / "generated" / f"frame_{i:04d}.png", frame.permute(1, 2, 0))
        if method == "reference":
            small = torch.nn.functional.interpolate(rgb, size=(cfg.size, cfg.size), mode="area")
            frames = torch.cat([small, reference[3:].expand(len(small), 1, -1, -1)], dim=1)
        else:
            frames = load_video_frames(folder / "generated", size=cfg.size, remove_background=True, segmenter=method, recenter=False)
        how = {"reference": "the input's mask on every frame", "plain": "the plain-background segmenter", "rembg": "rembg"}[method]
        say(f"driving frames cut out with {how}{' (rembg is not installed)' if d.alpha == 'auto' and method == 'plain' else ''}")
    return frames


def driving_stage(cfg: DG4DConfig, reference: Tensor, device: torch.device, say) -> ArtifactStage:
    """Stage 0: the driving frames as RGBA PNGs in ``stages/driving/frames``."""

    def make(folder: Path) -> dict:
        frames = _make_driving_frames(cfg, folder, reference, device, say)
        for i, f in enumerate(frames):
            save_rgba_png(folder / "frames" / f"frame_{i:04d}.png", f)
        return {"frames": len(frames)}

    return ArtifactStage("driving", make)


def read_driving_frames(run: RunDir) -> Tensor:
    """``[T, 4, S, S]`` driving frames, always read back from their PNGs (already recentred), so a resumed run trains
    on exactly the 8-bit numbers a fresh run did."""
    paths = sorted((run.stage_dir("driving") / "frames").glob("frame_*.png"))
    return torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGBA"), dtype=np.float32) / 255.0).permute(2, 0, 1) for p in paths])


@dataclass
class RunInputs:
    """What the stages of one run share."""

    cfg: DG4DConfig
    device: torch.device
    reference: Tensor
    """``[4, S, S]`` the preprocessed input view."""
    frames: Tensor
    """``[T, 4, S, S]`` the driving frames."""
    priors: PriorFactory

    def __post_init__(self):
        self.white = torch.ones(3, device=self.device)
        self.fov = math.radians(self.cfg.fov_deg)
        self.n_frames = len(self.frames)
        self.frame_rgb = composite(self.frames).permute(0, 2, 3, 1)  # [T, S, S, 3] on white
        self.frame_alpha = self.frames[:, 3:].permute(0, 2, 3, 1)
        self.zero123 = self.priors("zero123", self.zero123_config(), self.device)
        self.image_reference = self.zero123.prepare_reference(composite(self.reference)[None], 0.0, 0.0, self.cfg.camera_radius)

    def zero123_config(self) -> Zero123Config:
        s = self.cfg.sds
        return Zero123Config(model=s.model, guidance_scale=s.guidance_scale, precision=resolve_precision(self.cfg.precision, self.device))

    def timesteps(self, settings: StageSettings) -> TimestepSchedule:
        """The stage's Zero123 timesteps: DreamGaussian's annealing over the stage, or uniform (``sds.schedule``)."""
        s = self.cfg.sds
        if s.schedule not in ("dreamgaussian", "uniform"):
            raise Gen4DError(f"sds.schedule must be dreamgaussian or uniform, got {s.schedule!r}")
        return TimestepSchedule(min_start=s.t_min, max_start=settings.t_max, min_end=s.t_min, max_end=settings.t_max,
                                anneal_end=settings.iterations, deterministic=s.schedule == "dreamgaussian")

    def input_cameras(self, times) -> Cameras:
        """The input camera (azimuth 0, elevation 0) once per time."""
        times = torch.as_tensor(times, dtype=torch.float32).reshape(-1)
        S = self.cfg.size
        return orbit_cameras([0.0] * len(times), 0.0, self.cfg.camera_radius, self.fov, S, S, times=times).to(self.device)

    def sds_views(self, settings: StageSettings, times: str) -> ViewSampling:
        s, R, j = self.cfg.sds, self.cfg.camera_radius, settings.radius_jitter
        return ViewSampling(views=max(settings.views, 1), elevation_deg=(s.min_elevation, s.max_elevation),
                            azimuth_deg=(-180.0, 180.0), radius=(R - j, R + j), fov_deg=(self.cfg.fov_deg, self.cfg.fov_deg), times=times)

    def zero123_term(self, settings: StageSettings, times: str, references, deform: bool) -> GuidanceTerm:
        return GuidanceTerm(
            name="sds", prior=self.zero123, views=self.sds_views(settings, times),
            weight=settings.sds_weight if settings.views > 0 else 0.0, per_view=True,
            resolution=lambda step: stepped_resolution(step, settings), timesteps=self.timesteps(settings),
            references=references, deform=deform,
        )

    def reference_weight(self, settings: StageSettings, weight: float):
        """The reference loss weight, ramped by the stage's progress ``(step + 1) / iterations`` (DreamGaussian counts
        steps from 1) when ``ramp_reference``."""
        if not settings.ramp_reference:
            return weight
        return lambda step: weight * min(1.0, (step + 1) / max(settings.iterations, 1))

    def preview(self, scene: Scene4D, step: int, folder: Path) -> None:
        R, S = self.cfg.camera_radius, self.cfg.size
        with torch.no_grad():
            cams = orbit_cameras([0.0, 90.0, 180.0, 270.0], [0.0] * 4, R, self.fov, S, S, times=0.5).to(self.device)
            img = scene.render(cams, background=self.white).rgb
        save_png(folder / f"step_{step:06d}.png", torch.cat(list(img), dim=1))

    def init_scene(self) -> Scene4D:
        if self.cfg.static_ply:
            return Scene4D(gaussians_from_ply(self.cfg.static_ply)).to(self.device)
        g = torch.Generator().manual_seed(self.cfg.seed)
        return Scene4D(GaussianModel.random_in_sphere(self.cfg.init_points, self.cfg.init_radius, 0, g)).to(self.device)

    def load_scene(self, tensors) -> Scene4D:
        degree = sh_degree_from_bases(1 + tensors["gaussians.shN"].shape[1])
        return Scene4D.from_tensors(tensors, degree, self.cfg.deformation).to(self.device)


EXTENT = 1.0
"""The object is normalised to the unit ball: learning rates are absolute."""


# ------------------------------------------------------------------------------------------------ stages
def static_stage(st: RunInputs) -> Stage:
    """Stage 1: the reference view (RGB + mask) + Zero123 SDS at random views, canonical Gaussians, densification."""
    cfg, lr, n = st.cfg, st.cfg.lr, st.cfg.static.iterations
    reference = ReferenceViews(
        st.input_cameras(0.0), composite(st.reference.to(st.device)).permute(1, 2, 0)[None],
        st.reference[3:].to(st.device).permute(1, 2, 0)[None], st.reference_weight(cfg.static, cfg.static.rgb_weight),
        st.reference_weight(cfg.static, cfg.static.mask_weight), deform=False,
    )
    losses = ScoreDistillation([st.zero123_term(cfg.static, "zero", st.image_reference, deform=False)], reference, background=st.white)
    return Stage(
        name="static", iterations=n, seed=cfg.seed * 1000 + 1,
        make_optimizers=lambda scene: gaussian_optimizers(scene, lr, EXTENT),
        learning_rates=lambda step: {"means": exp_decay(step, n, lr.means, lr.means_final)},
        losses=losses, strategy=DensifyStrategy(dataclasses.replace(cfg.densify, refine_stop=n), 1.0),
        preview=st.preview, checkpoint_every=cfg.checkpoint_every, preview_every=cfg.preview_every,
    )


def dynamic_stage(st: RunInputs) -> Stage:
    """Stage 2: a zero-initialised deformation field fitted to the driving frames at the input camera + Zero123 SDS at
    random views at every driving frame (or the step's first fitted frame: ``dynamic.sds_times``), each view
    conditioned on the frame of its time."""
    cfg, lr, n = st.cfg, st.cfg.lr, st.cfg.dynamic.iterations
    T = st.n_frames
    reference = ReferenceViews(
        st.input_cameras(torch.arange(T, dtype=torch.float32) / (T - 1)), st.frame_rgb, st.frame_alpha,
        st.reference_weight(cfg.dynamic, cfg.dynamic.rgb_weight), st.reference_weight(cfg.dynamic, cfg.dynamic.mask_weight),
        frames_per_step=cfg.dynamic.frames_per_step,
    )
    frame_references: list[Zero123Reference] = []

    def references() -> Zero123Reference:
        # Zero123 conditioning of every driving frame, computed once per run, frame by frame
        if not frame_references:
            frame_references.extend(st.zero123.prepare_reference(st.frame_rgb[i].permute(2, 0, 1)[None], 0.0, 0.0, cfg.camera_radius)
                                    for i in range(T))
        return Zero123Reference.stack(frame_references)

    if cfg.dynamic.sds_times not in ("frames", "reference"):
        raise Gen4DError(f"dynamic.sds_times must be frames or reference, got {cfg.dynamic.sds_times!r}")
    term = st.zero123_term(cfg.dynamic, cfg.dynamic.sds_times, None, deform=True)
    losses = ScoreDistillation([term], reference, background=st.white)

    def optimizers(scene: Scene4D):
        term.references = references()
        opts = gaussian_optimizers(scene, lr, EXTENT) if cfg.dynamic.train_gaussians else {}
        scene.gaussians.requires_grad_(cfg.dynamic.train_gaussians)
        opts["deformation"] = deformation_optimizer(scene, lr, EXTENT)
        return opts

    return Stage(
        name="dynamic", iterations=n, seed=cfg.seed * 1000 + 2,
        prepare=lambda scene: scene.attach_deformation(cfg.deformation, cfg.seed),
        make_optimizers=optimizers,
        learning_rates=lambda step: {
            **({"means": exp_decay(step, n, lr.means, lr.means_final)} if cfg.dynamic.train_gaussians else {}),
            "deformation": [exp_decay(step, n, lr.grid, lr.grid_final), exp_decay(step, n, lr.mlp, lr.mlp_final)],
        },
        losses=losses, preview=st.preview, checkpoint_every=cfg.checkpoint_every, preview_every=cfg.preview_every,
    )


class RefineTargets:
    """Stage III's targets: rounds of SVD partial-denoise clips along an orbit, kept on disk (module doc)."""

    def __init__(self, st: RunInputs, run: RunDir):
        self.st, self.run = st, run
        self.svd: list = []  # loaded on first use: a resume with every target on disk needs no SVD
        self.current: dict = {}
        rc = st.cfg.refine
        self.clip_frames = rc.frames or st.n_frames
        self.poses: dict[float, Tensor] = {}  # texture mode: the mesh's vertices at each time (the motion is frozen)

    def render(self, scene: Scene4D, cams: Cameras) -> tuple[Tensor, Tensor]:
        """``rgb [C, H, W, 3]`` on white and coverage ``[C, H, W, 1]``: the Gaussians, or the textured mesh."""
        st = self.st
        if st.cfg.refine.mode == "gaussians":
            out = scene.render(cams, background=st.white)
            return out.rgb, out.alpha
        missing = sorted({float(t) for t in cams.times.tolist()} - set(self.poses))
        if missing:
            with torch.no_grad():
                ref = scene.frame_at(0.0).means.cpu()
                frames = torch.stack([scene.frame_at(t).means.cpu() for t in missing])
                moved = skin_to_gaussians(scene.mesh.vertices.cpu(), ref, frames)
            self.poses.update({t: v.to(st.device) for t, v in zip(missing, moved)})
        vertices = torch.stack([self.poses[float(t)] for t in cams.times.tolist()])
        return scene.mesh.render(vertices, cams, st.white)

    def clip(self, scene: Scene4D, k: int, start_azimuth: float | None) -> tuple[Cameras, Tensor]:
        """Round ``k``'s clip cameras and ``[F, H, W, 3]`` targets: read from disk, or rendered and refined now."""
        st, rc, d = self.st, self.st.cfg.refine, self.st.cfg.driving
        R = st.cfg.camera_radius
        path = self.run.stage_dir("refine") / "targets" / f"round_{k:04d}.safetensors"
        if not path.exists():
            if start_azimuth is None:
                raise Gen4DError(f"{path} is missing; delete {self.run.stage_dir('refine')} to restart the refinement")
            cams = orbit_clip_cameras(start_azimuth, self.clip_frames, rc.resolution, R, st.fov, rc.azimuth_step).to(st.device)
            with torch.no_grad():
                renders = self.render(scene, cams)[0].permute(0, 3, 1, 2)
            if not self.svd:
                self.svd.append(load_svd(st.cfg, st.device))
            refined = self.svd[0].refine_video(
                renders, composite(st.reference)[None], rc.strength, steps=d.steps, motion_bucket_id=d.motion_bucket_id,
                fps=d.fps, noise_aug_strength=d.noise_aug_strength, seed=st.cfg.seed * 1000 + k, decode_chunk_size=d.decode_chunk or None,
            )
            with atomic_path(path) as tmp:  # uint8, and always read back, so a resumed run sees the same numbers
                save_file({"frames": torch.from_numpy(to_uint8(refined.permute(0, 2, 3, 1))).contiguous()}, str(tmp),
                          metadata={"start_azimuth": repr(start_azimuth)})
        with safe_open(str(path), framework="pt") as f:
            start, targets = float(f.metadata()["start_azimuth"]), f.get_tensor("frames")
        cams = orbit_clip_cameras(start, len(targets), targets.shape[1], R, st.fov, rc.azimuth_step).to(st.device)
        return cams, targets.to(st.device).float() / 255.0

    def losses(self, scene: Scene4D, step: int, generator: torch.Generator):
        st, rc = self.st, self.st.cfg.refine
        k = step // rc.regenerate_every
        if step % rc.regenerate_every == 0:  # drawn at every round start, cached or not, so resumed runs stay in step
            start = float(torch.rand(1, generator=generator)) * 360.0 - 180.0
            self.current.clear()
            self.current[k] = self.clip(scene, k, start)
        elif k not in self.current:  # resumed inside a round
            self.current.clear()
            self.current[k] = self.clip(scene, k, None)
        cams, targets = self.current[k]
        views, _ = self.render(scene, cams)
        terms = {"svd": rc.svd_weight * (views - targets).square().mean()}
        if rc.reference_weight > 0:
            ref, covered = self.render(scene, st.input_cameras(frame_times(st.n_frames)))
            # the mesh: where it covers the input view (DreamGaussian4D also drops grazing angles; no normals here)
            mask = covered if rc.mode == "texture" else 1.0
            terms["rgb"] = rc.reference_weight * st.n_frames * ((ref - st.frame_rgb) * mask).square().mean()
        return terms, None


def refine_stage(st: RunInputs, run: RunDir) -> Stage:
    """Stage III: the Gaussians' colours against SVD partial-denoise targets (module doc); the rest frozen."""
    cfg, rc = st.cfg, st.cfg.refine
    targets = RefineTargets(st, run)

    def colour_optimizers(scene: Scene4D):
        scene.requires_grad_(False)  # geometry, opacity and motion stay exactly as stage II left them
        if rc.mode == "texture":
            scene.mesh.logits.requires_grad_(True)
            return {"texture": torch.optim.Adam([scene.mesh.logits], lr=rc.texture_lr)}
        rates = dataclasses.replace(cfg.lr, sh0=rc.lr, shN=rc.lr / 20)
        colours = ("sh0", "shN")
        for name in colours:
            scene.gaussians.params[name].requires_grad_(True)
        return {name: opt for name, opt in gaussian_optimizers(scene, rates, EXTENT).items() if name in colours}

    def make_mesh(scene: Scene4D) -> Scene4D:
        """Texture mode: the coloured surface of the Gaussians at t = 0, unwrapped, its texture baked."""
        with torch.no_grad():
            surface = extract_mesh(scene.frame_at(0.0), resolution=cfg.export.mesh_resolution, threshold=cfg.export.mesh_threshold)
        scene.mesh = textured_mesh(surface, rc.texture_size).to(st.device)
        return scene

    return Stage(name="refine", iterations=rc.iterations, seed=cfg.seed * 1000 + 3, make_optimizers=colour_optimizers,
                 prepare=make_mesh if rc.mode == "texture" else None, losses=targets.losses, preview=st.preview,
                 checkpoint_every=cfg.checkpoint_every, preview_every=cfg.preview_every)


# ------------------------------------------------------------------------------------------------ the recipe
def run_dg4d(
    cfg: DG4DConfig, out: str | Path, command: str = "gen4d image", quiet: bool = False, stop_after_step: int | None = None,
    run: RunDir | None = None, priors: PriorFactory = build_prior,
) -> dict:
    """Image or video -> 4D Gaussians -> exports. Validates the input before touching ``out``.

    ``run``: an already prepared run directory (a recipe that chains this one, e.g. text -> video -> 4D, prepares
    ``out`` with its own configuration); None prepares ``out`` with ``cfg``. ``priors``: what builds the priors
    (the published models, or oracles in ``gen4d demo``).
    """
    check(cfg)
    reference = load_reference(cfg)
    device = resolve_device(cfg.device)
    if run is None:
        run = RunDir(out)
        run.prepare(cfg, command)
    save_rgba_png(run.root / "input.png", reference)
    def say(message: str) -> None:  # one line for the user (also with --quiet, which silences progress bars) and the log
        run.log(message)
        print(message)

    run_artifact(run, driving_stage(cfg, reference, device, say))
    frames = read_driving_frames(run).to(device)
    if len(frames) < 2:
        raise Gen4DError(f"the driving video has {len(frames)} frame; a 4D asset needs at least 2")

    st = RunInputs(cfg, device, reference, frames, priors)
    stages = ([static_stage(st)] if cfg.static.iterations > 0 else []) + [dynamic_stage(st)]
    if cfg.refine.iterations > 0:
        stages.append(refine_stage(st, run))
    asset = AssetInfo(
        final_stage=stages[-1].name, frames=st.n_frames, radius=cfg.camera_radius, deformation=dataclasses.asdict(cfg.deformation),
        export=dataclasses.asdict(cfg.export), device=cfg.device,
    )
    write_asset_info(run, asset)
    scene, stats = run_stages(run, stages, st.init_scene, st.load_scene, quiet=quiet, stop_after_step=stop_after_step)
    if not run.stage_complete(stages[-1].name):  # stopped on request (tests)
        return {}
    scene.eval()
    with torch.no_grad():  # how well the asset reproduces its input: every driving frame at the input camera
        fit = scene.render(st.input_cameras(frame_times(st.n_frames)), background=st.white)
        fit_psnr = psnr(fit.rgb, st.frame_rgb).clamp(max=100.0)
        fit_ssim = ssim(fit.rgb, st.frame_rgb)
    written = export_asset(scene, run, asset, quiet=quiet)
    metrics = {
        "psnr": float(fit_psnr.mean()),
        "ssim": float(fit_ssim.mean()),
        "psnr_per_frame": [round(float(v), 3) for v in fit_psnr],
        "psnr_views": "input camera, every driving frame (novel views need `gen4d eval`)",
        "seconds": sum(s["seconds"] for s in stats.values()),
        "stages": stats,
        "num_gaussians": len(scene.gaussians),
        "iterations": sum(s.iterations for s in stages),
        "driving_frames": st.n_frames,
        "exports": written,
        "device": str(device),
    }
    run.write_metrics(metrics)
    run.log(f"done: {len(scene.gaussians)} Gaussians, {st.n_frames} driving frames")
    return metrics


RECIPE = Recipe(
    name="dg4d",
    commands=("image", "video"),
    description="DreamGaussian4D: driving video, static Gaussians by Zero123 SDS + reference losses, deformation fitted to the driving frames",
    config=DG4DConfig,
    presets=PRESETS,
    run=run_dg4d,
    per_command={"image": {"mode": "image"}, "video": {"mode": "video"}},
    options=(Option("--driving-video", "driving.path", "image: a video or folder of frames to use instead of generating one", path=True),),
    iters=iters_overrides,
    check=check,
    requirements=requirements,
    headline=lambda m: f"{m['num_gaussians']} Gaussians  {m['driving_frames']} frames  {m['seconds']:.0f} s training",
)


def build_config(preset: str, overrides: list[str], base: dict | None = None) -> DG4DConfig:
    return RECIPE.build_config(preset, overrides, base)
