"""3D Gaussian Splatting PLY files in the layout of the original INRIA implementation.

This is the layout that splat viewers (SuperSplat, antimatter15/splat, gsplat's viewers, ...) read: one binary
little-endian ``vertex`` element whose float32 properties are, in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3(K-1)-1}  opacity  scale_0 scale_1 scale_2  rot_0 .. rot_3

* ``opacity`` is the logit of the opacity, ``scale_*`` the natural log of the standard deviations, ``rot_*`` the
  wxyz quaternion as stored (viewers normalise it). Normals are unused and written as zeros.
* ``f_rest`` is channel-major: ``f_rest_{c * (K - 1) + (k - 1)}`` is coefficient ``k >= 1`` of channel ``c``.

"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from .. import Gen4DError
from ..files import atomic_path
from ..gaussians.frame import GaussianFrame
from ..sh import sh_degree_from_bases

__all__ = ["inria_property_names", "save_inria_ply", "load_inria_ply"]

# Opacities of exactly 0 or 1 have infinite logits; clamping keeps the file finite (sigmoid maps it back to the
# same float32 value, so round trips of in-range data are unaffected).
_OPACITY_EPS = 1e-10
_SCALE_MIN = 1e-30


def inria_property_names(num_sh_bases: int) -> list[str]:
    """The vertex property names, in file order, for ``num_sh_bases`` = K = (degree + 1)^2 SH coefficients."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (num_sh_bases - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def save_inria_ply(path: str | os.PathLike, frame: GaussianFrame) -> None:
    """Write ``frame`` (N Gaussians, activated values) as an INRIA 3DGS PLY file (binary little-endian, float32)."""
    means, quats, scales, opacities, sh = (t.detach().to("cpu", torch.float64) for t in frame.tensors())
    n, k = sh.shape[0], sh.shape[1]
    sh_degree_from_bases(k)  # validates K
    if not (means.shape == (n, 3) and quats.shape == (n, 4) and scales.shape == (n, 3) and opacities.reshape(-1).shape == (n,)):
        raise ValueError(
            f"inconsistent GaussianFrame shapes: means {tuple(means.shape)}, quats {tuple(quats.shape)}, "
            f"scales {tuple(scales.shape)}, opacities {tuple(opacities.shape)}, sh {tuple(sh.shape)}"
        )
    opacity_logit = torch.logit(opacities.reshape(-1).clamp(_OPACITY_EPS, 1.0 - _OPACITY_EPS))
    log_scales = torch.log(scales.clamp_min(_SCALE_MIN))
    # [N, K-1, 3] -> [N, 3, K-1] -> [N, 3(K-1)]: channel-major, as the INRIA code flattens it.
    f_rest = sh[:, 1:, :].transpose(1, 2).reshape(n, 3 * (k - 1))
    columns = torch.cat(
        [means, torch.zeros(n, 3, dtype=torch.float64), sh[:, 0, :], f_rest, opacity_logit[:, None], log_scales, quats],
        dim=1,
    ).numpy().astype("<f4")
    names = inria_property_names(k)
    assert columns.shape[1] == len(names)
    vertex = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = columns[:, i]
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    with atomic_path(path) as tmp:
        ply.write(str(tmp))


def load_inria_ply(path: str | os.PathLike) -> GaussianFrame:
    """Read an INRIA 3DGS PLY file into an activated :class:`GaussianFrame` (float32 CPU tensors).

    Properties are looked up by name, so files with extra properties or another order are read as well.
    Raises :class:`Gen4DError` when the file is missing or lacks the Gaussian properties.
    """
    path = Path(path)
    if not path.is_file():
        raise Gen4DError(f"PLY file not found: {path}")
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
    except Exception as exc:  # plyfile raises several exception types for malformed files
        raise Gen4DError(f"cannot read {path} as a PLY file with a 'vertex' element: {exc}") from exc
    data = vertex.data
    present = set(data.dtype.names or ())
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [name for name in required if name not in present]
    if missing:
        raise Gen4DError(f"{path} is not a 3D Gaussian Splatting PLY: missing vertex properties {missing}")
    rest_names = sorted((name for name in present if name.startswith("f_rest_")), key=lambda s: int(s[len("f_rest_"):]))
    if len(rest_names) % 3 != 0 or [int(s[7:]) for s in rest_names] != list(range(len(rest_names))):
        raise Gen4DError(f"{path}: f_rest_* properties must be f_rest_0..f_rest_(3m-1), got {len(rest_names)}")
    k = 1 + len(rest_names) // 3
    try:
        sh_degree_from_bases(k)
    except ValueError as exc:
        raise Gen4DError(f"{path}: {exc}") from exc

    def cols(names: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(data[name], dtype=np.float32) for name in names], axis=1))

    n = len(data)
    means = cols(["x", "y", "z"])
    dc = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    rest = cols(rest_names) if rest_names else torch.zeros(n, 0, dtype=torch.float32)
    sh = torch.cat([dc[:, None, :], rest.reshape(n, 3, k - 1).transpose(1, 2)], dim=1).contiguous()
    opacity_logits = cols(["opacity"])[:, 0]
    log_scales = cols(["scale_0", "scale_1", "scale_2"])
    quats = cols(["rot_0", "rot_1", "rot_2", "rot_3"])
    return GaussianFrame.from_raw(means, quats, log_scales, opacity_logits, sh)
