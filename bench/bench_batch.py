"""``gen4d batch`` on this machine: throughput with 1 and 2 Ray workers, and Ray's cost per job.

The same N tiny jobs (``gen4d reconstruct`` on a small synthetic scene, a few dozen steps) are run

1. **directly**: ``gen4d reconstruct ...`` as N subprocesses one after the other (each pays Python start-up and
   imports, as a Ray job's fresh worker does), with one torch and one numba thread like a 1-CPU Ray job;
2. **batch, 1 worker**: ``gen4d batch JOBS --num-cpus 1`` (a local Ray instance with one CPU: one job at a time);
3. **batch, 2 workers**: ``gen4d batch JOBS --num-cpus 2``.

Reported: wall seconds of each, throughput (jobs per minute) and the 2-vs-1-worker ratio; the per-job overhead
of Ray, ``(batch wall with 1 worker - direct wall) / N`` (Ray's start-up shared out, scheduling, the worker
process, state files), and Ray's start-up alone (``ray.init`` to ``ray.shutdown`` with no job).

    python bench/bench_batch.py [--jobs 4] [--iters 24] [--rounds 2] [--json bench/results/batch.json]

Wall times are medians over the rounds, which run the three ways in rotating order.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = [
    "train.static_fraction=0.25", "train.checkpoint_every=1000", "train.preview_every=1000", "model.init_points=200",
    "deformation.hexplane.resolution=[8,8,8,4]", "deformation.hexplane.feature_dim=4", "deformation.hidden_dim=16",
    "export.formats=[ply]", "export.frames=3",
]


def _run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode not in (0,):
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t


def ray_startup_seconds() -> float:
    code = ("import ray, time; t = time.perf_counter(); "
            "ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False); "
            "ray.shutdown(); print(time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=4, help="jobs per run (default 4)")
    ap.add_argument("--iters", type=int, default=24, help="steps per job (default 24)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the three ways, in rotating order (default 2)")
    ap.add_argument("--json", type=Path, default=Path("bench/results/batch.json"))
    args = ap.parse_args(argv)

    from gen4d.data.synthetic import write_synthetic_scene

    load_at_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="gen4d-bench-batch-"))
    write_synthetic_scene("bouncing_balls", work / "scene", resolution=24, train_views=4, train_times=3, test_views=2, seed=0)
    job_args = ["reconstruct", str(work / "scene"), f"train.iterations={args.iters}", *TINY]
    jobs = work / "jobs.yaml"
    jobs.write_text("".join(f"- {json.dumps([*job_args, '--seed', str(i)])}\n" for i in range(args.jobs)))
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")  # as a 1-CPU batch job
    gen4d = [sys.executable, "-m", "gen4d.cli"]

    # Warm the numba cache once so no measured run pays for compiling the CPU kernels.
    _run([*gen4d, *job_args, "--out", str(work / "warm"), "--quiet"], env)

    # Rounds alternate the order of the three ways, so a change in the machine's load biases none of them; the
    # median of the rounds is reported.
    walls: dict[str, list[float]] = {"direct": [], "batch_1": [], "batch_2": []}
    job_seconds: dict[str, list[float]] = {"batch_1": [], "batch_2": []}
    import_seconds: dict[str, list[float]] = {"batch_1": [], "batch_2": []}

    def direct(r: int) -> float:
        return sum(_run([*gen4d, *job_args, "--seed", str(i), "--out", str(work / f"direct{r}" / str(i)), "--quiet"], env)
                   for i in range(args.jobs))

    def run_batch(r: int, workers: int) -> float:
        out = work / f"batch{workers}-{r}"
        wall = _run([*gen4d, "batch", str(jobs), "--out", str(out), "--num-cpus", str(workers), "--quiet"], dict(os.environ))
        summary = json.loads((out / "batch.json").read_text())
        assert summary["counts"]["done"] == args.jobs, summary["counts"]
        job_seconds[f"batch_{workers}"] += [row["seconds"] for row in summary["jobs"]]
        import_seconds[f"batch_{workers}"] += [row["import_seconds"] for row in summary["jobs"]]
        return wall

    ways = [("direct", direct), ("batch_1", lambda r: run_batch(r, 1)), ("batch_2", lambda r: run_batch(r, 2))]
    for r in range(args.rounds):
        for key, fn in ways[r % 3:] + ways[: r % 3]:
            walls[key].append(fn(r))
            print(f"round {r + 1}: {key} {walls[key][-1]:.1f} s", flush=True)
    startup = ray_startup_seconds()
    direct_wall, batch = statistics.median(walls["direct"]), {w: statistics.median(walls[f"batch_{w}"]) for w in (1, 2)}

    n = args.jobs
    rows = [("direct (1 at a time)", direct_wall), ("batch, 1 worker", batch[1]), ("batch, 2 workers", batch[2])]
    print(f"{n} jobs of gen4d reconstruct ({args.iters} steps, tiny scene) on {os.cpu_count()} CPUs")
    print(f"{'how':<22} {'wall s':>8} {'jobs/min':>9} {'s/job':>7}")
    for label, wall in rows:
        print(f"{label:<22} {wall:>8.1f} {60 * n / wall:>9.2f} {wall / n:>7.1f}")
    ratio = batch[1] / batch[2]
    overhead = (batch[1] - direct_wall) / n
    print(f"throughput 2 workers / 1 worker: {ratio:.2f}x")
    print(f"Ray overhead per job (1 worker vs direct): {overhead:+.1f} s; Ray start-up + shutdown alone: {startup:.1f} s "
          f"({startup / n:.1f} s per job of {n})")

    result = {
        "jobs": n, "iters": args.iters, "rounds": args.rounds, "walls": walls, "direct_seconds": direct_wall,
        "batch_seconds": {str(k): v for k, v in batch.items()}, "job_seconds_in_worker": job_seconds,
        "import_seconds_in_worker": import_seconds,
        "throughput_jobs_per_min": {"direct": 60 * n / direct_wall, **{f"batch_{k}": 60 * n / v for k, v in batch.items()}},
        "ratio_2_vs_1_workers": ratio, "ray_overhead_seconds_per_job": overhead, "ray_startup_seconds": startup,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
