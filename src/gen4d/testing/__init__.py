"""Tiny random-weight models of the real classes, for tests and for ``--models tiny``.

Each builder writes a model in its Hub layout (diffusers pipeline folders), so that loading it goes through
exactly the ``from_pretrained`` code the real weights use. :func:`tiny_model_dir` builds a registry name's tiny
model once under ``$GEN4D_CACHE/tiny`` (default ``~/.cache/gen4d/tiny``) and reuses it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..models.registry import METRIC_WEIGHTS, register_model_set
from .tiny_controlnet import make_tiny_controlnet_tile, make_tiny_sd15_controlnet
from .tiny_if import make_tiny_if
from .tiny_metrics import make_tiny_metric_weights
from .tiny_mvdream import make_tiny_mvdream
from .tiny_sd import make_tiny_sd
from .tiny_svd import make_tiny_svd
from .tiny_t2v import make_tiny_t2v
from .tiny_zero123 import make_tiny_zero123


def _builders() -> dict[str, Callable]:
    return {
        "sd21": make_tiny_sd,
        "sd15": make_tiny_sd15_controlnet,
        "controlnet-tile": make_tiny_controlnet_tile,
        "mvdream": make_tiny_mvdream,
        "mvdream-diffusers": make_tiny_mvdream,
        "zeroscope": make_tiny_t2v,
        "modelscope": make_tiny_t2v,
        "zero123-xl": make_tiny_zero123,
        "stable-zero123": make_tiny_zero123,
        "zero123-xl-bennyguo": make_tiny_zero123,
        "zero123": make_tiny_zero123,
        "svd": make_tiny_svd,
        "svd-xt": make_tiny_svd,
        "deepfloyd-if": make_tiny_if,
    }


def tiny_cache_root() -> Path:
    """``$GEN4D_CACHE/tiny`` or ``~/.cache/gen4d/tiny``."""
    root = os.environ.get("GEN4D_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "gen4d"
    return base / "tiny"


def _build_once(folder: Path, marker: str, build) -> Path:
    """``build(tmp_folder)`` once into ``folder`` (atomically: built aside, then renamed), then reused; ``marker`` is
    the file that says the folder is complete."""
    if (folder / marker).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # built concurrently by someone else: keep theirs
            if not (folder / marker).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def tiny_model_dir(name: str = "sd21", seed: int = 0) -> Path:
    """The folder of the tiny model for registry name ``name`` (built once, atomically, then reused)."""
    builders = _builders()
    if name not in builders:
        raise KeyError(f"no tiny model named {name!r}; known: {sorted(builders)}")
    folder = tiny_cache_root() / (name if seed == 0 else f"{name}-seed{seed}")
    return _build_once(folder, "model_index.json", lambda tmp: builders[name](tmp, seed=seed))


def tiny_metrics_dir(seed: int = 0) -> Path:
    """Folder of tiny random metric weights (LPIPS, CLIP, I3D; see :mod:`gen4d.testing.tiny_metrics`), laid out
    like :func:`gen4d.eval.common.metrics_dir`; built once, atomically, under ``tiny_cache_root()``."""
    folder = tiny_cache_root() / ("metrics" if seed == 0 else f"metrics-seed{seed}")
    return _build_once(folder, "done", lambda tmp: make_tiny_metric_weights(tmp, seed=seed))


def tiny_folder(name: str) -> Path:
    """The ``tiny`` model set: a registry name's tiny model, or (``metrics``) the tiny metric weights."""
    return tiny_metrics_dir() if name == METRIC_WEIGHTS else tiny_model_dir(name)


register_model_set("tiny", tiny_folder)
