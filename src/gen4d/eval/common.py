"""What the learned metrics (:mod:`~gen4d.eval.lpips`, :mod:`~gen4d.eval.clip_score`, :mod:`~gen4d.eval.fvd`) share.

No weights are downloaded here. LPIPS and FVD need published files on disk (CLIP is loaded through the model
registry instead); each missing file raises one :class:`gen4d.Gen4DError` that names it and where to get it. By
default the files are looked up in :func:`metrics_dir` (``$GEN4D_CACHE/metrics`` or ``~/.cache/gen4d/metrics``);
each metric's module lists its file names and download addresses.

:func:`resize_center_crop` is the frame geometry that CLIP's inputs and the TorchScript FVD protocol both use.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import Gen4DError

__all__ = ["load_state_dict", "metrics_dir", "require_file", "resize_center_crop"]


def metrics_dir() -> Path:
    """Default folder of the metric weights: ``$GEN4D_CACHE/metrics`` or ``~/.cache/gen4d/metrics``."""
    root = os.environ.get("GEN4D_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "gen4d") / "metrics"


def require_file(path: str | os.PathLike | None, default_name: str, what: str, url: str) -> Path:
    """``path`` (or ``metrics_dir()/default_name`` when ``None``) if it is a file; otherwise a :class:`Gen4DError`
    naming the file, what it holds and where to download it."""
    p = Path(path) if path is not None else metrics_dir() / default_name
    if not p.is_file():
        raise Gen4DError(
            f"{what} weights not found at {p}; download {url} and save it there "
            f"(or pass its path explicitly)"
        )
    return p


def load_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """The state dict saved in ``path`` (a top-level ``state_dict`` entry is unwrapped), loaded on the CPU with
    ``weights_only``; a file that is not one raises :class:`Gen4DError`."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:  # truncated, an HTML page...
        raise Gen4DError(f"{path} is not a loadable {what} state dict: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise Gen4DError(f"{path} does not hold a state dict ({what}), found {type(sd).__name__}")
    return dict(sd)


def resize_center_crop(x: Tensor, size: int) -> Tensor:
    """``[B, C, H, W]``: resize the shorter side to ``size`` (bilinear, antialiased), then centre-crop ``size``^2."""
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top : top + size, left : left + size]
    return x
