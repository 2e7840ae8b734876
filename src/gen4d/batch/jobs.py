"""The job list of ``gen4d batch``: gen4d commands, each with its own run directory ``DIR/<name>``.

``JOBS`` may be

* a YAML file (``.yaml`` / ``.yml``): a list of jobs, or ``{defaults: ARGS, jobs: [...]}``;
* a JSON-lines file (``.jsonl``): one job per line;
* a text file (``.txt``): one prompt per line (``gen4d text PROMPT``; ``#`` starts a comment line);
* a folder: every image in it becomes ``gen4d image FILE``, every video ``gen4d video FILE``, every subfolder
  holding a D-NeRF scene (``transforms_train.json``) ``gen4d reconstruct DIR`` and every other subfolder holding
  frames (a Consistent4D object's ``0.png ...``) ``gen4d video DIR``.

A job is the command line after ``gen4d`` without ``--out`` (the batch sets it), written as a string
(``"reconstruct scenes/lego --iters 300"``), a list of arguments, or a mapping::

    name: lego                # run directory DIR/lego (default: from the input or the prompt)
    command: reconstruct      # or "image", "motion train", ...
    input: scenes/lego        # the positional input (a path, or the prompt of text / motion sample)
    recipe: dg4d              # any other key is a flag: --recipe dg4d; true -> --flag; key_name -> --key-name
    overrides: {train.batch_size: 4}   # key=value overrides
    args: "--seed 3"          # more arguments, as on the command line

``defaults`` (and ``--with`` / ``key=value`` on the batch's command line) are put before each job's own
arguments, so a job's own value wins. Relative paths are read from the JOBS file's folder.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import Gen4DError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".gif", ".mov", ".webm", ".avi", ".mkv")
#: The commands a job may run: those that make a run directory.
JOB_COMMANDS = ("demo", "reconstruct", "image", "video", "text", "motion")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Job:
    """One job: its run directory name and the gen4d arguments (``--out`` excluded)."""

    name: str
    args: tuple[str, ...]

    @property
    def command(self) -> str:
        """``image``, ``motion train``, ...: the command words of :attr:`args`."""
        if self.args and self.args[0] == "motion" and len(self.args) > 1:
            return " ".join(self.args[:2])
        return self.args[0] if self.args else ""


def read_jobs(path: str | Path, defaults: list[str] | None = None) -> tuple[list[Job], Path]:
    """Read a job list (module docstring). Returns the jobs and the folder their relative paths are read from.

    ``defaults``: arguments put before every job's own (``--with`` and ``key=value`` of ``gen4d batch``).
    Raises :class:`Gen4DError` with one line for a missing or malformed list.
    """
    path = Path(path)
    if not path.exists():
        raise Gen4DError(f"job list not found: {path}")
    defaults = list(defaults or [])
    if path.is_dir():
        entries, base = _folder_entries(path), path.resolve()
    else:
        base = path.resolve().parent
        suffix = path.suffix.lower()
        text = path.read_text()
        if suffix in (".yaml", ".yml"):
            entries, file_defaults = _yaml_entries(path, text)
            defaults = _as_args(file_defaults, f"{path}: defaults") + defaults
        elif suffix == ".jsonl":
            entries = []
            for i, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        entries.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise Gen4DError(f"{path}:{i}: not JSON ({e.msg})") from None
        elif suffix == ".txt":
            entries = [["text", line.strip()] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        else:
            raise Gen4DError(f"{path}: a job list is a .yaml, .jsonl or .txt (prompts) file, or a folder of inputs")
    if not entries:
        raise Gen4DError(f"{path} holds no jobs")
    jobs = [_job(entry, defaults, f"{path} job {i + 1}") for i, entry in enumerate(entries)]
    return _unique_names(jobs), base


def _yaml_entries(path: Path, text: str) -> tuple[list, object]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise Gen4DError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict):
        unknown = set(data) - {"defaults", "jobs"}
        if unknown or not isinstance(data.get("jobs"), list):
            raise Gen4DError(f"{path}: expected a list of jobs, or the keys defaults and jobs (a list)")
        return data["jobs"], data.get("defaults") or []
    if not isinstance(data, list):
        raise Gen4DError(f"{path}: expected a list of jobs, or the keys defaults and jobs (a list)")
    return data, []


def _folder_entries(folder: Path) -> list[list[str]]:
    entries: list[list[str]] = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            entries.append(["image", str(p.resolve())])
        elif p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
            entries.append(["video", str(p.resolve())])
        elif p.is_dir() and (p / "transforms_train.json").exists():
            entries.append(["reconstruct", str(p.resolve())])
        elif p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()):
            entries.append(["video", str(p.resolve())])
    return entries


def _as_args(value, where: str) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise Gen4DError(f"{where}: expected arguments as a string or a list of strings")


def _job(entry, defaults: list[str], where: str) -> Job:
    name = None
    if isinstance(entry, dict):
        entry = dict(entry)
        name = entry.pop("name", None)
        command = entry.pop("command", None)
        if not isinstance(command, str) or not command.strip():
            raise Gen4DError(f"{where}: a job needs a command (reconstruct, image, video, text, motion train, ...)")
        head = command.split()
        if "input" in entry:
            head.append(str(entry.pop("input")))
        tail = _as_args(entry.pop("args", []), where)
        overrides = entry.pop("overrides", {}) or {}
        if not isinstance(overrides, dict):
            raise Gen4DError(f"{where}: overrides must be a mapping of key: value")
        flags: list[str] = []
        for key, value in entry.items():
            flag = "--" + str(key).replace("_", "-")
            if value is True:
                flags.append(flag)
            elif value is not False and value is not None:
                flags += [flag, *(str(v) for v in value)] if isinstance(value, list) else [flag, str(value)]
        args = head + flags + tail + [f"{k}={_override_value(v)}" for k, v in overrides.items()]
    else:
        args = _as_args(entry, where)
    if not args or args[0] not in JOB_COMMANDS:
        raise Gen4DError(f"{where}: {args[0] if args else 'nothing'!r} is not a gen4d command a batch runs ({', '.join(JOB_COMMANDS)})")
    if any(a == "--out" or a.startswith("--out=") for a in args):
        raise Gen4DError(f"{where}: remove --out (the batch runs every job in DIR/<job name>)")
    # defaults go after the command words and the positional input (if any), before the job's own arguments
    at = _command_words(args)
    if at < len(args) and _positional(args[at]):
        at += 1
    args = args[:at] + defaults + args[at:]
    if name is not None and not _NAME.match(str(name)):
        raise Gen4DError(f"{where}: job name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    return Job(str(name) if name is not None else "", tuple(args))


def _override_value(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def _command_words(args) -> int:
    return 2 if args[0] == "motion" else 1


def _positional(arg: str) -> bool:
    return not arg.startswith("-") and "=" not in arg


def _default_name(job: Job) -> str:
    rest = job.args[_command_words(job.args):]
    subject = rest[0] if rest and _positional(rest[0]) else job.command
    if job.args[0] not in ("text",) and not (job.args[0] == "motion" and job.command == "motion sample"):
        subject = Path(subject).stem if Path(subject).suffix else Path(subject).name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", subject).strip("-._")[:48].rstrip("-._")
    return slug or job.command.replace(" ", "-")


def _unique_names(jobs: list[Job]) -> list[Job]:
    explicit = [j.name for j in jobs if j.name]
    dup = {n for n in explicit if explicit.count(n) > 1}
    if dup:
        raise Gen4DError(f"job names must be unique: {', '.join(sorted(dup))} named more than once")
    taken = set(explicit)
    out = []
    for job in jobs:
        name = job.name
        if not name:
            stem, k = _default_name(job), 2
            name = stem
            while name in taken:
                name, k = f"{stem}-{k}", k + 1
            taken.add(name)
        out.append(Job(name, job.args))
    return out
