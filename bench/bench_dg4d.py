"""Where the time and memory of ``gen4d image`` (DreamGaussian4D) go, at default settings with published-size priors.

    python bench/bench_dg4d.py --device cuda     # the measurement: builds the models once into --cache, then one run
    python bench/bench_dg4d.py --small           # tiny models, few steps, on the CPU: checks this script end to end

The priors are built at random weights from the published configs in ``bench/model_configs`` by
``bench_guidance.build`` (SVD img2vid ``svd-img2vid__*``; Zero123-XL ``zero123-xl-ashawkey__*``, the recipe's
default, or ``--zero123 stable-zero123``), saved in the Hub layout and loaded by the recipe's own loading code; the
compute does not depend on the weight values. One ``run_dg4d`` call with the ``default`` preset (``--preset``),
plus two changes: ``driving.alpha=reference`` (rembg downloads its own weights on first use; background removal
of 14 frames is small next to the rest) and stage III at DreamGaussian4D's 50 steps (``--refine-iterations``; the
default run skips it, so the table also gives the total without it).

Parts, in order: ``zero123 setup`` (weights to the device, conditioning of the image and of every driving
frame), ``driving`` (SVD loading + generation + decoding), ``static``, ``dynamic``, ``refine`` (the stage loops,
checkpoints included; ``refine`` also loads SVD again), ``exports``, and ``other`` (input, scene set-up). Peak
memory is ``torch.cuda.max_memory_allocated``, reset at the start of each part. The rasteriser's kernels are
compiled (gsplat JIT / numba) in an untimed warm-up first. Targets on one H100: <= 90 s in all, <= 24 GB.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

from gen4d import Gen4DError

PARTS = ("zero123 setup", "driving", "static", "dynamic", "refine", "exports", "other")
# --small: tiny models and a few steps of every stage, sizes the tiny models accept.
SMALL = [
    "size=64", "init_points=300", "static.iterations=3", "dynamic.iterations=3", "static.views=1", "dynamic.views=1",
    "static.resolutions=[64]", "dynamic.resolutions=[64]",
    "driving.num_frames=4", "driving.height=64", "driving.width=64", "driving.steps=2", "refine.regenerate_every=2",
    "refine.resolution=32", "export.mesh_resolution=24", "export.mesh_threshold=0.05", "export.video_size=32",
    "export.video_frames=3",
]
TARGET_SECONDS, TARGET_GIB = 90.0, 24.0 * 1e9 / 2**30


class Meter:
    """Seconds (summed) and peak CUDA memory in GiB (max; None elsewhere) of named parts of a run."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak_gib: dict[str, float | None] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    @contextmanager
    def part(self, name: str):
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            if self.device.type == "cuda":
                self.peak_gib[name] = max(self.peak_gib.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)

    def wrap(self, name, fn):
        """``fn`` timed as part ``name`` (a string, or a function of ``fn``'s arguments giving it)."""

        def timed(*args, **kwargs):
            with self.part(name(*args, **kwargs) if callable(name) else name):
                return fn(*args, **kwargs)

        return timed


def write_input_image(path: Path, size: int = 512) -> None:
    """An RGBA test object (a shaded disc on transparency): no background removal needed."""
    y, x = np.mgrid[:size, :size] / size
    inside = (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.3**2
    rgb = np.stack([200 + 0 * x, 255 * x, 80 + 100 * y], -1).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, (inside * 255).astype(np.uint8)]), "RGBA").save(path)


def warm_up(device: torch.device) -> float:
    """Render and backpropagate a few Gaussians once (compiles the rasteriser's kernels); returns its seconds."""
    from gen4d.cameras import orbit_cameras
    from gen4d.gaussians.model import GaussianModel
    from gen4d.scene import Scene4D

    start = time.perf_counter()
    scene = Scene4D(GaussianModel.random_in_sphere(200, 0.5)).to(device)
    scene.render(orbit_cameras([0.0, 90.0], 0.0, 2.5, 0.86, 64, 64).to(device)).rgb.sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(args) -> dict:
    """One metered ``run_dg4d``; returns the JSON record."""
    from gen4d.guidance import priors, zero123
    from gen4d.models import registry
    from gen4d.recipes import dg4d
    from gen4d.training import loop

    device = dg4d.resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-dg4d-"))
    image = work / "input.png"
    write_input_image(image)
    overrides = ["driving.alpha=reference", f"refine.iterations={args.refine_iterations}", f"precision={args.precision}"]
    if args.small:
        registry.set_model_set("tiny")
        overrides = SMALL + overrides
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # the published-size model builders, beside this script
        from bench_guidance import build

        zero123_prior = "zero123" if args.zero123 == "stable-zero123" else "zero123-xl"
        print(f"building published-size models into {args.cache} (once) ...", flush=True)
        overrides += [f"driving.model={build('svd', args.cache)}", f"sds.model={build(zero123_prior, args.cache)}"]
    cfg = dg4d.build_config(args.preset, overrides + args.overrides, {"input": str(image), "device": args.device})
    warm = warm_up(device)

    meter = Meter(device)
    with ExitStack() as patches:
        for module, name, part in (
            (dg4d, "run_artifact", "driving"), (dg4d, "export_asset", "exports"), (loop, "_loop", lambda run, stage, *rest: stage.name),
            (zero123.Zero123Guidance, "prepare_reference", "zero123 setup"), (priors, "Zero123Guidance", "zero123 setup"),
        ):
            patches.enter_context(mock.patch.object(module, name, meter.wrap(part, getattr(module, name))))
        start = time.perf_counter()
        metrics = dg4d.run_dg4d(cfg, work / "run", command="bench_dg4d", quiet=not args.progress)
        total = time.perf_counter() - start
    if args.keep:
        print(f"run directory kept: {work / 'run'}")
    else:
        shutil.rmtree(work, ignore_errors=True)

    meter.seconds["other"] = total - sum(meter.seconds.values())
    steps = {name: stage["iterations"] for name, stage in metrics["stages"].items()}
    rows = [{"part": p, "seconds": meter.seconds.get(p, 0.0), "peak_gib": meter.peak_gib.get(p), "steps": steps.get(p)} for p in PARTS]
    machine = {"platform": platform.platform(), "device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        from gen4d.render.rasterize import gsplat_available

        machine["gpu"] = torch.cuda.get_device_name()
        machine["rasterizer"] = "gsplat" if gsplat_available() else "torch (gsplat not installed)"
    return {
        "machine": machine,
        "settings": {"preset": args.preset, "small": args.small, "zero123": args.zero123, "overrides": overrides + args.overrides},
        "rows": rows,
        "warm_up_seconds": warm,
        "total_seconds": total,
        "total_without_refine_seconds": total - meter.seconds.get("refine", 0.0),
        "peak_gib": max(meter.peak_gib.values(), default=None),
        "num_gaussians": metrics["num_gaussians"],
        "driving_frames": metrics["driving_frames"],
    }


def print_table(record: dict) -> None:
    total = record["total_seconds"]

    def gib(value) -> str:
        return "-" if value is None else f"{value:.2f}"

    print(f"\n{'part':<14} {'seconds':>9} {'share':>7} {'peak GiB':>9} {'steps':>6} {'ms/step':>8}")
    for r in record["rows"]:
        per_step = f"{1000 * r['seconds'] / r['steps']:>8.1f}" if r["steps"] else ""
        print(f"{r['part']:<14} {r['seconds']:>9.2f} {100 * r['seconds'] / total:>6.1f}% {gib(r['peak_gib']):>9} {r['steps'] or '':>6} {per_step}")
    print(f"{'total':<14} {total:>9.2f} {'':>7} {gib(record['peak_gib']):>9}")
    print(f"{'  w/o refine':<14} {record['total_without_refine_seconds']:>9.2f}   (the default run: stage III is off)")
    m = record["machine"]
    where = f"{m['gpu']}, rasterizer {m['rasterizer']}" if "gpu" in m else m["device"]
    print(f"warm-up (kernel compilation, not in the total): {record['warm_up_seconds']:.2f} s; "
          f"{record['num_gaussians']} Gaussians, {record['driving_frames']} driving frames; {where}")
    if record["peak_gib"] is not None:
        ok = total <= TARGET_SECONDS and record["peak_gib"] <= TARGET_GIB
        print(f"target (one H100): <= {TARGET_SECONDS:.0f} s and <= {TARGET_GIB:.1f} GiB (24 GB): {'met' if ok else 'NOT met'}")


def run_and_record(run, print_table, args) -> int:
    """``run(args)`` -> record; print its table and write it to ``args.json``. A Gen4DError is one error line, exit 2."""
    try:
        record = run(args)
    except Gen4DError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(record)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny random models and a few steps (CPU check of this script)")
    ap.add_argument("--preset", default="default", help="dg4d preset (default | fast | low-memory)")
    ap.add_argument("--precision", default="auto", help="auto (fp16 on CUDA) | fp32 | fp16 | bf16")
    ap.add_argument("--refine-iterations", type=int, default=None, help="stage III steps (default: 50, DG4D's; --small: 2)")
    ap.add_argument("--zero123", default="zero123-xl", choices=["zero123-xl", "stable-zero123"])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/gen4d-published-size"), help="where the built models are kept")
    ap.add_argument("--json", type=Path, default=None, help="default: bench/results/dg4d.json (--small: dg4d_small.json)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (printed) instead of deleting it")
    ap.add_argument("--progress", action="store_true", help="show the stages' progress bars")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the dg4d configuration")
    args = ap.parse_args(argv)
    if args.refine_iterations is None:
        args.refine_iterations = 2 if args.small else 50
    if args.json is None:
        args.json = Path(__file__).resolve().parent / "results" / ("dg4d_small.json" if args.small else "dg4d.json")
    return run_and_record(run, print_table, args)


if __name__ == "__main__":
    sys.exit(main())
