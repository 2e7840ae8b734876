"""The run directory: everything a run writes, written atomically, so that a rerun can resume.

Layout::

    DIR/config.yaml                       fully resolved configuration
    DIR/log.txt                           what happened, appended across resumes
    DIR/stages/<stage>/checkpoint.safetensors   tensors + JSON state (in the safetensors metadata)
    DIR/stages/<stage>/state.json         the same small state, for people (step, complete, ...)
    DIR/stages/<stage>/preview/           preview images
    DIR/exports/                          PLY, meshes, animated GLB, videos
    DIR/metrics.json                      evaluation results
    DIR/asset.yaml                        how to rebuild and export the finished 4D asset (any recipe)

A checkpoint is a single file replaced by rename, so a kill at any instant leaves either the previous or the
next checkpoint, never a torn one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from . import Gen4DError
from .config import config_yaml, load_section
from .console import attach_run_log
from .devices import resolve_device
from .export.scene import ExportConfig, export_scene
from .fields.deformation import DeformationConfig
from .files import atomic_path, write_json, write_text
from .scene import Scene4D
from .sh import sh_degree_from_bases


class RunDir:
    """A run directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def checkpoint_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "checkpoint.safetensors"

    # ------------------------------------------------------------------ config
    def prepare(self, config, command: str, keep: tuple[str, ...] = ("data",)) -> bool:
        """Create the run, or check that an existing one was made by the same command and config.

        ``config``: the recipe's configuration (a dataclass) or its YAML. A run made before options were added to
        the configuration (its ``config.yaml`` lacks them) resumes when each added option has the value that gives
        the behaviour the run was made with: its default, or its legacy value where a dataclass names one in
        ``LEGACY`` (an option whose default changed the behaviour, see :func:`legacy_values`); ``config.yaml`` is
        then brought up to date. Returns True when resuming. Raises Gen4DError (nothing written)
        when ``DIR`` holds another run or other files (entries named in ``keep``, such as the demo's synthesised
        ``data`` folder, are allowed).
        """
        config_text = config if isinstance(config, str) else config_yaml(config)
        if self.root.exists() and not self.root.is_dir():
            raise Gen4DError(f"--out {self.root} exists and is not a directory")
        if self.config_path.exists():
            old = self.config_path.read_text()
            if old != config_text:
                defaults = None if isinstance(config, str) else config_yaml(type(config)())  # only needed here
                legacy = None if isinstance(config, str) else legacy_values(type(config))
                added = options_added_since(old, config_text, defaults, legacy)
                if added is None:
                    changed = _changed_lines(old, config_text)
                    settings = _legacy_settings(old, config_text, legacy)
                    if settings:
                        raise Gen4DError(
                            f"{self.root} holds a run made before options were added to gen4d; to resume it as it was "
                            f"made, add {' '.join(settings)} (or choose a new --out)"
                        )
                    raise Gen4DError(
                        f"{self.root} holds a run with a different configuration ({changed}); "
                        "rerun with the same options to resume, or choose a new --out"
                    )
                write_text(self.config_path, config_text)
                self.log("config.yaml: " + (f"options added since the run was made, at their defaults: {', '.join(added)}"
                                            if added else "the same values, written anew"))
            self.log(f"resuming: {command}")
            attach_run_log(self.root / "log.txt")
            return True
        if self.root.exists() and any(p.name not in keep for p in self.root.iterdir()):
            raise Gen4DError(f"--out {self.root} is not empty and holds no gen4d run; choose a new or empty folder")
        self.root.mkdir(parents=True, exist_ok=True)
        write_text(self.config_path, config_text)
        self.log(f"started: {command}")
        attach_run_log(self.root / "log.txt")
        return False

    def log(self, message: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "log.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, stage: str, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        with atomic_path(self.checkpoint_path(stage)) as tmp:
            save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})
        write_json(self.stage_dir(stage) / "state.json", state)

    def load_checkpoint(self, stage: str) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        path = self.checkpoint_path(stage)
        if not path.exists():
            return None
        with safe_open(str(path), framework="pt") as f:
            state = json.loads((f.metadata() or {}).get("state", "{}"))
        return load_file(str(path)), state

    def stage_state(self, stage: str) -> dict[str, Any] | None:
        """A stage's state: from its checkpoint when it has one (written atomically with the tensors), else from
        ``state.json`` (artifact stages); None when the stage has not started."""
        path = self.checkpoint_path(stage)
        if path.exists():
            with safe_open(str(path), framework="pt") as f:
                return json.loads((f.metadata() or {}).get("state", "{}"))
        p = self.stage_dir(stage) / "state.json"
        return json.loads(p.read_text()) if p.exists() else None

    def write_stage_state(self, stage: str, state: dict[str, Any]) -> None:
        write_json(self.stage_dir(stage) / "state.json", state)

    def stage_complete(self, stage: str) -> bool:
        state = self.stage_state(stage)
        return state is not None and bool(state.get("complete"))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.metrics_path, metrics)


def _flat(tree, prefix: str = "") -> dict:
    """A nested mapping as ``{"a.b.c": leaf}``."""
    if isinstance(tree, dict) and tree:
        out: dict = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def legacy_values(cls, prefix: str = "") -> dict:
    """Dotted key -> legacy value for every option of the dataclass ``cls`` (nested ones too) whose class lists it
    in a ``LEGACY`` class attribute: the value that reproduces what gen4d did before the option existed, where
    that is not the option's default."""
    out = {f"{prefix}{k}": v for k, v in getattr(cls, "LEGACY", {}).items()}
    for f in dataclasses.fields(cls):
        kind = f.type if isinstance(f.type, type) else None
        if kind is None and f.default_factory is not dataclasses.MISSING:
            kind = type(f.default_factory())
        if kind is not None and dataclasses.is_dataclass(kind):
            out.update(legacy_values(kind, f"{prefix}{f.name}."))
    return out


def options_added_since(old: str, new: str, defaults: str | None, legacy: dict | None = None) -> list[str] | None:
    """The options (dotted keys) ``new`` has and ``old`` lacks, when that is the only difference and each has
    its value in ``defaults`` (or in ``legacy``, which overrides ``defaults`` key by key); None otherwise (a
    changed or removed value, an added option set to another value, or no defaults to check against)."""
    if defaults is None:
        return None
    a, b, d = (_flat(yaml.safe_load(text) or {}) for text in (old, new, defaults))
    d.update(legacy or {})
    if any(k not in b or b[k] != v for k, v in a.items()):
        return None
    added = sorted(set(b) - set(a))
    if any(k not in d or d[k] != b[k] for k in added):
        return None
    return added


def _legacy_settings(old: str, new: str, legacy: dict | None) -> list[str]:
    """``key=value`` overrides that make ``new`` resume the run of ``old`` when they are all it takes (the options
    ``old`` lacks whose legacy value differs from ``new``'s); [] otherwise."""
    if not legacy:
        return []
    a, b = (_flat(yaml.safe_load(text) or {}) for text in (old, new))
    fixes = {k: legacy[k] for k in set(b) - set(a) if k in legacy and b[k] != legacy[k]}
    patched = {**b, **fixes}
    if not fixes or any(k not in patched or patched[k] != v for k, v in a.items()):
        return []
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(fixes.items())]


def _changed_lines(old: str, new: str) -> str:
    """What differs between two ``config.yaml`` texts, as ``key.path: old -> new`` (at most four)."""
    try:
        trees = yaml.safe_load(old), yaml.safe_load(new)
    except yaml.YAMLError:
        trees = None, None
    a, b = (_flat(trees[0]), _flat(trees[1])) if all(isinstance(t, dict) for t in trees) else ({}, {})
    unset = "(unset)"
    keys = [k for k in b if k not in a or a[k] != b[k]] + [k for k in a if k not in b]
    items = [f"{k}: {a.get(k, unset)} -> {b.get(k, unset)}" for k in keys]
    if not items:  # no value differs (the texts are not YAML mappings, or only their layout differs): the new lines
        lines = set(old.splitlines())
        items = [line.strip() for line in new.splitlines() if line not in lines]
    return "changed: " + ", ".join(items[:4]) + (" ..." if len(items) > 4 else "") if items else "formatting differs"


# ----------------------------------------------------------------------------- optimiser state (de)flattening
def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Split an optimiser's state dict into tensors (for safetensors) and JSON-able param groups."""
    sd = optimizer.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            tensors[f"{prefix}.{pid}.{key}"] = torch.as_tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            pid, name = key[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ----------------------------------------------------------------------------------------------- finished runs
ASSET_FILE = "asset.yaml"
"""What rebuilding and exporting a run's 4D asset needs, written by the recipe before its stages run."""


@dataclass
class AssetInfo:
    """How to rebuild a run's final 4D asset and export it again, whatever recipe made it.

    Each recipe writes it (``DIR/asset.yaml``) once it knows the values; ``gen4d export``, ``gen4d eval`` and the
    viewers read it, so none of them needs to know the recipe.
    """

    final_stage: str
    """The stage whose checkpoint holds the finished asset."""
    frames: int
    """Default number of exported frames (distinct training times, or driving frames)."""
    radius: float
    """Default orbit-video radius (the cameras' distance from the origin)."""
    background: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Background colour of renders."""
    antialiased: bool = False
    """Render with antialiasing compensation."""
    deformation: dict = field(default_factory=dict)
    """The deformation field's configuration (:class:`~gen4d.fields.deformation.DeformationConfig` fields)."""
    export: dict = field(default_factory=dict)
    """The run's export settings (:class:`~gen4d.export.scene.ExportConfig` fields)."""
    device: str = "auto"


def write_asset_info(run: RunDir, info: AssetInfo) -> None:
    write_text(run.root / ASSET_FILE, OmegaConf.to_yaml(OmegaConf.structured(info)))


def read_asset_info(run: RunDir) -> AssetInfo:
    path = run.root / ASSET_FILE
    if not path.exists():
        raise Gen4DError(f"{run.root} has no {ASSET_FILE}: not a finished gen4d run (rerun its command to finish it)")
    return load_section(AssetInfo, OmegaConf.to_container(OmegaConf.load(path), resolve=True))


@dataclass
class FinishedRun:
    """A finished run directory, loaded back (any recipe).

    run: the directory. config: its ``config.yaml`` as plain containers. asset: its :class:`AssetInfo`.
    scene: the final scene on ``device``, in evaluation mode.
    """

    run: RunDir
    config: dict
    asset: AssetInfo
    scene: Scene4D
    device: torch.device
    stage: str = ""
    """The stage whose checkpoint the scene comes from."""
    state: dict = field(default_factory=dict)
    """That checkpoint's state (``step``, ``iterations``, ``complete``, ...)."""


def load_finished_run(out: str | os.PathLike, device: str | torch.device | None = None) -> FinishedRun:
    """Load the final 4D asset of a finished run (``gen4d export``, ``gen4d eval``): the checkpoint of the run's final
    stage, which must be complete (a run stopped in the middle is not finished: rerun its command first)."""
    return load_run_scene(out, device)


def _scene_checkpoint(run: RunDir, asset: AssetInfo, latest: bool) -> tuple[str, dict[str, Tensor], dict[str, Any]] | None:
    """(stage, tensors, state) of the final stage's checkpoint; with ``latest``, when the final stage has not written
    one yet, of the most recently written checkpoint holding Gaussians (a run still training)."""
    ckpt = run.load_checkpoint(asset.final_stage)
    if ckpt is not None or not latest:
        return None if ckpt is None else (asset.final_stage, *ckpt)
    candidates = []
    for path in (run.root / "stages").glob("*/checkpoint.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            if "model.gaussians.means" in f.keys():
                candidates.append((path.stat().st_mtime_ns, path.parent.name))
    if not candidates:
        return None
    stage = max(candidates)[1]
    return (stage, *run.load_checkpoint(stage))


def load_run_scene(out: str | os.PathLike, device: str | torch.device | None = None, latest: bool = False) -> FinishedRun:
    """Load a run's 4D asset: the final stage's complete checkpoint, or with ``latest`` the newest checkpoint holding
    Gaussians, finished or not (``gen4d view`` of a run still training). ``FinishedRun.stage`` / ``.state`` say
    which checkpoint it is."""
    run = RunDir(out)
    if not run.config_path.exists():
        raise Gen4DError(f"{out} is not a gen4d run directory (no config.yaml)")
    config = OmegaConf.to_container(OmegaConf.load(run.config_path), resolve=True)
    if not isinstance(config, dict):
        raise Gen4DError(f"{run.config_path} does not hold a gen4d configuration")
    asset = read_asset_info(run)
    found = _scene_checkpoint(run, asset, latest)
    if found is None or not (latest or found[2].get("complete")):
        waiting = "has no checkpoint with Gaussians yet; wait for its first one" if latest else f"has not finished its {asset.final_stage} stage yet; rerun its command to finish it first"
        raise Gen4DError(f"{out} {waiting}")
    stage, ckpt_tensors, state = found
    tensors = {k[len("model."):]: v for k, v in ckpt_tensors.items() if k.startswith("model.")}
    deformation = load_section(DeformationConfig, asset.deformation)
    degree = sh_degree_from_bases(1 + tensors["gaussians.shN"].shape[1])
    dev = torch.device(device) if device is not None else resolve_device(asset.device)
    scene = Scene4D.from_tensors(tensors, degree, deformation, asset.antialiased).to(dev)
    scene.eval()
    return FinishedRun(run, config, asset, scene, dev, stage, state)


def export_asset(scene: Scene4D, run: RunDir, asset: AssetInfo, formats: list[str] | None = None, quiet: bool = False) -> dict[str, list[str]]:
    """Write a run's exports (its export settings; ``formats`` overrides which) under ``DIR/exports``."""
    export = load_section(ExportConfig, asset.export)
    return export_scene(scene, run.exports, export, tuple(asset.background), asset.frames, asset.radius, formats=formats, quiet=quiet)


def export_run(out: str | os.PathLike, formats: list[str], quiet: bool = False) -> dict[str, list[str]]:
    """Export a finished run again (``gen4d export``), whatever recipe made it."""
    finished = load_finished_run(out)
    return export_asset(finished.scene, finished.run, finished.asset, formats, quiet)
