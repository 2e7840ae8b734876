"""Seconds and peak memory of MotionDirector (``gen4d motion train`` / ``motion sample``) with ZeroScope-size models.

    python bench/bench_motion.py --device cuda    # the measurement: builds the models once into --cache, then times
    python bench/bench_motion.py --small          # tiny models at a tiny size on the CPU: checks this script end to end

The networks are built at random weights from the published ZeroScope v2 576w configs in ``bench/model_configs``
(``zeroscope-v2-576w__*``: ``UNet3DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel``; a locally written CLIP
tokenizer, whose vocabulary does not change the cost) by ``bench_guidance.build``, saved in the Hub layout and loaded
back through gen4d's own loading code (``load_pretrained``, ``PromptEncoder``, ``TextToVideo``); the compute does not
depend on the weight values. Settings are the recipes' defaults (MotionDirector's single-video config): 16 frames at
384x384, rank-32 LoRAs, AdamW, fp16 autocast on CUDA, 150 steps; sampling with 30 DDIM steps at guidance 12 (one
batched U-Net pass for the conditional and unconditional halves) from a noise prior of 0.5 (50-step DDIM inversion).

Parts, in the order they run:

* ``latent caching``: ``encode_clip`` (the VAE encoder, posterior sampled) of one clip, as ``motion train`` caches it;
  the first call is reported apart;
* ``train step``: the real ``MotionTrainer.step``, one spatial update (one frame, temporal layers skipped) and one
  temporal update (the whole clip), with the spatial path never dropped (``paths.spatial_dropout=0``, the dearer
  case). ``--warmup`` steps first (the first one also counts the FLOPs with ``torch.utils.flop_counter``,
  recomputation included), then ``--steps`` timed steps: median, mean and the split between the paths; the
  projection to the recipe's 150 steps is median x 150 (and with MotionDirector's spatial dropout of 0.2, which
  skips a fifth of the spatial updates). Once with gradient checkpointing (the recipe's default), once without
  (``--checkpointing``); running out of memory is reported, not raised;
* ``sampling``: the trained temporal LoRA loaded into ``TextToVideo`` (``load_motion_adapters``), then one
  ``generate`` split into the DDIM inversion, the DDIM sampling and the VAE decoding, after a 1-step warm-up.

Peak memory is ``torch.cuda.max_memory_allocated``, reset at the start of each part (CUDA only). Targets: 150 training
steps in <= 1 min on one H100 at <= 12 GB; for scale, MotionDirector itself takes 1.5-4.5 min for 150 steps on an
A5000 at about 14 GB.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from gen4d.devices import resolve_device, resolve_precision
from gen4d.guidance.prompts import PromptEncoder
from gen4d.models.registry import load_pretrained
from gen4d.recipes.motion import MotionTrainConfig, build_config
from gen4d.testing import tiny_model_dir
from gen4d.video.lora_files import save_motion_lora
from gen4d.video.sampling import (
    DEFAULT_GUIDANCE,
    DEFAULT_INVERSION_STEPS,
    DEFAULT_STEPS,
    TextToVideo,
    load_motion_adapters,
)
from gen4d.video.train import MotionTrainer, TrainingClip, encode_clip
from gen4d.video.unet3d import disable_gradient_checkpointing, enable_gradient_checkpointing

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers of the sibling benchmarks
import bench_guidance
from bench_dg4d import Meter, run_and_record
from bench_guidance import _sync, build, matmul_tflops

PROMPT = "a person riding a bicycle along a road"
NOISE_PRIOR = 0.5
"""MotionDirector's noise prior for a motion learned from one video."""
TARGET_SECONDS, TARGET_GIB = 60.0, 12.0 * 1e9 / 2**30
ANCHOR_SECONDS, ANCHOR_GIB = (90.0, 270.0), 14.0 * 1e9 / 2**30
"""MotionDirector, 150 steps on one A5000."""
# --small: what the tiny text-to-video model accepts, and few steps of everything.
SMALL = {"frames": 4, "size": 64, "steps": 3, "warmup": 1, "sample_steps": 3, "inversion_steps": 3}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _max(*values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _pixels(frames: int, size: int) -> torch.Tensor:
    """A clip ``[F, 3, H, W]`` in [0, 1]: smooth moving stripes (the VAE's cost does not depend on the content)."""
    t = torch.linspace(0, 1, frames).reshape(frames, 1, 1, 1)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    phase = torch.tensor([0.0, 2.0, 4.0]).reshape(1, 3, 1, 1)
    return 0.5 + 0.5 * torch.sin(12 * (x + 0.3 * y + 0.2 * t) + phase)


# ----------------------------------------------------------------------------------------------- parts
def time_latent_caching(folder: Path, pixels: torch.Tensor, device: torch.device) -> tuple[dict, torch.Tensor]:
    """VAE loading, then ``encode_clip`` twice (first call, then the timed one), as ``cache_latents`` loads and calls
    it. Returns the record and the latents ``[C, F, h, w]``."""
    from diffusers import AutoencoderKL

    start = time.perf_counter()
    vae = load_pretrained(AutoencoderKL, str(folder), subfolder="vae").to(device).eval().requires_grad_(False)
    _sync(device)
    load = time.perf_counter() - start
    meter = Meter(device)
    with meter.part("first"):
        encode_clip(vae, pixels, torch.Generator().manual_seed(0))
    with meter.part("encode"):
        latents = encode_clip(vae, pixels, torch.Generator().manual_seed(0))
    del vae
    _free(device)
    record = {
        "load_seconds": load, "seconds": meter.seconds["encode"], "first_call_seconds": meter.seconds["first"],
        "peak_gib": _max(*meter.peak_gib.values()), "frames": pixels.shape[0], "latents": list(latents.shape),
    }
    return record, latents


def time_training(trainer, first_step: int, warmup: int, steps: int, projected_steps: int, spatial_dropout: float,
                  count_flops: bool) -> dict:
    """``warmup`` + ``steps`` calls of ``trainer.step`` from step ``first_step``; see the module docstring."""
    from torch.utils.flop_counter import FlopCounterMode

    device = trainer.device
    _reset_peak(device)
    flops = None
    for s in range(first_step, first_step + warmup):
        if count_flops and flops is None:
            counter = FlopCounterMode(display=False)
            with counter:
                trainer.step(s)
            flops = counter.get_total_flops()
        else:
            trainer.step(s)
    _sync(device)
    warm_peak = _peak_gib(device)
    meter = Meter(device)
    per_step = []
    with mock.patch.object(trainer, "spatial_step", meter.wrap("spatial", trainer.spatial_step)), \
            mock.patch.object(trainer, "temporal_step", meter.wrap("temporal", trainer.temporal_step)):
        for s in range(first_step + warmup, first_step + warmup + steps):
            _sync(device)
            start = time.perf_counter()
            trainer.step(s)
            _sync(device)
            per_step.append(time.perf_counter() - start)
    median = statistics.median(per_step)
    spatial = meter.seconds.get("spatial", 0.0) / steps
    return {
        "status": "ok", "step_seconds": per_step, "median_seconds": median, "mean_seconds": statistics.fmean(per_step),
        "spatial_seconds": spatial, "temporal_seconds": meter.seconds.get("temporal", 0.0) / steps,
        "projected_steps": projected_steps, "projected_seconds": median * projected_steps,
        "spatial_dropout": spatial_dropout, "projected_with_dropout_seconds": (median - spatial_dropout * spatial) * projected_steps,
        "peak_gib": _max(warm_peak, *meter.peak_gib.values()), "step_tflop": None if flops is None else flops / 1e12,
    }


def run_training(folder: Path, latents: torch.Tensor, embeddings: torch.Tensor, args, device: torch.device,
                 precision: str, lora_dir: Path) -> tuple[list[dict], float]:
    """The recipe's UNet and ``MotionTrainer`` (its default settings); one :func:`time_training` per checkpointing
    setting asked for. Writes the trained LoRA to ``lora_dir`` (for the sampler). Returns (records, UNet load s)."""
    from diffusers import DDPMScheduler, UNet3DConditionModel

    cfg = build_config("default", [f"num_frames={args.frames}", f"height={args.size}", f"width={args.size}"])
    scheduler = load_pretrained(DDPMScheduler, str(folder), subfolder="scheduler")
    start = time.perf_counter()
    unet = load_pretrained(UNet3DConditionModel, str(folder), subfolder="unet").to(device)
    _sync(device)
    load = time.perf_counter() - start
    paths = dataclasses.replace(cfg.paths, spatial_dropout=0.0)  # both paths at every timed step
    trainer = MotionTrainer(
        unet, [TrainingClip(latents, PROMPT)], embeddings, scheduler.alphas_cumprod, scheduler.config.prediction_type,
        lora=cfg.lora, optim=cfg.optim, paths=paths, seed=cfg.seed, precision=precision, gradient_checkpointing=True,
    )
    settings = {"on": [True], "off": [False], "both": [True, False]}[args.checkpointing]
    records, step = [], 0
    for checkpointing in settings:
        (enable_gradient_checkpointing if checkpointing else disable_gradient_checkpointing)(unet)
        _free(device)
        failed = None
        try:
            record = time_training(trainer, step, args.warmup, args.steps, cfg.steps, cfg.paths.spatial_dropout, not args.no_flops)
        except torch.OutOfMemoryError as e:
            failed = str(e).splitlines()[0]
        if failed is not None:  # outside the handler, so that the traceback's tensors are gone
            record = {"status": "out of memory", "error": failed, "peak_gib": _peak_gib(device)}
            for opt in trainer.optimizers.values():
                opt.zero_grad(set_to_none=True)
            # a step cut short leaves the gradient scaler between step() and update(): start the next setting afresh
            trainer.scaler = torch.amp.GradScaler(device.type, enabled=trainer.scaler.is_enabled())
            _free(device)
        records.append({"checkpointing": checkpointing, **record})
        step += args.warmup + args.steps
        if record["status"] == "ok" and not (lora_dir / "lora_config.json").exists():
            save_motion_lora(unet, lora_dir, base_model=str(folder), num_frames=args.frames, height=args.size, width=args.size)
    del trainer, unet
    _free(device)
    return records, load


def time_sampling(folder: Path, lora_dir: Path | None, prior: torch.Tensor, args, device: torch.device, precision: str) -> dict:
    """``TextToVideo`` with the trained temporal LoRA; a 1-step warm-up ``generate``, then one timed ``generate``
    split into inversion, sampling and decoding."""
    start = time.perf_counter()
    t2v = TextToVideo(str(folder), device, precision)
    adapters = load_motion_adapters(t2v.unet, temporal=lora_dir) if lora_dir is not None else {}
    _sync(device)
    load = time.perf_counter() - start
    kwargs = {"num_frames": args.frames, "height": args.size, "width": args.size, "guidance_scale": args.guidance,
              "seed": 0, "prior_latents": prior[None], "noise_prior": NOISE_PRIOR}
    t2v.generate(PROMPT, steps=1, inversion_steps=1, **kwargs)
    meter = Meter(device)
    with mock.patch.object(t2v, "invert", meter.wrap("inversion", t2v.invert)), \
            mock.patch.object(t2v, "sample", meter.wrap("sampling", t2v.sample)), \
            mock.patch.object(t2v, "decode", meter.wrap("decode", t2v.decode)):
        _reset_peak(device)
        start = time.perf_counter()
        sample = t2v.generate(PROMPT, steps=args.sample_steps, inversion_steps=args.inversion_steps, **kwargs)
        _sync(device)
        total = time.perf_counter() - start
    del t2v
    _free(device)
    return {
        "load_seconds": load, "adapters": adapters, "total_seconds": total,
        "inversion_seconds": meter.seconds["inversion"], "inversion_steps": args.inversion_steps,
        "sampling_seconds": meter.seconds["sampling"], "sampling_steps": args.sample_steps, "guidance_scale": args.guidance,
        "decode_seconds": meter.seconds["decode"], "frames": list(sample.frames.shape),
        "peak_gib": _max(*meter.peak_gib.values()), "part_peak_gib": meter.peak_gib, "noise_prior": NOISE_PRIOR,
    }


# ----------------------------------------------------------------------------------------------- the run
def run(args) -> dict:
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    built_here = False
    if args.small:
        folder = tiny_model_dir("zeroscope")
    else:
        folder = Path(args.cache) / "zeroscope"
        built_here = not (folder / "done").exists()
        if built_here:
            print(f"building the published-size ZeroScope models into {folder} ...", flush=True)
        build("zeroscope", Path(args.cache))
    work = Path(tempfile.mkdtemp(prefix="bench-motion-"))
    try:
        start = time.perf_counter()
        encoder = PromptEncoder(str(folder), cache_dir=False, device=device)
        embeddings = encoder.encode([PROMPT])
        _sync(device)
        text_seconds = time.perf_counter() - start
        del encoder
        _free(device)

        caching, latents = time_latent_caching(folder, _pixels(args.frames, args.size), device)
        lora_dir = work / "lora"
        training, unet_load = run_training(folder, latents, embeddings, args, device, precision, lora_dir)
        sampling = time_sampling(folder, lora_dir if lora_dir.exists() else None, latents, args, device, precision)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if built_here and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"removed {folder} (--keep keeps it)")

    tflops = matmul_tflops(device, torch.float16 if device.type == "cuda" else torch.float32)
    for r in training:
        if r.get("step_tflop") is not None:
            r["floor_seconds"] = r["step_tflop"] / tflops
    machine = {"platform": platform.platform(), "device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    return {
        "machine": machine,
        "settings": {
            "small": args.small, "model": "tiny" if args.small else "zeroscope-v2-576w (random weights)",
            "frames": args.frames, "height": args.size, "width": args.size, "precision": precision,
            "steps": args.steps, "warmup": args.warmup, "prompt": PROMPT,
        },
        "loading": {"text_encoder_and_prompt_seconds": text_seconds, "vae_seconds": caching.pop("load_seconds"),
                    "unet_seconds": unet_load, "sampler_seconds": sampling.pop("load_seconds")},
        "latent_caching": caching,
        "training": training,
        "sampling": sampling,
        "matmul_tflops": tflops,
        "targets": targets(training, machine),
        "recipe_estimate": recipe_estimate(training, sampling),
    }


def recipe_estimate(training: list[dict], sampling: dict) -> dict | None:
    """A default ``gen4d motion train`` run also renders a preview every ``validation.every`` steps (DDIM with CFG,
    noise prior as configured, decoding) with the training UNet: the checkpointed steps plus those previews, each
    estimated from the measured sampling at the preview's step counts. Loading and latent caching come on top."""
    main = next((r for r in training if r["checkpointing"] and r["status"] == "ok"), None)
    if main is None:
        return None
    v = MotionTrainConfig().validation
    previews = main["projected_steps"] // v.every if v.every > 0 else 0
    preview = v.steps * sampling["sampling_seconds"] / sampling["sampling_steps"] + sampling["decode_seconds"]
    if v.noise_prior > 0:
        preview += sampling["inversion_seconds"]
    return {"previews": previews, "preview_seconds": preview, "seconds": main["projected_seconds"] + previews * preview}


def targets(training: list[dict], machine: dict) -> dict:
    """The H100 target and the MotionDirector anchor, against the checkpointed run (the recipe's default)."""
    main = next((r for r in training if r["checkpointing"] and r["status"] == "ok"), None)
    out = {"seconds": TARGET_SECONDS, "gib": TARGET_GIB, "anchor_seconds": list(ANCHOR_SECONDS), "anchor_gib": ANCHOR_GIB,
           "met": None, "device": machine.get("gpu", machine["device"])}
    if main is not None and main["peak_gib"] is not None:
        out["met"] = main["projected_seconds"] <= TARGET_SECONDS and main["peak_gib"] <= TARGET_GIB
    elif any(r["checkpointing"] and r["status"] == "out of memory" for r in training):
        out["met"] = False
    return out


# ----------------------------------------------------------------------------------------------- printing
def print_table(record: dict) -> None:
    s = record["settings"]

    def gib(value) -> str:
        return "-" if value is None else f"{value:.2f}"

    def row(part: str, seconds: float | None = None, per_step: float | None = None, steps: int | None = None,
            peak: float | None = None, note: str = "") -> None:
        cells = ["" if seconds is None else f"{seconds:.3f}", "" if per_step is None else f"{per_step:.3f}",
                 "" if steps is None else str(steps), "" if peak is None else gib(peak)]
        print(f"{part:<40} {cells[0]:>9} {cells[1]:>8} {cells[2]:>6} {cells[3]:>9}  {note}".rstrip())

    m = record["machine"]
    print(f"\nMotionDirector, {s['model']}, {s['frames']} frames at {s['width']}x{s['height']}, {s['precision']}, "
          f"{m.get('gpu', m['device'])}")
    print(f"{'part':<40} {'seconds':>9} {'s/step':>8} {'steps':>6} {'peak GiB':>9}")
    ld = record["loading"]
    row("load: text encoder + prompt embedding", ld["text_encoder_and_prompt_seconds"])
    row("load: VAE", ld["vae_seconds"])
    row("load: UNet", ld["unet_seconds"])
    row("load: sampler (all networks + LoRA)", ld["sampler_seconds"])
    c = record["latent_caching"]
    row(f"latent caching: VAE encode, {c['frames']} frames", c["seconds"], peak=c["peak_gib"],
        note=f"first call {c['first_call_seconds']:.3f} s")
    for r in record["training"]:
        name = "train step, " + ("checkpointing" if r["checkpointing"] else "no checkpointing")
        if r["status"] != "ok":
            row(name, peak=r["peak_gib"], note=r["status"].upper())
            continue
        times = r["step_seconds"]
        row(f"{name} (median)", per_step=r["median_seconds"], steps=len(times), peak=r["peak_gib"],
            note=f"mean {r['mean_seconds']:.3f}, min {min(times):.3f}, max {max(times):.3f}")
        row("  spatial path (mean)", per_step=r["spatial_seconds"])
        row("  temporal path (mean)", per_step=r["temporal_seconds"])
        row(f"  {r['projected_steps']} steps (median x {r['projected_steps']})", r["projected_seconds"],
            note=f"{r['projected_with_dropout_seconds']:.3f} s with spatial dropout {r['spatial_dropout']:g}")
        if r.get("step_tflop") is not None:
            recompute = ", recomputation included" if r["checkpointing"] else ""
            row("  floor at the matmul rate", per_step=r["floor_seconds"], note=f"{r['step_tflop']:.4g} TFLOP/step{recompute}")
    p = record["sampling"]
    parts = p["part_peak_gib"]
    row(f"DDIM inversion ({p['inversion_steps']} steps)", p["inversion_seconds"], p["inversion_seconds"] / p["inversion_steps"],
        p["inversion_steps"], parts.get("inversion"))
    row(f"DDIM sampling ({p['sampling_steps']} steps, CFG {p['guidance_scale']:g})", p["sampling_seconds"],
        p["sampling_seconds"] / p["sampling_steps"], p["sampling_steps"], parts.get("sampling"))
    row(f"VAE decode ({p['frames'][0]} frames)", p["decode_seconds"], peak=parts.get("decode"))
    row("sampling in all (generate)", p["total_seconds"], peak=p["peak_gib"], note=f"noise prior {p['noise_prior']:g}")
    print(f"matmul rate on this device: {record['matmul_tflops']:.1f} TFLOP/s")

    t = record["targets"]
    main = next((r for r in record["training"] if r["checkpointing"] and r["status"] == "ok"), None)
    if main is None:
        print("target (one H100): " + ("NOT met, out of memory" if t["met"] is False else "no checkpointed training run to compare"))
        return
    if t["met"] is None:
        print(f"target (one H100: 150 steps <= {TARGET_SECONDS:.0f} s, <= {TARGET_GIB:.1f} GiB = 12 GB): not checked "
              f"(peak memory is measured on CUDA only)")
    else:
        where = "" if "H100" in t["device"] else f" (measured on {t['device']}, not an H100)"
        print(f"target (one H100: 150 steps <= {TARGET_SECONDS:.0f} s, <= {TARGET_GIB:.1f} GiB = 12 GB): "
              f"{main['projected_seconds']:.1f} s, {main['peak_gib']:.2f} GiB: {'met' if t['met'] else 'NOT met'}{where}")
    e = record["recipe_estimate"]
    print(f"a default `motion train` run: {main['projected_seconds']:.1f} s of steps + {e['previews']} previews of "
          f"~{e['preview_seconds']:.1f} s = ~{e['seconds']:.1f} s, plus loading and latent caching")
    lo, hi = ANCHOR_SECONDS
    ours = main["projected_seconds"]
    print(f"MotionDirector on an A5000: 150 steps in {lo:.0f}-{hi:.0f} s at ~{ANCHOR_GIB:.1f} GiB (14 GB); here {ours:.1f} s "
          f"at {gib(main['peak_gib'])} GiB, {lo / ours:.2g}-{hi / ours:.2g}x its speed")


def parser() -> argparse.ArgumentParser:
    defaults = MotionTrainConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available; --small: cpu)")
    ap.add_argument("--small", action="store_true", help="tiny random models at a tiny size (CPU check of this script)")
    ap.add_argument("--frames", type=int, default=None, help=f"frames per clip (default {defaults.num_frames}; --small {SMALL['frames']})")
    ap.add_argument("--size", type=int, default=None, help=f"height = width in pixels (default {defaults.height}; --small {SMALL['size']})")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per setting (default 10; --small 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed training steps first (default 2; --small 1)")
    ap.add_argument("--sample-steps", type=int, default=None, help=f"DDIM sampling steps (default {DEFAULT_STEPS}; --small 3)")
    ap.add_argument("--inversion-steps", type=int, default=None,
                    help=f"DDIM inversion steps of the noise prior (default {DEFAULT_INVERSION_STEPS}; --small 3)")
    ap.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale")
    ap.add_argument("--precision", default="auto", help="auto (fp16 autocast on CUDA, fp32 on the CPU) | fp32 | fp16 | bf16")
    ap.add_argument("--checkpointing", default="both", choices=["both", "on", "off"], help="gradient checkpointing settings to time")
    ap.add_argument("--no-flops", action="store_true", help="do not count the FLOPs of a training step")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/gen4d-published-size"), help="where the built models are kept")
    ap.add_argument("--keep", action="store_true", help="keep the models this run built in --cache (default: remove them at the end)")
    ap.add_argument("--configs", type=Path, default=None, help="folder of published configs (default: bench/model_configs)")
    ap.add_argument("--json", type=Path, default=None, help="default: bench/results/motion.json (--small: motion_small.json)")
    return ap


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the size defaults (published or ``--small``) and check them; raises SystemExit on bad values."""
    defaults = MotionTrainConfig()
    big = {"frames": defaults.num_frames, "size": defaults.height, "steps": 10, "warmup": 2,
           "sample_steps": DEFAULT_STEPS, "inversion_steps": DEFAULT_INVERSION_STEPS}
    for key, value in (SMALL if args.small else big).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device is None:
        args.device = "cpu" if args.small or not torch.cuda.is_available() else "cuda"
    if args.configs is not None:
        bench_guidance.CONFIGS = args.configs
    if args.size % 8:
        raise SystemExit(f"--size must be a multiple of 8 (the VAE downsamples by 8), got {args.size}")
    if args.frames < 2 or args.steps < 1 or args.warmup < 0 or args.sample_steps < 1 or args.inversion_steps < 1:
        raise SystemExit("--frames must be >= 2 (the temporal path), --steps, --sample-steps, --inversion-steps >= 1, --warmup >= 0")
    if args.json is None:
        args.json = Path(__file__).resolve().parent / "results" / ("motion_small.json" if args.small else "motion.json")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_and_record(run, print_table, resolve_args(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
