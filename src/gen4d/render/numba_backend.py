"""The CPU backend: numba-compiled binning and compositing (``numba_kernels.py``) behind a torch autograd op.

Projection, SH evaluation and everything before compositing stay in PyTorch (autograd through them is cheap:
one row per Gaussian); only the per-(pixel, Gaussian) work runs in the compiled loops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import numba_kernels as K
from .projection import Projected


def _np(t: Tensor):
    return t.detach().contiguous().cpu().numpy()


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
