"""Rasterization of projected Gaussians with packed (pixel, Gaussian) intersections, in vectorised PyTorch.

Instead of evaluating every Gaussian at every pixel (the dense reference), each Gaussian is paired only with
the pixels of its footprint box (see ``projection.py``). The pairs are sorted by pixel, then front to back, and
alpha compositing becomes a segmented prefix sum:

    alpha_i = min(0.999, o_i exp(-1/2 d_i^T Sigma_i^-1 d_i))        (skipped when < 1/255)
    T_i     = prod_{j < i} (1 - alpha_j) = exp(sum_{j < i} log(1 - alpha_j))
    C       = sum_i c_i alpha_i T_i,   kept while T_i (1 - alpha_i) > 1e-4   (gsplat's early stop)

The log-transmittance prefix sum runs in float64 over all pairs at once and the segment offsets are
subtracted, so no per-pixel loop and no padding are needed; autograd differentiates everything.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .projection import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_MIN, Projected


def _pairs(proj: Projected, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Integer work (no gradients): flat Gaussian index ``c * N + n`` and flat pixel index ``c * H * W + y * W + x``
    of every footprint pair, sorted by pixel and, within a pixel, front to back."""
    C, N = proj.valid.shape
    with torch.no_grad():
        # Visit Gaussians front to back in each camera; the stable sort by pixel below keeps that order.
        depth_key = torch.where(proj.valid, proj.depths, torch.full_like(proj.depths, math.inf))
        in_cam = torch.argsort(depth_key, dim=1, stable=True)  # [C, N]
        order = (in_cam + torch.arange(C, device=in_cam.device)[:, None] * N).reshape(-1)
        order = order[proj.valid.reshape(-1)[order]]
        if order.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=proj.valid.device)
            return empty, empty
        cam = order // N
        m = proj.means2d.detach().reshape(-1, 2)[order]
        r = proj.radii.reshape(-1, 2)[order].to(m.dtype)
        x0 = torch.ceil(m[:, 0] - r[:, 0] - 0.5).clamp(min=0).long()
        x1 = torch.floor(m[:, 0] + r[:, 0] - 0.5).clamp(max=width - 1).long()
        y0 = torch.ceil(m[:, 1] - r[:, 1] - 0.5).clamp(min=0).long()
        y1 = torch.floor(m[:, 1] + r[:, 1] - 0.5).clamp(max=height - 1).long()
        box_w = (x1 - x0 + 1).clamp(min=0)
        box_h = (y1 - y0 + 1).clamp(min=0)
        counts = box_w * box_h
        total = int(counts.sum())
        owner = torch.repeat_interleave(torch.arange(order.numel(), device=order.device), counts, output_size=total)
        start = torch.cumsum(counts, 0) - counts
        local = torch.arange(total, device=order.device) - start[owner]
        bw = box_w[owner]
        px = x0[owner] + local % bw
        py = y0[owner] + local // bw
        # Drop pairs whose alpha is below the threshold (box corners) before the sort: about a quarter of them.
        gauss = order[owner]
        dx = m[owner, 0] - (px.to(m.dtype) + 0.5)
        dy = m[owner, 1] - (py.to(m.dtype) + 0.5)
        conic = proj.conics.detach().reshape(-1, 3)[gauss]
        sigma = 0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) + conic[:, 1] * dx * dy
        alpha = proj.opacities.detach().reshape(-1)[gauss] * torch.exp(-sigma)
        hit = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
        gauss = gauss[hit]
        pixel = ((cam[owner] * height + py) * width + px)[hit]
        # int32 keys sort about twice as fast as int64.
        key = pixel.int() if C * height * width < 2**31 else pixel
        _, perm = torch.sort(key, stable=True)
        return gauss[perm], pixel[perm]


def rasterize_projected(
    proj: Projected,
    colors: Tensor,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite projected Gaussians. colors: ``[C, N, D]``.

    Returns accumulated colour ``[C, H, W, D]``, alpha ``[C, H, W, 1]`` and accumulated depth ``[C, H, W, 1]``
    (sum of weight x camera z; divide by alpha for the expected depth).
    """
    C, N = proj.valid.shape
    D = colors.shape[-1]
    gauss, pixel = _pairs(proj, width, height)
    dtype = colors.dtype
    out = torch.zeros(C * height * width, D + 2, dtype=dtype, device=colors.device)
    if gauss.numel() == 0:
        out = out.reshape(C, height, width, D + 2)
        return out[..., :D], out[..., D + 1 :], out[..., D : D + 1]

    # One gather of every per-Gaussian attribute (its backward is one index_add).
    attrs = torch.cat(
        [proj.means2d, proj.conics, proj.opacities[..., None], proj.depths[..., None], colors], dim=-1
    ).reshape(C * N, -1)[gauss]
    mx, my, ca, cb, cc, op, z = attrs[:, :7].unbind(-1)
    col = attrs[:, 7:]
    px = (pixel % width).to(dtype) + 0.5
    py = ((pixel // width) % height).to(dtype) + 0.5
    dx, dy = mx - px, my - py
    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    alpha = torch.clamp(op * torch.exp(-sigma), max=MAX_ALPHA)
    used = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    alpha = torch.where(used, alpha, torch.zeros_like(alpha))

    # Segmented exclusive prefix sum of log(1 - alpha), in float64 so long prefixes lose no precision.
    log1m = torch.log1p(-alpha).double()
    csum = torch.cumsum(log1m, 0)
    before = csum - log1m
    seg_start = torch.ones_like(pixel, dtype=torch.bool)
    seg_start[1:] = pixel[1:] != pixel[:-1]
    seg_id = torch.cumsum(seg_start.long(), 0) - 1
    log_T = before - before[seg_start][seg_id]
    with torch.no_grad():
        alive = (log_T + log1m) > math.log(TRANSMITTANCE_MIN)
    weight = alpha * torch.exp(log_T).to(dtype) * alive

    contrib = torch.cat([weight[:, None] * col, (weight * z)[:, None], weight[:, None]], dim=-1)
    out = out.index_add(0, pixel, contrib).reshape(C, height, width, D + 2)
    return out[..., :D], out[..., D + 1 :], out[..., D : D + 1]
