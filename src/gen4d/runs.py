"""The run directory: everything a run writes, written atomically, so that a rerun can resume.

Layout::

    DIR/config.yaml                       fully resolved configuration
    DIR/log.txt                           what happened, appended across resumes
    DIR/stages/<stage>/checkpoint.safetensors   tensors + JSON state (in the safetensors metadata)
    DIR/stages/<stage>/state.json         the same small state, for people (step, complete, ...)
    DIR/stages/<stage>/preview/           preview images
    DIR/exports/                          PLY, meshes, animated GLB, videos
    DIR/metrics.json                      evaluation results

A checkpoint is a single file replaced by rename, so a kill at any instant leaves either the previous or the
next checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from . import Gen4DError
from .files import atomic_path, write_json, write_text


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
    def prepare(self, config_yaml: str, command: str, keep: tuple[str, ...] = ("data",)) -> bool:
        """Create the run, or check that an existing one was made by the same command and config.

        Returns True when resuming. Raises Gen4DError (nothing written) when ``DIR`` holds another run or other
        files (entries named in ``keep``, such as the demo's synthesised ``data`` folder, are allowed).
        """
        if self.root.exists() and not self.root.is_dir():
            raise Gen4DError(f"--out {self.root} exists and is not a directory")
        if self.config_path.exists():
            old = self.config_path.read_text()
            if old != config_yaml:
                changed = _changed_lines(old, config_yaml)
                raise Gen4DError(
                    f"{self.root} holds a run with a different configuration ({changed}); "
                    "rerun with the same options to resume, or choose a new --out"
                )
            self.log(f"resuming: {command}")
            return True
        if self.root.exists() and any(p.name not in keep for p in self.root.iterdir()):
            raise Gen4DError(f"--out {self.root} is not empty and holds no gen4d run; choose a new or empty folder")
        self.root.mkdir(parents=True, exist_ok=True)
        write_text(self.config_path, config_yaml)
        self.log(f"started: {command}")
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
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            state = json.loads((f.metadata() or {}).get("state", "{}"))
        return load_file(str(path)), state

    def stage_complete(self, stage: str) -> bool:
        ckpt = self.load_checkpoint(stage)
        return ckpt is not None and bool(ckpt[1].get("complete"))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.metrics_path, metrics)


def _changed_lines(old: str, new: str) -> str:
    a = {line for line in old.splitlines()}
    b = [line.strip() for line in new.splitlines() if line not in a]
    return "changed: " + ", ".join(b[:4]) + (" ..." if len(b) > 4 else "") if b else "formatting differs"


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
