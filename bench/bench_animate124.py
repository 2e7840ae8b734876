"""Animate124's stages at published sizes: seconds per step and peak GPU memory, and each preset's projected time.

    python bench/bench_animate124.py --device cuda     # builds the models once into --cache, then a few steps per stage
    python bench/bench_animate124.py --small           # tiny models and sizes on the CPU: checks this script

The priors are built at random weights from the published configs in ``bench/model_configs`` (SD 1.5 ``sd15__*``,
Zero123-XL ``zero123-xl-ashawkey__*`` for both Zero123 terms - Zero123 and Zero123-XL share one architecture -,
ModelScope ``t2v-ms-1.7b__*``, ControlNet 1.1 tile ``controlnet-v11f1e-sd15-tile__controlnet``), saved in the Hub
layout and loaded by the recipe's own code; compute does not depend on weight values. Each stage is the recipe's
own stage object (its loss function, optimisers and learning rates) stepped ``--steps`` times after one untimed
step: ``invert`` at the preset's batch and 512 px, ``static`` (reference + Zero123-XL + SD 1.5 at 128 px),
``dynamic`` and ``semantic`` with every clip drawn to start at t = 0 (the anchor - reference view and Zero123 -
runs every step: the worst case for time and memory; on average it runs on one step in ten). Peak memory is
``torch.cuda.max_memory_allocated`` with only that stage's priors loaded. Projection: each preset's steps times
the measured seconds per step (an upper bound for the clip stages), rendering and densification included, checkpoints
and exports not. Targets on one H100: every stage <= 24 GB, the default preset <= 45 minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_GIB = 24.0
TARGET_MINUTES = 45.0
STAGES = ("invert", "static", "dynamic", "semantic")
SMALL = ["reference.size=32", "static.resolution=32", "video.width=32", "video.height=32", "video.frames=4", "video.time_grid=16",
         "semantic.fixed_size=32", "init_points=500", "textual_inversion.resolution=32", "textual_inversion.batch_size=2"]


def build_models(cache: Path) -> dict[str, str]:
    """Published-size random models (built once into ``cache``): registry role -> folder."""
    from bench_guidance import BUILD_DEVICE, _cfg, _save_text_stack, build
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel, UNet3DConditionModel

    def once(name: str, make) -> str:
        folder = cache / name
        if not (folder / "done").exists():
            folder.mkdir(parents=True, exist_ok=True)
            with torch.device(BUILD_DEVICE):
                make(folder)
            (folder / "done").write_text("ok\n")
        return str(folder)

    def sd15(folder: Path) -> None:
        UNet2DConditionModel.from_config(_cfg("sd15__unet")).save_pretrained(folder / "unet")
        AutoencoderKL.from_config(_cfg("sd15__vae")).save_pretrained(folder / "vae")
        _save_text_stack(folder, _cfg("sd15__text_encoder"))
        DDPMScheduler.from_config(_cfg("sd15__scheduler")).save_pretrained(folder / "scheduler")

    def modelscope(folder: Path) -> None:
        UNet3DConditionModel.from_config(_cfg("t2v-ms-1.7b__unet")).save_pretrained(folder / "unet")
        AutoencoderKL.from_config(_cfg("t2v-ms-1.7b__vae")).save_pretrained(folder / "vae")
        _save_text_stack(folder, _cfg("t2v-ms-1.7b__text_encoder"))
        DDPMScheduler.from_config(_cfg("t2v-ms-1.7b__scheduler")).save_pretrained(folder / "scheduler")

    def controlnet(folder: Path) -> None:
        ControlNetModel.from_config(_cfg("controlnet-v11f1e-sd15-tile__controlnet")).save_pretrained(folder)

    return {"sd": once("sd15", sd15), "zero123": str(build("zero123-xl", cache)), "video": once("modelscope", modelscope),
            "controlnet": once("controlnet-tile", controlnet)}


def model_overrides(models: dict[str, str]) -> list[str]:
    return [f"static.sd_model={models['sd']}", f"semantic.model={models['sd']}", f"semantic.controlnet={models['controlnet']}",
            f"static.zero123_model={models['zero123']}", f"dynamic.zero123_model={models['zero123']}",
            f"video.model={models['video']}", "video.model_size=[256,256]"]


def write_input_image(path: Path) -> None:
    from gen4d.data.preprocess import save_rgba_png

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 256), torch.linspace(-1, 1, 256), indexing="ij")
    a = ((xx**2 + yy**2) < 0.6).float()
    save_rgba_png(path, torch.stack([0.8 * a + 0.1, 0.4 * a, 0.5 * (1 - xx) / 2, a]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_stage(name: str, cfg, device: torch.device, steps: int) -> dict:
    """Seconds per step (mean of ``steps`` after one untimed step) and peak memory of one stage."""
    from gen4d.data.preprocess import load_image_rgba
    from gen4d.guidance.priors import build_prior
    from gen4d.recipes.animate124 import Animate124Run, invert_config
    from gen4d.recipes.invert import TextualInversion, read_image
    from gen4d.training.loop import backward

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t_load = time.perf_counter()
    if name == "invert":
        ti = TextualInversion(invert_config(cfg), device)
        stage = ti.stage(read_image(cfg.input))
        model = ti.init()
    else:
        rgba = load_image_rgba(cfg.input, size=cfg.reference.size, border_ratio=cfg.reference.border_ratio)
        ar = Animate124Run(cfg, device, build_prior, rgba)
        stage = {"static": ar.static_stage, "dynamic": lambda: ar.clip_stage("dynamic", 1, False, 2),
                 "semantic": lambda: ar.clip_stage("semantic", 1, True, 3)}[name]()
        model = ar.init_scene()
        if name != "static":
            model = model.attach_deformation(cfg.deformation, cfg.seed)
    optimizers = stage.make_optimizers(model)
    g = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):
        _sync(device)
        t = time.perf_counter()
        for opt_name, lr in stage.learning_rates(step).items():
            for group, value in zip(optimizers[opt_name].param_groups, lr if isinstance(lr, list) else [lr] * 99):
                group["lr"] = value
        backward(stage.losses(model, step, g))
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t)
        if step == 0:
            load_seconds = time.perf_counter() - t_load
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"stage": name, "seconds_per_step": sum(times[1:]) / max(len(times) - 1, 1), "peak_gib": peak,
            "setup_seconds": load_seconds, "steps": steps}


def projection(rows: list[dict], presets: dict, recipe, image: str) -> dict:
    per_step = {r["stage"]: r["seconds_per_step"] for r in rows if "error" not in r}
    out = {}
    for preset in presets:
        cfg = recipe.build_config(preset, [], {"input": image, "prompt": "x"})
        steps = {"invert": cfg.textual_inversion.iterations, "static": cfg.static.iterations, "dynamic": cfg.dynamic.iterations,
                 "semantic": cfg.semantic.iterations}
        if set(steps) <= set(per_step):
            out[preset] = {"steps": steps, "minutes": sum(steps[k] * per_step[k] for k in steps) / 60}
    return out


def run(args) -> dict:
    import gen4d.testing  # noqa: F401  (registers the tiny model set)
    from gen4d.models import registry
    from gen4d.recipes import animate124

    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-animate124-"))
    image = work / "input.png"
    write_input_image(image)
    if args.small:
        registry.set_model_set("tiny")
        overrides = SMALL
    else:
        print(f"building published-size models into {args.cache} (once) ...", flush=True)
        overrides = model_overrides(build_models(args.cache))
    rows = []
    for preset in args.presets:
        base = {"input": str(image), "prompt": "a panda is dancing", "device": str(device)}
        cfg = animate124.RECIPE.build_config(preset, overrides + ["video.zero_start_probability=1.0"] + args.overrides, base)
        for name in args.stages:
            try:
                row = time_stage(name, cfg, device, args.steps)
            except Exception as e:  # noqa: BLE001 - one stage failing (e.g. out of memory) must not lose the others
                row = {"stage": name, "error": f"{type(e).__name__}: {e}"}
            row.update(preset=preset, batch_size=cfg.textual_inversion.batch_size if name == "invert" else None,
                       fixed_size=cfg.semantic.fixed_size if name == "semantic" else None)
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine = {"platform": platform.platform(), "device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    projected = {}
    for preset in args.presets:
        mine = [r for r in rows if r["preset"] == preset]
        projected.update({k: v for k, v in projection(mine, {preset: None}, animate124.RECIPE, str(image)).items()})
    peak = max((r["peak_gib"] for r in rows if r.get("peak_gib") is not None), default=None)
    return {"machine": machine, "small": args.small, "rows": rows, "projection_minutes": projected, "peak_gib": peak,
            "targets": {"peak_gib": TARGET_GIB, "default_minutes": TARGET_MINUTES}}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny models and sizes (checks the script on the CPU)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--presets", nargs="+", default=["default", "paper"])
    ap.add_argument("--stages", nargs="+", default=list(STAGES))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/gen4d-published-size"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the recipe's configuration")
    return ap


def main() -> None:
    from gen4d.console import capture_library_output

    args = parser().parse_args()
    capture_library_output()
    record = run(args)
    print(f"\n{'preset':<10} {'stage':<9} {'s/step':>8} {'peak GiB':>9}")
    for r in record["rows"]:
        gib = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f}"
        sps = r.get("error", f"{r.get('seconds_per_step', 0):.3f}")
        print(f"{r['preset']:<10} {r['stage']:<9} {sps:>8} {gib:>9}")
    for preset, p in record["projection_minutes"].items():
        print(f"{preset}: about {p['minutes']:.0f} min for {p['steps']}")
    path = args.json or Path("bench/results") / ("animate124_small.json" if args.small else "animate124.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
