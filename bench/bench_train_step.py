"""Milliseconds per training step of ``gen4d reconstruct`` in its dynamic stage, on a bench scene of
``bench_deformation.py`` (written once into the same cache).

Each setting runs the recipe in-process up to the checkpoint at ``--start`` (a step of the dynamic stage), then the
run is resumed for ``--steps`` more steps, timed: what a user's run spends per step there, checkpoints, previews and
densification included. The table gives the milliseconds per step and the Gaussian count at the end.

    python bench/bench_train_step.py                                   # windmill, the fast preset now and the 3,000-step one
    python bench/bench_train_step.py --scene walker --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS = {
    "fast": [],
    "fast as it was before (3,000 steps, window over a quarter of the stage, densification through 60 % of it, D-SSIM)": [
        "train.iterations=3000", "train.static_fraction=0.15", "train.time_curriculum=0.25", "train.densify_until=0.6",
        "loss.ssim_weight=0.2"],
}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default="windmill", help="a scene of bench_deformation.py (default: %(default)s)")
    ap.add_argument("--start", type=int, default=1500, help="step timing starts from (a checkpoint step; default: %(default)s)")
    ap.add_argument("--steps", type=int, default=500, help="steps timed (a multiple of the checkpoint interval; default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch and numba threads (default: %(default)s)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "gen4d-bench-deformation")
    ap.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "train_step.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from bench_deformation import scene_data

    from gen4d.recipes.reconstruct import build_config, run_reconstruct

    torch.set_num_threads(args.threads)
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    scene_args = argparse.Namespace(cache=args.cache, resolution=128, frames=100, test_views=20, seed=0)
    data, _ = scene_data(args.scene, scene_args)
    rows = []
    for name, overrides in SETTINGS.items():
        cfg = build_config("fast", [f"data={data}", "export.formats=[]", *overrides])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            run_reconstruct(cfg, out, quiet=True, stop_after_step=args.start)
            t = time.perf_counter()
            run_reconstruct(cfg, out, quiet=True, stop_after_step=args.start + args.steps)
            seconds = time.perf_counter() - t
            count = json.loads((out / "stages" / "dynamic" / "state.json").read_text())["num_gaussians"]
        rows.append({"setting": name, "scene": args.scene, "start": args.start, "steps": args.steps,
                     "ms_per_step": 1000 * seconds / args.steps, "num_gaussians": count})
        print(f"{name:100s} {rows[-1]['ms_per_step']:8.1f} ms/step  {count} Gaussians", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}
    args.json.write_text(json.dumps({"machine": machine, "threads": args.threads, "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
