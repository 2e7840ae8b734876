"""Held-out quality and seconds of each deformation type (``deformation.type``) on scenes with large motion.

Each scene of :mod:`gen4d.data.synthetic` in the list is written once, in D-NeRF's monocular layout (one random
camera per training time; test views at random cameras and at times between training times), into ``--cache``;
then ``gen4d reconstruct`` runs on it as a subprocess, as a user runs it, once per deformation type:

    python -m gen4d.cli reconstruct DATA --out RUN --preset fast --quiet export.formats=[] deformation.type=T [--extra ...]

The held-out test PSNR / SSIM, the training seconds and the Gaussian count come from the run's ``metrics.json``;
the wall seconds are the subprocess's. Exports are off (``export.formats=[]``) unless ``--exports``: they are not
what is compared, and at 100 frames they cost more than the fit on a CPU.

    python bench/bench_deformation.py                                  # windmill, walker, chain, jumping_jacks x hexplane, nodes, bases x schedules
    python bench/bench_deformation.py --types hexplane --schedules curriculum
    python bench/bench_deformation.py --scenes windmill --types nodes --extra deformation.nodes.count=256
    python bench/bench_deformation.py --dry-run                        # tiny sizes and a few steps: checks the script

Scenes: ``windmill`` (four coloured blades turning 1.5 times about a horizontal axis), ``walker`` (a figure walking
its own height across the scene, two-segment legs), ``chain`` (a seven-segment snake bending in a travelling wave
while turning), and ``jumping_jacks``, the scene of ``gen4d demo``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SCENES = ("windmill", "walker", "chain", "jumping_jacks")
DEFAULT_TYPES = ("hexplane", "nodes", "bases")
# Training schedules (``--schedules``): reconstruct overrides. ``all-times``: the static stage fits every frame
# (time ignored) and the dynamic stage sees the whole clip from its first step; ``curriculum``: canonical
# Gaussians from the frames within 5 % of the clip around mid-clip, then a time window widening to the whole clip
# over the first quarter of the dynamic stage, time nodes not reached yet holding the motion at the window's edge,
# frames drawn uniformly from the window; ``tracking`` (the default preset's schedule): the same from 10 % of
# the clip around mid-clip, half the steps drawing from the times the window reached last (frame-to-frame
# tracking); ``slow-tracking`` (the ``fast`` preset's): tracking with the window widening over half the stage;
# ``paced``: tracking whose window waits while the newly reached frames fit worse than 1.5 times those inside it
# (at least at the slow-tracking pace). The step count, the loss and the densification come from the preset
# (``fast``: 10,000 steps of which 500 static, L1 alone, densification in the static stage only). The rows measured
# with 8,000 steps: ``--iters 8000 --extra train.static_fraction=0.0625``, and before L1 alone ``loss.ssim_weight=0.2``
# as well; with the preset before that, ``--iters 5000 --extra loss.ssim_weight=0.2 train.static_fraction=0.15``;
# before that, 3,000 steps and densification through 60 % of the dynamic stage: ``--iters 3000 --extra
# loss.ssim_weight=0.2 train.static_fraction=0.15 train.densify_until=0.6``.
SCHEDULES = {
    "all-times": ["train.canonical_window=1.0", "train.time_curriculum=0.0", "train.hold_unreached=false", "train.edge_share=0.0",
                  "train.pace_tolerance=0"],
    "curriculum": ["train.canonical_window=0.05", "train.time_curriculum=0.25", "train.hold_unreached=true", "train.edge_share=0.0",
                   "train.pace_tolerance=0"],
    "tracking": ["train.canonical_window=0.1", "train.time_curriculum=0.25", "train.hold_unreached=true", "train.edge_share=0.5",
                 "train.pace_tolerance=0"],
    "slow-tracking": ["train.canonical_window=0.1", "train.time_curriculum=0.5", "train.hold_unreached=true", "train.edge_share=0.5",
                      "train.pace_tolerance=0"],
    "paced": ["train.canonical_window=0.1", "train.time_curriculum=0.25", "train.hold_unreached=true", "train.edge_share=0.5",
              "train.pace_tolerance=1.5", "train.slowest_curriculum=0.5"],
}
DEFAULT_SCHEDULES = ("all-times", "slow-tracking")
# --dry-run: sizes and settings small enough for a test on a CPU.
DRY_RUN = dict(resolution=24, frames=6, test_views=2, iters=4)
DRY_RUN_OVERRIDES = [
    "model.init_points=300", "densify.refine_start=1000", "train.checkpoint_every=1000", "train.preview_every=0",
    "deformation.nodes.count=16", "deformation.nodes.hidden_dim=16", "deformation.nodes.layers=1",
    "deformation.bases.count=4", "deformation.bases.weight_resolution=8", "deformation.bases.time_nodes=4",
    "deformation.hexplane.resolution=[8,8,8,4]", "deformation.hexplane.feature_dim=4", "deformation.hidden_dim=16",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=list(DEFAULT_SCENES), help="synthetic scenes (default: %(default)s)")
    ap.add_argument("--types", nargs="+", default=list(DEFAULT_TYPES), help="deformation types (default: %(default)s)")
    ap.add_argument("--schedules", nargs="+", default=list(DEFAULT_SCHEDULES), choices=list(SCHEDULES),
                    help="training schedules (default: %(default)s)")
    ap.add_argument("--resolution", type=int, default=128, help="image size in pixels (default: %(default)s)")
    ap.add_argument("--frames", type=int, default=100, help="training frames, one camera each (default: %(default)s)")
    ap.add_argument("--test-views", type=int, default=20, help="held-out test frames (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the cameras (and of the runs)")
    ap.add_argument("--preset", default="fast", help="reconstruct preset (default: %(default)s)")
    ap.add_argument("--iters", type=int, default=None, help="total steps (default: the preset's)")
    ap.add_argument("--device", default=None, help="auto | cpu | cuda (default: reconstruct's)")
    ap.add_argument("--extra", nargs="+", default=[], metavar="KEY=VALUE", help="more overrides passed to every reconstruct run")
    ap.add_argument("--exports", action="store_true", help="keep the preset's exports (default: export.formats=[])")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "gen4d-bench-deformation",
                    help="where the synthesised scenes are kept and reused (default: %(default)s)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run folders in DIR/SCENE-TYPE (default: a temporary folder, removed)")
    ap.add_argument("--json", type=Path, default=Path("bench/results/deformation.json"))
    ap.add_argument("--dry-run", action="store_true", help=f"tiny sizes and a few steps ({DRY_RUN}), to check the script")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.resolution, args.frames, args.test_views = DRY_RUN["resolution"], DRY_RUN["frames"], DRY_RUN["test_views"]
        args.iters = args.iters or DRY_RUN["iters"]
    return args


def scene_data(scene: str, args: argparse.Namespace) -> tuple[Path, float]:
    """The scene's D-NeRF folder in the cache (written unless an identical one is there) and the seconds spent writing it."""
    from gen4d.data.synthetic import write_synthetic_scene

    folder = args.cache / f"{scene}-{args.resolution}px-{args.frames}t-{args.test_views}v-monocular-seed{args.seed}"
    settings = dict(resolution=args.resolution, train_times=args.frames, test_views=args.test_views, seed=args.seed, layout="monocular")
    info = folder / "synthetic.json"
    if info.exists():
        written = json.loads(info.read_text())
        if written.get("scene") == scene and all(written.get(k) == v for k, v in settings.items()):
            return folder, 0.0
    t = time.perf_counter()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write_synthetic_scene(scene, partial, **settings)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder, time.perf_counter() - t


def reconstruct_command(data: Path, run: Path, deformation: str, args: argparse.Namespace, schedule: str = "all-times") -> list[str]:
    cmd = [sys.executable, "-m", "gen4d.cli", "reconstruct", str(data), "--out", str(run), "--preset", args.preset, "--quiet",
           "--seed", str(args.seed)]
    if args.iters is not None:
        cmd += ["--iters", str(args.iters)]
    if args.device is not None:
        cmd += ["--device", args.device]
    if not args.exports:
        cmd.append("export.formats=[]")
    if args.dry_run:
        cmd += DRY_RUN_OVERRIDES
    return cmd + [f"deformation.type={deformation}", *SCHEDULES[schedule], *args.extra]


def run_one(scene: str, deformation: str, data: Path, run: Path, args: argparse.Namespace, schedule: str = "all-times") -> dict:
    if run.exists():
        shutil.rmtree(run)  # a fresh run: reconstruct would resume a finished one
    cmd = reconstruct_command(data, run, deformation, args, schedule)
    row: dict = {"scene": scene, "type": deformation, "schedule": schedule, "command": cmd}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    row["wall_seconds"] = time.perf_counter() - t
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        row["error"] = lines[-1] if lines else f"exit status {proc.returncode}"
        print("\n".join(lines[-20:]), file=sys.stderr)
        return row
    m = json.loads((run / "metrics.json").read_text())
    row.update(
        psnr=m["psnr"],
        ssim=m["ssim"],
        psnr_per_view=m.get("psnr_per_view"),
        training_seconds=m["seconds"],
        run_seconds=m.get("wall_seconds"),
        stages={k: v["seconds"] for k, v in m.get("stages", {}).items()},
        num_gaussians=m["num_gaussians"],
        iterations=m["iterations"],
        render_fps=m.get("render_fps"),
        eval_views=m.get("eval_views"),
        device=m.get("device"),
    )
    return row


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def print_table(rows: list[dict]) -> None:
    print(f"{'scene':<15} {'type':<9} {'schedule':<11} {'PSNR dB':>8} {'SSIM':>7} {'train s':>8} {'wall s':>8} {'Gaussians':>10}")
    for r in rows:
        print(f"{r['scene']:<15} {r['type']:<9} {r.get('schedule', '-'):<11} {_fmt(r.get('psnr'), '8.2f')} {_fmt(r.get('ssim'), '7.4f')} "
              f"{_fmt(r.get('training_seconds'), '8.1f')} {_fmt(r.get('wall_seconds'), '8.1f')} {_fmt(r.get('num_gaussians'), '10d')}"
              + (f"  error: {r['error']}" if "error" in r else ""))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from gen4d.data.synthetic import SCENES

    unknown = [s for s in args.scenes if s not in SCENES]
    if unknown:
        print(f"error: unknown scene(s) {', '.join(unknown)}; choose from {', '.join(SCENES)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gen4d-bench-deformation-"))
    runs = args.keep or work
    settings = {k: getattr(args, k) for k in ("resolution", "frames", "test_views", "seed", "preset", "iters", "device", "extra", "exports", "dry_run", "schedules")}
    settings["layout"] = "monocular"
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}
    record: dict = {"machine": machine, "settings": settings, "data": {}, "rows": []}
    try:
        for scene in args.scenes:
            data, seconds = scene_data(scene, args)
            record["data"][scene] = {"folder": str(data), "write_seconds": seconds}
            print(f"{scene}: {data}" + (f" (written in {seconds:.1f} s)" if seconds else " (cached)"), flush=True)
            for deformation in args.types:
                for schedule in args.schedules:
                    row = run_one(scene, deformation, data, runs / f"{scene}-{deformation}-{schedule}", args, schedule)
                    record["rows"].append(row)
                    print_table([row])
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(record, indent=2) + "\n")  # after every run: partial results survive
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(record["rows"])
    print(f"wrote {args.json}")
    return 1 if any("error" in r for r in record["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
