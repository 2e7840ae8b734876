"""Seconds and peak memory per SDS step of each prior at its published size (random weights).

Each prior's networks are built from the published architecture configs in ``bench/model_configs`` (compute
cost does not depend on weight values), saved in the Hub layout to ``--cache`` and loaded back through the
prior's own ``from_pretrained`` code, then timed at the seeds' batch and resolution:

    sd21      SD 2.1 base text SDS, 1 image at 512x512 (CFG batch 2)
    mvdream   MVDream, 4 views at 256x256
    zero123   Stable-Zero123, 1 view at 256x256
    zeroscope ZeroScope v2, 16 frames rendered at 288x160, upsampled to 576x320, VAE gradient through 4 frames

    python bench/bench_guidance.py --device cuda [--priors sd21 mvdream] [--precision fp16 bf16] [--steps 5]

Also prints the floor: the time the step's FLOPs (counted by ``torch.utils.flop_counter``) would take at the
measured matrix throughput (a large matmul in the same precision timed on the same device).

:func:`build` also writes Zero123-XL (``zero123-xl``) and SVD img2vid (``svd``), for ``bench_dg4d.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from gen4d.guidance.base import Conditioning

CONFIGS = Path(__file__).resolve().parent / "model_configs"
"""The published architecture configs (copied into the repository, so they travel with it to a GPU machine)."""


def _cfg(name: str) -> dict:
    path = Path(CONFIGS) / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: pass --configs DIR (the folder of published config.json files)")
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def _save_text_stack(folder: Path, text_config: dict) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    from gen4d.testing.tokenizer import write_tiny_clip_tokenizer

    # A locally written tokenizer: its ids are a subset of the real vocabulary, which is all timing needs.
    write_tiny_clip_tokenizer(folder / "tokenizer", model_max_length=text_config.get("max_position_embeddings", 77))
    CLIPTextModel(CLIPTextConfig(**text_config)).save_pretrained(folder / "text_encoder")


BUILD_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def build(prior: str, root: Path) -> Path:
    """Write the published-size random model of ``prior`` under ``root`` (once) and return its folder."""
    folder = root / prior
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device(BUILD_DEVICE):  # random initialisation of ~1e9 parameters is much faster on a GPU
        _build(prior, folder)
    (folder / "done").write_text("ok\n")
    return folder


def _build(prior: str, folder: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        UNet2DConditionModel,
        UNet3DConditionModel,
    )

    if prior == "sd21":
        UNet2DConditionModel.from_config(_cfg("sd21-base__unet")).save_pretrained(folder / "unet")
        AutoencoderKL.from_config(_cfg("sd21-base__vae")).save_pretrained(folder / "vae")
        _save_text_stack(folder, _cfg("sd21-base__text_encoder"))
        DDPMScheduler.from_config(_cfg("sd21-base__scheduler")).save_pretrained(folder / "scheduler")
    elif prior == "mvdream":
        from gen4d.guidance.mvdream_checkpoint import unet_config_from_mvdream

        UNet2DConditionModel.from_config(unet_config_from_mvdream(_cfg("mvdream-sd21__unet"))).save_pretrained(folder / "unet")
        AutoencoderKL.from_config(_cfg("mvdream-sd21__vae")).save_pretrained(folder / "vae")
        _save_text_stack(folder, _cfg("sd21-base__text_encoder"))
        DDIMScheduler.from_config(_cfg("mvdream-sd21__scheduler")).save_pretrained(folder / "scheduler")
    elif prior in ("zero123", "zero123-xl"):
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from gen4d.guidance.zero123 import CLIPCameraProjection

        name = "stable-zero123-ashawkey" if prior == "zero123" else "zero123-xl-ashawkey"
        UNet2DConditionModel.from_config(_cfg(f"{name}__unet")).save_pretrained(folder / "unet")
        AutoencoderKL.from_config(_cfg(f"{name}__vae")).save_pretrained(folder / "vae")
        CLIPVisionModelWithProjection(CLIPVisionConfig(**_cfg(f"{name}__image_encoder"))).save_pretrained(folder / "image_encoder")
        CLIPCameraProjection(**_cfg(f"{name}__clip_camera_projection")).save_pretrained(folder / "clip_camera_projection")
        DDIMScheduler.from_config(_cfg(f"{name}__scheduler")).save_pretrained(folder / "scheduler")
    elif prior == "svd":
        from diffusers import (
            AutoencoderKLTemporalDecoder,
            EulerDiscreteScheduler,
            UNetSpatioTemporalConditionModel,
        )
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        UNetSpatioTemporalConditionModel.from_config(_cfg("svd-img2vid__unet")).save_pretrained(folder / "unet")
        AutoencoderKLTemporalDecoder.from_config(_cfg("svd-img2vid__vae")).save_pretrained(folder / "vae")
        CLIPVisionModelWithProjection(CLIPVisionConfig(**_cfg("svd-img2vid__image_encoder"))).save_pretrained(folder / "image_encoder")
        EulerDiscreteScheduler.from_config(_cfg("svd-img2vid__scheduler")).save_pretrained(folder / "scheduler")
    elif prior == "zeroscope":
        UNet3DConditionModel.from_config(_cfg("zeroscope-v2-576w__unet")).save_pretrained(folder / "unet")
        AutoencoderKL.from_config(_cfg("zeroscope-v2-576w__vae")).save_pretrained(folder / "vae")
        _save_text_stack(folder, _cfg("zeroscope-v2-576w__text_encoder"))
        DDPMScheduler.from_config(_cfg("zeroscope-v2-576w__scheduler")).save_pretrained(folder / "scheduler")
    else:
        raise SystemExit(f"unknown prior {prior!r}")


def make_step(prior: str, folder: Path, device: torch.device, precision: str, small: bool = False):
    """Build the prior through its loading code; return (step function, U-Net). ``small``: tiny inputs (for tiny
    models on the CPU)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    if prior == "sd21":
        from gen4d.guidance.stable_diffusion import StableDiffusionGuidance

        guid = StableDiffusionGuidance(model=str(folder), device=device, precision=precision, prompt_cache=str(folder / "prompts"))
        cond = Conditioning(prompt=guid.encode_prompt("a dog riding a skateboard"), azimuth_deg=torch.zeros(1), elevation_deg=torch.full((1,), 15.0))
        images = torch.rand(1, 3, 512, 512, device=device, requires_grad=True)
        return (lambda step: sum(guid(images, cond, step, generator=g).values())), guid.unet
    if prior == "mvdream":
        from gen4d.cameras import orbit_c2w
        from gen4d.guidance.mvdream import MVDreamConfig, MVDreamGuidance

        guid = MVDreamGuidance.from_pretrained(MVDreamConfig(model=str(folder), precision=precision, resolution=64 if small else 256), device=device)
        c2w = orbit_c2w(torch.tensor([0.0, 90.0, 180.0, 270.0]), 15.0, 2.0).float().to(device)
        cond = Conditioning(prompt=guid.encode_prompt("a dog riding a skateboard"), c2w=c2w, num_views=4)
        images = torch.rand(4, 3, 256, 256, device=device, requires_grad=True)
        return (lambda step: sum(guid(images, cond, step, generator=g).values())), guid.unet
    if prior == "zero123":
        from gen4d.guidance.zero123 import Zero123Config, Zero123Guidance

        guid = Zero123Guidance(Zero123Config(model=str(folder), precision=precision, variant="stable-zero123"), device=device)
        guid.prepare_reference(torch.rand(1, 3, 256, 256, device=device))
        images = torch.rand(1, 3, 256, 256, device=device, requires_grad=True)
        one = torch.ones(1, device=device)
        cond = Conditioning(elevation_deg=15.0 * one, azimuth_deg=60.0 * one, radius=one)
        return (lambda step: sum(guid(images, cond, step, generator=g).values())), guid.unet
    if prior == "zeroscope":
        from gen4d.guidance.video_sds import VideoSDSConfig, VideoSDSGuidance

        size = {"model_width": 64, "model_height": 32} if small else {}
        guid = VideoSDSGuidance(VideoSDSConfig(model=str(folder), precision=precision, grad_frames=4, **size), device=device)
        cond = Conditioning(prompt=guid.encode_prompt("a dog riding a skateboard"))
        video = torch.rand(1, 4 if small else 16, 3, 160, 288, device=device, requires_grad=True)
        return (lambda step: sum(guid(video, cond, step, generator=g).values())), guid.unet
    raise SystemExit(f"unknown prior {prior!r}")


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    reps = 20 if device.type == "cuda" else 3
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_prior(prior: str, folder: Path, device: torch.device, precision: str, steps: int, small: bool = False) -> dict:
    """One prior at one precision: FLOPs of a step (counted on the warm-up step), seconds per step, peak memory."""
    from torch.utils.flop_counter import FlopCounterMode

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step, unet = make_step(prior, folder, device, precision, small)
    counter = FlopCounterMode(display=False)
    with counter:
        step(0).backward()  # warm-up, and the FLOP count of one whole step
    _sync(device)
    flops = counter.get_total_flops()
    t = time.perf_counter()
    for s in range(steps):
        step(s + 1).backward()
    _sync(device)
    sec = (time.perf_counter() - t) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    tflops = matmul_tflops(device, dtype if device.type == "cuda" else torch.float32)
    params = sum(p.numel() for p in unet.parameters()) / 1e9
    del step, unet
    return {"prior": prior, "precision": precision, "seconds_per_step": sec, "peak_gib": peak, "unet_params_b": params,
            "step_tflop": flops / 1e12, "matmul_tflops": tflops, "floor_seconds": flops / (tflops * 1e12)}


def print_rows(rows: list[dict]) -> None:
    print(f"{'prior':<10} {'prec':<5} {'s/step':>8} {'floor s':>8} {'peak GiB':>9} {'UNet Bparam':>11} {'TFLOP/step':>10} {'matmul TFLOP/s':>14}")
    for r in rows:
        print(f"{r['prior']:<10} {r['precision']:<5} {r['seconds_per_step']:>8.3f} {r['floor_seconds']:>8.3f} {r['peak_gib']:>9.2f} "
              f"{r['unet_params_b']:>11.3f} {r['step_tflop']:>10.2f} {r['matmul_tflops']:>14.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--priors", nargs="+", default=["sd21", "mvdream", "zero123", "zeroscope"])
    ap.add_argument("--precision", nargs="+", default=["fp16", "bf16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/gen4d-published-size"))
    ap.add_argument("--configs", type=Path, default=None, help="folder of published configs (default: bench/model_configs)")
    ap.add_argument("--json", type=Path, default=Path("bench/results/guidance.json"))
    args = ap.parse_args()
    global CONFIGS
    if args.configs is not None:
        CONFIGS = args.configs
    device = torch.device(args.device)
    rows = [time_prior(prior, build(prior, args.cache), device, precision, args.steps)
            for prior in args.priors for precision in args.precision]
    print_rows(rows)
    machine = {"platform": platform.platform(), "device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
