"""``motion train``: MotionDirector (Zhao et al. 2023), a motion LoRA for a text-to-video model from reference
videos (or an appearance LoRA from images).

Steps, in one resumable run directory:
  1. read the inputs (before anything is written): a video file, a folder of frames, or a folder of videos;
     each long video is split into consecutive ``num_frames``-frame clips; each source is resized, whole, to its
     aspect-ratio bucket of ``width x height`` (``resize=bucket``, MotionDirector's ``use_bucketing: True``, see
     :mod:`gen4d.video.buckets`), so clips of different sources may differ in size; each clip's prompt comes from a
     text file beside its source or from ``prompt`` (see :mod:`gen4d.data.videos`). With ``mode=images``: one
     1-frame clip per image, bucketed the same way;
  2. the artifact stage ``latents``: every clip encoded once with the VAE into
     ``DIR/stages/latents/clip_XXXX.safetensors`` (key ``latents``, ``[C, F, h, w]`` times the VAE scaling factor,
     ``h x w`` the clip's own size over 8; the prompt, source, frame indices and pixel size in the metadata),
     reused on resume and by the sampler's noise prior (resized there to the size sampled at);
  3. the stage ``motion``: the dual-path LoRA (:mod:`gen4d.video.train`) trained by the shared stage loop,
     checkpointing to ``DIR/stages/motion/``, previews in ``DIR/stages/motion/preview/`` and, with
     ``keep_checkpoint_loras``, a LoRA folder per checkpoint in ``DIR/lora_steps/step_XXXXXX/``;
  4. write ``DIR/lora/`` (:func:`gen4d.video.lora_files.save_motion_lora`) and ``DIR/metrics.json``.

Defaults are MotionDirector's ``config_single_video.yaml`` (ZeroScope, 16 frames at 384 x 384 with aspect-ratio
buckets, 150 steps, AdamW lr 5e-4, weight decay 1e-2, rank 32, one spatial LoRA per clip, gradient checkpointing,
fp16 on CUDA).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel
from safetensors import SafetensorError
from torch import Tensor

from .. import Gen4DError
from ..data.videos import (
    find_images,
    find_videos,
    prompt_for,
    read_image_rgb,
    read_video_frames,
    resize_center_crop,
    resize_stretch,
    split_clips,
)
from ..devices import resolve_device, resolve_precision
from ..export.images import to_uint8
from ..export.video import write_video
from ..guidance.prompts import PromptEncoder
from ..models.preflight import ModelRequirement, Requirement
from ..models.registry import load_pretrained
from ..runs import RunDir
from ..training.loop import ArtifactStage, Stage, run_artifact, run_stages
from ..video.buckets import bucket_size
from ..video.lora import lora_adapters
from ..video.lora_files import save_motion_lora
from ..video.sampling import TextToVideo
from ..video.train import (
    LATENTS_STAGE,
    STAGE,
    DualPathSettings,
    LoraSettings,
    MotionTrainer,
    OptimizerSettings,
    TrainingClip,
    encode_clip,
    load_clip_latents,
    save_clip_latents,
)
from .recipe import Option, Recipe


@dataclass
class ValidationSettings:
    """Preview videos during training (MotionDirector's ``validation_data``), DDIM-sampled by
    :class:`gen4d.video.sampling.TextToVideo` with the temporal LoRA on and the spatial LoRA off."""

    every: int = 50
    """Steps between previews in DIR/samples/step_XXXXXX_<prompt>.mp4, num_frames x height x width (0: none)."""
    prompts: list[str] = field(default_factory=list)
    """Prompts to sample; empty: the training prompts."""
    steps: int = 30
    """DDIM steps."""
    guidance_scale: float = 12.0
    """Classifier-free guidance scale."""
    noise_prior: float = 0.0
    """Mix of the first clip's DDIM inversion in the initial noise (MotionDirector's single-video config
    validates with 0.5, at the cost of an inversion per preview); 0: pure noise."""
    seed: int = 0
    """Seed of every preview (the same noise at every step, so previews are comparable)."""


@dataclass
class MotionTrainConfig:
    """Everything ``gen4d motion train`` does; every field can be set as ``key=value``."""

    input: str = ""
    """A video file, a folder of frames, a folder of videos, or (mode=images) an image or a folder of images."""
    mode: str = "video"
    """video: learn motion (and per-clip appearance) from videos | images: learn appearance only (spatial LoRA)."""
    prompt: str = ""
    """Prompt of every clip that has no text file beside its source (video.mp4 -> video.txt, frames/prompt.txt)."""
    model: str = "zeroscope"
    """Text-to-video model (registry name ``zeroscope`` / ``modelscope``, Hub id or diffusers folder)."""
    num_frames: int = 16
    """Frames per training clip (MotionDirector: 16; 24 for its 576 x 320 single-video config)."""
    height: int = 384
    """Clip height in pixels (a multiple of 8); with resize=bucket the height of a square source, and of a portrait
    one (a landscape source's height is a bucket below it)."""
    width: int = 384
    """Clip width in pixels (a multiple of 8); with resize=bucket the width of a square or landscape source."""
    resize: str = "bucket"
    """How sources are brought to size, never cropping with the first two: bucket = MotionDirector's
    ``use_bucketing: True`` (all its published configs): the long side keeps its configured length, the short side
    is the closest of (configured - 64, configured - 128, at least 192) to the source's aspect
    (:mod:`gen4d.video.buckets`) | stretch = its ``use_bucketing: False``: exactly width x height | crop = scale to
    cover width x height and keep the centre."""
    stride: int = 1
    """Keep every stride-th frame of the source (MotionDirector's frame_step)."""
    start: int = 0
    """First source frame used."""
    max_clips: int = 0
    """At most this many clips per video (0: every whole clip; a shorter remainder is dropped)."""
    steps: int = 150
    """Training steps (one spatial + one temporal update each); step s trains clip s mod N."""
    seed: int = 0
    """Random seed (LoRA initialisation, noise, timesteps, frames, dropout)."""
    device: str = "auto"
    """auto | cpu | cuda."""
    precision: str = "auto"
    """Autocast precision: auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 (CUDA only) | bf16."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (much less memory, roughly 20-30% slower)."""
    sample_latents: bool = True
    """Sample the VAE posterior when caching latents (MotionDirector) rather than take its mean."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimizerSettings = field(default_factory=OptimizerSettings)
    paths: DualPathSettings = field(default_factory=DualPathSettings)
    checkpoint_every: int = 50
    """Steps between checkpoints (resumable state, and a LoRA folder with keep_checkpoint_loras)."""
    keep_checkpoint_loras: bool = True
    """Also write the LoRA at every checkpoint to DIR/lora_steps/step_XXXXXX/ (pick an earlier one if the
    final one overfits, as MotionDirector's checkpoint_index does)."""
    validation: ValidationSettings = field(default_factory=ValidationSettings)


PRESETS: dict[str, list[str]] = {
    # MotionDirector's config_single_video.yaml.
    "default": [],
    # config_single_video_24.yaml: 24 frames at ZeroScope's 576 x 320.
    "single-video-24": ["num_frames=24", "width=576", "height=320", "steps=300"],
    # config_multi_videos.yaml (its README: 300-500 steps are usually enough for 16-frame videos).
    "multi-video": ["steps=500", "optim.weight_decay=1e-4", "checkpoint_every=100", "validation.every=100"],
    # config_multi_images.yaml: appearance from images, one shared spatial LoRA, no temporal path.
    "appearance": ["mode=images", "paths.train_temporal=false", "paths.spatial_lora=single", "steps=1000", "optim.weight_decay=1e-4"],
    # A quick look: fewer, shorter, smaller clips.
    "fast": ["steps=50", "num_frames=8", "height=256", "width=256", "checkpoint_every=25"],
}


@dataclass
class ClipPixels:
    """A training clip before encoding."""

    pixels: Tensor
    """``[F, 3, H, W]`` in [0, 1]."""
    prompt: str
    """Its prompt."""
    source: str
    """File or folder it came from."""
    frames: list[int]
    """Frame indices in the source."""


RESIZE_MODES = ("bucket", "stretch", "crop")
"""The values of ``MotionTrainConfig.resize``."""


def _check_config(cfg: MotionTrainConfig) -> None:
    if cfg.mode not in ("video", "images"):
        raise Gen4DError(f"mode must be video or images, got {cfg.mode!r}")
    if cfg.resize not in RESIZE_MODES:
        raise Gen4DError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {cfg.resize!r}")
    for name in ("num_frames", "height", "width", "stride", "steps"):
        if getattr(cfg, name) < 1:
            raise Gen4DError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("start", "max_clips", "checkpoint_every"):
        if getattr(cfg, name) < 0:
            raise Gen4DError(f"{name} must not be negative, got {getattr(cfg, name)}")
    if cfg.validation.every < 0 or cfg.validation.steps < 1 or not 0.0 <= cfg.validation.noise_prior <= 1.0:
        raise Gen4DError("validation.every must be >= 0, validation.steps >= 1 and validation.noise_prior in [0, 1]")
    if cfg.height % 8 or cfg.width % 8:
        raise Gen4DError(f"height and width must be multiples of 8 (the VAE downsamples by 8), got {cfg.height}x{cfg.width}")
    if cfg.precision not in ("auto", "fp32", "fp16", "bf16"):
        raise Gen4DError(f"precision must be auto, fp32, fp16 or bf16, got {cfg.precision!r}")


def clip_size(cfg: MotionTrainConfig, source_height: int, source_width: int) -> tuple[int, int]:
    """``(height, width)`` in pixels the frames of a ``source_width x source_height`` source are trained at:
    its bucket (:func:`gen4d.video.buckets.bucket_size`) with ``resize=bucket``, else ``(cfg.height, cfg.width)``."""
    if cfg.resize == "bucket":
        w, h = bucket_size(cfg.width, cfg.height, source_width, source_height)
        return h, w
    return cfg.height, cfg.width


def fit_frames(frames: Sequence[np.ndarray], cfg: MotionTrainConfig) -> Tensor:
    """uint8 RGB frames ``[h, w, 3]`` of one source -> float32 ``[T, 3, H, W]`` in [0, 1] at :func:`clip_size`:
    scaled whole (bucket, stretch) or scaled to cover and centre-cropped (crop)."""
    h, w = clip_size(cfg, *frames[0].shape[:2])
    if cfg.resize == "crop":
        return torch.stack([resize_center_crop(f, h, w) for f in frames])
    return torch.stack([resize_stretch(f, h, w) for f in frames])


def _need_prompt(prompt: str | None, cfg: MotionTrainConfig, source: Path) -> str:
    text = prompt or cfg.prompt.strip()
    if not text:
        sidecar = source / "prompt.txt" if source.is_dir() else source.with_suffix(".txt")
        raise Gen4DError(f'no prompt for {source}: pass prompt="..." or write the prompt in {sidecar}')
    return text


def collect_clips(cfg: MotionTrainConfig) -> list[ClipPixels]:
    """Read and check every training clip of ``cfg`` (see the module docstring); writes nothing."""
    _check_config(cfg)
    if not cfg.input:
        raise Gen4DError("no input: pass a video file, a folder of frames or videos, or (mode=images) images")
    path = Path(cfg.input)
    if not path.exists():
        raise Gen4DError(f"input not found: {path}")
    clips: list[ClipPixels] = []
    if cfg.mode == "images":
        files = [path] if path.is_file() else find_images(path)
        if not files:
            raise Gen4DError(f"no images in {path} (mode=images expects .png/.jpg/... files)")
        for f in files:
            clips.append(ClipPixels(fit_frames([read_image_rgb(f)], cfg), _need_prompt(prompt_for(f), cfg, f), str(f), [0]))
        return clips
    sources = [path]
    if path.is_dir():
        if find_videos(path):
            sources = find_videos(path)
        elif not find_images(path):
            raise Gen4DError(f"no videos or frames in {path}: expected video files (.mp4, .gif, ...) or frames (frame_0001.png, ...)")
    for src in sources:
        frames = fit_frames(read_video_frames(src, None, cfg.stride, cfg.start), cfg)
        if len(frames) < cfg.num_frames:
            raise Gen4DError(
                f"{src} gives {len(frames)} frames (from frame {cfg.start}, stride {cfg.stride}), fewer than one "
                f"{cfg.num_frames}-frame clip; lower num_frames or stride"
            )
        prompt = _need_prompt(prompt_for(src), cfg, src)
        parts = split_clips(frames, cfg.num_frames)
        if cfg.max_clips:
            parts = parts[: cfg.max_clips]
        for k, part in enumerate(parts):
            first = k * cfg.num_frames
            idx = [cfg.start + cfg.stride * (first + j) for j in range(cfg.num_frames)]
            clips.append(ClipPixels(part, prompt, str(src), idx))
    return clips


def latents_path(folder: Path, index: int) -> Path:
    """``<folder>/clip_XXXX.safetensors``."""
    return folder / f"clip_{index:04d}.safetensors"


def latents_stage(clips: list[ClipPixels], cfg: MotionTrainConfig, device: torch.device, log=None) -> ArtifactStage:
    """Stage ``latents``: every clip encoded once by the VAE. An interrupted stage reuses the files that match."""

    def make(folder: Path) -> dict:
        todo = []
        for i, c in enumerate(clips):
            path = latents_path(folder, i)
            if path.exists():
                try:
                    _, prompt, meta = load_clip_latents(path)
                except (OSError, SafetensorError, ValueError):  # a damaged cache entry is encoded again
                    prompt, meta = None, {}
                size = [meta.get("height"), meta.get("width")]
                same = prompt == c.prompt and meta.get("source") == c.source and meta.get("frames") == c.frames
                if same and size == list(c.pixels.shape[-2:]):
                    continue
            todo.append(i)
        if todo:
            vae = load_pretrained(AutoencoderKL, cfg.model, subfolder="vae").to(device).eval().requires_grad_(False)
            for i in todo:
                c = clips[i]
                g = torch.Generator().manual_seed(cfg.seed * 100_003 + i) if cfg.sample_latents else None
                latents = encode_clip(vae, c.pixels, g)
                height, width = c.pixels.shape[-2:]
                meta = {"source": c.source, "frames": c.frames, "height": int(height), "width": int(width),
                        "scaling_factor": float(vae.config.scaling_factor)}
                save_clip_latents(latents_path(folder, i), latents, c.prompt, meta)
            del vae
        if log is not None:
            log(f"latents: encoded {len(todo)} clip(s), reused {len(clips) - len(todo)}")
        return {"clips": len(clips)}

    return ArtifactStage(LATENTS_STAGE, make)


def read_training_clips(run: RunDir, count: int) -> list[TrainingClip]:
    """The clips of the ``latents`` stage, with their prompts and sources."""
    out = []
    for i in range(count):
        latents, prompt, meta = load_clip_latents(latents_path(run.stage_dir(LATENTS_STAGE), i))
        out.append(TrainingClip(latents, prompt, meta.get("source", ""), meta.get("frames", [])))
    return out


def _slug(text: str, limit: int = 48) -> str:
    keep = "".join(c if c.isalnum() else "_" for c in text.strip().lower())
    return "_".join(p for p in keep.split("_") if p)[:limit] or "prompt"


def validation_preview(cfg: MotionTrainConfig, trainer: MotionTrainer, device: torch.device):
    """The stage's preview: one video per prompt sampled with the training UNet itself (temporal LoRA on, spatial
    off, :meth:`MotionTrainer.inference`); the sampler's VAE and text encoder are loaded at the first preview."""
    v = cfg.validation
    prompts = list(v.prompts) or sorted({c.prompt for c in trainer.clips})
    state: dict = {}

    def preview(model: MotionTrainer, step: int, folder: Path) -> None:
        with model.inference() as unet:
            if "t2v" not in state:  # the sampler's VAE and text encoder, around the UNet being trained
                state["t2v"] = TextToVideo(cfg.model, device=device, unet=unet)
            t2v = state["t2v"]
            t2v.unet = unet
            prior = model.clips[0].latents[None] if v.noise_prior > 0 else None
            for prompt in prompts:
                sample = t2v.generate(
                    prompt, num_frames=cfg.num_frames, height=cfg.height, width=cfg.width, steps=v.steps,
                    guidance_scale=v.guidance_scale, seed=v.seed, prior_latents=prior, noise_prior=v.noise_prior,
                )
                write_video(folder / f"step_{step:06d}_{_slug(prompt)}.mp4", to_uint8(sample.frames.permute(0, 2, 3, 1)), fps=8)

    return preview


def training_stage(cfg: MotionTrainConfig, trainer: MotionTrainer, device: torch.device, on_checkpoint=None) -> Stage:
    """Stage ``motion``: the trainer's dual-path step as the stage's update (its own two optimisers)."""
    return Stage(
        name=STAGE, iterations=cfg.steps, seed=cfg.seed, make_optimizers=lambda model: model.optimizers,
        update=lambda model, optimizers, step, generator: model.step(step, generator),
        preview=validation_preview(cfg, trainer, device) if cfg.validation.every > 0 else None,
        preview_every=cfg.validation.every, checkpoint_every=cfg.checkpoint_every,
        extra_state=(trainer.scaler_state, trainer.load_scaler_state), on_checkpoint=on_checkpoint, record=True,
    )


def requirements(cfg: MotionTrainConfig) -> list[Requirement]:
    return [ModelRequirement(cfg.model, "the text-to-video model trained on")]


def run_motion_train(
    cfg: MotionTrainConfig,
    out: str | Path,
    command: str = "gen4d motion train",
    quiet: bool = False,
    stop_after_step: int | None = None,
) -> dict:
    """Train a motion LoRA (see the module docstring). Validates the inputs before touching ``out``.

    Previews (every ``cfg.validation.every`` steps) go to ``DIR/stages/motion/preview``.
    ``stop_after_step``: for tests, stop right after the checkpoint at that step (returns ``{}``).
    Returns the metrics written to ``DIR/metrics.json``.
    """
    clips = collect_clips(cfg)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    # the smallest file of the model first: a missing model is reported before anything is written
    scheduler = load_pretrained(DDPMScheduler, cfg.model, subfolder="scheduler")
    run = RunDir(out)
    run.prepare(cfg, command)
    sizes = sorted({f"{c.pixels.shape[-1]}x{c.pixels.shape[-2]}" for c in clips})
    run.log(f"inputs: {len(clips)} clip(s) of {clips[0].pixels.shape[0]} frame(s) at {', '.join(sizes)} (resize={cfg.resize})")

    run_artifact(run, latents_stage(clips, cfg, device, log=run.log))
    training = read_training_clips(run, len(clips))
    encoder = PromptEncoder(cfg.model, device=device)
    embeddings = encoder.encode([c.prompt for c in training])
    del encoder  # the text encoder is not needed while training

    unet = load_pretrained(UNet3DConditionModel, cfg.model, subfolder="unet").to(device)
    trainer = MotionTrainer(
        unet, training, embeddings, scheduler.alphas_cumprod, scheduler.config.prediction_type,
        lora=cfg.lora, optim=cfg.optim, paths=cfg.paths, seed=cfg.seed, precision=precision,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    frames = 1 if cfg.mode == "images" else cfg.num_frames
    clip_sizes = [[int(c.pixels.shape[-2]), int(c.pixels.shape[-1])] for c in clips]  # [height, width] per clip
    extra = {
        "steps": cfg.steps, "prompts": sorted({c.prompt for c in training}), "clips": len(training),
        "spatial_lora": cfg.paths.spatial_lora, "resize": cfg.resize, "clip_sizes": clip_sizes,
    }

    def save_lora(folder: Path, steps_done: int) -> None:
        save_motion_lora(unet, folder, base_model=cfg.model, num_frames=frames, height=cfg.height, width=cfg.width,
                         extra={**extra, "steps": steps_done})

    def on_checkpoint(step: int) -> None:
        if cfg.keep_checkpoint_loras:
            save_lora(run.root / "lora_steps" / f"step_{step:06d}", step)

    stage = training_stage(cfg, trainer, device, on_checkpoint)
    _, stats = run_stages(run, [stage], lambda: trainer, trainer.load_tensors, quiet=quiet, stop_after_step=stop_after_step)
    if not run.stage_complete(STAGE):  # stopped on request (tests)
        return {}
    history = stats[STAGE]["history"]
    losses = {"spatial": history.get("spatial", [None] * cfg.steps), "temporal": history.get("temporal", [None] * cfg.steps)}
    save_lora(run.root / "lora", cfg.steps)

    def tail_mean(values: list) -> float | None:
        vals = [v for v in values[-10:] if v is not None]
        return sum(vals) / len(vals) if vals else None

    metrics = {
        "seconds": stats[STAGE]["seconds"],
        "steps": cfg.steps,
        "losses": losses,
        "loss_temporal_last10": tail_mean(losses["temporal"]),
        "loss_spatial_last10": tail_mean(losses["spatial"]),
        "clips": len(training),
        "num_frames": frames,
        "height": cfg.height,
        "width": cfg.width,
        "resize": cfg.resize,
        "clip_sizes": clip_sizes,
        "adapters": lora_adapters(unet),
        "device": str(device),
        "precision": precision,
        "lora": "lora",
    }
    run.write_metrics(metrics)
    run.log(f"done: LoRA in {run.root / 'lora'} ({len(training)} clips, {cfg.steps} steps)")
    return metrics


RECIPE = Recipe(
    name="motiondirector",
    commands=("motion train",),
    description="MotionDirector: dual-path (spatial + temporal) LoRA on a text-to-video model from reference video(s)",
    config=MotionTrainConfig,
    presets=PRESETS,
    run=run_motion_train,
    options=(Option("--prompt", "prompt", "what the video shows (else read from a .txt next to each video)"),),
    iters=lambda n: {"steps": n},
    requirements=requirements,
    headline=lambda m: f"{m['steps']} steps  {m['seconds']:.0f} s training",
    outputs=lambda out: [("motion LoRA", f"{out / 'lora'}  (use it with: gen4d motion sample \"PROMPT\" --motion {out} --out OUT)")],
)


def build_config(preset: str, overrides: list[str], base: dict | None = None) -> MotionTrainConfig:
    return RECIPE.build_config(preset, overrides, base)
