"""``rasterize``: one differentiable Gaussian rasterizer, two backends with the same signature.

* ``"gsplat"``: gsplat's CUDA kernels (CUDA tensors, ``pip install gen4d[cuda]``).
* ``"numba"``: our CPU kernels compiled by numba (CPU tensors; the default on CPU).
* ``"torch"``: our packed-intersection PyTorch implementation (any device; no compiled code at all).
* ``"auto"``: gsplat for CUDA tensors when it is installed, torch on other GPUs, numba on the CPU.

Both follow the same rules (see ``projection.py`` and ``cpu.py``), so results agree up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from .cpu import rasterize_projected
from .projection import project_gaussians, view_colors

Backend = Literal["auto", "numba", "torch", "gsplat"]


@dataclass
class RenderOutput:
    """rgb: ``[C, H, W, D]`` composited on the background. alpha: ``[C, H, W, 1]`` in [0, 1].
    depth: ``[C, H, W, 1]`` expected camera-space depth (accumulated depth / alpha; 0 where empty).
    meta: ``means2d [C, N, 2]`` (screen positions; gradients feed densification), ``radii [C, N, 2]``,
    ``width``, ``height``, ``n_cameras``, ``backend``."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    meta: dict = field(default_factory=dict)

    def select(self, index: Tensor) -> "RenderOutput":
        """The images of cameras ``index`` (the statistics in ``meta`` stay those of the whole render)."""
        return RenderOutput(self.rgb[index], self.alpha[index], self.depth[index], self.meta)


def _background(backgrounds: Tensor | None, C: int, D: int, like: Tensor) -> Tensor | None:
    if backgrounds is None:
        return None
    bg = torch.as_tensor(backgrounds, dtype=like.dtype, device=like.device)
    return bg.expand(C, D) if bg.dim() == 1 else bg


def gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
    backgrounds: Tensor | None = None,
    backend: Backend = "auto",
) -> RenderOutput:
    """Render N Gaussians into C cameras.

    means ``[N, 3]`` (shared by all cameras) or ``[C, N, 3]`` (one set per camera, e.g. each camera at its own
    time); quats ``[(C,) N, 4]`` wxyz; scales ``[(C,) N, 3]`` standard deviations; opacities ``[(C,) N]``;
    colors ``[(C,) N, D]``, or SH coefficients ``[(C,) N, K, 3]`` with ``sh_degree`` set.
    viewmats ``[C, 4, 4]`` world-to-camera (OpenCV axes); Ks ``[C, 3, 3]``.
    backgrounds: ``[D]`` or ``[C, D]`` colour behind the Gaussians (None = black / nothing added).
    antialiased: Mip-Splatting-style opacity compensation for the 2D low-pass filter (gsplat "antialiased").
    """
    C = viewmats.shape[0]
    if backend == "auto":
        if means.is_cuda:
            backend = "gsplat" if gsplat_available() else "torch"
        else:
            backend = "numba" if means.device.type == "cpu" else "torch"
    if backend == "gsplat":
        rgb, alpha, acc_depth, meta = _rasterize_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            sh_degree, near_plane, far_plane, eps2d, antialiased,
        )
    elif backend in ("torch", "numba"):
        batched = means.dim() == 3
        project = project_gaussians
        if backend == "numba" and not (viewmats.requires_grad or Ks.requires_grad):
            from .numba_backend import project_gaussians_numba as project
        proj = project(
            means if batched else means[None], quats, scales, opacities, viewmats, Ks, width, height,
            near_plane, far_plane, eps2d, antialiased,
        )
        rgb_in = view_colors(colors, means if batched else means[None], viewmats, sh_degree)
        if backend == "numba":
            from .numba_backend import rasterize_projected_numba

            rgb, alpha, acc_depth = rasterize_projected_numba(proj, rgb_in, width, height)
        else:
            rgb, alpha, acc_depth = rasterize_projected(proj, rgb_in, width, height)
        meta = {"means2d": proj.means2d, "radii": proj.radii}
    else:
        raise ValueError(f"unknown rasterizer backend {backend!r}; use 'auto', 'numba', 'torch' or 'gsplat'")
    depth = acc_depth / alpha.clamp_min(1e-10)
    bg = _background(backgrounds, C, rgb.shape[-1], rgb)
    if bg is not None:
        rgb = rgb + (1.0 - alpha) * bg[:, None, None, :]
    meta.update(width=width, height=height, n_cameras=C, backend=backend)
    return RenderOutput(rgb, alpha, depth, meta)


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, near_plane, far_plane, eps2d, antialiased):
    """gsplat backend. Shared Gaussians render all cameras in one call; per-camera Gaussians use gsplat's
    leading batch dimension (one camera per batch entry)."""
    from gsplat import rasterization

    kwargs = dict(
        width=width, height=height, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
        sh_degree=sh_degree, render_mode="RGB+D", packed=False,
        rasterize_mode="antialiased" if antialiased else "classic",
    )
    if means.dim() == 2:
        out, alpha, meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, **kwargs)
    else:
        C = means.shape[0]

        def per_camera(t: Tensor, tail: int) -> Tensor:  # gsplat's batch dimension must be explicit everywhere
            return t if t.dim() == tail + 2 else t.expand(C, *t.shape)

        colors = per_camera(colors, 2 if sh_degree is not None else 1)
        out, alpha, meta = rasterization(
            means, per_camera(quats, 1), per_camera(scales, 1), per_camera(opacities, 0), colors,
            viewmats[:, None], Ks[:, None], **kwargs,
        )
        out, alpha = out[:, 0], alpha[:, 0]
        meta = dict(meta)
        for key in ("means2d", "radii"):
            if key in meta and meta[key].dim() >= 3 and meta[key].shape[1] == 1:
                meta[key] = meta[key][:, 0]
    return out[..., :-1], alpha, out[..., -1:], {"means2d": meta["means2d"], "radii": meta["radii"]}
