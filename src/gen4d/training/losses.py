"""Image losses and named regularisers shared by every stage."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .. import Gen4DError
from ..eval.metrics import ssim
from ..scene import Scene4D


def photometric_loss(pred: Tensor, target: Tensor, ssim_weight: float) -> dict[str, Tensor]:
    """``(1 - w) L1 + w (1 - SSIM)`` as in 3D Gaussian Splatting; images ``[B, H, W, 3]``."""
    l1 = (pred - target).abs().mean()
    out = {"l1": (1.0 - ssim_weight) * l1}
    if ssim_weight > 0:
        out["dssim"] = ssim_weight * (1.0 - ssim(pred, target).mean())
    return out


def _field(scene: Scene4D):
    if scene.deformation is None:
        raise Gen4DError("a deformation regulariser was asked for in a stage without a deformation field")
    return scene.deformation


def _hexplane(scene: Scene4D):
    return getattr(_field(scene), "hexplane", None)


REGULARISERS: dict[str, Callable[[Scene4D], Tensor | None]] = {
    "plane_tv": lambda scene: None if (hp := _hexplane(scene)) is None else hp.plane_tv(),
    "time_smoothness": lambda scene: None if (hp := _hexplane(scene)) is None else hp.time_smoothness(),
    "time_l1": lambda scene: None if (hp := _hexplane(scene)) is None else hp.time_l1(),
}
"""Regularisers by name (the keys stages' configs use): HexPlane total variation of the spatial planes, second-order
smoothness of the time planes along t, and the pull of the time planes towards "no motion". Each gives None for a
field without feature planes (a node field), and the term is left out."""


def regulariser_losses(scene: Scene4D, weights: dict[str, float]) -> dict[str, Tensor]:
    """``{name: weight * REGULARISERS[name](scene)}`` for every non-zero weight whose term applies to the field."""
    unknown = sorted(set(weights) - set(REGULARISERS))
    if unknown:
        raise Gen4DError(f"unknown regulariser(s) {', '.join(unknown)}; choose from {', '.join(REGULARISERS)}")
    out = {}
    for name, w in weights.items():
        if w and (value := REGULARISERS[name](scene)) is not None:
            out[name] = w * value
    return out


def field_regularisers(scene: Scene4D, times: Tensor) -> dict[str, Tensor]:
    """The deformation field's own weighted regularisers at ``times`` (the rendered cameras' times): a node
    field's ``arap``; none for a HexPlane field or a scene without a field."""
    return {} if scene.deformation is None else scene.deformation.regularisers(times)
