"""Motion bases: a few rigid motions over the clip shared by the whole scene, blended per Gaussian.

Shape of Motion (Wang et al. 2024) moves every Gaussian by a weighted combination of a small set of SE(3) motion
bases, so the scene splits softly into groups that move rigidly together: a blade of a turning rotor, a limb. Here
basis j is a rigid motion about a pivot ``p_j`` — a translation ``t_j(t)`` and a rotation ``R_j(t)`` learned at
``bases.time_nodes`` knots over the clip as a translation and a rotation vector (axis times angle), linear in
between, every knot starting at the identity — and a Gaussian at canonical centre ``x`` follows all K bases with weights
``w(x) = softmax(logits(x))``, the logits read trilinearly from a learned grid over the field's normalisation box::

    x' = sum_j w_j(x) (R_j (x - p_j) + p_j + t_j)
    q' = normalize(sum_j w_j(x) s_j q_j) * q

The blending is :class:`~gen4d.fields.nodes.NodeDeformationField`'s (this field is one with K nodes, every node
blended onto every Gaussian and the weights learned instead of radial). Shape of Motion learns one weight vector
per Gaussian; a field of canonical position keeps the weights out of the Gaussians' own parameters, so
densification, pruning, every recipe and the exports need nothing new, and a Gaussian split from another follows
the same bases. The grid starts at the pivots' radial weights (``bases.init_radius``); the motions start at the
identity, so a new field is exactly the identity.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deformation import DeformationConfig, NodeConfig
from .nodes import NodeDeformationField, _lerp_knots

__all__ = ["MotionBasesField"]


class MotionBasesField(NodeDeformationField):
    """K scene-wide rigid motion bases blended onto the Gaussians by a learned weight field (module docstring).

    Parameters: the pivots ``positions [K, 3]``, the motion ``table [time_nodes, K, 6]`` (translation and rotation
    vector, the latter divided by ``bases.rotation_rate``, per knot and basis) and ``weight_grid [1, K, R, R, R]``
    (blend-weight logits divided by ``bases.weight_rate``, over the normalisation box; indexed z, y, x).
    ``log_radii`` is unused (kept at zero)."""

    radial = False

    def __init__(self, config: DeformationConfig | None = None, num_bases: int | None = None) -> None:
        config = config if config is not None else DeformationConfig(type="bases")
        bc = config.bases
        if bc.weight_resolution < 2:
            raise ValueError(f"bases.weight_resolution must be >= 2, got {bc.weight_resolution}")
        if bc.weight_rate <= 0 or bc.rotation_rate <= 0:
            raise ValueError("bases.weight_rate and bases.rotation_rate must be > 0, "
                             f"got {bc.weight_rate} and {bc.rotation_rate}")
        k = int(num_bases if num_bases is not None else bc.count)
        # the node field this is: K nodes with table motion, each blended onto every Gaussian, no node-graph terms
        nodes = NodeConfig(count=k, neighbours=max(k, 1), init="fps", init_radius=bc.init_radius, motion="table",
                           time_nodes=bc.time_nodes, refine=False, arap_weight=0.0)
        super().__init__(dataclasses.replace(config, nodes=nodes), k)
        r = bc.weight_resolution
        self.weight_grid = nn.Parameter(torch.zeros(1, self.num_nodes, r, r, r))
        # per knot and basis: translation [3] and rotation vector [3] (divided by rotation_rate), all zero
        self.table = nn.Parameter(torch.zeros(bc.time_nodes, self.num_nodes, 6))

    @property
    def num_bases(self) -> int:
        return self.num_nodes

    @torch.no_grad()
    def init_nodes(self, means: Tensor, seed: int = 0) -> None:
        """Place the pivots on K of the canonical centres ``means [N, 3]`` (farthest-point sampling, seeded) and
        start the weight grid at their radial weights: at every grid point, logit ``-|x - p_j|^2 / (2 r^2)`` with
        ``r`` = ``bases.init_radius`` or the mean distance from a pivot to its nearest other pivot."""
        super().init_nodes(means, seed)
        r = self.weight_grid.shape[-1]
        axis = torch.linspace(-1.0, 1.0, r, dtype=self.positions.dtype, device=self.positions.device)
        zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
        unit = torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)  # grid points in [-1, 1]^3, x fastest
        points = self.aabb_min + (unit + 1.0) * 0.5 * (self.aabb_max - self.aabb_min)
        if self.config.bases.init_radius > 0:
            radius = self.positions.new_tensor(self.config.bases.init_radius)
        elif self.num_bases > 1:
            radius = torch.cdist(self.positions, self.positions).fill_diagonal_(float("inf")).min(-1).values.mean()
        else:
            radius = self.log_radii.exp()[0]  # half the canonical Gaussians' extent
        logits = -0.5 * (points[:, None, :] - self.positions[None]).square().sum(-1) / radius.square()  # [R^3, K]
        self.weight_grid.copy_((logits / self.config.bases.weight_rate).T.reshape(1, -1, r, r, r))
        self.log_radii.zero_()

    def node_transforms(self, times: Tensor) -> tuple[Tensor, Tensor]:
        """Rigid motion of every basis at each of ``times [U]``: unit wxyz quaternions ``[U, K, 4]`` (from the
        knots' rotation vectors, linear in between: a turn's angle grows at the same rate whatever its size) and
        translations ``[U, K, 3]``."""
        out = _lerp_knots(self.table, self._times(times))  # [U, K, 6]
        v = out[..., 3:] * self.config.bases.rotation_rate
        angle = (v.square().sum(-1, keepdim=True) + 1e-24).sqrt()
        # sin(a / 2) / a as 0.5 sinc(a / (2 pi)): exact and smooth at a = 0, where the quaternion is exactly 1
        quats = torch.cat([torch.cos(0.5 * angle), 0.5 * torch.sinc(angle / (2.0 * math.pi)) * v], dim=-1)
        return quats, out[..., :3]

    def weight_logits(self, means: Tensor) -> Tensor:
        """``[N, K]`` blend-weight logits of Gaussians at canonical ``means [N, 3]`` (trilinear in the grid)."""
        grid = self.normalize_means(means.to(self.weight_grid))[None, :, None, None, :]  # [1, N, 1, 1, 3] as (x, y, z)
        out = F.grid_sample(self.weight_grid, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out[0, :, :, 0, 0].T * self.config.bases.weight_rate

    def blend_weights(self, means: Tensor) -> Tensor:
        """``[N, K]``: each Gaussian's weight on each basis (non-negative, summing to 1)."""
        return torch.softmax(self.weight_logits(means), dim=-1)

    def skin_logits(self, x: Tensor, idx: Tensor, rel: Tensor) -> Tensor:
        return self.weight_logits(x).gather(1, idx)

    def optimizer_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """``grid``: the pivots, the motion table and the weight grid; ``mlp``: none."""
        return [("grid", [self.positions, self.table, self.weight_grid]), ("mlp", [])]
