"""The app's event handlers as plain generators (no gradio here): each yields :class:`View` tuples, the values of the
page's outputs (status line, preview image, result video, animated mesh, splats, downloads), while a job runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, NamedTuple

from .. import Gen4DError
from .jobs import Job, JobRunner, job_results

POLL_SECONDS = 0.5


class View(NamedTuple):
    status: str
    preview: str | None = None
    video: str | None = None
    model: str | None = None
    splats: str | None = None
    downloads: list[str] | None = None
    running: bool = False
    """A progress update: the page leaves the result outputs as they are until the job ends."""


def parse_settings(text: str | None) -> list[str]:
    """``key=value`` settings, one per line or separated by spaces (blank lines and ``#`` comments ignored)."""
    out = []
    for line in (text or "").splitlines():
        line = line.split("#", 1)[0].strip()
        out += line.split()
    return out


def _number(value) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Gen4DError(f"{value!r} is not a whole number") from None


def start_job(runner: JobRunner, command: str, recipe: str, preset: str | None, input_value, iters=None, seed=None,
              settings: str | None = None, options: dict | None = None) -> Iterator[View]:
    """Check the inputs, make the job and follow it to its end. Bad input yields one ``**error:**`` line."""
    try:
        upload = input_value if isinstance(input_value, (str, Path)) or input_value is None else getattr(input_value, "name", None)
        names = {k: Path(v).name for k, v in (options or {}).items() if v and Path(str(v)).is_file()}
        job = runner.new_job(command, recipe, None if upload is None else str(upload),
                             input_name=None if upload is None else Path(str(upload)).name, preset=preset,
                             iters=_number(iters), seed=_number(seed), options=options, option_names=names,
                             overrides=parse_settings(settings))
    except Gen4DError as e:
        yield View(f"**error:** {e}")
        return
    yield from follow_job(runner, job)


def resume_job(runner: JobRunner, name: str | None) -> Iterator[View]:
    """Run a job's command again on its run folder: an interrupted run continues from its last checkpoint."""
    if not name:
        yield View("**error:** choose a job first")
        return
    try:
        job = runner.job(name)
    except Gen4DError as e:
        yield View(f"**error:** {e}")
        return
    yield from follow_job(runner, job, resumed=True)


def follow_job(runner: JobRunner, job: Job, resumed: bool = False) -> Iterator[View]:
    """Start ``job`` and yield its progress until it ends, then its results. If the page goes away (the generator
    is closed), the job is interrupted as Ctrl-C would, and resumes later from its last checkpoint."""
    try:
        runner.start(job)
    except Gen4DError as e:
        yield View(f"**error:** {e}")
        return
    what = f"job `{job.name}` ({job.recipe}{', resumed' if resumed else ''})"
    try:
        while runner.running():
            p = runner.progress()
            yield View(f"{what}: {p.line()}", p.preview, running=True)
            time.sleep(POLL_SECONDS)
    finally:
        runner.stop()
    code = runner.wait()
    preview = runner.progress().preview
    if code == 0:
        yield show_job(job, preview, prefix=f"{what}: done")
    elif code == 130 or (code is not None and code < 0):  # Ctrl-C, or killed: the last checkpoint is intact
        yield View(f"{what}: interrupted; resume it from the Runs tab (it continues from its last checkpoint)", preview)
    else:
        yield View(f"{what}: **error:** {runner.error_line(job).removeprefix('error: ')}", preview)


def show_job(job: Job, preview: str | None = None, prefix: str | None = None) -> View:
    """A finished job's results."""
    r = job_results(job)
    status = f"{prefix or f'job `{job.name}` ({job.recipe})'}  {r.headline}".rstrip()
    return View(status, preview, r.video, r.model, r.splats, r.downloads or None)


def open_job(runner: JobRunner, name: str | None) -> View:
    if not name:
        return View("**error:** choose a job first")
    try:
        job = runner.job(name)
    except Gen4DError as e:
        return View(f"**error:** {e}")
    if not (job.run_dir / "metrics.json").exists():
        return View(f"job `{job.name}` ({job.recipe}) has not finished; resume it to continue from its last checkpoint")
    return show_job(job)
