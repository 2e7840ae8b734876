"""Differentiable rendering of Gaussians (gsplat on CUDA, our packed PyTorch rasterizer elsewhere)."""

from .rasterize import RenderOutput, gsplat_available, rasterize

__all__ = ["RenderOutput", "gsplat_available", "rasterize"]
