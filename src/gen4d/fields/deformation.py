"""Deformation field: HexPlane features -> MLP -> per-Gaussian deltas at time t.

``DeformationConfig.type`` chooses the field: ``hexplane`` (:class:`DeformationField`, this module), ``nodes``
(:class:`gen4d.fields.nodes.NodeDeformationField`, sparse control points blended onto the Gaussians) or ``bases``
(:class:`gen4d.fields.bases.MotionBasesField`, scene-wide rigid motion bases); all share the interface described
here and are built by :func:`make_deformation_field`.

The field maps a canonical Gaussian centre and a time to additive offsets of the Gaussian's stored
parameters (position, wxyz quaternion, log-scale and optionally opacity logit). Applying the offsets is the
caller's job. The last layer of every head starts at zero, so a freshly built field is exactly the identity:
training starts from the static (canonical) scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .hexplane import HexPlane, HexPlaneConfig

DEFORMATION_TYPES = ("hexplane", "nodes", "bases")
"""The values of ``DeformationConfig.type``."""


@dataclass
class NodeConfig:
    """A sparse control-point ("nodes") deformation (``DeformationConfig.type=nodes``): K nodes with learned
    canonical positions and radii, each moved rigidly over time by a small MLP; every Gaussian follows its
    ``neighbours`` nearest nodes by linear blend skinning (see :mod:`gen4d.fields.nodes`)."""

    count: int = 512
    """Number of nodes K (fewer when the canonical scene has fewer Gaussians when the field is attached)."""

    neighbours: int = 4
    """Nearest nodes blended per Gaussian, and nearest nodes per node in the as-rigid-as-possible term."""

    init: str = "fps"
    """Where the nodes start: fps (farthest-point sampling of the canonical Gaussian centres, seeded start) or
    random (a seeded random subset of them)."""

    init_radius: float = 0.0
    """Initial RBF radius of every node (world units); 0: per node, the mean distance to its ``neighbours``
    nearest nodes (the node spacing, so each Gaussian sees a smooth blend of its nearest nodes)."""

    hidden_dim: int = 128
    """Width of the node-motion MLP."""

    layers: int = 4
    """Hidden Linear+ReLU layers of the node-motion MLP (its last, zero-initialised layer comes on top)."""

    position_frequencies: int = 6
    """Sinusoidal frequencies (``2^k pi``, k < this) encoding a node's normalised canonical position."""

    time_frequencies: int = 6
    """Sinusoidal frequencies (``2^k pi``, k < this) encoding the time in [0, 1]."""

    motion: str = "mlp"
    """How a node's rigid motion depends on time: mlp (one MLP of encoded node position and time) or table (a
    learned translation and rotation per node at each of ``time_nodes`` knots, linear in between; every knot
    starts at the identity, and under reconstruction's time curriculum the knots not reached yet hold the motion
    at the window's edge, so large rotations are tracked frame to frame)."""

    time_nodes: int = 50
    """Knots of the ``table`` motion over the clip (first at t = 0, last at t = 1)."""

    refine: bool = False
    """Whenever the Gaussians are densified or pruned, refine the node set to follow them: a node no Gaussian
    follows (in no Gaussian's ``neighbours`` nearest) is removed, and a node is added on each Gaussian lying
    beyond ``grow_distance`` radii of its nearest node (greedily, farthest first, each new node covering those
    near it), with that node's radius and motion, up to ``max_count`` nodes. Off by default: on the windmill
    scene it grew the nodes to the cap and did worse (bench/RESULTS.md)."""

    grow_distance: float = 2.0
    """A Gaussian farther than this many radii from its nearest node is out of the nodes' reach (``refine``)."""

    max_count: int = 1024
    """Most nodes ``refine`` grows to."""

    arap_weight: float = 1e-2
    """Weight of the as-rigid-as-possible term of the node graph (:meth:`NodeDeformationField.arap_loss`), a
    relative strain (squared residual over the squared mean edge length), so the weight does not depend on the
    scene's scale; 0 turns it off."""


@dataclass
class BasesConfig:
    """Motion bases (``DeformationConfig.type=bases``): a few rigid motions over the clip shared by the whole scene,
    each Gaussian moving by a learned blend of all of them (Shape of Motion's SE(3) motion bases), the blend weights
    a learned field of canonical position (see :mod:`gen4d.fields.bases`)."""

    count: int = 10
    """Number of motion bases (Shape of Motion's ``num_motion_bases``; fewer when the canonical scene has fewer
    Gaussians when the field is attached)."""

    time_nodes: int = 50
    """Knots of each basis' rigid motion over the clip (first at t = 0, last at t = 1), linear in between; every
    knot starts at the identity."""

    rotation_rate: float = 4.0
    """The rotation vectors of the knots change this many times faster than the other parameters of the ``grid``
    role (the table stores them divided by it): under the time curriculum a turn of several degrees per frame
    must be followed within the few dozen steps each newly reached frame gets (windmill probe: 26.7 dB with 4,
    23.3 with 1; bench/RESULTS.md)."""

    weight_resolution: int = 32
    """Cells per side of the grid of blend-weight logits over the field's normalisation box (trilinear)."""

    weight_rate: float = 10.0
    """The blend-weight logits change this many times faster than the other parameters of the ``grid`` role (the
    grid stores logits divided by it): one Adam step moves a logit by up to this many times the ``grid`` rate
    (windmill probe: 30 did worse than 10, 25.4 against 26.7 dB)."""

    init_radius: float = 0.0
    """Radius (world units) of the radial functions around each basis' pivot that set the initial weights; 0: the
    mean distance from a pivot to its nearest other pivot. The pivots start on canonical Gaussian centres
    (farthest-point sampling)."""


@dataclass
class DeformationConfig:
    """Architecture of a deformation field (:func:`make_deformation_field`)."""

    type: str = "hexplane"
    """hexplane (HexPlane features + MLP heads per Gaussian), nodes (sparse control points + blend skinning; the
    settings under ``nodes``) or bases (a few scene-wide rigid motions blended per Gaussian by a learned weight
    field; the settings under ``bases``). The HexPlane settings below are ignored by the other two, except
    ``bounds`` and ``deform_shape``."""

    nodes: NodeConfig = field(default_factory=NodeConfig)
    """The node field's settings (``type=nodes``)."""

    bases: BasesConfig = field(default_factory=BasesConfig)
    """The motion bases' settings (``type=bases``)."""

    hexplane: HexPlaneConfig = field(default_factory=HexPlaneConfig)
    """The feature grid queried at (normalised position, time)."""

    hidden_dim: int = 64
    """Width of the trunk and of the hidden layer of each head."""

    trunk_layers: int = 1
    """Number of Linear+ReLU layers shared by all heads (0: the heads read the grid features directly)."""

    deform_opacity: bool = False
    """Also predict an opacity-logit offset (otherwise ``Deformation.d_opacity_logits`` is ``None``)."""

    deform_shape: bool = True
    """Predict rotation and scale offsets; False: a displacement field only (``d_quats`` and ``d_log_scales`` are
    zero; Dream-in-4D's deformation moves points and nothing else)."""

    bounds: float = 0.0
    """Half-size of a fixed normalisation cube ``[-bounds, bounds]^3`` (DreamGaussian4D's ``bounds: 1.6``);
    0: the canonical Gaussians' bounding box, padded (see :meth:`gen4d.scene.Scene4D.attach_deformation`)."""


@dataclass
class Deformation:
    """Additive offsets for N Gaussians at one query (all in the stored, unconstrained parameterisation)."""

    d_means: Tensor
    """``[N, 3]`` world-space position offsets."""

    d_quats: Tensor
    """``[N, 4]`` offsets added to the wxyz quaternion (renormalise after adding)."""

    d_log_scales: Tensor
    """``[N, 3]`` offsets of the log standard deviations."""

    d_opacity_logits: Tensor | None
    """``[N]`` opacity-logit offsets, or ``None`` when the field does not deform opacity."""


def _head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear+ReLU+Linear whose last layer is zero, so the head outputs exactly 0 until trained."""
    last = nn.Linear(hidden_dim, out_dim)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), last)


class DeformationField(nn.Module):
    """HexPlane + MLP deformation field.

    Positions are normalised to ``[-1, 1]`` by the axis-aligned box ``[aabb_min, aabb_max]`` (buffers, saved in
    the state dict; set them with :meth:`set_bounds` to the canonical Gaussians' extent) and clamped to it, so
    points outside the box get the deformation of the nearest box point. Times are clamped to ``[0, 1]``.
    """

    aabb_min: Tensor
    aabb_max: Tensor

    def __init__(self, config: DeformationConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else DeformationConfig()
        if config.trunk_layers < 0:
            raise ValueError(f"trunk_layers must be >= 0, got {config.trunk_layers}")
        self.hexplane = HexPlane(config.hexplane)
        layers: list[nn.Module] = []
        in_dim = self.hexplane.output_dim
        for _ in range(config.trunk_layers):
            layers += [nn.Linear(in_dim, config.hidden_dim), nn.ReLU()]
            in_dim = config.hidden_dim
        self.trunk = nn.Sequential(*layers)
        self.means_head = _head(in_dim, config.hidden_dim, 3)
        self.quats_head = _head(in_dim, config.hidden_dim, 4) if config.deform_shape else None
        self.scales_head = _head(in_dim, config.hidden_dim, 3) if config.deform_shape else None
        self.opacity_head = _head(in_dim, config.hidden_dim, 1) if config.deform_opacity else None
        self.register_buffer("aabb_min", -torch.ones(3))
        self.register_buffer("aabb_max", torch.ones(3))

    @torch.no_grad()
    def set_bounds(self, aabb_min: Tensor | tuple[float, float, float], aabb_max: Tensor | tuple[float, float, float]) -> None:
        """Set the normalisation box (``[3]`` each, world units, ``aabb_max > aabb_min`` on every axis)."""
        lo = torch.as_tensor(aabb_min, dtype=self.aabb_min.dtype, device=self.aabb_min.device).reshape(3)
        hi = torch.as_tensor(aabb_max, dtype=self.aabb_max.dtype, device=self.aabb_max.device).reshape(3)
        if not bool((hi > lo).all()):
            raise ValueError(f"aabb_max must exceed aabb_min on every axis, got {lo.tolist()} and {hi.tolist()}")
        self.aabb_min.copy_(lo)
        self.aabb_max.copy_(hi)

    def normalize_means(self, means: Tensor) -> Tensor:
        """World positions ``[N, 3]`` -> ``[-1, 1]^3`` by the box, clamped (also keeps huge inputs finite)."""
        lo = self.aabb_min.to(means)
        hi = self.aabb_max.to(means)
        return ((means - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)

    def optimizer_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """The parameters in the two optimiser roles, in order: ``grid`` (the feature planes) and ``mlp`` (the rest)."""
        grid = list(self.hexplane.parameters())
        grid_ids = {id(p) for p in grid}
        return [("grid", grid), ("mlp", [p for p in self.parameters() if id(p) not in grid_ids])]

    def hold_times_outside(self, lo: float, hi: float, extrapolate: bool = False) -> None:
        """Times outside ``[lo, hi]`` take the motion at the window's edges, or continue it (``extrapolate``;
        :meth:`HexPlane.hold_times_outside`)."""
        self.hexplane.hold_times_outside(lo, hi, extrapolate)

    def regularisers(self, times: Tensor | None = None) -> dict[str, Tensor]:
        """The field's own weighted regularisers at ``times``: none (the HexPlane terms are named regularisers of
        :mod:`gen4d.training.losses`)."""
        return {}

    def forward(self, means: Tensor, t: float | Tensor, quats: Tensor | None = None) -> Deformation:
        """Offsets of Gaussians with canonical centres ``means [N, 3]`` at time ``t``.

        t: a float, a 0-d tensor (one time for all) or a tensor of N times (``[N]`` or ``[N, 1]``), in ``[0, 1]``
        (frame i of T has t = i / (T - 1); values outside are clamped). quats: the Gaussians' canonical wxyz
        quaternions ``[N, 4]``; unused here (the rotation offset is predicted directly), part of the interface
        for fields that compose rotations.
        """
        if means.ndim != 2 or means.shape[-1] != 3:
            raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
        n = means.shape[0]
        ref = self.aabb_min
        dtype = self.hexplane.grids[0][0].dtype
        means = means.to(device=ref.device, dtype=dtype)
        tt = torch.as_tensor(t, device=ref.device, dtype=dtype)
        if tt.numel() == 1:
            tt = tt.reshape(1, 1).expand(n, 1)
        elif tt.numel() == n:
            tt = tt.reshape(n, 1)
        else:
            raise ValueError(f"t must be a scalar or hold one time per point ({n}), got shape {tuple(tt.shape)}")
        xyzt = torch.cat([self.normalize_means(means), tt.clamp(0.0, 1.0)], dim=-1)
        h = self.trunk(self.hexplane(xyzt))
        return Deformation(
            d_means=self.means_head(h),
            d_quats=self.quats_head(h) if self.quats_head is not None else h.new_zeros(n, 4),
            d_log_scales=self.scales_head(h) if self.scales_head is not None else h.new_zeros(n, 3),
            d_opacity_logits=self.opacity_head(h).squeeze(-1) if self.opacity_head is not None else None,
        )


def make_deformation_field(config: DeformationConfig | None = None, num_nodes: int | None = None) -> nn.Module:
    """A zero-initialised field of ``config.type``: a :class:`DeformationField`, a
    :class:`~gen4d.fields.nodes.NodeDeformationField` of ``num_nodes`` nodes (default ``config.nodes.count``) or a
    :class:`~gen4d.fields.bases.MotionBasesField` of ``num_nodes`` bases (default ``config.bases.count``)."""
    config = config if config is not None else DeformationConfig()
    if config.type == "hexplane":
        return DeformationField(config)
    if config.type == "nodes":
        from .nodes import NodeDeformationField

        return NodeDeformationField(config, num_nodes)
    if config.type == "bases":
        from .bases import MotionBasesField

        return MotionBasesField(config, num_nodes)
    raise ValueError(f"unknown deformation type {config.type!r}; choose from {', '.join(DEFORMATION_TYPES)}")
