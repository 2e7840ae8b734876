"""Sparse control-point ("nodes") deformation: K nodes moved rigidly over time, blended onto the Gaussians.

Each node j has a learned canonical position ``p_j`` and a learned RBF radius ``r_j``; a small MLP maps
(encoded normalised node position, encoded time) to the node's rigid motion at that time, a translation ``t_j``
and a rotation ``R_j`` (the unit quaternion ``normalize(1 + dq_j)``) — or, with ``nodes.motion=table``, the
seven numbers ``(t_j, dq_j)`` are learned directly at ``nodes.time_nodes`` knots over the clip and interpolated
linearly between them. A Gaussian at canonical centre ``x``
follows its k nearest nodes (canonical positions) by linear blend skinning::

    w_j = exp(-|x - p_j|^2 / (2 r_j^2)) / sum over the k neighbours
    x'  = sum_j w_j (R_j (x - p_j) + p_j + t_j)
    q'  = normalize(sum_j w_j s_j q_j) * q        (s_j = +-1 puts every q_j in the hemisphere of the nearest one)

and the field returns these as the additive offsets of :class:`~gen4d.fields.deformation.Deformation`
(``x' - x`` and ``q' - q``, the latter computed as ``(q_blend - 1) * q`` so it is exactly 0 at the identity).
The MLP's last layer (or the table) starts at zero, so a new field is exactly the identity. Composing rotations needs the
Gaussians' own quaternions (``quats=``; :meth:`gen4d.scene.Scene4D.frame_at` passes them).

Neighbour lists are recomputed from the canonical positions whenever the nodes or the Gaussians change (a
cache keyed on the tensors' identity, version and shape, so densification and every optimiser step refresh it).
With ``nodes.refine`` the node set follows the Gaussians' densification (:meth:`NodeDeformationField.refine_nodes`):
nodes no Gaussian follows are removed, and nodes are added where Gaussians lie out of the nodes' reach.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..cameras import normalize, quat_multiply, quat_to_rotmat
from ..gaussians.strategy import swap_parameter
from .deformation import Deformation, DeformationConfig, DeformationField, NodeConfig
from .hexplane import hold_knots_outside

__all__ = ["NodeConfig", "NodeDeformationField", "farthest_point_sampling"]

_KNN_CHUNK = 8192


def farthest_point_sampling(points: Tensor, k: int, start: int = 0) -> Tensor:
    """Indices ``[k]`` of ``k`` of ``points [N, 3]`` picked greedily, each the farthest from those picked before,
    beginning with ``start``."""
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"cannot pick {k} of {n} points")
    idx = torch.empty(k, dtype=torch.long)
    dist = torch.full((n,), math.inf, dtype=points.dtype, device=points.device)
    cur = int(start)
    for i in range(k):
        idx[i] = cur
        dist = torch.minimum(dist, (points - points[cur]).square().sum(-1))
        cur = int(dist.argmax())
    return idx.to(points.device)


def _fourier(x: Tensor, frequencies: int) -> Tensor:
    """``[..., D] -> [..., D (1 + 2 F)]``: x, sin(2^k pi x), cos(2^k pi x) for k < F."""
    if frequencies <= 0:
        return x
    freqs = math.pi * 2.0 ** torch.arange(frequencies, dtype=x.dtype, device=x.device)
    a = (x[..., None] * freqs).flatten(-2)
    return torch.cat([x, torch.sin(a), torch.cos(a)], dim=-1)


def _lerp_knots(table: Tensor, times: Tensor) -> Tensor:
    """``table [T, ...]`` (knots at ``i / (T - 1)``) linearly interpolated at ``times [U]`` in [0, 1]: ``[U, ...]``."""
    last = table.shape[0] - 1
    if last == 0:
        return table[:1].expand(times.shape[0], *table.shape[1:])
    pos = times * last
    i0 = pos.detach().floor().clamp(0, last - 1).long()
    f = (pos - i0).reshape(-1, *([1] * (table.dim() - 1)))
    return table[i0] * (1.0 - f) + table[i0 + 1] * f


def _knn(queries: Tensor, points: Tensor, k: int, exclude_self: bool = False) -> Tensor:
    """Indices ``[Q, k]`` of the ``k`` nearest ``points`` to each query, nearest first (exact squared
    distances, in chunks). ``exclude_self``: queries are the points themselves and a point is not its own
    neighbour."""
    out = []
    for s in range(0, queries.shape[0], _KNN_CHUNK):
        q = queries[s:s + _KNN_CHUNK]
        d2 = (q[:, None, :] - points[None, :, :]).square().sum(-1)
        if exclude_self:
            rows = torch.arange(q.shape[0], device=q.device)
            d2[rows, rows + s] = math.inf
        out.append(torch.topk(d2, k, dim=-1, largest=False, sorted=True).indices)
    if not out:
        return torch.empty(0, k, dtype=torch.long, device=queries.device)
    return torch.cat(out)


def _cache_key(*tensors: Tensor) -> tuple | None:
    key = []
    for t in tensors:
        try:
            version = t._version
        except RuntimeError:  # inference tensors carry no version counter: never cache
            return None
        key.append((id(t), t.data_ptr(), version, tuple(t.shape), t.dtype, str(t.device)))
    return tuple(key)


class NodeDeformationField(nn.Module):
    """K control nodes moving rigidly over time, blended onto the Gaussians (see the module docstring).

    Parameters: ``positions [K, 3]`` (canonical, world units), ``log_radii [K]``, and the node-motion MLP
    ``mlp`` (or, for ``motion=table``, ``table [time_nodes, K, 7]``). Buffers ``aabb_min`` / ``aabb_max``: the box that normalises node positions for the MLP (as in
    :class:`~gen4d.fields.deformation.DeformationField`). A new field has its nodes at the origin: place them
    with :meth:`init_nodes` (Scene4D.attach_deformation does, from the canonical Gaussians).
    """

    aabb_min: Tensor
    aabb_max: Tensor
    radial = True
    """The blend weights are the nodes' radial functions (``log_radii``)."""

    set_bounds = DeformationField.set_bounds
    normalize_means = DeformationField.normalize_means

    def __init__(self, config: DeformationConfig | None = None, num_nodes: int | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else DeformationConfig(type="nodes")
        nc = config.nodes
        k = int(num_nodes if num_nodes is not None else nc.count)
        if k < 1:
            raise ValueError(f"a node field needs at least one node, got {k}")
        if nc.neighbours < 1:
            raise ValueError(f"nodes.neighbours must be >= 1, got {nc.neighbours}")
        if nc.layers < 0 or nc.hidden_dim < 1:
            raise ValueError(f"nodes.layers must be >= 0 and nodes.hidden_dim >= 1, got {nc.layers} and {nc.hidden_dim}")
        if nc.init not in ("fps", "random"):
            raise ValueError(f"nodes.init must be fps or random, got {nc.init!r}")
        if config.deform_opacity:
            raise ValueError("a node deformation moves and rotates Gaussians only: deform_opacity is not supported")
        if nc.motion not in ("mlp", "table"):
            raise ValueError(f"nodes.motion must be mlp or table, got {nc.motion!r}")
        if nc.time_nodes < 1:
            raise ValueError(f"nodes.time_nodes must be >= 1, got {nc.time_nodes}")
        self.positions = nn.Parameter(torch.zeros(k, 3))
        self.log_radii = nn.Parameter(torch.zeros(k))
        # table motion: translation [3] + quaternion offset [4] per knot and node, all zero (the identity)
        self.table = nn.Parameter(torch.zeros(nc.time_nodes, k, 7)) if nc.motion == "table" else None
        in_dim = 3 * (1 + 2 * max(nc.position_frequencies, 0)) + 1 + 2 * max(nc.time_frequencies, 0)
        layers: list[nn.Module] = []
        for _ in range(nc.layers):
            layers += [nn.Linear(in_dim, nc.hidden_dim), nn.ReLU()]
            in_dim = nc.hidden_dim
        last = nn.Linear(in_dim, 7)  # translation [3] + quaternion offset [4]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*layers, last) if nc.motion == "mlp" else None
        self.register_buffer("aabb_min", -torch.ones(3))
        self.register_buffer("aabb_max", torch.ones(3))
        self.__dict__["_cache"] = {}

    @property
    def num_nodes(self) -> int:
        return self.positions.shape[0]

    @property
    def neighbours(self) -> int:
        """Nodes blended per Gaussian (``nodes.neighbours``, at most K)."""
        return min(self.config.nodes.neighbours, self.num_nodes)

    # ------------------------------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_nodes(self, means: Tensor, seed: int = 0) -> None:
        """Place the K nodes on K of the canonical Gaussian centres ``means [N, 3]`` (N >= K; farthest-point
        sampling or a random subset, seeded) and set their radii (``nodes.init_radius`` or the node spacing)."""
        nc = self.config.nodes
        k = self.num_nodes
        pts = means.detach().to(device=self.positions.device, dtype=self.positions.dtype)
        n = pts.shape[0]
        if n < k:
            raise ValueError(f"{k} nodes need at least {k} Gaussians to start on, got {n}")
        g = torch.Generator().manual_seed(int(seed))
        if nc.init == "random":
            idx = torch.randperm(n, generator=g)[:k].to(pts.device)
        else:
            idx = farthest_point_sampling(pts, k, start=int(torch.randint(n, (1,), generator=g)))
        self.positions.copy_(pts[idx])
        size = float((pts.max(0).values - pts.min(0).values).norm()) if n else 1.0
        floor = max(1e-3 * size, 1e-6)
        if nc.init_radius > 0:
            radii = torch.full((k,), float(nc.init_radius), dtype=pts.dtype, device=pts.device)
        elif k > 1:
            nbr = _knn(self.positions, self.positions, min(nc.neighbours, k - 1), exclude_self=True)
            radii = (self.positions[:, None] - self.positions[nbr]).norm(dim=-1).mean(-1)
        else:
            radii = torch.full((k,), 0.5 * size, dtype=pts.dtype, device=pts.device)
        self.log_radii.copy_(radii.clamp_min(floor).log())
        self._cache.clear()

    # ------------------------------------------------------------------------------------------ refinement
    @torch.no_grad()
    def refine_nodes(self, means: Tensor, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
        """Make the node set follow the canonical Gaussians ``means [N, 3]`` (``nodes.refine``; see
        :class:`NodeConfig`): remove the nodes no Gaussian follows, then add nodes on the Gaussians out of reach,
        each new node taking its nearest node's radius and motion (table knots; an MLP motion is a function of the
        node's position). ``optimizer``: the one holding this field's parameters, edited to match (the moments of
        kept nodes kept, new nodes' zero). Returns the numbers of nodes ``grown`` and ``pruned``."""
        nc = self.config.nodes
        if not nc.refine or means.shape[0] == 0:
            return {}
        x = means.detach().to(self.positions)
        k = self.num_nodes
        nbr = self.gaussian_neighbours(means)  # [N, k], nearest first
        used = torch.zeros(k, dtype=torch.bool, device=x.device)
        used[nbr.reshape(-1)] = True
        keep = used.nonzero().squeeze(-1)  # every Gaussian follows some node, so at least one is kept
        # growth: greedily cover the Gaussians beyond grow_distance radii of their nearest node, farthest first
        pos, radii = self.positions.detach()[keep], self.log_radii.detach()[keep].exp()
        kept_index = torch.full((k,), -1, dtype=torch.long, device=x.device)
        kept_index[keep] = torch.arange(len(keep), device=x.device)
        near = kept_index[nbr[:, 0]]  # a Gaussian's nearest node is one it follows, so it is kept
        dist = (x - pos[near]).norm(dim=-1)
        reach = nc.grow_distance * radii[near]
        parents: list[int] = []  # per new node: the kept node whose radius and motion it takes
        spots: list[Tensor] = []
        room = nc.max_count - len(keep)
        while room > len(parents):
            excess = dist / reach
            i = int(excess.argmax())
            if float(excess[i]) <= 1.0:
                break
            parents.append(int(near[i]))
            spots.append(x[i])
            d_new = (x - x[i]).norm(dim=-1)
            closer = d_new < dist  # the new node is now these Gaussians' nearest
            dist = torch.where(closer, d_new, dist)
            reach = torch.where(closer, reach[i].expand_as(reach), reach)
        pruned, grown = k - len(keep), len(parents)
        if not pruned and not grown:
            return {"grown": 0, "pruned": 0}
        src = torch.cat([keep, keep[torch.tensor(parents, dtype=torch.long, device=x.device)]]) if grown else keep
        new_pos = torch.cat([pos, torch.stack(spots)]) if grown else pos
        fresh = torch.arange(len(src), device=x.device) >= len(keep)  # Adam moments start at zero for new nodes

        def moments(dim: int):
            def fn(_: str, m: Tensor) -> Tensor:
                m = m.index_select(dim, src)
                shape = [1] * m.dim()
                shape[dim] = len(src)
                return m * (~fresh).reshape(shape).to(m.dtype)

            return fn

        self.positions = swap_parameter(optimizer, self.positions, new_pos, moments(0))
        self.log_radii = swap_parameter(optimizer, self.log_radii, self.log_radii.detach()[src], moments(0))
        if self.table is not None:
            self.table = swap_parameter(optimizer, self.table, self.table.detach()[:, src], moments(1))
        self._cache.clear()
        return {"grown": grown, "pruned": pruned}

    # ------------------------------------------------------------------------------------------ neighbours
    def _cached(self, name: str, key: tuple | None, compute):
        hit = self._cache.get(name)
        if key is not None and hit is not None and hit[0] == key:
            return hit[1]
        value = compute()
        if key is not None:
            self._cache[name] = (key, value)
        return value

    def gaussian_neighbours(self, means: Tensor) -> Tensor:
        """``[N, k]`` indices of the nearest nodes (canonical positions) of each canonical centre, nearest first."""
        k = self.neighbours

        @torch.no_grad()
        def compute():
            return _knn(means.detach().to(self.positions), self.positions.detach(), k)

        return self._cached("gaussians", _cache_key(means, self.positions), compute)

    def node_neighbours(self) -> Tensor:
        """``[K, k]`` indices of each node's nearest other nodes (canonical positions); k = min(neighbours, K - 1)."""
        k = min(self.config.nodes.neighbours, self.num_nodes - 1)

        @torch.no_grad()
        def compute():
            return _knn(self.positions.detach(), self.positions.detach(), k, exclude_self=True)

        return self._cached("nodes", _cache_key(self.positions), compute)

    # ------------------------------------------------------------------------------------------ node motion
    def _times(self, times: float | Tensor) -> Tensor:
        return torch.as_tensor(times, dtype=self.positions.dtype, device=self.positions.device).reshape(-1).clamp(0.0, 1.0)

    def node_transforms(self, times: Tensor) -> tuple[Tensor, Tensor]:
        """Rigid motion of every node at each of ``times [U]`` (in [0, 1]): unit wxyz quaternions ``[U, K, 4]``
        and translations ``[U, K, 3]`` (a node's position at time t is ``p_j + t_j``)."""
        nc = self.config.nodes
        tt = self._times(times)
        if self.table is not None:
            out = _lerp_knots(self.table, tt)  # [U, K, 7]
        else:
            pos = _fourier(self.normalize_means(self.positions), nc.position_frequencies)  # [K, P]
            enc_t = _fourier(tt[:, None], nc.time_frequencies)  # [U, T]
            u, k = tt.shape[0], self.num_nodes
            x = torch.cat([pos[None].expand(u, k, -1), enc_t[:, None, :].expand(u, k, -1)], dim=-1)
            out = self.mlp(x)
        identity = out.new_tensor([1.0, 0.0, 0.0, 0.0])
        return normalize(identity + out[..., 3:]), out[..., :3]

    @torch.no_grad()
    def node_trajectories(self, times: float | Tensor) -> Tensor:
        """``[T, K, 3]``: the nodes' positions at each of ``times``."""
        _, trans = self.node_transforms(self._times(times))
        return self.positions[None] + trans

    # ------------------------------------------------------------------------------------------ skinning
    def skin_logits(self, x: Tensor, idx: Tensor, rel: Tensor) -> Tensor:
        """``[N, k]`` blend-weight logits of Gaussians at canonical ``x [N, 3]`` for their nodes ``idx [N, k]``
        (``rel = x - p_idx``): the nodes' Gaussian radial basis functions, ``-|x - p_j|^2 / (2 r_j^2)``."""
        return -0.5 * rel.square().sum(-1) * torch.exp(-2.0 * self.log_radii[idx])

    def skin(self, means: Tensor, quats: Tensor | None, node_quats: Tensor, node_trans: Tensor,
             which: Tensor | None = None, neighbours: Tensor | None = None) -> Deformation:
        """Offsets of Gaussians ``means [N, 3]`` (canonical wxyz ``quats [N, 4]``; may be None when the field
        does not deform shape) under node motions ``node_quats [U, K, 4]`` / ``node_trans [U, K, 3]``; Gaussian i
        uses motion ``which[i]`` (default 0)."""
        n = means.shape[0]
        dtype = self.positions.dtype
        x = means.to(device=self.positions.device, dtype=dtype)
        idx = self.gaussian_neighbours(means) if neighbours is None else neighbours  # [N, k]
        which = torch.zeros(n, dtype=torch.long, device=x.device) if which is None else which
        flat = (which[:, None] * node_quats.shape[1] + idx).reshape(-1)  # (motion, node) pairs as rows of [U K, ...]

        def pick(per_node: Tensor) -> Tensor:
            """``[U, K, ...] -> [N, k, ...]``: each Gaussian's nodes under its motion. index_select, not advanced
            indexing: its backward (index_add) is several times cheaper on the CPU than indexing's index_put."""
            return per_node.flatten(0, 1).index_select(0, flat).reshape(*idx.shape, *per_node.shape[2:])

        rel = x[:, None, :] - self.positions.index_select(0, idx.reshape(-1)).reshape(*idx.shape, 3)  # [N, k, 3]
        w = torch.softmax(self.skin_logits(x, idx, rel), dim=-1)  # [N, k]
        rot = quat_to_rotmat(node_quats)  # [U, K, 3, 3]
        eye = torch.eye(3, dtype=dtype, device=x.device)
        moved = torch.einsum("nkab,nkb->nka", pick(rot) - eye, rel) + pick(node_trans)  # x' - x per node
        d_means = (w[..., None] * moved).sum(1)
        if self.config.deform_shape:
            if quats is None:
                raise ValueError("a node field composes rotations: it needs the Gaussians' quaternions (quats=)")
            qn = pick(node_quats)  # [N, k, 4]
            sign = torch.where((qn * qn[:, :1]).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(dtype)
            blend = normalize((w[..., None] * sign * qn).sum(1))
            delta = blend - blend.new_tensor([1.0, 0.0, 0.0, 0.0])
            d_quats = quat_multiply(delta, quats.to(device=x.device, dtype=dtype))
        else:
            d_quats = x.new_zeros(n, 4)
        return Deformation(d_means=d_means, d_quats=d_quats, d_log_scales=x.new_zeros(n, 3), d_opacity_logits=None)

    def forward(self, means: Tensor, t: float | Tensor, quats: Tensor | None = None) -> Deformation:
        """Offsets of Gaussians with canonical centres ``means [N, 3]`` and wxyz ``quats [N, 4]`` (needed when the
        field deforms shape) at time ``t`` (a scalar, or N times)."""
        if means.ndim != 2 or means.shape[-1] != 3:
            raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
        n = means.shape[0]
        if quats is not None and tuple(quats.shape) != (n, 4):
            raise ValueError(f"quats must be [{n}, 4], got {tuple(quats.shape)}")
        tt = self._times(t)
        if tt.numel() == 1:
            which = None
        elif tt.numel() == n:
            tt, which = torch.unique(tt, return_inverse=True)
        else:
            raise ValueError(f"t must be a scalar or hold one time per point ({n}), got shape {tuple(torch.as_tensor(t).shape)}")
        node_quats, node_trans = self.node_transforms(tt)
        return self.skin(means, quats, node_quats, node_trans, which)

    # ------------------------------------------------------------------------------------------ regularisers
    def arap_loss(self, times: float | Tensor) -> Tensor:
        """As-rigid-as-possible strain of the node graph at ``times``: for every node i and each of its k nearest
        nodes j (canonical), ``|(p_i(t) - p_j(t)) - R_i(t) (p_i - p_j)|^2``, averaged over pairs and distinct
        times and divided by the mean squared canonical edge length ``|p_i - p_j|^2``. Exactly 0 when all nodes
        move by one rigid motion. A scalar tensor (0 with a single node)."""
        nbr = self.node_neighbours()
        tt = torch.unique(self._times(times))
        if nbr.shape[1] == 0 or tt.numel() == 0:
            return self.positions.new_zeros(())
        node_quats, node_trans = self.node_transforms(tt)
        rot = quat_to_rotmat(node_quats)  # [U, K, 3, 3]
        edges = self.positions[:, None, :] - self.positions[nbr]  # [K, k, 3]
        moved = self.positions[None] + node_trans  # [U, K, 3]
        now = moved[:, :, None, :] - moved[:, nbr]  # [U, K, k, 3]
        residual = now - torch.einsum("ukab,kjb->ukja", rot, edges)
        scale = edges.detach().square().sum(-1).mean().clamp_min(1e-12)
        return residual.square().sum(-1).mean() / scale

    def regularisers(self, times: float | Tensor | None) -> dict[str, Tensor]:
        """The field's own weighted regularisers at ``times`` (e.g. the rendered cameras' times): ``arap``
        (weight ``nodes.arap_weight``; absent when the weight is 0 or no times are given)."""
        w = self.config.nodes.arap_weight
        if not w or times is None:
            return {}
        return {"arap": w * self.arap_loss(times)}

    def optimizer_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """The parameters in the two optimiser roles, in order: ``grid`` (node positions and log-radii, and the
        motion table) and ``mlp`` (the node-motion MLP; empty with a table)."""
        if self.table is not None:
            return [("grid", [self.positions, self.log_radii, self.table]), ("mlp", [])]
        return [("grid", [self.positions, self.log_radii]), ("mlp", list(self.mlp.parameters()))]

    def hold_times_outside(self, lo: float, hi: float, extrapolate: bool = False) -> None:
        """Table motion: knots outside the window of times ``[lo, hi]`` take the motion at its edges, or continue
        it (``extrapolate``; see :meth:`gen4d.fields.hexplane.HexPlane.hold_times_outside`); an MLP motion has no
        knots to hold."""
        if self.table is not None:
            hold_knots_outside(self.table, 0, lo, hi, extrapolate)
