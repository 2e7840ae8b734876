"""Optimisers and learning-rate schedules of the 4D Gaussians (3D / 4D Gaussian Splatting conventions)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..scene import Scene4D


@dataclass
class LearningRates:
    """Adam learning rates (3D Gaussian Splatting / 4D Gaussian Splatting defaults)."""

    means: float = 1.6e-4
    """Initial learning rate of positions, multiplied by the scene extent."""
    means_final: float = 1.6e-6
    """Final learning rate of positions (exponential decay over the stage), times the scene extent."""
    sh0: float = 2.5e-3
    """DC colour coefficients."""
    shN: float = 2.5e-3 / 20
    """Higher SH coefficients."""
    opacity: float = 5e-2
    """Opacity logits."""
    scales: float = 5e-3
    """Log-scales."""
    quats: float = 1e-3
    """Quaternions."""
    grid: float = 1.6e-3
    """HexPlane feature planes (a node field: node positions and log-radii), initial."""
    grid_final: float = 1.6e-5
    """HexPlane feature planes (node positions and log-radii), final."""
    mlp: float = 1.6e-4
    """Deformation MLP (a node field: the node-motion MLP), initial."""
    mlp_final: float = 1.6e-6
    """Deformation MLP, final."""


def exp_decay(step: int, total: int, lr0: float, lr1: float) -> float:
    """Log-linear interpolation from ``lr0`` at step 0 to ``lr1`` at ``total`` (exactly ``lr0`` throughout when they are
    equal: a constant rate)."""
    if lr0 == lr1:
        return lr0
    f = min(max(step / max(total, 1), 0.0), 1.0)
    return math.exp((1 - f) * math.log(lr0) + f * math.log(lr1))


def gaussian_optimizers(scene: Scene4D, lr: LearningRates, extent: float) -> dict[str, torch.optim.Optimizer]:
    """One Adam per Gaussian parameter (so densification can edit each independently)."""
    rates = {
        "means": lr.means * extent,
        "quats": lr.quats,
        "log_scales": lr.scales,
        "opacity_logits": lr.opacity,
        "sh0": lr.sh0,
        "shN": lr.shN,
    }
    return {
        name: torch.optim.Adam([scene.gaussians.params[name]], lr=rates[name], eps=1e-15)
        for name in scene.gaussians.params.keys()
    }


def deformation_optimizer(scene: Scene4D, lr: LearningRates, extent: float) -> torch.optim.Optimizer:
    """Adam over the deformation field with the two groups its ``optimizer_groups()`` names, in that order:
    ``grid`` (HexPlane feature planes, or a node field's node positions and radii) at ``lr.grid`` and ``mlp`` at
    ``lr.mlp`` (both times ``extent``)."""
    rates = {"grid": lr.grid * extent, "mlp": lr.mlp * extent}
    return torch.optim.Adam(
        [{"params": params, "lr": rates[name], "name": name} for name, params in scene.deformation.optimizer_groups()],
        eps=1e-15,
    )
