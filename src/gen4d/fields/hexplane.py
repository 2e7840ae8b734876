"""HexPlane / K-planes: a 4D feature field factorised into six 2D planes.

A point ``(x, y, z, t)`` is projected onto the six coordinate planes xy, xz, yz, xt, yt, zt; each plane is
sampled bilinearly and the six feature vectors are **multiplied** element-wise (the K-planes product, which
lets a time plane of ones leave the spatial features untouched). Several spatial resolutions ("scales") are
evaluated independently and their features are **concatenated**.

On the CPU the lookup runs in one numba-compiled pass per scale (:mod:`gen4d.fields.kplanes_numba`); elsewhere
it is six ``grid_sample`` calls.

Conventions: xyz arrive already normalised to ``[-1, 1]``; t arrives in ``[0, 1]`` (gen4d's time convention,
see :mod:`gen4d.cameras`) and is mapped to ``[-1, 1]`` here, so the first and last time nodes sit exactly at
``t = 0`` and ``t = 1`` whatever the number of frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Axis index of each coordinate in the input ``[N, 4]`` tensor.
_AXES = {"x": 0, "y": 1, "z": 2, "t": 3}

#: The six planes, in storage order. Plane ``(a, b)`` is sampled with grid coordinates ``(a, b)``, i.e. its
#: first axis runs along the width of the stored image and its second along the height.
PLANES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
PLANE_NAMES: tuple[str, ...] = ("xy", "xz", "yz", "xt", "yt", "zt")
#: Indices (into :data:`PLANES`) of the planes without / with a time axis.
SPATIAL_PLANES: tuple[int, ...] = (0, 1, 2)
TIME_PLANES: tuple[int, ...] = (3, 4, 5)


@dataclass
class HexPlaneConfig:
    """Shape and initialisation of a :class:`HexPlane`."""

    LEGACY: ClassVar[dict] = {"fused_cpu": False}
    """Runs made before the fused lookup resume on ``grid_sample`` (bit for bit what they started with)."""

    feature_dim: int = 32
    """Feature channels per plane (F). The output has ``F * len(multires)`` channels."""

    resolution: tuple[int, int, int, int] = (64, 64, 64, 25)
    """Base number of grid nodes along (x, y, z, t). Each must be >= 1."""

    multires: tuple[int, ...] = (1, 2)
    """Spatial resolution multipliers, one scale each; the time resolution is the same at every scale."""

    fused_cpu: bool = True
    """On the CPU, sample the six planes in one compiled pass (``kplanes_numba``; the same values as
    ``grid_sample``, about 2x faster forward + backward, ``bench/bench_kplanes.py``); False: six ``grid_sample``
    calls as on a GPU."""

    init_range: tuple[float, float] = (0.1, 0.5)
    """Spatial planes (xy, xz, yz) start uniform in this range. Time planes (xt, yt, zt) start at exactly 1.0
    so that, multiplied in, they make the features time-independent: a static scene is the default."""


@torch.no_grad()
def hold_knots_outside(values: Tensor, dim: int, lo: float, hi: float, extrapolate: bool = False) -> None:
    """In place: along ``dim`` of ``values`` (knots at clip times ``i / (K - 1)``), the knots that no time in
    ``[lo, hi]`` reads by linear interpolation take the value of the nearest knot that one does, or, with
    ``extrapolate``, continue the last step between the two knots at that edge (constant velocity: a turning part
    keeps turning into the frames not reached yet; a window reading a single knot holds it)."""
    last = values.shape[dim] - 1
    first_used = max(0, min(last, int(math.floor(lo * last))))
    last_used = max(first_used, min(last, int(math.ceil(hi * last))))
    step = extrapolate and last_used > first_used

    def fill(start: int, count: int, edge: int, inner: int) -> None:
        if count <= 0:
            return
        base, out = values.narrow(dim, edge, 1), values.narrow(dim, start, count)
        if step:  # knot j takes edge + |j - edge| * (edge - inner)
            shape = [1] * values.dim()
            shape[dim] = count
            dist = (torch.arange(start, start + count, device=values.device) - edge).abs().to(values.dtype)
            out.copy_(base + dist.reshape(shape) * (base - values.narrow(dim, inner, 1)))
        else:
            out.copy_(base.expand_as(out))

    fill(0, first_used, first_used, first_used + 1)
    fill(last_used + 1, last - last_used, last_used, last_used - 1)


class HexPlane(nn.Module):
    """Multi-scale six-plane feature field.

    ``grids[s][p]`` is the plane ``PLANES[p]`` at scale ``s``: a parameter ``[1, F, res_b, res_a]`` for axes
    ``(a, b)``.
    """

    def __init__(self, config: HexPlaneConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else HexPlaneConfig()
        if config.feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {config.feature_dim}")
        if len(config.resolution) != 4 or any(int(r) < 1 for r in config.resolution):
            raise ValueError(f"resolution must be four integers >= 1 (x, y, z, t), got {config.resolution}")
        if len(config.multires) < 1 or any(int(m) < 1 for m in config.multires):
            raise ValueError(f"multires must hold integers >= 1, got {config.multires}")
        lo, hi = config.init_range
        self.grids = nn.ModuleList()
        for mult in config.multires:
            res = self.scale_resolution(int(mult))
            planes = nn.ParameterList()
            for p, (a, b) in enumerate(PLANES):
                plane = torch.empty(1, config.feature_dim, res[b], res[a])
                if p in TIME_PLANES:
                    nn.init.ones_(plane)
                else:
                    nn.init.uniform_(plane, lo, hi)
                planes.append(nn.Parameter(plane))
            self.grids.append(planes)

    def scale_resolution(self, mult: int) -> tuple[int, int, int, int]:
        """Nodes along (x, y, z, t) at a scale with spatial multiplier ``mult`` (time is never multiplied)."""
        rx, ry, rz, rt = (int(r) for r in self.config.resolution)
        return (rx * mult, ry * mult, rz * mult, rt)

    @property
    def output_dim(self) -> int:
        """Channels of :meth:`forward`'s output: ``F * number of scales``."""
        return self.config.feature_dim * len(self.config.multires)

    def forward(self, xyzt: Tensor) -> Tensor:
        """Features ``[N, F * S]`` of points ``xyzt [N, 4]`` (xyz in ``[-1, 1]``, t in ``[0, 1]``).

        Coordinates outside the box are clamped to the border nodes (``padding_mode="border"``).
        """
        if xyzt.ndim != 2 or xyzt.shape[-1] != 4:
            raise ValueError(f"xyzt must be [N, 4], got {tuple(xyzt.shape)}")
        ref = self.grids[0][0]
        coords = xyzt.to(device=ref.device, dtype=ref.dtype)
        # Time lives in [0, 1]; grid_sample wants [-1, 1] with align_corners=True putting the end nodes at +-1.
        coords = torch.cat([coords[:, :3], coords[:, 3:] * 2.0 - 1.0], dim=-1)
        # grid_sample's CPU backward reads out of bounds at non-finite coordinates; finite ones pass unchanged
        coords = torch.nan_to_num(coords, nan=0.0, posinf=1.0, neginf=-1.0)
        n = coords.shape[0]
        if coords.device.type == "cpu" and self.config.fused_cpu:
            from .kplanes_numba import kplanes_product

            return torch.cat([kplanes_product(coords, list(planes)) for planes in self.grids], dim=-1)
        feats = []
        for planes in self.grids:
            prod = None
            for p, (a, b) in enumerate(PLANES):
                # grid [1, N, 1, 2]: (.., 0) indexes width (axis a), (.., 1) indexes height (axis b).
                grid = coords[:, (a, b)].reshape(1, n, 1, 2)
                sampled = F.grid_sample(planes[p], grid, mode="bilinear", padding_mode="border", align_corners=True)
                sampled = sampled.reshape(self.config.feature_dim, n).t()  # [N, F]
                prod = sampled if prod is None else prod * sampled
            feats.append(prod)
        return torch.cat(feats, dim=-1)

    @torch.no_grad()
    def hold_times_outside(self, lo: float, hi: float, extrapolate: bool = False) -> None:
        """Give every time node outside the window of clip times ``[lo, hi]`` the values of the nearest node
        that a time inside the window reads (the window's edge nodes), on every time plane and scale.

        With a time window that widens during training (coarse-to-fine in time), the nodes that come into the
        window then start from the motion learnt at its edge, as a tracker starts from the last frame, rather
        than from the canonical pose (nodes at 1: no motion), which the motion may be far from by then.
        ``extrapolate``: they continue the change between the two edge nodes instead (:func:`hold_knots_outside`)."""
        for planes in self.grids:
            for p in TIME_PLANES:
                hold_knots_outside(planes[p], -2, lo, hi, extrapolate)

    # ------------------------------------------------------------------------------------------ regularisers
    # Each regulariser is a sum over scales and over the planes it concerns of a per-plane mean, so its size
    # does not depend on the resolution but does grow with the number of planes/scales (as in K-planes).

    def plane_tv(self) -> Tensor:
        """Total variation of the spatial planes (xy, xz, yz).

        Per plane: ``mean((p[i+1, j] - p[i, j])^2) + mean((p[i, j+1] - p[i, j])^2)``; summed over planes and
        scales. An axis with a single node contributes 0. Returns a scalar tensor.
        """
        total = self._zero()
        for planes in self.grids:
            for p in SPATIAL_PLANES:
                plane = planes[p]
                if plane.shape[-2] > 1:
                    total = total + (plane[..., 1:, :] - plane[..., :-1, :]).square().mean()
                if plane.shape[-1] > 1:
                    total = total + (plane[..., :, 1:] - plane[..., :, :-1]).square().mean()
        return total

    def time_smoothness(self) -> Tensor:
        """Second-order smoothness along time of the time planes (xt, yt, zt).

        Per plane: ``mean((p[t-1] - 2 p[t] + p[t+1])^2)`` over interior time nodes (time is the height axis);
        summed over planes and scales. Fewer than 3 time nodes gives 0. Returns a scalar tensor.
        """
        total = self._zero()
        for planes in self.grids:
            for p in TIME_PLANES:
                plane = planes[p]
                if plane.shape[-2] < 3:
                    continue
                second = plane[..., :-2, :] - 2.0 * plane[..., 1:-1, :] + plane[..., 2:, :]
                total = total + second.square().mean()
        return total

    def time_l1(self) -> Tensor:
        """Distance of the time planes from the static value 1: ``mean(|1 - p|)`` per plane, summed over the
        three time planes and the scales. Returns a scalar tensor."""
        total = self._zero()
        for planes in self.grids:
            for p in TIME_PLANES:
                total = total + (1.0 - planes[p]).abs().mean()
        return total

    def _zero(self) -> Tensor:
        ref = self.grids[0][0]
        return torch.zeros((), device=ref.device, dtype=ref.dtype)
