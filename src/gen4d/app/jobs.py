"""Jobs of the web app, without any web framework: uploads checked and copied into the runs folder, the recipe run
as the command line runs it (``python -m gen4d.cli ...`` in a child process, so a stop interrupts it exactly as
Ctrl-C does and the run resumes from its last checkpoint), its progress and its results.

A job is a folder ``RUNS/<job>/``::

    job.json        recipe, command, the command line (argv) that runs it
    input/          the uploaded files, under cleaned names
    run/            the run directory (``--out``)
    console.txt     what the command printed
    progress.jsonl  stage progress events (:func:`gen4d.training.loop.add_progress_listener`)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .. import Gen4DError
from ..files import write_json
from ..models.preflight import check_requirements
from ..recipes import RECIPES
from ..training.loop import PROGRESS_ENV

CLI_WITH_CTRL_C = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from gen4d.cli import main; sys.exit(main(sys.argv[1:]))"
)
"""The command line, in a child process that takes SIGINT as Ctrl-C even when started from a process that ignores it
(a server started in the background): stopping a job then ends it as Ctrl-C does."""

IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_TYPES = (".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv")
ARCHIVE_TYPES = (".zip",)


@dataclass(frozen=True)
class UploadLimits:
    """What the app accepts."""

    image_megabytes: float = 20.0
    image_pixels: int = 4096
    """Longest side of an image."""
    video_megabytes: float = 200.0
    video_frames: tuple[int, int] = (2, 300)
    """Fewest and most frames of a video."""
    archive_megabytes: float = 500.0


LIMITS = UploadLimits()

INPUT_KINDS = {"image": "image", "video": "video", "text": "text", "reconstruct": "archive", "motion train": "video", "motion sample": "text"}
"""What each command's positional input is, in the app."""


def safe_filename(name: str, default: str = "upload") -> str:
    """A file name a user sent, made harmless: its last path component (either slash), only letters, digits, ``.``,
    ``_`` and ``-``, no leading dots, at most 100 characters. Never a path, never ``..``."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", re.split(r"[\\/]", str(name))[-1])
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem, ext = stem.strip(".")[:90], ext[:10]
    if not stem.strip("._-"):
        stem = default
    return f"{stem}.{ext}" if ext else stem


def inside(folder: Path, name: str) -> Path:
    """``folder / safe_filename(name)``, checked to lie inside ``folder``."""
    path = (folder / safe_filename(name)).resolve()
    if folder.resolve() not in path.parents:
        raise Gen4DError(f"refusing the file name {name!r}")
    return path


def _size_check(path: Path, limit_mb: float, what: str) -> None:
    size = path.stat().st_size
    if size == 0:
        raise Gen4DError(f"the {what} {path.name} is empty")
    if size > limit_mb * 1e6:
        raise Gen4DError(f"the {what} {path.name} is {size / 1e6:.0f} MB; the app takes at most {limit_mb:.0f} MB")


def check_upload(path: str | os.PathLike | None, kind: str, original_name: str | None = None, limits: UploadLimits = LIMITS) -> Path:
    """Check an uploaded file for ``kind`` (``image``, ``video`` or ``archive``): its type, size and content (an image
    that opens, a video with an allowed frame count, a zip archive). Raises Gen4DError with a one-line message."""
    if path is None or not Path(path).is_file():
        raise Gen4DError(f"upload a{'n' if kind[0] in 'aeiou' else ''} {kind} first")
    path = Path(path)
    name = original_name or path.name
    ext = Path(safe_filename(name)).suffix.lower()
    allowed = {"image": IMAGE_TYPES, "video": VIDEO_TYPES, "archive": ARCHIVE_TYPES}[kind]
    if ext not in allowed:
        raise Gen4DError(f"{safe_filename(name)} is not a{'n' if kind[0] in 'aeiou' else ''} {kind}; the app takes {', '.join(allowed)} files")
    if kind == "image":
        _size_check(path, limits.image_megabytes, "image")
        try:
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                size = im.size
        except Exception:  # noqa: BLE001 - PIL raises many kinds of errors for broken files
            raise Gen4DError(f"{safe_filename(name)} is not a readable image") from None
        if max(size) > limits.image_pixels:
            raise Gen4DError(f"{safe_filename(name)} is {size[0]}x{size[1]} pixels; the app takes at most {limits.image_pixels} per side")
    elif kind == "video":
        _size_check(path, limits.video_megabytes, "video")
        frames = count_video_frames(path)
        lo, hi = limits.video_frames
        if not lo <= frames <= hi:
            raise Gen4DError(f"{safe_filename(name)} has {frames} frames; the app takes {lo} to {hi}")
    else:
        _size_check(path, limits.archive_megabytes, "archive")
        if not zipfile.is_zipfile(path):
            raise Gen4DError(f"{safe_filename(name)} is not a zip archive")
    return path


def count_video_frames(path: Path) -> int:
    import imageio.v3 as iio

    try:
        n = 0
        for _ in iio.imiter(path):
            n += 1
        return n
    except Exception:  # noqa: BLE001 - ffmpeg / pillow errors for broken files
        raise Gen4DError(f"{path.name} is not a readable video") from None


def extract_archive(archive: Path, folder: Path) -> Path:
    """Unpack a zip into ``folder``, refusing members that would land outside it; returns the folder holding
    ``transforms_train.json`` (the archive's root or its single top folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()
    with zipfile.ZipFile(archive) as z:
        for member in z.infolist():
            target = (root / member.filename).resolve()
            if target != root and root not in target.parents:
                raise Gen4DError(f"the archive holds a path outside its folder ({member.filename!r}); refusing it")
        z.extractall(root)
    found = sorted(root.rglob("transforms_train.json"), key=lambda p: len(p.parts))
    if not found:
        raise Gen4DError(f"{archive.name} holds no transforms_train.json (a D-NeRF scene folder, zipped)")
    return found[0].parent


# ------------------------------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    folder: Path
    recipe: str
    command: str
    argv: list[str]

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def name(self) -> str:
        return self.folder.name

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Job":
        folder = Path(folder)
        meta = json.loads((folder / "job.json").read_text())
        return cls(folder, meta["recipe"], meta["command"], meta["argv"])


@dataclass
class Progress:
    """Where a job stands."""

    stage: str = ""
    step: int = 0
    iterations: int = 0
    rate: float = 0.0
    elapsed: float = 0.0
    preview: str | None = None
    """The newest preview image of the run."""

    @property
    def eta(self) -> float | None:
        """Seconds left in the current stage (None before its first step)."""
        if self.rate <= 0 or self.iterations <= 0:
            return None
        return (self.iterations - self.step) / self.rate

    def line(self) -> str:
        if not self.stage:
            return f"starting ({self.elapsed:.0f} s)"
        if self.iterations == 0:
            return f"stage **{self.stage}**: making it ({self.elapsed:.0f} s)"
        eta = f", about {self.eta:.0f} s left in this stage" if self.eta is not None else ""
        return f"stage **{self.stage}**: step {self.step} / {self.iterations}{eta} ({self.elapsed:.0f} s)"


class JobRunner:
    """Starts and watches jobs under ``runs``, one at a time (the app's queue allows no more)."""

    def __init__(self, runs: str | os.PathLike, models: str = "real"):
        self.runs = Path(runs).resolve()
        self.runs.mkdir(parents=True, exist_ok=True)
        self.models = models
        self.process: subprocess.Popen | None = None
        self.current: Job | None = None
        self._started = 0.0

    # ------------------------------------------------------------------ creating
    def new_job(self, command: str, recipe_name: str, input_value: str | None, input_name: str | None = None,
                preset: str | None = None, iters: int | None = None, seed: int | None = None,
                options: dict[str, str | None] | None = None, option_names: dict[str, str] | None = None,
                overrides: list[str] | None = None) -> Job:
        """Check everything the command line checks before any work (the input, the configuration, the models), then
        make the job folder (uploads copied in under cleaned names) and its command line. Raises Gen4DError."""
        if recipe_name not in RECIPES or command not in RECIPES[recipe_name].commands:
            raise Gen4DError(f"no recipe {recipe_name!r} for {command}")
        recipe = RECIPES[recipe_name]
        kind = INPUT_KINDS[command]
        preset = preset or recipe.default_preset
        if preset not in recipe.presets and preset != recipe.default_preset:
            raise Gen4DError(f"the {recipe.name} recipe has no preset {preset!r}; choose from {', '.join(recipe.presets)}")
        overrides = [o.strip() for o in (overrides or []) if o.strip()]
        bad = [o for o in overrides if "=" not in o or o.startswith("-")]
        if bad:
            raise Gen4DError(f"settings must be key=value, one per line: {', '.join(bad)}")
        if kind == "text":
            if not (input_value or "").strip():
                raise Gen4DError("write a prompt first")
            text = input_value.strip()
        else:
            upload = check_upload(input_value, kind, input_name)
        paths = {o.flag for o in recipe.options if o.path}
        options = {k: v for k, v in (options or {}).items() if v not in (None, "")}
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = self.runs / f"{stamp}-{recipe.name}"
        k = 1
        while folder.exists():
            k += 1
            folder = self.runs / f"{stamp}-{recipe.name}-{k}"
        inputs = folder / "input"
        try:
            inputs.mkdir(parents=True)
            if kind == "text":
                positional = text
            elif kind == "archive":
                positional = str(extract_archive(upload, inputs / "data"))
            else:
                target = inside(inputs, input_name or upload.name)
                shutil.copyfile(upload, target)
                positional = str(target)
            for flag in list(options):
                if flag in paths and Path(options[flag]).is_file():  # an uploaded file (else a folder chosen in the app)
                    name = (option_names or {}).get(flag) or Path(options[flag]).name
                    check_upload(options[flag], "video" if Path(safe_filename(name)).suffix.lower() in VIDEO_TYPES else "image", name)
                    target = inside(inputs, f"{flag.strip('-')}-{safe_filename(name)}")
                    shutil.copyfile(options[flag], target)
                    options[flag] = str(target)
            base = recipe.command_base(command, input=positional, seed=seed, iters=iters, options=options)
            cfg = recipe.build_config(preset, overrides, base)
            recipe.check(cfg)
            from ..models.registry import model_set, set_model_set

            before = model_set()
            set_model_set(self.models)
            try:
                check_requirements(recipe.requirements(cfg), f"gen4d {command} --recipe {recipe.name}")
            finally:
                set_model_set(before)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        argv = [*command.split(), positional, "--out", str(folder / "run"), "--recipe", recipe.name, "--preset", preset,
                "--models", self.models, "--quiet"]
        if iters is not None:
            argv += ["--iters", str(iters)]
        if seed is not None:
            argv += ["--seed", str(seed)]
        for flag, value in options.items():
            argv += [flag, str(value)]
        argv += overrides
        job = Job(folder, recipe.name, command, argv)
        write_json(folder / "job.json", {"recipe": recipe.name, "command": command, "argv": argv, "created": stamp})
        return job

    def jobs(self) -> list[Job]:
        """Every job folder under ``runs``, newest first."""
        found = []
        for p in sorted(self.runs.glob("*/job.json"), key=lambda p: (p.stat().st_mtime_ns, p.parent.name), reverse=True):
            try:
                found.append(Job.load(p.parent))
            except (OSError, ValueError, KeyError):
                continue
        return found

    def job(self, name: str) -> Job:
        folder = self.runs / safe_filename(name)
        if not (folder / "job.json").is_file():
            raise Gen4DError(f"no job {name!r} in {self.runs}")
        return Job.load(folder)

    # ------------------------------------------------------------------ running
    def start(self, job: Job) -> None:
        """Run (or resume: the same command line on the same run folder) ``job`` in a child process."""
        if self.running():
            raise Gen4DError(f"job {self.current.name} is still running; wait for it or stop it")
        progress = job.folder / "progress.jsonl"
        progress.unlink(missing_ok=True)
        env = {**os.environ, PROGRESS_ENV: str(progress)}
        console = open(job.folder / "console.txt", "a")
        self.process = subprocess.Popen([sys.executable, "-c", CLI_WITH_CTRL_C, *job.argv], stdout=console, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, cwd=job.folder)
        console.close()
        self.current, self._started = job, time.monotonic()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def progress(self) -> Progress:
        job = self.current
        p = Progress(elapsed=time.monotonic() - self._started if self._started else 0.0)
        if job is None:
            return p
        path = job.folder / "progress.jsonl"
        if path.exists():
            lines = path.read_text().splitlines()
            for line in reversed(lines):
                try:
                    e = json.loads(line)
                except ValueError:  # a line being written
                    continue
                p.stage, p.step, p.iterations, p.rate = e["stage"], e["step"], e["iterations"], e["rate"]
                break
        p.preview = newest_preview(job.run_dir)
        return p

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status once the child ends (None on timeout)."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_seconds: float = 20.0) -> None:
        """Interrupt the running job as Ctrl-C would (its run resumes from the last checkpoint), then kill it if it
        does not end within ``grace_seconds``."""
        if not self.running():
            return
        self.process.send_signal(signal.SIGINT)
        if self.wait(grace_seconds) is None:
            self.process.kill()
            self.process.wait()

    def error_line(self, job: Job) -> str:
        """The command's ``error:`` line, if it printed one."""
        path = job.folder / "console.txt"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        errors = [line for line in lines if line.startswith("error:")]
        return errors[-1] if errors else (lines[-1] if lines else "")


def newest_preview(run_dir: Path) -> str | None:
    """The most recently written preview image of the run, or None. Files being written (the hidden temporary
    names of atomic writes) are skipped, and so is a file that disappears between listing and reading it."""
    newest, newest_time = None, -1
    for p in run_dir.glob("stages/*/preview/*.png"):
        if p.name.startswith("."):
            continue
        try:
            t = p.stat().st_mtime_ns
        except FileNotFoundError:
            continue
        if t > newest_time:
            newest, newest_time = p, t
    return None if newest is None else str(newest)


@dataclass
class Results:
    """What a finished job offers: a video, a mesh and splats to look at, files to download."""

    video: str | None = None
    model: str | None = None
    """The animated mesh (GLB)."""
    splats: str | None = None
    """The first frame's Gaussians (3DGS PLY)."""
    downloads: list[str] | None = None
    headline: str = ""


def job_results(job: Job) -> Results:
    """The results of a finished job; the html player is exported for 4D runs that lack one."""
    run = job.run_dir
    r = Results(downloads=[])
    exports = run / "exports"
    metrics_path = run / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        try:
            r.headline = RECIPES[job.recipe].headline(metrics)
        except (KeyError, TypeError, ValueError):
            r.headline = ""
        r.downloads.append(str(metrics_path))
    for candidate in (exports / "orbit.mp4", run / "video.mp4"):
        if candidate.exists():
            r.video = str(candidate)
            break
    if (exports / "animated.glb").exists():
        r.model = str(exports / "animated.glb")
        if not (exports / "player.html").exists():  # the page around the animated GLB already written
            from ..config import load_section
            from ..export.html import write_player_html
            from ..export.scene import ExportConfig
            from ..runs import RunDir, read_asset_info

            asset = read_asset_info(RunDir(run))
            fps = load_section(ExportConfig, asset.export).fps
            write_player_html(exports / "player.html", (exports / "animated.glb").read_bytes(), job.name, fps, asset.background)
        r.downloads.append(str(exports / "player.html"))
        r.downloads.append(str(exports / "animated.glb"))
    if (exports / "ply" / "frame_0000.ply").exists():
        r.splats = str(exports / "ply" / "frame_0000.ply")
    if (exports / "textured" / "animated.glb").exists():
        r.downloads.append(str(exports / "textured" / "animated.glb"))
    if r.video:
        r.downloads.append(r.video)
    if (run / "lora").is_dir():
        r.downloads.append(_zip_folder(run / "lora", job.folder / "lora.zip"))
    if exports.is_dir():
        r.downloads.append(_zip_folder(exports, job.folder / "exports.zip"))
    return r


def _zip_folder(folder: Path, target: Path) -> str:
    """A zip of ``folder`` (remade when any file in it is newer)."""
    newest = max((p.stat().st_mtime for p in folder.rglob("*") if p.is_file()), default=0.0)
    if not target.exists() or target.stat().st_mtime < newest:
        tmp = target.with_suffix(".tmp")
        shutil.make_archive(str(tmp), "zip", folder)
        os.replace(f"{tmp}.zip", target)
    return str(target)
