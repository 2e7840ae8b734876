"""Dream-in-4D's two stages at published sizes: seconds per step and peak GPU memory of each, and the hours of each
preset projected from them.

    python bench/bench_dreamin4d.py [--steps 3] [--precision auto] [--json bench/results/bench_dreamin4d.json]
    python bench/bench_dreamin4d.py --small          # tiny models and sizes on the CPU (checks this script)

Random-weight models of the published architectures (MVDream / SD 2.1 base / ZeroScope v2 576w, built from
``bench/model_configs`` by ``bench_guidance.build`` and loaded through each prior's own code) stand in for the
weights. The static step is the text variant's (MVDream on 4 views at 256 px + SD 2.1 on the same views), the
dynamic step ZeroScope on a 24-frame clip rendered at 144 x 80 with HiFA's target, its image-space loss and the
displacement smoothness; both on the recipe's defaults (5,000 Gaussians at the start of the static stage). The
first step of each stage is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_guidance  # noqa: E402

import gen4d.testing  # noqa: E402,F401  (registers --models tiny)
from gen4d.console import capture_library_output  # noqa: E402
from gen4d.guidance.priors import build_prior  # noqa: E402
from gen4d.models import registry  # noqa: E402
from gen4d.recipes import dreamin4d  # noqa: E402
from gen4d.training.loop import backward  # noqa: E402

SMALL = ["static.resolutions=[32,32]", "dynamic.width=32", "dynamic.height=24", "dynamic.frames=4", "init_points=300"]


def time_stage(stage, scene, device: torch.device, steps: int) -> dict:
    """Seconds per step (after one warm-up step) and peak memory of ``steps`` steps of ``stage``."""
    if stage.prepare is not None:
        scene = stage.prepare(scene)
    optimizers = stage.make_optimizers(scene)
    g = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 1):
        t = time.perf_counter()
        for o in optimizers.values():
            o.zero_grad(set_to_none=True)
        backward(stage.losses(scene, step, g))
        for o in optimizers.values():
            o.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"seconds_per_step": sum(times[1:]) / max(1, len(times) - 1), "warmup_seconds": times[0], "peak_gib": peak,
            "steps": steps}, scene


def run(args) -> dict:
    device = torch.device(args.device)
    if args.small:
        registry.set_model_set("tiny")
        models, extra = {}, SMALL
    else:
        models = {name: bench_guidance.build(name, args.cache) for name in ("mvdream", "sd21", "zeroscope")}
        extra = []
    overrides = extra + [f"device={device}", f"precision={args.precision}", "static.resolution_milestones=[0]"]
    if models:
        overrides += [f"multi_view.model={models['mvdream']}", f"sd.model={models['sd21']}", f"dynamic.model={models['zeroscope']}"]
    cfg = dreamin4d.RECIPE.build_config("default", overrides, {"prompt": "a corgi running"})
    t0 = time.perf_counter()
    run_ = dreamin4d.DreamIn4DRun(cfg, device, build_prior)
    load_seconds = time.perf_counter() - t0
    rows = {}
    static, scene = time_stage(run_.static_stage(), run_.init_scene(), device, args.steps)
    rows["static"] = {**static, "resolution": cfg.static.resolutions[-1], "views": 4}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    dynamic, _ = time_stage(run_.dynamic_stage(), scene, device, args.steps)
    d = cfg.dynamic
    rows["dynamic"] = {**dynamic, "frames": d.frames, "render": [d.width, d.height], "hifa_steps": d.hifa_steps}
    presets = {}
    for name in dreamin4d.PRESETS:
        p = dreamin4d.RECIPE.build_config(name, [], {"prompt": "x"})
        seconds = p.static.iterations * rows["static"]["seconds_per_step"] + p.dynamic.iterations * rows["dynamic"]["seconds_per_step"]
        presets[name] = {"steps": [p.static.iterations, p.dynamic.iterations], "hours": seconds / 3600}
    return {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
            "precision": args.precision, "small": args.small, "load_seconds": load_seconds, "stages": rows,
            "projected_hours": presets}


def print_table(result: dict) -> None:
    print(f"dreamin4d on {result['gpu'] or result['device']} ({'tiny' if result['small'] else 'published sizes'})")
    for name, r in result["stages"].items():
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
        print(f"  {name:<8} {r['seconds_per_step']:.3f} s/step  peak {peak}")
    print("  projected: " + ", ".join(f"{k} {v['hours']:.2f} h" for k, v in result["projected_hours"].items()))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny models and sizes (a check of this script)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per stage (after one warm-up step)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/gen4d-published-size"))
    ap.add_argument("--json", type=Path, default=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    capture_library_output()
    result = run(args)
    print_table(result)
    path = args.json or Path("bench/results") / ("bench_dreamin4d_small.json" if args.small else "bench_dreamin4d.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
