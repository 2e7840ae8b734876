"""Parts shared by recipes: optimiser construction, learning-rate schedules, image losses, previews."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import Tensor

from .. import Gen4DError
from ..eval.metrics import ssim
from ..files import atomic_path
from .scene import Scene4D


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
    """HexPlane feature planes, initial."""
    grid_final: float = 1.6e-5
    """HexPlane feature planes, final."""
    mlp: float = 1.6e-4
    """Deformation MLP, initial."""
    mlp_final: float = 1.6e-6
    """Deformation MLP, final."""


def exp_decay(step: int, total: int, lr0: float, lr1: float) -> float:
    """Log-linear interpolation from ``lr0`` at step 0 to ``lr1`` at ``total``."""
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
    """Adam over the deformation field with two groups: feature planes and MLP."""
    field = scene.deformation
    grid = list(field.hexplane.parameters())
    grid_ids = {id(p) for p in grid}
    mlp = [p for p in field.parameters() if id(p) not in grid_ids]
    return torch.optim.Adam(
        [{"params": grid, "lr": lr.grid * extent, "name": "grid"}, {"params": mlp, "lr": lr.mlp * extent, "name": "mlp"}],
        eps=1e-15,
    )


def photometric_loss(pred: Tensor, target: Tensor, ssim_weight: float) -> dict[str, Tensor]:
    """``(1 - w) L1 + w (1 - SSIM)`` as in 3D Gaussian Splatting; images ``[B, H, W, 3]``."""
    l1 = (pred - target).abs().mean()
    out = {"l1": (1.0 - ssim_weight) * l1}
    if ssim_weight > 0:
        out["dssim"] = ssim_weight * (1.0 - ssim(pred, target).mean())
    return out


def to_uint8(images: Tensor) -> np.ndarray:
    """``[..., H, W, 3]`` floats in [0, 1] -> uint8 array."""
    return (images.detach().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def save_png(path: Path, image: Tensor) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")


def merge_config(schema, presets: dict[str, list[str]], preset: str, overrides: list[str], base: dict | None = None):
    """Dataclass defaults <- named preset <- ``base`` (CLI flags) <- ``key=value`` overrides; errors name the key."""
    if preset not in presets:
        raise Gen4DError(f"unknown preset {preset!r}; choose from {', '.join(presets)}")
    try:
        cfg = OmegaConf.merge(
            OmegaConf.structured(schema), OmegaConf.from_dotlist(presets[preset]), OmegaConf.create(base or {}),
            OmegaConf.from_dotlist(overrides),
        )
    except Exception as e:  # omegaconf raises several types; all mean a bad key or value
        raise Gen4DError(f"bad configuration override: {str(e).splitlines()[0]}") from None
    return OmegaConf.to_object(cfg)


def config_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Gen4DError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)
