"""The HexPlane lookup on the CPU: six ``grid_sample`` calls per scale against the fused numba pass.

Forward + backward (gradients to the coordinates and every plane) of a HexPlane at the ``fast`` preset's size
(16 features, 32×32×32×16 nodes, scales 1 and 2) for N points, median of ``--repeat`` after a warm-up; the two
paths' outputs are compared first. Prints a table and writes JSON.

    python bench/bench_kplanes.py                  # N = 2,000 / 10,000 / 40,000
    python bench/bench_kplanes.py --points 10000 --repeat 20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from gen4d.fields.hexplane import HexPlane, HexPlaneConfig


def time_path(hp: HexPlane, xyzt: torch.Tensor, weights: torch.Tensor, repeat: int) -> float:
    params = [xyzt, *hp.parameters()]
    for _ in range(2):
        torch.autograd.grad((hp(xyzt) * weights).sum(), params)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        torch.autograd.grad((hp(xyzt) * weights).sum(), params)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, nargs="+", default=[2000, 10000, 40000])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json", type=Path, default=Path("bench/results/kplanes.json"))
    args = ap.parse_args(argv)
    cfg = HexPlaneConfig(feature_dim=16, resolution=(32, 32, 32, 16), multires=(1, 2))
    g = torch.Generator().manual_seed(0)
    fused, plain = HexPlane(cfg), HexPlane(dataclasses.replace(cfg, fused_cpu=False))
    with torch.no_grad():
        for a, b in zip(fused.parameters(), plain.parameters()):
            a.copy_(0.5 + torch.rand(a.shape, generator=g))
            b.copy_(a)
    rows = []
    print(f"{'points':>8} {'grid_sample ms':>15} {'fused ms':>9} {'speed-up':>9} {'max |diff|':>11}")
    for n in args.points:
        xyzt = torch.cat([torch.rand(n, 3, generator=g) * 2 - 1, torch.rand(n, 1, generator=g)], -1).requires_grad_(True)
        weights = torch.randn(n, fused.output_dim, generator=g)
        with torch.no_grad():
            diff = float((fused(xyzt) - plain(xyzt)).abs().max())
        a, b = time_path(plain, xyzt, weights, args.repeat), time_path(fused, xyzt, weights, args.repeat)
        rows.append({"points": n, "grid_sample_s": a, "fused_s": b, "speedup": a / b, "max_abs_diff": diff})
        print(f"{n:>8} {a * 1e3:>15.2f} {b * 1e3:>9.2f} {a / b:>8.2f}× {diff:>11.2e}")
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "config": dataclasses.asdict(cfg), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
