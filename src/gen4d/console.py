"""The console belongs to the user: gen4d's own progress and one-line messages go there; library warnings, library
log messages and third-party progress bars go to the run's ``log.txt``.

:func:`capture_library_output` (called by the CLI before any work) routes Python warnings and the loggers of
transformers, diffusers, huggingface_hub, peft, numba and PIL into one handler and turns the libraries' own progress
bars off. Until a run directory exists (:func:`attach_run_log`, called by :meth:`gen4d.runs.RunDir.prepare`) the
records are kept in memory; then they are written to ``DIR/log.txt``, and every later one as it comes.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import diffusers
import huggingface_hub
import transformers

LIBRARY_LOGGERS = ("transformers", "diffusers", "huggingface_hub", "peft", "accelerate", "numba", "PIL", "py.warnings", "urllib3", "httpx",
                  "gradio", "uvicorn", "uvicorn.error", "uvicorn.access", "viser", "websockets", "asyncio", "httpcore")


class _RunLog(logging.Handler):
    """Appends records to the run's log file, or keeps them until there is one."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.pending: list[str] = []
        self.path: Path | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{record.name}] {record.getMessage()}"
        except Exception:  # noqa: BLE001 - a malformed library message must not break the run
            return
        first, *rest = line.splitlines() or [""]
        self._write(first)
        for part in rest:
            self._write("    " + part)

    def _write(self, line: str) -> None:
        if self.path is None:
            self.pending.append(line)
            return
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:  # the run folder is gone: keep the line rather than fail the caller
            self.pending.append(line)

    def attach(self, path: Path) -> None:
        self.path = path
        pending, self.pending = self.pending, []
        for line in pending:
            self._write(line)


_handler: _RunLog | None = None


def capture_library_output() -> None:
    """Route library warnings, log records and progress bars away from the console (module doc). Idempotent."""
    global _handler
    if _handler is not None:
        return
    _handler = _RunLog()
    logging.captureWarnings(True)
    warnings.simplefilter("default")  # each distinct warning once per place, into the log
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [_handler]
        logger.propagate = False
        logger.setLevel(logging.WARNING)
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_default_handler()
    diffusers.utils.logging.set_verbosity_warning()
    diffusers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    os.environ.setdefault("TQDM_DISABLE", "1")


def attach_run_log(path: str | os.PathLike) -> None:
    """Send captured library output to ``path`` (the run's log), starting with what came before the run existed."""
    if _handler is not None:
        _handler.attach(Path(path))
