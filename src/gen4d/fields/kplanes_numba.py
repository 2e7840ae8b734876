"""The K-planes lookup of one HexPlane scale on the CPU, compiled by numba: six bilinear samples multiplied.

For a point with grid coordinates ``c [4]`` in ``[-1, 1]`` (time already mapped), plane ``p`` over axes
``(a, b)`` is sampled bilinearly at ``(c_a, c_b)`` with ``align_corners=True`` and border padding (exactly
``F.grid_sample(..., mode="bilinear", padding_mode="border", align_corners=True)``) and the six samples are
multiplied channel by channel. One compiled pass replaces 6 ``grid_sample`` calls and 5 products forward, and
their backward (``grid_sample``'s CPU backward is the slowest part of a CPU training step): per point, the
gradient of sample ``p`` is the output gradient times the product of the *other* five samples, which is spread
onto the four corner nodes of plane ``p`` and onto the point's two coordinates.

Planes are passed channels-last (``[H, W, F]``, contiguous). The forward pass runs points in parallel
(``prange``) and keeps the six samples for the backward pass. The backward pass splits the points into one
contiguous chunk per numba thread; each chunk accumulates its plane gradients in its own buffer and the buffers
are summed in chunk order, so results are deterministic for a given thread count.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch
from torch import Tensor

# axes (a, b) of the six planes: xy, xz, yz, xt, yt, zt (as ``hexplane.PLANES``)
_A = np.array([0, 0, 1, 0, 1, 2], dtype=np.int64)
_B = np.array([1, 2, 2, 3, 3, 3], dtype=np.int64)


@nb.njit(cache=True, inline="always")
def _corner(coord, size):
    """Lower node index, fractional offset and d(node units)/d(coord) of a grid coordinate (border padding)."""
    if size == 1:
        return 0, 0.0, 0.0
    if coord <= -1.0:
        return 0, 0.0, 0.0
    if coord >= 1.0:
        return size - 2, 1.0, 0.0
    u = (coord + 1.0) * 0.5 * (size - 1)
    i = min(int(np.floor(u)), size - 2)
    return i, u - i, 0.5 * (size - 1)


@nb.njit(cache=True, inline="always")
def _sample(plane, coords, n, a, b, out):
    """Bilinear sample of ``plane [H, W, F]`` at (coords[n, a], coords[n, b]) into ``out [F]``; corner data back."""
    H, W, F = plane.shape
    x0, fx, _ = _corner(coords[n, a], W)
    y0, fy, _ = _corner(coords[n, b], H)
    x1 = min(x0 + 1, W - 1)
    y1 = min(y0 + 1, H - 1)
    for f in range(F):
        top = plane[y0, x0, f] * (1.0 - fx) + plane[y0, x1, f] * fx
        bot = plane[y1, x0, f] * (1.0 - fx) + plane[y1, x1, f] * fx
        out[f] = top * (1.0 - fy) + bot * fy


@nb.njit(cache=True, parallel=True)
def forward(p0, p1, p2, p3, p4, p5, coords):
    planes = (p0, p1, p2, p3, p4, p5)
    N = coords.shape[0]
    F = p0.shape[2]
    out = np.empty((N, F), dtype=p0.dtype)
    samples = np.empty((N, 6, F), dtype=p0.dtype)
    for n in nb.prange(N):
        for f in range(F):
            out[n, f] = 1.0
        for p in nb.literal_unroll((0, 1, 2, 3, 4, 5)):
            _sample(planes[p], coords, n, _A[p], _B[p], samples[n, p])
            for f in range(F):
                out[n, f] *= samples[n, p, f]
    return out, samples


@nb.njit(cache=True, parallel=True)
def backward(p0, p1, p2, p3, p4, p5, coords, samples, grad_out, chunks):
    planes = (p0, p1, p2, p3, p4, p5)
    N = coords.shape[0]
    F = p0.shape[2]
    dt = p0.dtype
    g0 = np.zeros((chunks,) + p0.shape, dtype=dt)
    g1 = np.zeros((chunks,) + p1.shape, dtype=dt)
    g2 = np.zeros((chunks,) + p2.shape, dtype=dt)
    g3 = np.zeros((chunks,) + p3.shape, dtype=dt)
    g4 = np.zeros((chunks,) + p4.shape, dtype=dt)
    g5 = np.zeros((chunks,) + p5.shape, dtype=dt)
    grads = (g0, g1, g2, g3, g4, g5)
    grad_coords = np.zeros((N, 4), dtype=dt)
    per = (N + chunks - 1) // chunks
    for k in nb.prange(chunks):
        before = np.empty(F, dtype=dt)
        gp = np.empty(F, dtype=dt)
        w = np.empty(8, dtype=dt)
        for n in range(k * per, min(N, (k + 1) * per)):
            s = samples[n]
            for f in range(F):
                before[f] = grad_out[n, f]
            # gradient of sample p: grad_out x product of the other samples (prefix x suffix, no division)
            for p in nb.literal_unroll((0, 1, 2, 3, 4, 5)):
                for f in range(F):
                    gp[f] = before[f]
                    for q in range(p + 1, 6):
                        gp[f] *= s[q, f]
                    before[f] *= s[p, f]
                plane = planes[p]
                grad = grads[p]
                H, W, _ = plane.shape
                a, b = _A[p], _B[p]
                x0, fx, dx = _corner(coords[n, a], W)
                y0, fy, dy = _corner(coords[n, b], H)
                x1 = min(x0 + 1, W - 1)
                y1 = min(y0 + 1, H - 1)
                w[0] = (1.0 - fx) * (1.0 - fy)
                w[1] = fx * (1.0 - fy)
                w[2] = (1.0 - fx) * fy
                w[3] = fx * fy
                w[4] = 1.0 - fx
                w[5] = fx
                w[6] = 1.0 - fy
                w[7] = fy
                ga = 0.0
                gb = 0.0
                for f in range(F):
                    g = gp[f]
                    v00 = plane[y0, x0, f]
                    v01 = plane[y0, x1, f]
                    v10 = plane[y1, x0, f]
                    v11 = plane[y1, x1, f]
                    grad[k, y0, x0, f] += g * w[0]
                    grad[k, y0, x1, f] += g * w[1]
                    grad[k, y1, x0, f] += g * w[2]
                    grad[k, y1, x1, f] += g * w[3]
                    ga += g * ((v01 - v00) * w[6] + (v11 - v10) * w[7])
                    gb += g * ((v10 - v00) * w[4] + (v11 - v01) * w[5])
                grad_coords[n, a] += ga * dx
                grad_coords[n, b] += gb * dy
    return g0.sum(0), g1.sum(0), g2.sum(0), g3.sum(0), g4.sum(0), g5.sum(0), grad_coords


class KPlanesProduct(torch.autograd.Function):
    """``(coords [N, 4], *planes [1, F, H, W]) -> [N, F]``: the product of the six bilinear samples (CPU)."""

    @staticmethod
    def forward(ctx, coords: Tensor, *planes: Tensor) -> Tensor:
        last = tuple(p.detach()[0].permute(1, 2, 0).contiguous().numpy() for p in planes)
        c = coords.detach().contiguous().numpy()
        out, samples = forward(*last, c)
        ctx.arrays = (last, c, samples)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        last, c, samples = ctx.arrays
        *grads, grad_coords = backward(*last, c, samples, grad_out.detach().contiguous().numpy(), nb.get_num_threads())
        plane_grads = tuple(torch.from_numpy(g).permute(2, 0, 1).unsqueeze(0).contiguous() for g in grads)
        return (torch.from_numpy(grad_coords), *plane_grads)


def kplanes_product(coords: Tensor, planes) -> Tensor:
    """The fused lookup of one scale: ``coords [N, 4]`` (all four in ``[-1, 1]``), six planes ``[1, F, H, W]``."""
    return KPlanesProduct.apply(coords, *planes)
