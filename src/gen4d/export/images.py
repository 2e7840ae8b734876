"""Images out: float tensors to 8-bit arrays, and PNG files written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..files import atomic_path


def to_uint8(images: Tensor) -> np.ndarray:
    """``[..., H, W, 3]`` floats in [0, 1] -> uint8 array."""
    return (images.detach().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def save_png(path: Path, image: Tensor) -> None:
    """``[H, W, 3]`` floats in [0, 1] -> an 8-bit PNG at ``path``."""
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")
