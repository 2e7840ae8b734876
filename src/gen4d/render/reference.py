"""Dense reference rasterizer: every Gaussian at every pixel, for tests (use float64).

Written for clarity, not speed: its own straightforward projection in matrix form (no shared code with the
fast path beyond the constants), a per-camera depth sort, and an explicit cumulative product of (1 - alpha).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import quat_to_rotmat
from .projection import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_MIN


def rasterize_dense(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    eps2d: float = 0.3,
    antialiased: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Shared Gaussians ``[N, ...]``, colours ``[N, D]``; returns colour ``[C,H,W,D]``, alpha and accumulated depth."""
    outs = []
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means.dtype) + 0.5, torch.arange(width, dtype=means.dtype) + 0.5, indexing="ij"
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # [P, 2]
    Rq = quat_to_rotmat(quats)
    S = torch.diag_embed(scales)
    cov3d = Rq @ S @ S @ Rq.transpose(-1, -2)
    for W2C, K in zip(viewmats, Ks):
        Rw, tw = W2C[:3, :3], W2C[:3, 3]
        p = means @ Rw.T + tw
        keep = p[:, 2] > near_plane
        p, cov, op, col = p[keep], cov3d[keep], opacities[keep], colors[keep]
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        x, y, z = p.unbind(-1)
        # Jacobian of the pinhole map at the point, with x/z and y/z clamped to 1.3x the field of view.
        u = torch.clamp(x / z, -(cx / fx + 0.3 * 0.5 * width / fx), (width - cx) / fx + 0.3 * 0.5 * width / fx)
        v = torch.clamp(y / z, -(cy / fy + 0.3 * 0.5 * height / fy), (height - cy) / fy + 0.3 * 0.5 * height / fy)
        J = torch.zeros(len(p), 2, 3, dtype=p.dtype)
        J[:, 0, 0] = fx / z
        J[:, 0, 2] = -fx * u / z
        J[:, 1, 1] = fy / z
        J[:, 1, 2] = -fy * v / z
        cov2d = J @ Rw @ cov @ Rw.T @ J.transpose(-1, -2)
        det0 = torch.linalg.det(cov2d)
        cov2d = cov2d + eps2d * torch.eye(2, dtype=p.dtype)
        if antialiased:
            op = op * torch.sqrt(torch.clamp(det0 / torch.linalg.det(cov2d), min=0))
        inv = torch.linalg.inv(cov2d)
        center = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)
        d = center[None] - pix[:, None]  # [P, M, 2]
        power = 0.5 * torch.einsum("pmi,mij,pmj->pm", d, inv, d)
        alpha = torch.clamp(op[None] * torch.exp(-power), max=MAX_ALPHA)
        alpha = torch.where((power >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
        order = torch.argsort(z, stable=True)
        alpha, zc, col = alpha[:, order], z[order], col[order]
        T_incl = torch.cumprod(1 - alpha, dim=1)
        T_excl = torch.cat([torch.ones_like(T_incl[:, :1]), T_incl[:, :-1]], dim=1)
        w = alpha * T_excl * (T_incl > TRANSMITTANCE_MIN).detach()
        outs.append((w @ col, w.sum(1, keepdim=True), w @ zc[:, None]))
    rgb = torch.stack([o[0] for o in outs]).reshape(len(viewmats), height, width, -1)
    alpha = torch.stack([o[1] for o in outs]).reshape(len(viewmats), height, width, 1)
    depth = torch.stack([o[2] for o in outs]).reshape(len(viewmats), height, width, 1)
    return rgb, alpha, depth
