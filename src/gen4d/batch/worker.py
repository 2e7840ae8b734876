"""What runs inside a Ray worker: one job = the gen4d command line, in-process, in its run directory.

:func:`run_job` calls :func:`gen4d.cli.main` with the job's arguments and ``--out DIR/<name>``, so a job runs
exactly the recipe code of the command line, including its resumption: a rerun of a finished run trains nothing,
an interrupted one continues from its last checkpoint. The job's console (gen4d's own lines; it runs ``--quiet``)
goes to ``DIR/logs/<name>.txt``, its state to ``DIR/.batch/<name>.json`` (read by the batch's progress display).
Each job gets a fresh worker process (``max_calls=1``), so no state (model set, threads, library logging) leaks
from one job into the next, and a job's peak memory is its process's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import sys
import time
import traceback
from pathlib import Path

from ..files import write_json

_EXIT_GEN4D_ERROR = 2


class JobError(RuntimeError):
    """A job ended with an exception other than a gen4d one-line error (retried by Ray); the message is one line."""


def read_record(path: str | os.PathLike) -> dict:
    p = Path(path)
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except (OSError, json.JSONDecodeError):  # being replaced right now (written atomically): read it next time
        return {}


def error_line(text: str) -> str:
    """The one line the CLI printed for a failed command: its last ``error:`` line (gen4d's own, or argparse's
    ``gen4d ...: error: ...``)."""
    for line in reversed(text.splitlines()):
        if line.startswith("error:") or (line.startswith("gen4d") and ": error: " in line):
            return line.strip()
    return ""


def exception_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def peak_memory() -> dict:
    """Peak resident memory of this process (MiB) and, when CUDA was used, peak GPU memory allocated (MiB)."""
    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def run_job(args: list[str], out: str, cwd: str, record_path: str, log_path: str) -> dict:
    """Run one job (module docstring). Returns ``{status: done|failed, seconds, error, peak_rss_mb, ...}``.

    A gen4d error (bad input, changed options on an existing run, a missing model) is returned as ``failed`` with
    the CLI's line: it would fail the same way again. Any other exception (out of memory, a crash) is raised as
    :class:`JobError` for Ray to retry; a killed worker is retried by Ray too.
    """
    started = time.time()
    record = read_record(record_path)
    attempt = int(record.get("attempts", 0)) + 1
    record.update(status="running", attempts=attempt, pid=os.getpid(), host=socket.gethostname(), started=started)
    write_json(record_path, record)
    # Ray sets OMP_NUM_THREADS (torch's threads) to the job's CPUs; numba's parallel kernels follow it too, so two
    # 1-CPU jobs on a 2-core machine do not each start a thread per core. Set before numba is first imported.
    if os.environ.get("OMP_NUM_THREADS"):
        os.environ.setdefault("NUMBA_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    from ..cli import main  # imported here: the driver needs only the job list, not torch

    record["import_seconds"] = round(time.time() - started, 3)
    os.chdir(cwd)  # relative paths of the job list are read from its folder
    argv = [*args, "--out", out, "--quiet"]
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    exc: BaseException | None = None
    with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"--- attempt {attempt} on {record['host']} (pid {os.getpid()}): gen4d {' '.join(argv)}", flush=True)
        sys.argv = ["gen4d", *argv]  # what the run's log records as its command
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: bad arguments
            code = e.code if isinstance(e.code, int) else _EXIT_GEN4D_ERROR
        except Exception as e:  # noqa: BLE001 - reported (and retried) below
            traceback.print_exc()
            code, exc = None, e
    seconds = time.time() - started
    result = {"seconds": round(seconds, 3), **peak_memory()}
    if exc is not None:
        line = exception_line(exc)
        record.update(status="error", error=line, **result)
        write_json(record_path, record)
        raise JobError(line) from None
    if code == 0:
        result.update(status="done", error="")
    else:
        result.update(status="failed", error=error_line(Path(log_path).read_text()) or f"exit status {code}")
    record.update(result, finished=time.time())
    write_json(record_path, record)
    return result
