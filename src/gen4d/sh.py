"""Real spherical harmonics (degrees 0-3) as used by 3D Gaussian Splatting.

Colour of a Gaussian seen along unit direction d (from the camera centre to the Gaussian):
``rgb = max(0, sum_k c_k * Y_k(d) + 0.5)`` with the constants below; the DC term alone gives
``rgb = C0 * c_0 + 0.5``. Coefficients are stored ``[N, (degree + 1) ** 2, 3]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_degree_from_bases(num_bases: int) -> int:
    degree = int(round(math.sqrt(num_bases))) - 1
    if num_sh_bases(degree) != num_bases or not 0 <= degree <= 3:
        raise ValueError(f"{num_bases} SH coefficients do not make a degree 0-3 expansion")
    return degree


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * C0 + 0.5


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """SH basis values ``[..., (degree+1)^2]`` at unit directions ``dirs [..., 3]``."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [C2[0] * xy, C2[1] * yz, C2[2] * (2 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            C3[0] * y * (3 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """RGB ``[..., 3]`` from coefficients ``[..., K, 3]`` (K >= (degree+1)^2) seen along ``dirs [..., 3]``.

    Directions need not be unit length. Uses the first ``(degree + 1) ** 2`` coefficients.
    """
    k = num_sh_bases(degree)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(degree, dirs)
    return torch.clamp_min((basis[..., None] * coeffs[..., :k, :]).sum(-2) + 0.5, 0.0)
