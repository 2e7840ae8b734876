"""Time ``gen4d demo`` end to end (as a user runs it) and report its quality.

Runs the demo in a fresh folder as a subprocess, with an empty numba cache when ``--cold`` (what a user's very
first run pays for compiling the CPU kernels), then prints wall time, per-stage training time and the
held-out test PSNR / SSIM.

    python bench/bench_demo.py [--cold] [--keep DIR] [--json bench/results/demo.json] [-- extra demo args]
    python bench/bench_demo.py --cold --json bench/results/demo_dg4d.json -- --recipe dg4d   # oracle-prior demo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cold", action="store_true", help="start with an empty numba cache")
    ap.add_argument("--keep", type=Path, default=None, help="run directory to keep (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=Path("bench/results/demo.json"))
    ap.add_argument("extra", nargs="*", help="extra arguments for gen4d demo")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gen4d-bench-"))
    out = args.keep or work / "demo"
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ)
    if args.cold:
        env["NUMBA_CACHE_DIR"] = str(work / "numba-cache")
    cmd = [sys.executable, "-m", "gen4d.cli", "demo", "--out", str(out), "--quiet", *args.extra]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - t
    m = json.loads((out / "metrics.json").read_text())
    row = {
        "wall_seconds": wall,
        "training_seconds": m["seconds"],
        "stages": {k: v["seconds"] for k, v in m["stages"].items()},
        "psnr": m["psnr"],
        "ssim": m["ssim"],
        "num_gaussians": m["num_gaussians"],
        "iterations": m["iterations"],
        "resolution": m.get("eval_resolution"),
        "heldout": m.get("heldout", {}).get("views"),
        "cold_numba_cache": args.cold,
    }
    print(f"{'wall s':>8} {'train s':>8} {'PSNR dB':>8} {'SSIM':>7} {'Gaussians':>10} {'steps':>6}")
    print(f"{wall:>8.1f} {m['seconds']:>8.1f} {m['psnr']:>8.2f} {m['ssim']:>7.4f} {m['num_gaussians']:>10} {m['iterations']:>6}")
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "command": cmd, "result": row}, indent=2) + "\n")
    print(f"wrote {args.json}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
