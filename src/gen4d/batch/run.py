"""``gen4d batch``: many gen4d jobs on a Ray cluster (or a local Ray instance), one Ray task per job.

Layout of the batch folder ``DIR``::

    DIR/<job>/             the job's run directory (exactly what ``gen4d <command> --out DIR/<job>`` writes)
    DIR/logs/<job>.txt     the job's console, every attempt
    DIR/.batch/<job>.json  the job's state: arguments, status, attempts, seconds, peak memory, error
    DIR/batch.json         the summary (:func:`summarise`); DIR/batch.md the same table in Markdown
    DIR/batch.log          the batch's events and Ray's own output

Each job is a Ray task asking for ``cpus_per_job`` CPUs and ``gpus_per_job`` GPUs, run by a fresh worker process
(:mod:`gen4d.batch.worker`). Resumption is the command line's: a job whose state says done with the same arguments
is skipped without starting a task; every other job is (re)submitted, and its command resumes from the run
directory's checkpoints. Ray retries a job whose worker died (killed, out of memory) or that raised, up to
``max_retries`` times; a gen4d error (bad input) is reported at once, with the line the command line prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .. import Gen4DError
from ..files import write_json, write_text
from .jobs import Job
from .worker import JobError, exception_line, read_record, run_job

STATE_DIR = ".batch"
#: metrics.json keys the summary table shows, when a run reports them.
METRIC_KEYS = ("psnr", "ssim", "lpips", "clip", "fvd", "num_gaussians")


@dataclass
class BatchOptions:
    """How ``gen4d batch`` runs its jobs."""

    address: str | None = None
    """Ray cluster to join: ``auto`` (the one started on this machine by ``ray start``), ``ray://HOST:PORT`` (Ray
    Client); None: start a local Ray instance on this machine."""
    gpus_per_job: float | None = None
    """GPUs each job asks for; None: 1 when the cluster has GPUs, else 0."""
    cpus_per_job: float = 1.0
    """CPUs each job asks for (its torch threads follow: Ray sets OMP_NUM_THREADS)."""
    max_retries: int = 2
    """Retries of a job whose worker died or raised (a gen4d one-line error is not retried: it would recur)."""
    num_cpus: int | None = None
    """CPUs of a local Ray instance (how many 1-CPU jobs run at once); None: all of this machine's."""
    quiet: bool = False
    """No progress bar (the per-job lines and the table are still printed)."""


def job_paths(out: Path, name: str) -> tuple[Path, Path, Path]:
    """A job's run directory, state file and console log."""
    return out / name, out / STATE_DIR / f"{name}.json", out / "logs" / f"{name}.txt"


def is_finished(out: Path, job: Job) -> bool:
    """The job ran to the end with these arguments and its run directory still holds the result."""
    run_dir, record_path, _ = job_paths(out, job.name)
    record = read_record(record_path)
    return record.get("status") == "done" and record.get("args") == list(job.args) and (run_dir / "metrics.json").exists()


# --------------------------------------------------------------------------------------------------- Ray session
@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send this process's file descriptor 2 (Ray's native and Python messages) to ``path`` meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _route_ray_logging(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s %(message)s"))
    logger = logging.getLogger("ray")
    logger.handlers = [handler]
    logger.propagate = False


def connect(options: BatchOptions, log_path: Path):
    """Join (or start) Ray with its output in ``log_path``; returns whether this call started the session."""
    if ray.is_initialized():  # a session the caller already holds (tests, a notebook)
        return False
    _route_ray_logging(log_path)
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if options.address:
        try:
            ray.init(address=options.address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise Gen4DError(f"cannot join the Ray cluster at {options.address}: {exception_line(e)} "
                             "(start one with `ray start --head`, or leave out --address for a local one)") from None
    else:
        ray.init(num_cpus=options.num_cpus or os.cpu_count(), **kwargs)
    return True


def _resources(options: BatchOptions) -> tuple[float, float]:
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus = options.gpus_per_job
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 else 0.0
    if gpus > cluster_gpus:
        raise Gen4DError(f"each job asks for {gpus:g} GPU but the Ray cluster has {cluster_gpus:g}; "
                         "use --gpus-per-job 0 to run on CPUs, or add GPU machines with `ray start --address`")
    if options.cpus_per_job > float(ray.cluster_resources().get("CPU", 0)):
        raise Gen4DError(f"each job asks for {options.cpus_per_job:g} CPUs, more than the Ray cluster has; lower --cpus-per-job")
    return gpus, options.cpus_per_job


# --------------------------------------------------------------------------------------------------- the batch
def run_batch(jobs: list[Job], out: str | os.PathLike, cwd: str | os.PathLike, options: BatchOptions,
              console: Console | None = None) -> dict:
    """Run (or resume) every job; returns the summary written to ``DIR/batch.json`` (see :func:`summarise`)."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise Gen4DError(f"--out {out} exists and is not a directory")
    if options.max_retries < 0:
        raise Gen4DError(f"--max-retries must be 0 or more, got {options.max_retries}")
    console = console or Console(soft_wrap=True)
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    log_path = out / "batch.log"
    t0 = time.time()
    todo = [j for j in jobs if not is_finished(out, j)]
    skipped = [j.name for j in jobs if j not in todo]
    if skipped:
        console.print(f"{len(skipped)} of {len(jobs)} jobs already done in {out}: skipped")
    _log(log_path, f"batch of {len(jobs)} jobs ({len(skipped)} done earlier) in {out}")
    if todo:
        with _stderr_to(log_path):
            _run_on_ray(todo, out, Path(cwd).resolve(), options, console, log_path)
    summary = summarise(jobs, out, wall_seconds=time.time() - t0)
    write_json(out / "batch.json", summary)
    write_text(out / "batch.md", markdown_table(summary))
    console.print(rich_table(summary))
    counts = summary["counts"]
    console.print(f"[bold]{counts['done']} done[/bold], {counts['failed']} failed of {len(jobs)}  summary {out / 'batch.json'}")
    return summary


def _log(path: Path, message: str) -> None:
    with open(path, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def _run_on_ray(todo: list[Job], out: Path, cwd: Path, options: BatchOptions, console: Console, log_path: Path) -> None:
    started = connect(options, log_path)
    try:
        gpus, cpus = _resources(options)
        # max_calls=1: a fresh worker process per job (no state leaks between jobs; peak memory is the job's own)
        task = ray.remote(max_calls=1)(run_job).options(
            num_cpus=cpus, num_gpus=gpus, max_retries=options.max_retries, retry_exceptions=True, name="gen4d-job",
        )
        pending = {}
        for job in todo:
            run_dir, record_path, job_log = job_paths(out, job.name)
            write_json(record_path, {"name": job.name, "args": list(job.args), "status": "pending", "attempts": 0})
            ref = task.remote(list(job.args), str(run_dir), str(cwd), str(record_path), str(job_log))
            pending[ref] = job
        _log(log_path, f"submitted {len(todo)} jobs ({cpus:g} CPU, {gpus:g} GPU each, up to {options.max_retries} retries)")
        _wait(pending, out, options, console, log_path)
    finally:  # Ctrl-C ends here too: the command line says to rerun, finished jobs are then skipped
        if started:
            ray.shutdown()


def _wait(pending: dict, out: Path, options: BatchOptions, console: Console, log_path: Path) -> None:
    total = len(pending)
    done = failed = 0
    columns = [TextColumn("[bold]batch[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=options.quiet, transient=True) as progress:
        bar = progress.add_task("batch", total=total, info="")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                job = pending.pop(ref)
                result = _result(ref, job, out)
                if result["status"] == "done":
                    done += 1
                    console.print(f"[green]done[/green]    {job.name}  {result['seconds']:.1f} s")
                else:
                    failed += 1
                    console.print(f"[red]failed[/red]  {job.name}  {result['error']}")
                _log(log_path, f"{job.name}: {result['status']} {result.get('error', '')}".rstrip())
                progress.advance(bar)
            running = sum(read_record(job_paths(out, j.name)[1]).get("status") in ("running", "error") for j in pending.values())
            progress.update(bar, info=f"{done} done  {running} running  {failed} failed")


def _result(ref, job: Job, out: Path) -> dict:
    """A finished task's result; a task that exhausted its retries becomes ``failed`` with one line."""
    _, record_path, job_log = job_paths(out, job.name)
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # raised in the job on its last attempt
        cause = e.cause
        line = str(cause) if isinstance(cause, JobError) else exception_line(cause) if cause is not None else str(e).splitlines()[0]
    except ray.exceptions.OutOfMemoryError:
        line = ("out of memory: Ray's memory monitor ended the job's worker; lower its memory use (e.g. --preset "
                "low-memory) or run fewer jobs per machine (--cpus-per-job)")
    except ray.exceptions.WorkerCrashedError:
        line = f"the job's worker process died (killed, or out of memory); see {job_log}"
    except ray.exceptions.RayError as e:
        line = exception_line(e)
    record = read_record(record_path)
    record.update(status="failed", error=line, finished=time.time())
    write_json(record_path, record)
    return {"status": "failed", "error": line, "seconds": record.get("seconds", 0.0)}


# --------------------------------------------------------------------------------------------------- summary
def _metrics(run_dir: Path) -> dict:
    metrics = read_record(run_dir / "metrics.json")
    found = {k: metrics[k] for k in METRIC_KEYS if isinstance(metrics.get(k), (int, float))}
    for section in ("consistent4d",):
        if isinstance(metrics.get(section), dict):
            found.update({f"{section}.{k}": v for k, v in metrics[section].items() if isinstance(v, (int, float))})
    return found


def summarise(jobs: list[Job], out: Path, wall_seconds: float = 0.0) -> dict:
    """``DIR/batch.json``: one row per job (name, command, status, attempts, seconds of its last attempt and of that
    attempt's start-up (importing gen4d), peak memory, metrics, error, run directory), counts, and the batch's wall
    time."""
    rows = []
    for job in jobs:
        run_dir, record_path, log_path = job_paths(out, job.name)
        record = read_record(record_path)
        status = record.get("status", "pending")
        if status in ("running", "error"):  # never reported back (the batch was interrupted)
            status = "interrupted"
        rows.append({
            "name": job.name, "command": "gen4d " + " ".join(job.args), "status": status,
            "attempts": record.get("attempts", 0), "seconds": record.get("seconds"), "import_seconds": record.get("import_seconds"),
            "peak_rss_mb": record.get("peak_rss_mb"), "peak_gpu_mb": record.get("peak_gpu_mb"),
            "metrics": _metrics(run_dir) if status == "done" else {}, "error": record.get("error", ""),
            "run_dir": str(run_dir), "log": str(log_path),
        })
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "interrupted", "pending")}
    return {"out": str(out), "jobs": rows, "counts": counts, "wall_seconds": round(wall_seconds, 3)}


def _columns(summary: dict) -> list[str]:
    keys: list[str] = []
    for row in summary["jobs"]:
        keys += [k for k in row["metrics"] if k not in keys]
    return keys


def _cells(row: dict, metric_keys: list[str]) -> list[str]:
    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    memory = num(row["peak_rss_mb"], ".0f") + (f" / {row['peak_gpu_mb']:.0f} GPU" if row.get("peak_gpu_mb") else "")
    metrics = [num(row["metrics"].get(k), "g" if k == "num_gaussians" else ".4g") for k in metric_keys]
    return [row["name"], row["status"], str(row["attempts"]), num(row["seconds"], ".1f"), memory, *metrics, row["error"]]


def _headers(metric_keys: list[str]) -> list[str]:
    return ["job", "status", "attempts", "seconds", "peak MiB", *metric_keys, "error"]


def rich_table(summary: dict) -> Table:
    keys = _columns(summary)
    table = Table(title=f"gen4d batch: {len(summary['jobs'])} jobs")
    for h in _headers(keys):
        table.add_column(h, overflow="fold")
    for row in summary["jobs"]:
        table.add_row(*_cells(row, keys))
    return table


def markdown_table(summary: dict) -> str:
    keys = _columns(summary)
    lines = ["| " + " | ".join(_headers(keys)) + " |", "|" + "---|" * len(_headers(keys))]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r, keys)) + " |" for r in summary["jobs"]]
    return "\n".join(lines) + "\n"
