"""Projection of 3D Gaussians to screen-space ellipses (EWA splatting), shared by the PyTorch backends.

The rules follow gsplat's ``fully_fused_projection`` so that the CPU backend and gsplat agree:

* camera-space mean ``p = R mu + t``; culled unless ``near < p_z < far``;
* 3D covariance ``Sigma = R_q S S^T R_q^T`` (``S = diag(scales)``), camera covariance ``W Sigma W^T``;
* local affine approximation of the pinhole map, ``J = [[fx/z, 0, -fx x/z^2], [0, fy/z, -fy y/z^2]]``,
  evaluated at x/z, y/z clamped to 1.3x the field of view (keeps off-screen Gaussians from exploding);
* ``cov2d = J W Sigma W^T J^T + eps2d I`` (a low-pass filter of ``eps2d`` px^2). In antialiased mode the
  opacity is multiplied by ``sqrt(det(cov2d - eps2d I) / det(cov2d))`` (Mip-Splatting's compensation);
* the pixel footprint is the axis-aligned box where ``opacity * exp(-1/2 d^T cov2d^-1 d)`` can still reach
  ``ALPHA_THRESHOLD``: half-extent ``ceil(k sqrt(cov2d_ii))`` with ``k = sqrt(2 ln(opacity / threshold))``.
  Outside that box every alpha is below the threshold, so the box loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import quat_to_rotmat
from ..sh import eval_sh

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_MIN = 1e-4
MAX_EXTENT_SIGMAS = 3.33


@dataclass
class Projected:
    """Per camera and Gaussian screen-space quantities (C cameras, N Gaussians).

    means2d: ``[C, N, 2]`` pixel coordinates of the projected centres.
    conics: ``[C, N, 3]`` upper triangle (a, b, c) of the inverse 2D covariance.
    depths: ``[C, N]`` camera-space z. opacities: ``[C, N]`` (with antialiasing compensation).
    radii: ``[C, N, 2]`` integer half-extents of the footprint in x and y; zero where culled.
    valid: ``[C, N]`` bool, Gaussians that touch the image.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    opacities: Tensor
    radii: Tensor
    valid: Tensor


class _Compensation(torch.autograd.Function):
    """Mip-Splatting's opacity compensation ``sqrt(max(ratio, 0))``, ``ratio = det(cov2d - eps2d I) / det(cov2d)``,
    whose derivative is ``0.5 / (sqrt + 1e-6)`` (gsplat's): a Gaussian seen edge-on has a ratio near 0, where the
    exact derivative is unbounded, and an infinite gradient times the zero gradient of a culled Gaussian's opacity
    is NaN."""

    @staticmethod
    def forward(ctx, ratio: Tensor) -> Tensor:
        out = torch.sqrt(torch.clamp(ratio, min=0.0))
        ctx.save_for_backward(ratio, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        ratio, out = ctx.saved_tensors
        return torch.where(ratio > 0, grad * 0.5 / (out + 1e-6), torch.zeros_like(grad))


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
) -> Projected:
    """Project ``[C, N, ...]`` (or shared ``[N, ...]``) Gaussians into C cameras; see the module docstring."""
    C = viewmats.shape[0]
    R = viewmats[:, None, :3, :3]  # [C, 1, 3, 3]
    t = viewmats[:, None, :3, 3]  # [C, 1, 3]
    p = (means[..., None, :] * R).sum(-1) + t  # [C, N, 3]
    x, y, z = p.unbind(-1)
    in_depth = (z > near_plane) & (z < far_plane)
    # Culled Gaussians get a harmless depth so no inf/nan enters the graph (where() would pass nan gradients).
    zs = torch.where(in_depth, z, torch.ones_like(z))

    fx, fy = Ks[:, None, 0, 0], Ks[:, None, 1, 1]
    cx, cy = Ks[:, None, 0, 2], Ks[:, None, 1, 2]
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)

    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = zs * torch.minimum(lim_xp, torch.maximum(-lim_xn, x / zs))
    ty = zs * torch.minimum(lim_yp, torch.maximum(-lim_yn, y / zs))
    # cov2d = J W Sigma W^T J^T = A A^T with A = J W R_q S (2x3): written out row by row, because batched
    # 3x3 matrix products are slow on the CPU and J has two structural zeros.
    W = viewmats[:, None, :3, :3]  # [C, 1, 3, 3], rows of the world-to-camera rotation
    T0 = (fx / zs)[..., None] * W[..., 0, :] - (fx * tx / zs**2)[..., None] * W[..., 2, :]  # [C, N, 3]
    T1 = (fy / zs)[..., None] * W[..., 1, :] - (fy * ty / zs**2)[..., None] * W[..., 2, :]
    M = quat_to_rotmat(quats) * scales[..., None, :]  # [(C,) N, 3, 3] = R_q S
    A0 = (T0[..., :, None] * M).sum(-2)
    A1 = (T1[..., :, None] * M).sum(-2)
    a, b, c = (A0 * A0).sum(-1), (A0 * A1).sum(-1), (A1 * A1).sum(-1)
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    if antialiased:
        compensation = _Compensation.apply(det_orig / det)
    else:
        compensation = torch.ones_like(det)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    opac = opacities.expand(C, -1) * compensation

    with torch.no_grad():
        visible = opac > ALPHA_THRESHOLD
        extent = torch.sqrt(2.0 * torch.log(torch.clamp(opac / ALPHA_THRESHOLD, min=1.0))).clamp(max=MAX_EXTENT_SIGMAS)
        rx = torch.ceil(extent * torch.sqrt(a))
        ry = torch.ceil(extent * torch.sqrt(c))
        mx, my = means2d[..., 0], means2d[..., 1]
        on_screen = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        valid = in_depth & visible & (det > 0) & on_screen & (rx > 0) & (ry > 0)
        radii = torch.stack([rx, ry], dim=-1).to(torch.int32) * valid[..., None]
    return Projected(means2d, conics, zs, opac, radii, valid)


def view_colors(colors: Tensor, means: Tensor, viewmats: Tensor, sh_degree: int | None) -> Tensor:
    """Per-camera RGB ``[C, N, D]``: SH evaluated towards each camera, or the given colours broadcast."""
    C = viewmats.shape[0]
    if sh_degree is None:
        return colors.expand(C, *colors.shape[-2:]) if colors.dim() == 2 else colors
    centers = -(viewmats[:, :3, :3].transpose(-1, -2) @ viewmats[:, :3, 3:])[..., 0]  # [C, 3]
    dirs = means - centers[:, None, :]  # [C, N, 3]
    coeffs = colors if colors.dim() == 4 else colors[None]
    return eval_sh(sh_degree, coeffs, dirs)
