"""The CPU backend: numba-compiled projection, binning and compositing (``numba_kernels.py``) behind torch
autograd ops.

The projection (:func:`project_gaussians_numba`) computes what ``projection.project_gaussians`` does, with the
same gradients, in one compiled pass per direction instead of some hundred small tensor operations. SH
evaluation and everything before it stay in PyTorch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import numba_kernels as K
from .projection import ALPHA_THRESHOLD, MAX_EXTENT_SIGMAS, Projected


def _np(t: Tensor):
    return t.detach().contiguous().cpu().numpy()


def _per_camera(t: Tensor, dims: int) -> Tensor:
    """``t`` with a leading camera dimension (1 when shared by every camera)."""
    return t if t.dim() == dims + 1 else t[None]


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, settings):
        arrays = (_np(means), _np(quats), _np(scales), _np(opacities), _np(viewmats), _np(Ks))
        means2d, conics, depths, opac, radii, valid = K.project_forward(*arrays, *settings, ALPHA_THRESHOLD, MAX_EXTENT_SIGMAS)
        ctx.saved = (arrays, settings)
        radii, valid = torch.from_numpy(radii), torch.from_numpy(valid)
        ctx.mark_non_differentiable(radii, valid)
        return torch.from_numpy(means2d), torch.from_numpy(conics), torch.from_numpy(depths), torch.from_numpy(opac), radii, valid

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_depths, g_opac, _radii, _valid):
        arrays, settings = ctx.saved
        grads = [_np(g) if g is not None else np.zeros(shape, arrays[0].dtype)
                 for g, shape in zip((g_means2d, g_conics, g_depths, g_opac), _output_shapes(arrays))]
        gm, gq, gs, go = K.project_backward(*arrays, *settings, *grads)
        return torch.from_numpy(gm), torch.from_numpy(gq), torch.from_numpy(gs), torch.from_numpy(go), None, None, None


def _output_shapes(arrays) -> list[tuple[int, ...]]:
    C, N = arrays[4].shape[0], max(arrays[0].shape[1], arrays[1].shape[1])
    return [(C, N, 2), (C, N, 3), (C, N), (C, N)]


def project_gaussians_numba(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor,
                            width: int, height: int, near_plane: float = 0.01, far_plane: float = 1e10, eps2d: float = 0.3,
                            antialiased: bool = False) -> Projected:
    """``projection.project_gaussians`` (same arguments, values and gradients) in compiled loops; the cameras
    (``viewmats``, ``Ks``) get no gradient, so callers that optimise them use the PyTorch projection."""
    dtype = means.dtype
    inputs = [_per_camera(means, 2), _per_camera(quats, 2), _per_camera(scales, 2), _per_camera(opacities, 1)]
    settings = (int(width), int(height), float(near_plane), float(far_plane), float(eps2d), bool(antialiased))
    means2d, conics, depths, opac, radii, valid = _Project.apply(
        *(t.to(dtype) for t in inputs), viewmats.detach().to(dtype), Ks.detach().to(dtype), settings)
    return Projected(means2d, conics, depths, opac, radii, valid)


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, feats, offsets, gauss, width, height):
        arrays = (_np(means2d), _np(conics), _np(opacities), _np(feats))
        out, out_alpha, pair_T, end = K.composite_forward(offsets, gauss, *arrays, width, height)
        ctx.saved = (offsets, gauss, end, pair_T, arrays, width, height)
        return torch.from_numpy(out), torch.from_numpy(out_alpha)

    @staticmethod
    def backward(ctx, grad_out, grad_alpha):
        offsets, gauss, end, pair_T, arrays, width, height = ctx.saved
        grads = K.composite_backward(offsets, gauss, end, pair_T, *arrays, _np(grad_out), _np(grad_alpha), width, height)
        return (*(torch.from_numpy(g) for g in grads), None, None, None, None)


def rasterize_projected_numba(proj: Projected, colors: Tensor, width: int, height: int) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as ``cpu.rasterize_projected``: colour ``[C,H,W,D]``, alpha ``[C,H,W,1]``, accumulated depth."""
    C, N = proj.valid.shape
    D = colors.shape[-1]
    dtype = colors.dtype
    with torch.no_grad():
        key = torch.where(proj.valid, proj.depths, torch.full_like(proj.depths, float("inf")))
        order = torch.argsort(key, dim=1, stable=True)
        n_valid = proj.valid.sum(1)
        offsets, gauss = K.bin_pairs(
            _np(proj.means2d.to(dtype)), _np(proj.conics.to(dtype)), _np(proj.opacities.to(dtype)),
            _np(proj.radii), _np(order), _np(n_valid), width, height,
        )
    feats = torch.cat([colors, proj.depths[..., None].to(dtype)], dim=-1)
    out, alpha = _Composite.apply(proj.means2d.to(dtype), proj.conics.to(dtype), proj.opacities.to(dtype), feats, offsets, gauss, width, height)
    out = out.reshape(C, height, width, D + 1)
    return out[..., :D], alpha.reshape(C, height, width, 1), out[..., D:]
