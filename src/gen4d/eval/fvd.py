"""Frechet distance and FVD (Frechet video distance) in PyTorch, with the I3D detector loaded from local files.

Videos are ``[B, T, H, W, 3]`` in ``[0, 1]``. :func:`fvd` = :func:`frechet_distance_from_features` of the
:func:`i3d_features` of two sets of videos.

No weights are downloaded here. The detector is one of two published files, told apart by their content
(:func:`load_i3d`), by default in :func:`gen4d.eval.common.metrics_dir`; a missing one raises one
:class:`gen4d.Gen4DError` that names it and where to get it:

* ``i3d_pretrained_400.pt`` (:data:`I3D_STATE_DICT_URL`): a plain state dict of the Kinetics-400 InceptionI3d,
  the file Consistent4D's FVD script loads; the network is :class:`gen4d.eval.i3d.InceptionI3d`;
* ``i3d_torchscript.pt`` (:data:`I3D_URL`): the TorchScript I3D of StyleGAN-V's FVD.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import Gen4DError
from .common import load_state_dict, metrics_dir, require_file, resize_center_crop
from .i3d import InceptionI3d

__all__ = [
    "I3D_KWARGS",
    "I3D_STATE_DICT_URL",
    "I3D_URL",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "fvd",
    "i3d_features",
    "is_torchscript_file",
    "load_i3d",
]

I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
# Linked from Consistent4D's README (the file DisCo's FVD evaluation uses).
I3D_STATE_DICT_URL = "https://drive.google.com/file/d/1J8w3fGj6H6kmcW9G8Ff6tRQofblaG5Vn/view"

I3D_FILE = "i3d_torchscript.pt"
I3D_STATE_DICT_FILE = "i3d_pretrained_400.pt"


def _as_f64(x: Any) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x.detach().cpu()).to(torch.float64)


def _sym_sqrt(a: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh(0.5 * (a + a.T))
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Frechet distance between Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``:

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``.

    ``tr((sigma1 sigma2)^{1/2})`` is computed as ``tr((A sigma2 A)^{1/2})`` with ``A = sigma1^{1/2}`` (the two
    matrices are similar, and ``A sigma2 A`` is symmetric PSD): two symmetric eigendecompositions in float64,
    negative round-off eigenvalues clamped to 0. Accepts numpy arrays or tensors; returns a Python float.
    """
    mu1, mu2, s1, s2 = (_as_f64(v) for v in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must be equal-length vectors, got {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    d = mu1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be [{d}, {d}], got {tuple(s1.shape)} and {tuple(s2.shape)}")
    a = _sym_sqrt(s1)
    m = a @ s2 @ a
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2.0 * tr_sqrt
    return float(fd)


def frechet_distance_from_features(features_a: Any, features_b: Any) -> float:
    """:func:`frechet_distance` between the Gaussians fitted to two feature sets ``[Na, D]`` and ``[Nb, D]`` (means
    and sample covariances, ddof 1), computed without forming the ``D x D`` covariances when a set is smaller than
    ``D`` (e.g. 4 view videos against 400-d I3D features).

    With centred features ``A`` (``[Na, D]``) and ``B``, ``Sa = A^T A / (Na - 1)`` and ``Sb = B^T B / (Nb - 1)``;
    the non-zero eigenvalues of ``Sa Sb`` are those of ``M M^T`` with ``M = A B^T / sqrt((Na - 1)(Nb - 1))``, so
    ``tr((Sa Sb)^{1/2})`` is the sum of the singular values of the small matrix ``M``, and ``tr(Sa)``, ``tr(Sb)``
    are sums of squares. Exact (float64); falls back to :func:`frechet_distance` when both sets have ``>= D`` rows.
    """
    fa, fb = _as_f64(features_a), _as_f64(features_b)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1] or min(fa.shape[0], fb.shape[0]) < 2:
        raise ValueError(f"need two [N >= 2, D] feature sets with the same D, got {tuple(fa.shape)} and {tuple(fb.shape)}")
    if min(fa.shape[0], fb.shape[0]) >= fa.shape[1]:
        return frechet_distance(*feature_statistics(fa), *feature_statistics(fb))
    a, b = fa - fa.mean(0), fb - fb.mean(0)
    na, nb = fa.shape[0] - 1, fb.shape[0] - 1
    cross = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt(na * nb)
    fd = (fa.mean(0) - fb.mean(0)).square().sum() + a.square().sum() / na + b.square().sum() / nb - 2.0 * cross
    return float(fd)


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and sample covariance ``[D, D]`` (``np.cov(rowvar=False)``, ddof 1) of ``[N, D]`` features."""
    f = _as_f64(features).numpy()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need [N >= 2, D] features for a covariance, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


# The call of StyleGAN-V's FVD (and of the evaluation code derived from it): raw 400-d logits-layer features.
I3D_KWARGS: dict[str, Any] = {"rescale": False, "resize": True, "return_features": True}


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """True for a TorchScript archive (a zip with a ``code/`` folder or ``constants.pkl``); False for a plain
    ``torch.save`` file (zip or legacy pickle), whatever its name."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())


def _default_i3d_file() -> Path:
    for name in (I3D_STATE_DICT_FILE, I3D_FILE):
        if (metrics_dir() / name).is_file():
            return metrics_dir() / name
    raise Gen4DError(
        f"FVD detector weights not found in {metrics_dir()}; download {I3D_STATE_DICT_URL} (Consistent4D's "
        f"{I3D_STATE_DICT_FILE}) or {I3D_URL} ({I3D_FILE}) and save it there (or pass its path explicitly)"
    )


def load_i3d(path: str | os.PathLike | None = None, device: str | torch.device | None = "cpu") -> torch.jit.ScriptModule | InceptionI3d:
    """Load an FVD detector; what the file holds decides how (its name does not matter).

    * a TorchScript archive (StyleGAN-V's ``i3d_torchscript.pt``): ``torch.jit.load``;
    * a plain state dict (Consistent4D's ``i3d_pretrained_400.pt``, the InceptionI3d layout):
      :meth:`InceptionI3d.from_state_dict` (strict).

    ``path=None``: ``metrics_dir()/i3d_pretrained_400.pt``, else ``metrics_dir()/i3d_torchscript.pt``. A missing or
    unreadable file raises :class:`Gen4DError` naming it and where to download the weights.
    """
    if path is None:
        p = _default_i3d_file()
    else:
        url = I3D_STATE_DICT_URL if Path(path).name == I3D_STATE_DICT_FILE else I3D_URL
        p = require_file(path, I3D_FILE, "FVD detector (I3D)", url)
    if not is_torchscript_file(p):
        det = InceptionI3d.from_state_dict(load_state_dict(p, "InceptionI3d"))
        return det.to(device) if device is not None else det
    try:
        with warnings.catch_warnings():  # recent torch flags TorchScript as deprecated; the published file is one
            warnings.simplefilter("ignore", DeprecationWarning)
            det = torch.jit.load(str(p), map_location=device)
    except (RuntimeError, OSError, ValueError) as e:
        raise Gen4DError(f"{p} is not a loadable TorchScript module: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return det.eval()


def _resize_stretch_bicubic(x: Tensor, size: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, C, size, size]``: bicubic, antialiased when shrinking, aspect ratio not kept,
    no clamping (the resize of Consistent4D's FVD script: PIL bicubic on float channels)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


@torch.no_grad()
def i3d_features(
    videos: Tensor,
    detector: Callable[..., Tensor],
    *,
    detector_kwargs: Mapping[str, Any] | None = None,
    resolution: int | None = 224,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> Tensor:
    """Detector features ``[B, F]`` of videos ``[B, T, H, W, 3]`` in ``[0, 1]``.

    Two protocols, chosen by the detector:

    * :class:`InceptionI3d` (Consistent4D's FVD): every frame is resized to ``resolution`` x ``resolution``
      (bicubic, aspect ratio not kept, no crop; ``None``: as is), mapped to ``[-1, 1]`` (Consistent4D:
      ``uint8 / 127.5 - 1``), the whole clip is laid out as ``[B, 3, T, H, W]`` and the features are the 400-d
      logits averaged over time (``F = 400``).
    * anything else, e.g. the TorchScript I3D (StyleGAN-V's FVD): each frame is (if ``resolution`` is set) resized so
      its shorter side is ``resolution`` (bilinear, antialiased) and centre-cropped to ``resolution``^2, mapped to
      ``[-1, 1]``, laid out as ``[B, 3, T, H, W]`` and passed as ``detector(x, **detector_kwargs)`` (default
      :data:`I3D_KWARGS`: ``rescale=False, resize=True, return_features=True``, i.e. the input is already in
      ``[-1, 1]`` and the I3D returns its 400-d pre-softmax features). That I3D needs at least ~10 frames of 224x224.
    """
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be [B, T, H, W, 3], got {tuple(videos.shape)}")
    stretch = isinstance(detector, InceptionI3d)
    kwargs = {} if stretch else dict(I3D_KWARGS if detector_kwargs is None else detector_kwargs)
    if device is None:
        p = next(iter(detector.parameters()), None) if hasattr(detector, "parameters") else None
        device = p.device if p is not None else videos.device
    b, t, h, w, _ = videos.shape
    feats = []
    for i in range(0, b, batch_size):
        v = videos[i : i + batch_size].to(device, torch.float32).clamp(0, 1)
        n = v.shape[0]
        x = v.reshape(n * t, h, w, 3).permute(0, 3, 1, 2)
        if resolution is not None:
            x = _resize_stretch_bicubic(x, resolution) if stretch else resize_center_crop(x, resolution)
        x = x.reshape(n, t, 3, x.shape[-2], x.shape[-1]).permute(0, 2, 1, 3, 4).contiguous()
        out = detector(x * 2.0 - 1.0, **kwargs)
        feats.append(out.reshape(n, -1).double().cpu())
    return torch.cat(feats)


def fvd(
    videos_a: Tensor,
    videos_b: Tensor,
    detector: Callable[..., Tensor] | str | os.PathLike | None = None,
    *,
    detector_kwargs: Mapping[str, Any] | None = None,
    resolution: int | None = 224,
    batch_size: int = 8,
) -> float:
    """Frechet video distance between two sets of videos ``[B, T, H, W, 3]`` in ``[0, 1]`` (B >= 2 each).

    detector: a loaded detector (an :class:`InceptionI3d`, or any callable with the TorchScript I3D's call
    signature), a path to either weight file (:func:`load_i3d` tells them apart by content), or ``None`` for the
    default files of :func:`load_i3d`. Features come from :func:`i3d_features` (whose protocol follows the
    detector); the score is the Frechet distance between their means and sample covariances
    (:func:`frechet_distance_from_features`). Like every FVD,
    the value depends on the number of videos; compare scores computed with equal set sizes.
    """
    if detector is None or isinstance(detector, (str, os.PathLike)):
        detector = load_i3d(detector)
    kw = {"detector_kwargs": detector_kwargs, "resolution": resolution, "batch_size": batch_size}
    return frechet_distance_from_features(i3d_features(videos_a, detector, **kw), i3d_features(videos_b, detector, **kw))
