"""Sparse control-node deformation (deformation.type=nodes) and motion bases (deformation.type=bases): identity at
start, rigid blend skinning, ARAP, the bases' weight field, save/load, the optimiser's groups and end-to-end
reconstructions with them."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gen4d.cameras import frame_times, orbit_cameras, quat_multiply, quat_to_rotmat
from gen4d.cli import main
from gen4d.data.synthetic import write_synthetic_scene
from gen4d.export.animated_glb import read_animated_glb
from gen4d.fields.bases import MotionBasesField
from gen4d.fields.deformation import BasesConfig, DeformationConfig, DeformationField, NodeConfig, make_deformation_field
from gen4d.fields.hexplane import HexPlaneConfig
from gen4d.fields.nodes import NodeDeformationField, farthest_point_sampling
from gen4d.gaussians.model import GaussianModel
from gen4d.recipes.reconstruct import build_config, run_reconstruct
from gen4d.runs import load_finished_run
from gen4d.scene import Scene4D
from gen4d.training.losses import field_regularisers, regulariser_losses
from gen4d.training.optim import LearningRates, deformation_optimizer

TIMES = (0.0, 0.3, 0.75, 1.0)


# ------------------------------------------------------------------------------------------------- helpers
def _gaussians(n: int = 300, seed: int = 0, dtype=torch.float32) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    model = GaussianModel.random_in_sphere(n, 1.0, 0, g)
    with torch.no_grad():  # non-trivial rotations, not unit length
        model.params["quats"].copy_(torch.randn(n, 4, generator=g) * 2.0)
    return model.to(dtype)


def _config(kind: str, **nodes) -> DeformationConfig:
    hp = HexPlaneConfig(feature_dim=4, resolution=(6, 6, 6, 5), multires=(1,))
    if kind == "bases":  # the same keywords set the bases' count and knots
        bc = BasesConfig(**{"count": 6, "time_nodes": 7, "weight_resolution": 8, **nodes})
        return DeformationConfig(type=kind, hexplane=hp, hidden_dim=16, bases=bc)
    nc = NodeConfig(**{"count": 24, "hidden_dim": 32, "layers": 2, **nodes})
    return DeformationConfig(type=kind, hexplane=hp, hidden_dim=16, nodes=nc)


FIELD_CLASSES = {"hexplane": DeformationField, "nodes": NodeDeformationField, "bases": MotionBasesField}


def _perturb(field: torch.nn.Module, seed: int = 1, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p))


def _random_rotation(seed: int, dtype=torch.float64) -> torch.Tensor:
    q = torch.randn(4, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return q / q.norm()


def _rigid_node_motion(field: NodeDeformationField, q: torch.Tensor, shift: torch.Tensor):
    """node_transforms for which every node follows x -> R x + shift (its translation is (R - I) p_j + shift)."""
    R = quat_to_rotmat(q)

    def transforms(times):
        u, k = torch.as_tensor(times).reshape(-1).shape[0], field.num_nodes
        p = field.positions
        trans = p @ R.T - p + shift
        return q.to(p).expand(u, k, 4), trans[None].expand(u, k, 3)

    return transforms


def _unit(q: torch.Tensor) -> torch.Tensor:
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


# ------------------------------------------------------------------------------------------------- 1. identity
@pytest.mark.parametrize("kind", ["hexplane", "nodes", "bases"])
def test_a_new_field_of_each_type_is_the_identity(kind):
    model = _gaussians()
    scene = Scene4D(model).attach_deformation(_config(kind), seed=3)
    assert type(scene.deformation) is FIELD_CLASSES[kind]
    canonical = model.frame()
    for t in TIMES:
        f = scene.frame_at(t)
        assert torch.allclose(f.means, canonical.means, atol=1e-6, rtol=0)
        assert torch.allclose(f.quats, canonical.quats, atol=1e-6, rtol=0)
        assert torch.allclose(f.scales, canonical.scales, atol=1e-6, rtol=0)
        assert torch.equal(f.opacities, canonical.opacities)
    # ... and a trained one is not (the zero start is not a field that cannot move)
    _perturb(scene.deformation)
    assert (scene.frame_at(0.7).means - canonical.means).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["hexplane", "nodes", "bases"])
def test_one_batched_field_evaluation_equals_one_per_time(kind):
    # A render evaluates the field once for all its cameras' distinct times: the same moved Gaussians, and the
    # same gradients, as evaluating it at each time on its own.
    scene = Scene4D(_gaussians(120, dtype=torch.float64)).attach_deformation(_config(kind), seed=3).double()
    _perturb(scene.deformation)
    times = torch.tensor([0.2, 0.9, 0.55], dtype=torch.float64)
    weights = [torch.randn(3, 120, *shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
               for i, shape in enumerate(((3,), (4,), (3,), ()))]

    def loss_and_grads(parts):
        loss = sum((w * x).sum() for w, x in zip(weights, parts))
        params = [*scene.gaussians.params.values(), *scene.deformation.parameters()]
        return loss, torch.autograd.grad(loss, params, allow_unused=True)

    batched = scene._deformed(times)
    frames = [scene.frame_at(float(t)) for t in times]
    one_by_one = [torch.stack(parts) for parts in zip(*(f.tensors()[:4] for f in frames))]
    for a, b in zip(batched, one_by_one):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(batched), loss_and_grads(one_by_one)
    assert torch.allclose(loss_a, loss_b, atol=1e-10, rtol=0)
    for ga, gb in zip(grads_a, grads_b):
        assert (ga is None) == (gb is None)
        if ga is not None:
            assert torch.allclose(ga, gb, atol=1e-10, rtol=1e-10)


def test_nodes_start_on_gaussians_spread_out_and_count_is_capped():
    model = _gaussians(200)
    scene = Scene4D(model).attach_deformation(_config("nodes", count=16), seed=0)
    field = scene.deformation
    means = model.params["means"].detach()
    # every node sits on a Gaussian centre, no two on the same one
    d = (field.positions.detach()[:, None] - means[None]).norm(dim=-1)
    assert d.min(1).values.max() < 1e-6
    assert len(set(d.argmin(1).tolist())) == 16
    # farthest-point sampling covers the ball better than the worst case: the nodes are far apart
    pairwise = (field.positions.detach()[:, None] - field.positions.detach()[None]).norm(dim=-1) + torch.eye(16) * 10
    assert pairwise.min() > 0.2
    assert torch.all(field.log_radii.exp() > 0.1)
    # seeded: the same seed places the same nodes, another seed other ones
    again = Scene4D(_gaussians(200)).attach_deformation(_config("nodes", count=16), seed=0).deformation
    other = Scene4D(_gaussians(200)).attach_deformation(_config("nodes", count=16), seed=1).deformation
    assert torch.equal(again.positions, field.positions)
    assert not torch.equal(other.positions, field.positions)
    # more nodes asked for than Gaussians: one node per Gaussian
    small = Scene4D(_gaussians(10)).attach_deformation(_config("nodes", count=512), seed=0)
    assert small.deformation.num_nodes == 10


def test_farthest_point_sampling_picks_the_extremes():
    pts = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [5.0, 0, 0], [2.3, 0, 0], [2.6, 0, 0]])
    assert farthest_point_sampling(pts, 3, start=0).tolist() == [0, 2, 4]


# ------------------------------------------------------------------------------------------------- 2. rigid LBS
@pytest.mark.parametrize("kind", ["nodes", "bases"])
@pytest.mark.parametrize("flip_half", [False, True])
def test_one_rigid_motion_of_every_node_moves_every_gaussian_rigidly(flip_half, kind):
    model = _gaussians(250, dtype=torch.float64)
    scene = Scene4D(model).attach_deformation(_config(kind, count=20), seed=0)
    field = scene.deformation.double()
    with torch.no_grad():  # uneven radii or weight logits: the blend weights differ per node, the result must not
        field.log_radii.add_(torch.linspace(-0.5, 0.5, field.num_nodes, dtype=torch.float64))
        if kind == "bases":
            field.weight_grid.add_(torch.randn(field.weight_grid.shape, generator=torch.Generator().manual_seed(2)).double())
    q = _random_rotation(7)
    shift = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    rigid = _rigid_node_motion(field, q, shift)
    if flip_half:  # q and -q are one rotation: blending must align signs
        def rigid_flipped(times, inner=rigid):
            quats, trans = inner(times)
            sign = torch.where(torch.arange(field.num_nodes) % 2 == 0, 1.0, -1.0).to(quats)
            return quats * sign[None, :, None], trans

        field.node_transforms = rigid_flipped
    else:
        field.node_transforms = rigid
    x, quats = model.params["means"].detach(), model.params["quats"].detach()
    R = quat_to_rotmat(q)
    for t in (0.0, 0.6):
        d = field(x, t, quats=quats)
        assert d.d_means.dtype == torch.float64
        assert torch.allclose(x + d.d_means, x @ R.T + shift, atol=1e-6, rtol=0)
        expected = quat_multiply(q.expand_as(quats), quats)
        moved = quats + d.d_quats
        assert torch.allclose(moved.norm(dim=-1), quats.norm(dim=-1), atol=1e-9)  # the Gaussian's quaternion keeps its length
        assert torch.allclose(_unit(moved), _unit(expected), atol=1e-6, rtol=0)
        assert torch.equal(d.d_log_scales, torch.zeros_like(d.d_log_scales)) and d.d_opacity_logits is None
    # through the scene: frame_at reads the bound Gaussians' rotations
    f = scene.frame_at(0.5)
    assert torch.allclose(f.means, x @ R.T + shift, atol=1e-6, rtol=0)
    assert torch.allclose(quat_to_rotmat(f.quats), R @ quat_to_rotmat(quats), atol=1e-6, rtol=0)


def test_blend_skinning_matches_a_hand_computation_for_two_nodes():
    cfg = _config("nodes", count=2, neighbours=2)
    field = NodeDeformationField(cfg).double()
    with torch.no_grad():
        field.positions.copy_(torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]))
        field.log_radii.copy_(torch.log(torch.tensor([0.5, 1.0])))
    half = math.sqrt(0.5)
    q1 = torch.tensor([half, 0, 0, half], dtype=torch.float64)  # 90 degrees about z
    trans = torch.tensor([[0.0, 0, 0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    node_quats = torch.stack([torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), q1])[None]
    x = torch.tensor([[0.25, 0.5, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        d = field.skin(x, torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64), node_quats, trans[None])
    w0 = math.exp(-(0.25**2 + 0.5**2) / (2 * 0.25))
    w1 = math.exp(-(0.75**2 + 0.5**2) / (2 * 1.0))
    w0, w1 = w0 / (w0 + w1), w1 / (w0 + w1)
    rel1 = np.array([0.25 - 1.0, 0.5, 0.0])
    node1 = np.array([-rel1[1], rel1[0], 0.0]) + np.array([1.0, 0, 0]) + np.array([0, 0, 2.0])
    expected = w0 * np.array([0.25, 0.5, 0.0]) + w1 * node1
    assert np.allclose((x + d.d_means)[0].numpy(), expected, atol=1e-12)
    blend = w0 * np.array([1.0, 0, 0, 0]) + w1 * q1.numpy()
    assert np.allclose((torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64) + d.d_quats)[0].numpy(), blend / np.linalg.norm(blend), atol=1e-12)
    # -q1 is the same rotation: it is brought into the nearest node's hemisphere before blending
    with torch.no_grad():
        flipped = field.skin(x, torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64), node_quats * torch.tensor([1.0, -1.0])[None, :, None].double(), trans[None])
    assert torch.allclose(flipped.d_means, d.d_means, atol=1e-12) and torch.allclose(flipped.d_quats, d.d_quats, atol=1e-12)


def test_gaussian_neighbours_follow_densification():
    model = _gaussians(120)
    scene = Scene4D(model).attach_deformation(_config("nodes", count=12), seed=0)
    field = scene.deformation
    _perturb(field)
    first = field.gaussian_neighbours(model.params["means"])
    assert first.shape == (120, 4)
    assert field.gaussian_neighbours(model.params["means"]) is first  # cached while nothing changes
    # a densification swaps in a longer tensor: the neighbour lists, the rotations and the frame follow
    g = torch.Generator().manual_seed(5)
    for name, p in list(model.params.items()):
        model.params[name] = torch.nn.Parameter(torch.cat([p.detach(), p.detach()[:30] + 0.01 * torch.randn(30, *p.shape[1:], generator=g)]))
    f = scene.frame_at(0.4)
    assert f.means.shape == (150, 3) and f.quats.shape == (150, 4)
    fresh = NodeDeformationField(field.config, field.num_nodes)
    fresh.load_state_dict(field.state_dict())
    expect = fresh(model.params["means"], 0.4, quats=model.params["quats"])
    assert torch.allclose(f.means, model.params["means"] + expect.d_means, atol=1e-6)
    second = field.gaussian_neighbours(model.params["means"])
    assert second.shape == (150, 4) and torch.equal(second[:120], first)
    # an in-place move of the nodes (an optimiser step) refreshes the lists too
    with torch.no_grad():
        field.positions.mul_(-1.0)
    third = field.gaussian_neighbours(model.params["means"])
    assert not torch.equal(third, second)


# ------------------------------------------------------------------------------------------------- 3. ARAP
def test_arap_is_zero_for_a_rigid_motion_and_positive_otherwise():
    model = _gaussians(200, dtype=torch.float64)
    field = Scene4D(model).attach_deformation(_config("nodes", count=20), seed=0).deformation.double()
    times = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert field.arap_loss(times).item() == 0.0  # the identity at the start
    field.node_transforms = _rigid_node_motion(field, _random_rotation(3), torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64))
    assert field.arap_loss(times).item() < 1e-24
    rigid = field.node_transforms

    def stretched(t):
        quats, trans = rigid(t)
        return quats, trans + 0.1 * field.positions * torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)

    field.node_transforms = stretched
    strain = field.arap_loss(times)
    assert strain.item() > 1e-4
    # a stretch by 10 % along x: every residual is 0.1 (p_i - p_j)_x, relative to the mean edge length
    nbr = field.node_neighbours()
    edges = field.positions[:, None] - field.positions[nbr]
    expected = (0.1 * edges[..., 0]).square().mean() / edges.square().sum(-1).mean()
    assert torch.allclose(strain, expected, rtol=1e-9)
    del field.node_transforms  # back to the MLP: a trained (perturbed) field is not rigid, and the term has gradients
    _perturb(field)
    loss = field.arap_loss(times)
    assert loss.item() > 0
    loss.backward()
    assert field.mlp[-1].weight.grad.abs().sum() > 0
    reg = field.regularisers(times)
    assert set(reg) == {"arap"} and torch.allclose(reg["arap"], field.config.nodes.arap_weight * field.arap_loss(times))


def test_regularisers_per_field_type():
    model = _gaussians(100)
    hex_scene = Scene4D(model).attach_deformation(_config("hexplane"), seed=0)
    node_scene = Scene4D(_gaussians(100)).attach_deformation(_config("nodes", arap_weight=0.5), seed=0)
    weights = {"plane_tv": 1.0, "time_smoothness": 1.0, "time_l1": 1.0}
    assert set(regulariser_losses(hex_scene, weights)) == set(weights)
    assert regulariser_losses(node_scene, weights) == {}  # no feature planes to regularise
    times = torch.tensor([0.2, 0.8])
    assert field_regularisers(hex_scene, times) == {}
    assert set(field_regularisers(node_scene, times)) == {"arap"}
    off = Scene4D(_gaussians(100)).attach_deformation(_config("nodes", arap_weight=0.0), seed=0)
    assert field_regularisers(off, times) == {}


def test_optimizer_groups_per_field_type():
    lr = LearningRates()
    hex_scene = Scene4D(_gaussians(100)).attach_deformation(_config("hexplane"), seed=0)
    opt = deformation_optimizer(hex_scene, lr, 2.0)
    assert [g["name"] for g in opt.param_groups] == ["grid", "mlp"]
    grid_ids = {id(p) for p in hex_scene.deformation.hexplane.parameters()}
    assert {id(p) for p in opt.param_groups[0]["params"]} == grid_ids
    assert [id(p) for p in opt.param_groups[1]["params"]] == [id(p) for p in hex_scene.deformation.parameters() if id(p) not in grid_ids]
    node_scene = Scene4D(_gaussians(100)).attach_deformation(_config("nodes"), seed=0)
    field = node_scene.deformation
    opt = deformation_optimizer(node_scene, lr, 2.0)
    assert [g["name"] for g in opt.param_groups] == ["grid", "mlp"]
    assert opt.param_groups[0]["params"] == [field.positions, field.log_radii]
    assert opt.param_groups[0]["lr"] == pytest.approx(lr.grid * 2.0) and opt.param_groups[1]["lr"] == pytest.approx(lr.mlp * 2.0)
    every = {id(p) for g in opt.param_groups for p in g["params"]}
    assert every == {id(p) for p in field.parameters()}


def test_one_time_per_gaussian_matches_one_call_per_time():
    model = _gaussians(90)
    field = Scene4D(model).attach_deformation(_config("nodes", count=10), seed=0).deformation
    _perturb(field)
    x, q = model.params["means"], model.params["quats"]
    t = torch.tensor([0.2, 0.9, 0.5])[torch.arange(90) % 3]
    d = field(x, t, quats=q)
    for value in (0.2, 0.9, 0.5):
        sel = t == value
        single = field(x, value, quats=q)
        assert torch.allclose(d.d_means[sel], single.d_means[sel], atol=1e-6)
        assert torch.allclose(d.d_quats[sel], single.d_quats[sel], atol=1e-6)
    assert not torch.allclose(field(x, 0.2, quats=q).d_means, field(x, 0.9, quats=q).d_means)


def test_unknown_type_and_unsupported_options_are_refused():
    with pytest.raises(ValueError, match="unknown deformation type"):
        make_deformation_field(DeformationConfig(type="splines"))
    with pytest.raises(ValueError, match="deform_opacity"):
        make_deformation_field(DeformationConfig(type="nodes", deform_opacity=True))
    field = make_deformation_field(_config("nodes"))
    with pytest.raises(ValueError, match="quaternions"):
        field(torch.zeros(5, 3), 0.5)  # unbound, no quats= given


# ------------------------------------------------------------------------------------------------- 4. save / load
@pytest.mark.parametrize("kind", ["nodes", "bases"])
def test_save_load_round_trip_gives_identical_deformations_and_renders(kind):
    model = _gaussians(200)
    cfg = _config(kind, count=512)
    scene = Scene4D(model).attach_deformation(cfg, seed=0)
    _perturb(scene.deformation, scale=0.1)
    tensors = {k: v.detach().clone() for k, v in scene.tensors().items()}
    assert tensors["deformation.positions"].shape == (200, 3)  # the node count lives in the state
    back = Scene4D.from_tensors(tensors, 0, cfg)
    assert type(back.deformation) is FIELD_CLASSES[kind] and back.deformation.num_nodes == 200
    for t in TIMES:
        a, b = scene.frame_at(t), back.frame_at(t)
        for x, y in zip(a.tensors(), b.tensors()):
            assert torch.equal(x, y)
    assert (scene.frame_at(1.0).means - model.params["means"]).abs().max() > 1e-3  # it does move
    times = torch.tensor([0.0, 0.5, 1.0])
    cams = orbit_cameras(torch.tensor([0.0, 120.0, 240.0]), 20.0, 4.0, math.radians(40), 32, 32, times)
    bg = torch.ones(3)
    ra, rb = scene.render(cams, background=bg).rgb, back.render(cams, background=bg).rgb
    assert torch.equal(ra, rb)
    assert not torch.equal(ra, scene.render(cams, background=bg, deform=False).rgb)
    if kind == "nodes":
        assert torch.equal(field_regularisers(scene, times)["arap"], field_regularisers(back, times)["arap"])
    else:  # the bases' weights travel with the state too
        assert torch.equal(back.deformation.weight_grid, scene.deformation.weight_grid)
        assert field_regularisers(scene, times) == {}


# ------------------------------------------------------------------------------------------------- motion bases
def test_bases_weights_start_radial_around_the_pivots_and_are_a_trilinear_field_of_position():
    model = _gaussians(300, dtype=torch.float64)
    scene = Scene4D(model).attach_deformation(_config("bases", count=5, weight_resolution=6, weight_rate=4.0), seed=1)
    field = scene.deformation.double()
    assert field.num_bases == 5 and field.neighbours == 5  # every basis is blended onto every Gaussian
    x = model.params["means"].detach()
    # the pivots start on Gaussian centres, spread out
    assert all(bool((x == p).all(-1).any()) for p in field.positions.detach())
    # at the grid's points the weights are the pivots' radial functions, radius = mean nearest-pivot distance
    lo, hi = field.aabb_min, field.aabb_max
    axis = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)
    corners = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    points = lo + corners * (hi - lo)
    d = torch.cdist(field.positions.detach(), field.positions.detach())
    r = (d + torch.diag(torch.full((5,), math.inf, dtype=torch.float64))).min(-1).values.mean()
    expected = torch.softmax(-0.5 * torch.cdist(points, field.positions.detach()).square() / r**2, dim=-1)
    assert torch.allclose(field.blend_weights(points), expected, atol=1e-9)
    # between grid points the logits are trilinear: halfway between two neighbouring points, the mean of theirs
    _perturb(field, scale=0.5)
    a, b = points[0], points[1]  # neighbours along z (the last meshgrid axis varies fastest)
    mid = field.weight_logits(((a + b) / 2)[None])
    assert torch.allclose(mid, (field.weight_logits(a[None]) + field.weight_logits(b[None])) / 2, atol=1e-9)
    w = field.blend_weights(x)
    assert bool((w >= 0).all()) and torch.allclose(w.sum(-1), torch.ones(300, dtype=torch.float64), atol=1e-12)
    # the weights are what the skinning uses: a Gaussian moves by the weighted sum of the bases' rigid motions
    quats, trans = field.node_transforms(torch.tensor([0.6], dtype=torch.float64))
    R = quat_to_rotmat(quats[0])
    per_basis = torch.einsum("kab,nkb->nka", R, x[:, None] - field.positions) + field.positions + trans[0]
    moved = x + field(x, 0.6, quats=model.params["quats"].detach()).d_means
    assert torch.allclose(moved, (w[..., None] * per_basis).sum(1), atol=1e-9)
    # the weights learn: a loss on the moved centres reaches the grid, the table and the pivots
    moved = x + field(x, 0.6, quats=model.params["quats"].detach()).d_means
    moved.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (field.weight_grid, field.table, field.positions))


def test_bases_rotations_are_rotation_vectors_interpolated_between_knots_and_held_outside_a_window():
    scene = Scene4D(_gaussians(120, dtype=torch.float64)).attach_deformation(
        _config("bases", count=3, time_nodes=5, rotation_rate=2.0), seed=0)
    field = scene.deformation.double()
    assert field.table.shape == (5, 3, 6)
    axis = torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64)
    angles = torch.tensor([0.0, 1.0, 2.5, 4.0, 6.0], dtype=torch.float64)  # radians at the knots, up to past a full turn
    with torch.no_grad():
        field.table.zero_()
        field.table[:, 1, 3:] = angles[:, None] * axis / 2.0  # stored divided by rotation_rate
        field.table[:, 2, :3] = torch.arange(5, dtype=torch.float64)[:, None] * 0.1
    table = field.table.detach().clone()
    quats, trans = field.node_transforms(torch.tensor([0.0, 0.5, 0.625, 1.0], dtype=torch.float64))
    expected_angle = torch.tensor([0.0, 2.5, 3.25, 6.0], dtype=torch.float64)  # linear in the angle between knots
    expected = torch.cat([torch.cos(expected_angle / 2)[:, None], torch.sin(expected_angle / 2)[:, None] * axis], -1)
    torch.testing.assert_close(quats[:, 1], expected)
    torch.testing.assert_close(quats[:, 0], torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).expand(4, 4))  # no turn
    torch.testing.assert_close(trans[:, 2, 0], torch.tensor([0.0, 0.2, 0.25, 0.4], dtype=torch.float64))
    field.hold_times_outside(0.3, 0.6)  # read by times in [0.3, 0.6]: knots 1 .. 3
    held = field.table.detach()
    assert torch.equal(held[1:4], table[1:4]) and torch.equal(held[0], table[1]) and torch.equal(held[4], table[3])


def test_bases_optimizer_groups_hold_the_table_the_weights_and_the_pivots():
    scene = Scene4D(_gaussians(100)).attach_deformation(_config("bases"), seed=0)
    field = scene.deformation
    opt = deformation_optimizer(scene, LearningRates(), 2.0)
    assert [g["name"] for g in opt.param_groups] == ["grid", "mlp"]
    assert opt.param_groups[0]["params"] == [field.positions, field.table, field.weight_grid]
    assert opt.param_groups[1]["params"] == []
    with pytest.raises(ValueError, match="weight_resolution"):
        make_deformation_field(DeformationConfig(type="bases", bases=BasesConfig(weight_resolution=1)))


# ------------------------------------------------------------------------------------------------- table motion
def test_table_motion_starts_at_the_identity_interpolates_its_knots_and_holds_them_outside_a_window():
    model = _gaussians(200, dtype=torch.float64)
    cfg = _config("nodes", count=12, motion="table", time_nodes=5)  # knots at t = 0, 0.25, 0.5, 0.75, 1
    scene = Scene4D(model).attach_deformation(cfg, seed=0)
    field = scene.deformation.double()
    assert field.mlp is None and field.table.shape == (5, 12, 7)
    canonical = model.frame()
    for t in TIMES:
        f = scene.frame_at(t)
        assert torch.allclose(f.means, canonical.means, atol=1e-12, rtol=0) and torch.allclose(f.quats, canonical.quats, atol=1e-12, rtol=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        field.table.copy_(0.3 * torch.randn(field.table.shape, generator=g, dtype=torch.float64))
    table = field.table.detach().clone()
    quats, trans = field.node_transforms(torch.tensor([0.25, 0.625, 1.0], dtype=torch.float64))
    identity = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(trans[0], table[1, :, :3])  # on a knot: the knot
    torch.testing.assert_close(trans[1], 0.5 * (table[2, :, :3] + table[3, :, :3]))  # halfway: the mean of two
    torch.testing.assert_close(trans[2], table[4, :, :3])
    blend = identity + 0.5 * (table[2, :, 3:] + table[3, :, 3:])
    torch.testing.assert_close(quats[1], blend / blend.norm(dim=-1, keepdim=True))
    # the motion table is trained at the node positions' rate (a whole motion per knot needs more than the MLP's rate)
    assert [name for name, params in field.optimizer_groups() if any(p is field.table for p in params)] == ["grid"]
    field.hold_times_outside(0.3, 0.6)  # read by times in [0.3, 0.6]: knots 1 .. 3
    held = field.table.detach()
    assert torch.equal(held[1:4], table[1:4]) and torch.equal(held[0], table[1]) and torch.equal(held[4], table[3])
    # state round trip: the table is part of the field's tensors
    back = Scene4D.from_tensors({k: v.detach().clone() for k, v in scene.tensors().items()}, 0, cfg).double()
    for t in TIMES:
        torch.testing.assert_close(back.frame_at(t).means, scene.frame_at(t).means, atol=1e-6, rtol=0)  # loaded in float32


@pytest.mark.parametrize("extrapolate", [False, True])
def test_reconstruct_time_curriculum_holds_the_knots_it_has_not_reached(scene_dir, tmp_path, extrapolate):
    """Every step of a curriculum that never reaches the clip's ends starts with the knots outside the window
    equal to its edge knots (or, with ``train.extrapolate_unreached``, on the line through the two edge knots);
    the run's field is a table of node motions trained from the reference time."""
    over = TINY + ["deformation.nodes.motion=table", "deformation.nodes.time_nodes=9", "train.reference_time=0.5",
                   "train.canonical_window=0.05", "train.time_curriculum=1.0", "export.formats=[]", "train.iterations=12",
                   f"train.extrapolate_unreached={str(extrapolate).lower()}"]
    cfg = build_config("default", over, {"data": str(scene_dir)})
    seen = []
    original = NodeDeformationField.hold_times_outside

    def spy(self, lo, hi, extrapolate):
        original(self, lo, hi, extrapolate)
        seen.append((lo, hi, extrapolate, self.table.detach().clone()))

    NodeDeformationField.hold_times_outside = spy
    try:
        run_reconstruct(cfg, tmp_path / "run", quiet=True)
    finally:
        NodeDeformationField.hold_times_outside = original
    assert len(seen) == 9  # every dynamic step (12 - 3 static)
    widths = [hi - lo for lo, hi, _, _ in seen]
    assert widths == sorted(widths) and widths[0] == pytest.approx(0.05) and widths[-1] < 1.0
    for lo, hi, passed, table in seen:
        assert passed is extrapolate
        first, last = math.floor(lo * 8), math.ceil(hi * 8)
        before = torch.arange(first, 0, -1, dtype=table.dtype).reshape(-1, 1, 1)
        after = torch.arange(1, 9 - last, dtype=table.dtype).reshape(-1, 1, 1)
        step_in = table[first] - table[first + 1] if extrapolate and last > first else 0.0 * table[first]
        step_out = table[last] - table[last - 1] if extrapolate and last > first else 0.0 * table[last]
        torch.testing.assert_close(table[:first], table[first] + before * step_in, rtol=0, atol=1e-6)
        torch.testing.assert_close(table[last + 1:], table[last] + after * step_out, rtol=0, atol=1e-6)
    assert seen[-1][3].abs().max() > 0  # the table was trained


# ------------------------------------------------------------------------------------------------- 5. end to end
TINY = [
    "train.iterations=24", "train.static_fraction=0.25", "train.checkpoint_every=4", "train.preview_every=12",
    "train.batch_size=2", "densify.refine_start=2", "densify.refine_every=3", "densify.max_gaussians=400",
    "model.init_points=200", "deformation.type=nodes", "deformation.nodes.count=32", "deformation.nodes.hidden_dim=32",
    "deformation.nodes.layers=2", "deformation.nodes.arap_weight=0.1", "export.mesh_resolution=24",
    "export.video_size=32", "export.video_frames=4", "export.frames=3", "export.mesh_threshold=0.05",
]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene")
    write_synthetic_scene("bouncing_balls", path, resolution=24, train_views=4, train_times=3, test_views=2, seed=0)
    return path


def _final(run) -> dict:
    tensors = load_file(str(run / "stages" / "dynamic" / "checkpoint.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def _assert_resumes_identically(cfg, run, params: dict, stop_after_step: int, check_interrupted=None) -> None:
    """A run of ``cfg`` interrupted inside the dynamic stage after ``stop_after_step`` steps, then resumed by a
    rerun, ends with parameters bit-identical to ``params`` (an uninterrupted run's)."""
    assert run_reconstruct(cfg, run, quiet=True, stop_after_step=stop_after_step) == {}
    if check_interrupted is not None:
        check_interrupted(run)
    run_reconstruct(cfg, run, quiet=True)
    resumed = _final(run)
    assert params.keys() == resumed.keys()
    for k in params:
        assert torch.equal(params[k], resumed[k]), k


def test_reconstruct_with_nodes_exports_motion_and_resumes_identically(scene_dir, tmp_path):
    cfg = build_config("default", TINY + ["export.formats=[glb]"], {"data": str(scene_dir)})
    assert cfg.deformation.type == "nodes"
    metrics = run_reconstruct(cfg, tmp_path / "straight", quiet=True)
    assert np.isfinite(metrics["psnr"])
    params = _final(tmp_path / "straight")
    assert params["model.deformation.positions"].shape == (32, 3)
    assert not any(k.startswith("model.deformation.hexplane") for k in params)
    assert params["model.deformation.mlp.4.weight"].abs().max() > 0  # the zero-initialised last layer was trained
    exports = tmp_path / "straight" / "exports"
    anim = read_animated_glb(exports / "animated.glb")
    assert anim.targets.shape[0] == 2 and np.abs(anim.targets).max() > 1e-6  # the mesh moves between frames
    nodes = json.loads((exports / "nodes.json").read_text())
    pos = np.array(nodes["positions"])
    assert pos.shape == (3, 32, 3) and len(nodes["radii"]) == 32 and nodes["times"] == [0.0, 0.5, 1.0]
    assert np.abs(pos[2] - pos[0]).max() > 0
    assert metrics["exports"]["nodes"] == [str(exports / "nodes.json")]
    finished = load_finished_run(tmp_path / "straight", "cpu")
    assert np.allclose(pos, finished.scene.deformation.node_trajectories(frame_times(3)).numpy(), atol=2e-5)

    # `gen4d export --format nodes` writes the node trajectories again; other formats leave them out
    (exports / "nodes.json").unlink()
    assert main(["export", str(tmp_path / "straight"), "--format", "glb", "--quiet"]) == 0
    assert not (exports / "nodes.json").exists()
    assert main(["export", str(tmp_path / "straight"), "--format", "nodes", "--quiet"]) == 0
    assert json.loads((exports / "nodes.json").read_text()) == nodes

    # the ARAP term is part of the loss: without it the same run ends elsewhere
    free = build_config("default", TINY + ["export.formats=[glb]", "deformation.nodes.arap_weight=0"], {"data": str(scene_dir)})
    run_reconstruct(free, tmp_path / "free", quiet=True)
    assert not torch.equal(_final(tmp_path / "free")["model.deformation.mlp.4.weight"], params["model.deformation.mlp.4.weight"])

    _assert_resumes_identically(cfg, tmp_path / "resumed", params, stop_after_step=10)


def test_reconstruct_with_motion_bases_exports_motion_and_resumes_identically(scene_dir, tmp_path):
    overrides = TINY + ["export.formats=[glb]", "deformation.type=bases", "deformation.bases.count=6",
                        "deformation.bases.weight_resolution=8", "deformation.bases.time_nodes=5"]
    cfg = build_config("default", overrides, {"data": str(scene_dir)})
    metrics = run_reconstruct(cfg, tmp_path / "straight", quiet=True)
    assert np.isfinite(metrics["psnr"])
    params = _final(tmp_path / "straight")
    assert params["model.deformation.table"].shape == (5, 6, 6) and params["model.deformation.table"].abs().max() > 0
    assert params["model.deformation.weight_grid"].shape == (1, 6, 8, 8, 8)
    finished = load_finished_run(tmp_path / "straight", "cpu")
    assert type(finished.scene.deformation) is MotionBasesField
    assert finished.scene.summary() == {"num_gaussians": len(finished.scene.gaussians), "num_bases": 6}  # as logged
    # the animated GLB follows the same motion: its frames' vertices move between the first and last frame
    anim = read_animated_glb(tmp_path / "straight" / "exports" / "animated.glb")
    assert anim.targets.shape[0] == 2 and np.abs(anim.targets).max() > 1e-6
    nodes = json.loads((tmp_path / "straight" / "exports" / "nodes.json").read_text())
    assert np.array(nodes["positions"]).shape == (3, 6, 3) and "radii" not in nodes  # the pivots' paths
    _assert_resumes_identically(cfg, tmp_path / "resumed", params, stop_after_step=10)


def test_bad_deformation_type_is_a_one_line_error(scene_dir, tmp_path, capsys):
    assert main(["reconstruct", str(scene_dir), "--out", str(tmp_path / "run"), "--quiet", *TINY, "deformation.type=bones"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "deformation.type" in err and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------- node refinement
def test_refine_nodes_drops_unfollowed_nodes_covers_far_gaussians_and_keeps_the_rest_as_it_was():
    model = _gaussians(200)
    scene = Scene4D(model).attach_deformation(_config("nodes", count=16, motion="table", time_nodes=5, refine=True), seed=0)
    field = scene.deformation
    _perturb(field, scale=0.05)
    with torch.no_grad():
        field.positions[3] = torch.tensor([40.0, 0.0, 0.0])  # a node no Gaussian follows
    opt = deformation_optimizer(scene, LearningRates(), 1.0)
    field.table.grad = torch.randn_like(field.table)
    field.positions.grad = torch.randn_like(field.positions)
    field.log_radii.grad = torch.randn_like(field.log_radii)
    opt.step()  # moments to keep
    # a far cluster of Gaussians (densification put them there): out of every node's reach
    far = torch.tensor([6.0, 0.0, 0.0]) + 0.3 * torch.randn(30, 3, generator=torch.Generator().manual_seed(2))
    means = torch.cat([model.params["means"].detach(), far])
    before = {k: v.detach().clone() for k, v in (("pos", field.positions), ("rad", field.log_radii), ("table", field.table))}
    moments = {k: opt.state[p]["exp_avg"].clone() for k, p in (("pos", field.positions), ("table", field.table))}
    old_d = field(model.params["means"], 0.4, quats=model.params["quats"]).d_means

    report = field.refine_nodes(means, opt)

    kept = [i for i in range(16) if i != 3]
    assert report["pruned"] == 1 and report["grown"] >= 1 and field.num_nodes == 15 + report["grown"]
    assert torch.equal(field.positions[:15], before["pos"][kept])
    assert torch.equal(field.table[:, :15], before["table"][:, kept])
    assert torch.equal(opt.state[field.positions]["exp_avg"][:15], moments["pos"][kept])
    assert torch.equal(opt.state[field.table]["exp_avg"][:, :15], moments["table"][:, kept])
    assert not opt.state[field.positions]["exp_avg"][15:].any() and not opt.state[field.table]["exp_avg"][:, 15:].any()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(field.positions), id(field.log_radii), id(field.table)}
    # every Gaussian is now within reach; the new nodes sit on far Gaussians and move as their parent node did
    d = (means[:, None] - field.positions[None]).norm(dim=-1)
    near = d.argmin(1)
    assert (d.min(1).values <= 2.0 * field.log_radii.exp()[near] + 1e-6).all()
    new = field.positions[15:]
    assert ((new[:, None] - far[None]).norm(dim=-1).min(1).values < 1e-6).all()
    for j in range(15, field.num_nodes):
        parent = [i for i in range(15) if torch.equal(field.table[:, i], field.table[:, j])]
        assert parent and torch.equal(field.log_radii[j], field.log_radii[parent[0]])
    # Gaussians whose nearest nodes are unchanged deform exactly as before; the optimiser still steps
    nbrs = field.gaussian_neighbours(model.params["means"])
    same = (nbrs < 15).all(1)
    assert same.sum() > 150
    new_d = field(model.params["means"], 0.4, quats=model.params["quats"]).d_means
    assert torch.allclose(new_d[same], old_d[same], atol=1e-6)
    field.table.grad = torch.ones_like(field.table)
    opt.step()
    # a cap on the node count stops growth; nothing to do is reported as such
    capped = Scene4D(_gaussians(200)).attach_deformation(_config("nodes", count=16, max_count=16, refine=True), seed=0).deformation
    assert capped.refine_nodes(torch.cat([model.params["means"].detach(), far]))["grown"] == 0 and capped.num_nodes <= 16
    assert field.refine_nodes(means, opt) == {"grown": 0, "pruned": 0}
    off = Scene4D(_gaussians(200)).attach_deformation(_config("nodes", count=16, refine=False), seed=0).deformation
    assert off.refine_nodes(means) == {} and off.num_nodes == 16


def test_reconstruct_growing_nodes_resumes_identically(scene_dir, tmp_path):
    """Nodes grown during the dynamic stage (a short reach, so that they are) are checkpointed with their Adam
    moments: a run interrupted after the node set changed and resumed ends bit-identical to an uninterrupted one."""
    cfg = build_config("default", TINY + ["export.formats=[]", "deformation.nodes.refine=true", "deformation.nodes.grow_distance=0.7",
                                          "deformation.nodes.motion=table"], {"data": str(scene_dir)})
    run_reconstruct(cfg, tmp_path / "straight", quiet=True)
    params = _final(tmp_path / "straight")
    assert params["model.deformation.positions"].shape[0] > 32  # the node set grew
    assert params["model.deformation.table"].shape[1] == params["model.deformation.positions"].shape[0]
    def grown(run):  # interrupted after growth
        tensors = load_file(str(run / "stages" / "dynamic" / "checkpoint.safetensors"))
        assert tensors["model.deformation.positions"].shape[0] > 32

    _assert_resumes_identically(cfg, tmp_path / "resumed", params, stop_after_step=14, check_interrupted=grown)
