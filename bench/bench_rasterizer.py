"""Rasterizer speed, forward + backward, for each backend available here.

Cases (from the engine's acceptance criteria):
  A. 4 cameras x 64x64, 2,000 random Gaussians in a unit sphere, scales 0.01-0.05;
  B. 1 camera x 128x128 with the Gaussians of a fitted demo scene (``--run DIR`` of a finished ``gen4d demo``;
     without it, 10,000 random Gaussians with scales 0.005-0.02 stand in).
Backends: ``dense`` (the straightforward all-pairs PyTorch reference, float32), ``torch`` (packed pairs in
PyTorch), ``numba`` (compiled CPU kernels), ``gsplat`` (CUDA, when present).

    python bench/bench_rasterizer.py [--run DIR] [--repeats 5] [--json bench/results/rasterizer.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from gen4d.cameras import orbit_cameras
from gen4d.render import gsplat_available, rasterize
from gen4d.render.reference import rasterize_dense


def random_scene(n: int, smin: float, smax: float, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g)
    means = means / means.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g) ** (1 / 3)
    quats = torch.randn(n, 4, generator=g)
    scales = smin + (smax - smin) * torch.rand(n, 3, generator=g)
    opac = torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    return [t.to(device) for t in (means, quats, scales, opac, colors)]


def fitted_scene(run: Path, device):
    from gen4d.export.ply import load_inria_ply

    plys = sorted((run / "exports" / "ply").glob("*.ply"))
    if not plys:
        raise SystemExit(f"{run} has no exports/ply/*.ply; run `gen4d demo --out {run}` first")
    f = load_inria_ply(plys[len(plys) // 2])
    from gen4d.sh import sh0_to_rgb

    return [t.to(device) for t in (f.means, f.quats, f.scales, f.opacities, sh0_to_rgb(f.sh[:, 0]).clamp(0, 1))]


def time_backend(backend: str, params, cams, size: int, repeats: int, device) -> float:
    params = [p.detach().clone().requires_grad_() for p in params]
    vm, K = cams.viewmats.to(device), cams.Ks.to(device)

    def step():
        if backend == "dense":
            rgb, alpha, _ = rasterize_dense(*params, vm, K, size, size)
        else:
            out = rasterize(*params, vm, K, size, size, backend=backend)
            rgb, alpha = out.rgb, out.alpha
        (rgb.sum() + alpha.sum()).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (JIT compilation, caches)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="finished gen4d demo run for case B")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=Path("bench/results/rasterizer.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    backends = ["dense", "torch", "numba"] if device.type == "cpu" else ["torch"] + (["gsplat"] if gsplat_available() else [])

    cases = []
    cams_a = orbit_cameras(torch.linspace(0, 270, 4), [15.0, 30.0, -10.0, 45.0], 3.0, 0.8, 64, 64)
    cases.append(("A: 4 cams x 64^2, 2k random", random_scene(2000, 0.01, 0.05, device), cams_a, 64))
    if args.run is not None:
        params_b, label_b = fitted_scene(args.run, device), "B: 1 cam x 128^2, fitted demo"
    else:
        params_b, label_b = random_scene(10_000, 0.005, 0.02, device, seed=1), "B: 1 cam x 128^2, 10k random"
    cams_b = orbit_cameras([30.0], [20.0], 4.0, 0.7, 128, 128)
    cases.append((f"{label_b} ({len(params_b[0])} G)", params_b, cams_b, 128))

    rows = []
    for label, params, cams, size in cases:
        base = None
        for backend in backends:
            if backend == "dense" and size > 64:
                continue  # all-pairs memory grows as pixels x Gaussians; case A is its reference point
            sec = time_backend(backend, params, cams, size, args.repeats, device)
            base = base or (sec if backend == "dense" else None)
            rows.append({"case": label, "backend": backend, "seconds": sec, "speedup_vs_dense": (base / sec) if base else None})

    print(f"{'case':<44} {'backend':<8} {'fwd+bwd s':>10} {'vs dense':>9}")
    for r in rows:
        sp = f"{r['speedup_vs_dense']:.1f}x" if r["speedup_vs_dense"] else "-"
        print(f"{r['case']:<44} {r['backend']:<8} {r['seconds']:>10.4f} {sp:>9}")
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": torch.get_num_threads(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
