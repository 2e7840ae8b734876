"""``motion sample``: text -> video with a UNet3D text-to-video model, optionally with MotionDirector's motion LoRA
and noise prior (Zhao et al. 2023); without ``motion`` it is plain text-to-video sampling.

What it does (:func:`generate_video`, shared with the text -> video -> 4D recipe):
  1. load the text-to-video model (``model``: ZeroScope by default) through the model registry;
  2. adapters: the *temporal* LoRA of ``motion`` at ``temporal_scale`` (MotionDirector samples with the temporal
     path only) and, when ``spatial`` is given, the *spatial* LoRA of that training at ``spatial_scale``: the
     appearance of one training can be combined with the motion of another
     (MotionDirector's ``MotionDirector_inference_multi.py``);
  3. initial latents: seeded Gaussian noise ``eps``, mixed with a DDIM inversion ``z_inv`` when ``noise_prior``
     ``p > 0``: ``sqrt(p) z_inv + sqrt(1 - p) eps`` (:mod:`gen4d.video.sampling`). ``z_inv`` inverts one of
     ``motion``'s cached training latents (``DIR/stages/latents/clip_XXXX.safetensors``, chosen with the seed unless
     ``latent_index`` says which; resized to the sampled size when its bucket differs), or the clip ``reference``
     when given. The inversion runs on the base U-Net, the LoRAs off, as MotionDirector's cached
     ``inversion_noise`` is computed before training (``handle_cache_latents``, ``MotionDirector_train.py``);
  4. DDIM sampling with classifier-free guidance, VAE decoding frame by frame.

Run directory: ``DIR/video.mp4``, ``DIR/video.gif``, ``DIR/frames/frame_XXXX.png``, ``DIR/metrics.json``,
``DIR/config.yaml``, ``DIR/log.txt``. Rerunning a finished run returns its metrics without sampling again.

Defaults are MotionDirector's inference defaults: ZeroScope, 16 frames at 384 x 384, 30 DDIM steps, guidance 12,
eta 0, 8 fps, noise prior 0 (its README: 0 for a motion learned from several videos, 0.1-0.5 for one video; the
``single-video`` preset uses 0.5 as its single-video examples do), inversion with 50 steps and the empty prompt.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .. import Gen4DError
from ..data.videos import read_video_clip
from ..devices import resolve_device, resolve_precision
from ..export.images import save_png, to_uint8
from ..export.video import write_gif, write_video
from ..models.preflight import ModelRequirement, Requirement
from ..runs import RunDir
from ..video.sampling import (
    DEFAULT_FPS,
    DEFAULT_GUIDANCE,
    DEFAULT_HEIGHT,
    DEFAULT_INVERSION_STEPS,
    DEFAULT_NUM_FRAMES,
    DEFAULT_STEPS,
    DEFAULT_WIDTH,
    TextToVideo,
    VideoSample,
    load_motion_adapters,
)
from ..video.train import LATENTS_STAGE
from .recipe import Option, Recipe

LORA_CONFIG = "lora_config.json"


@dataclass
class MotionSampleConfig:
    """Everything ``gen4d motion sample`` does; every field can be set as ``key=value``."""

    prompt: str = ""
    """What the video shows."""
    prompt_suffix: str = ""
    """Appended to ``prompt`` before encoding (e.g. ", on a white background")."""
    negative_prompt: str = ""
    """Negative prompt of classifier-free guidance (empty: the unconditional embedding)."""
    model: str = "zeroscope"
    """Text-to-video model: registry name (zeroscope, modelscope), Hub id or diffusers folder."""
    motion: str = ""
    """A ``gen4d motion train`` run folder (``DIR/lora/`` + ``DIR/stages/latents/``) or a LoRA folder: its temporal LoRA
    is applied, its cached latents feed the noise prior. Empty: plain text-to-video."""
    temporal_scale: float = 1.0
    """Scale of the temporal (motion) LoRA of ``motion``; 0 leaves it out."""
    spatial: str = ""
    """A training run or LoRA folder whose spatial (appearance) LoRA is applied too (may be ``motion`` itself);
    empty: no spatial LoRA (MotionDirector's default)."""
    spatial_scale: float = 1.0
    """Scale of the spatial LoRA of ``spatial``."""
    noise_prior: float = 0.0
    """p in sqrt(p) z_inv + sqrt(1 - p) eps: 0 = pure noise (several training videos), 0.1-0.5 for one video."""
    reference: str = ""
    """A video file or folder of frames whose DDIM inversion is the noise prior (instead of a cached latent of
    ``motion``); read at ``height`` x ``width``, its first ``num_frames`` frames."""
    latent_index: int = -1
    """Which cached latent of ``motion`` the noise prior inverts (sorted file order); -1: chosen with ``seed``."""
    inversion_steps: int = DEFAULT_INVERSION_STEPS
    """DDIM inversion steps of the noise prior (MotionDirector: 50, empty prompt, no guidance)."""
    inversion_fixed_point_iterations: int = 0
    """Extra U-Net passes per inversion step that refine it to an exact inverse of sampling (0: plain DDIM
    inversion, as MotionDirector)."""
    num_frames: int = DEFAULT_NUM_FRAMES
    """Frames to generate (any count)."""
    height: int = DEFAULT_HEIGHT
    """Video height in pixels (a multiple of 8)."""
    width: int = DEFAULT_WIDTH
    """Video width in pixels (a multiple of 8)."""
    steps: int = DEFAULT_STEPS
    """DDIM sampling steps."""
    guidance_scale: float = DEFAULT_GUIDANCE
    """Classifier-free guidance scale (<= 1: no guidance, one U-Net pass per step)."""
    eta: float = 0.0
    """DDIM stochasticity (0: deterministic DDIM, 1: DDPM-like)."""
    decode_chunk: int = 1
    """Frames per VAE decoder call (1: frame by frame, the lowest memory)."""
    fps: int = DEFAULT_FPS
    """Frame rate of the written video and GIF."""
    seed: int = 0
    """Random seed (initial noise, DDIM noise when eta > 0, choice of the cached latent)."""
    device: str = "auto"
    """auto | cpu | cuda."""
    precision: str = "auto"
    """Weights and activations of the networks: auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 (CUDA) | bf16."""


PRESETS: dict[str, list[str]] = {
    # MotionDirector_inference.py defaults; noise prior 0 (motion learned from several videos).
    "default": [],
    # A motion learned from one video: MotionDirector's single-video examples use noise_prior 0.5.
    "single-video": ["noise_prior=0.5"],
    # ZeroScope at its native 576 x 320 and 24 frames (MotionDirector's 24-frame example).
    "576x320": ["width=576", "height=320", "num_frames=24"],
}


def build_config(preset: str, overrides: list[str], base: dict | None = None) -> MotionSampleConfig:
    """Dataclass defaults <- preset <- ``base`` (command-line flags) <- ``key=value`` overrides."""
    return RECIPE.build_config(preset, overrides, base)


# ----------------------------------------------------------------------------------------------- training folders
def lora_folder(path: str | Path) -> Path:
    """The LoRA folder of a ``gen4d motion train`` run (``DIR/lora``), or ``path`` when it is one itself."""
    path = Path(path)
    if (path / LORA_CONFIG).is_file():
        return path
    if (path / "lora" / LORA_CONFIG).is_file():
        return path / "lora"
    if not path.exists():
        raise Gen4DError(f"motion LoRA not found: {path} does not exist")
    raise Gen4DError(f"{path} is neither a `gen4d motion train` run folder (with lora/) nor a LoRA folder (with {LORA_CONFIG}); train one with `gen4d motion train`")


def cached_latent_files(path: str | Path) -> list[Path]:
    """``DIR/stages/latents/clip_*.safetensors`` of a training run (``path`` = the run folder or its ``lora``
    folder)."""
    path = Path(path)
    for root in (path, path.parent):
        files = sorted((root / "stages" / LATENTS_STAGE).glob("clip_*.safetensors"))
        if files:
            return files
    return []


def load_cached_latent(path: Path) -> torch.Tensor:
    """``[1, C, F, h, w]`` from a cached training clip (key ``latents``, ``[C, F, h, w]``)."""
    try:
        latents = load_file(str(path))["latents"]
    except (OSError, KeyError, SafetensorError) as e:
        raise Gen4DError(f"cannot read the cached latents {path} ({e}); rerun `gen4d motion train` to rewrite them") from None
    if latents.dim() != 4:
        raise Gen4DError(f"{path}: latents must be [C, F, h, w], got {tuple(latents.shape)}; rerun `gen4d motion train`")
    return latents[None].float()


def check_config(cfg: MotionSampleConfig) -> None:
    """Every check that needs no model: raises Gen4DError before anything is written."""
    if not cfg.prompt.strip():
        raise Gen4DError('no prompt: pass the text to generate, e.g. gen4d motion sample "a panda lifting weights" --motion DIR')
    for name in ("num_frames", "height", "width", "steps", "inversion_steps", "fps", "decode_chunk"):
        if getattr(cfg, name) < 1:
            raise Gen4DError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.height % 8 or cfg.width % 8:
        raise Gen4DError(f"height and width must be multiples of 8 (the VAE downsamples by 8), got {cfg.width}x{cfg.height}")
    if not 0.0 <= cfg.noise_prior <= 1.0:
        raise Gen4DError(f"noise_prior must be in [0, 1], got {cfg.noise_prior}")
    if cfg.eta < 0 or cfg.inversion_fixed_point_iterations < 0:
        raise Gen4DError("eta and inversion_fixed_point_iterations must not be negative")
    if cfg.precision not in ("auto", "fp32", "fp16", "bf16"):
        raise Gen4DError(f"precision must be auto, fp32, fp16 or bf16, got {cfg.precision!r}")
    if cfg.motion:
        lora_folder(cfg.motion)
    if cfg.spatial:
        lora_folder(cfg.spatial)
    if cfg.reference and not Path(cfg.reference).exists():
        raise Gen4DError(f"reference video not found: {cfg.reference}")
    if cfg.noise_prior > 0 and not cfg.reference:
        if not cfg.motion:
            raise Gen4DError(f"noise_prior={cfg.noise_prior} needs a clip to invert: pass --motion DIR (its cached latents) or reference=VIDEO")
        files = cached_latent_files(cfg.motion)
        if not files:
            raise Gen4DError(f"noise_prior={cfg.noise_prior} but {cfg.motion} holds no stages/latents/clip_*.safetensors; pass reference=VIDEO or noise_prior=0")
        if cfg.latent_index >= len(files):
            raise Gen4DError(f"latent_index={cfg.latent_index} but {cfg.motion} holds {len(files)} cached latents (0..{len(files) - 1})")


# ----------------------------------------------------------------------------------------------- sampling
def prior_latents(cfg: MotionSampleConfig, t2v: TextToVideo) -> tuple[torch.Tensor | None, str]:
    """The clean latents ``[1, C, F, h, w]`` the noise prior inverts and where they come from (None, "" when
    ``noise_prior`` is 0)."""
    if cfg.noise_prior == 0:
        return None, ""
    if cfg.reference:
        frames = read_video_clip(cfg.reference, cfg.height, cfg.width)[: cfg.num_frames]
        return t2v.encode_video(frames, chunk=cfg.decode_chunk), str(cfg.reference)
    files = cached_latent_files(cfg.motion)
    index = cfg.latent_index if cfg.latent_index >= 0 else random.Random(cfg.seed).randrange(len(files))
    return load_cached_latent(files[index]), str(files[index])


def generate_video(
    cfg: MotionSampleConfig, device: torch.device, quiet: bool = True, log: Callable[[str], None] | None = None
) -> tuple[VideoSample, dict]:
    """Sample the video of ``cfg`` (module docstring, steps 1-4). Returns the sample and a JSON-able summary."""
    check_config(cfg)
    say = log or (lambda message: None)
    start = time.perf_counter()
    t2v = TextToVideo(cfg.model, device, resolve_precision(cfg.precision, device))
    adapters: dict[str, float] = {}
    if cfg.motion or cfg.spatial:
        adapters = load_motion_adapters(
            t2v.unet,
            temporal=lora_folder(cfg.motion) if cfg.motion else None, temporal_scale=cfg.temporal_scale,
            spatial=lora_folder(cfg.spatial) if cfg.spatial else None, spatial_scale=cfg.spatial_scale,
        )
        say(f"video: adapters {adapters or 'none'}")
    prior, source = prior_latents(cfg, t2v)
    if prior is not None:
        say(f"video: noise prior {cfg.noise_prior} from {source}")
    prompt = cfg.prompt + cfg.prompt_suffix
    sample = t2v.generate(
        prompt, cfg.negative_prompt, num_frames=cfg.num_frames, height=cfg.height, width=cfg.width, steps=cfg.steps,
        guidance_scale=cfg.guidance_scale, eta=cfg.eta, seed=cfg.seed, prior_latents=prior, noise_prior=cfg.noise_prior,
        inversion_steps=cfg.inversion_steps, inversion_fixed_point_iterations=cfg.inversion_fixed_point_iterations,
        decode_chunk=cfg.decode_chunk, quiet=quiet,
    )
    seconds = time.perf_counter() - start
    say(f"video: {cfg.num_frames} frames at {cfg.width}x{cfg.height} in {seconds:.1f} s")
    info = {
        "prompt": prompt, "model": cfg.model, "num_frames": cfg.num_frames, "height": cfg.height, "width": cfg.width,
        "steps": cfg.steps, "guidance_scale": cfg.guidance_scale, "seed": cfg.seed, "adapters": adapters,
        "noise_prior": cfg.noise_prior, "prior_source": source, "seconds": seconds, "device": str(device),
        "precision": resolve_precision(cfg.precision, device),
    }
    return sample, info


def write_video_outputs(frames: torch.Tensor, folder: Path, fps: int, frames_folder: str = "frames") -> dict[str, list[str]]:
    """``frames [F, 3, H, W]`` in [0, 1] -> ``folder/video.mp4``, ``folder/video.gif`` and
    ``folder/<frames_folder>/frame_XXXX.png``; returns ``{"mp4": [...], "gif": [...], "frames": [...]}``."""
    images = frames.permute(0, 2, 3, 1)
    pngs = []
    for i, image in enumerate(images):
        path = folder / frames_folder / f"frame_{i:04d}.png"
        save_png(path, image)
        pngs.append(str(path))
    array = np.ascontiguousarray(to_uint8(images))
    write_video(folder / "video.mp4", array, fps=fps)
    write_gif(folder / "video.gif", array, fps=fps)
    return {"mp4": [str(folder / "video.mp4")], "gif": [str(folder / "video.gif")], "frames": pngs}


def run_motion_sample(cfg: MotionSampleConfig, out: str | Path, command: str = "gen4d motion sample", quiet: bool = False) -> dict:
    """Text (+ motion LoRA) -> video in the run directory ``out`` (module docstring). Validates the options before
    touching ``out``; a finished run is not sampled again. Returns the metrics written to ``out/metrics.json``."""
    check_config(cfg)
    device = resolve_device(cfg.device)
    resolve_precision(cfg.precision, device)
    run = RunDir(out)
    resuming = run.prepare(cfg, command)
    if resuming and run.metrics_path.is_file() and (run.root / "video.mp4").is_file():
        run.log("already complete: nothing to do")
        return json.loads(run.metrics_path.read_text())
    sample, info = generate_video(cfg, device, quiet=quiet, log=run.log)
    written = write_video_outputs(sample.frames, run.root, cfg.fps)
    metrics = {**info, "exports": {"mp4": written["mp4"], "gif": written["gif"]}, "frames": len(written["frames"])}
    run.write_metrics(metrics)
    run.log(f"done: {run.root / 'video.mp4'}")
    return metrics


def requirements(cfg: MotionSampleConfig) -> list[Requirement]:
    return [ModelRequirement(cfg.model, "the text-to-video model")]


RECIPE = Recipe(
    name="motion-sample",
    commands=("motion sample",),
    description="text -> video with a learned motion (DDIM, optional DDIM-inversion noise prior)",
    config=MotionSampleConfig,
    presets=PRESETS,
    run=run_motion_sample,
    input_key="prompt",
    input_is_path=False,
    options=(Option("--motion", "motion", "a `gen4d motion train` run folder (its temporal LoRA); none: plain text-to-video", path=True),),
    iters=lambda n: {"steps": n},
    check=check_config,
    requirements=requirements,
    headline=lambda m: f"{m['num_frames']} frames at {m['width']}x{m['height']}, {m['steps']} DDIM steps",
    outputs=lambda out: [("video", f"{out / 'video.mp4'}  ({out / 'video.gif'})")],
)
