"""Devices and numeric precision: the one place that turns ``--device`` and ``precision=`` into torch objects.

Rules (every command follows them):

* ``device=auto`` is CUDA when available, else the CPU; asking for CUDA without one is an error.
* ``precision=auto`` is fp16 on CUDA (what the published systems run their frozen diffusion models in) and fp32
  elsewhere; fp16 on the CPU is refused (half-precision CPU kernels are slow or missing), bf16 is allowed.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch

from . import Gen4DError

Precision = Literal["fp32", "fp16", "bf16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_CHOICES = ("auto", *DTYPES)


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda[:k]`` -> a torch device that exists here."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Gen4DError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise Gen4DError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def resolve_precision(name: str, device: torch.device | str) -> Precision:
    """``auto`` | ``fp32`` | ``fp16`` | ``bf16`` -> the precision to run in on ``device`` (see the module doc)."""
    device = torch.device(device)
    if name == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if name not in DTYPES:
        raise Gen4DError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {name!r}")
    if name == "fp16" and device.type == "cpu":
        raise Gen4DError("precision=fp16 needs a CUDA device; use precision=bf16 or fp32 on the CPU")
    return name  # type: ignore[return-value]


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` at ``precision`` on ``device`` (a no-op context for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
