import dataclasses
import math

import pytest
import torch

from gen4d.cameras import frame_times
from gen4d.fields.deformation import Deformation, DeformationConfig, DeformationField
from gen4d.fields.hexplane import PLANE_NAMES, TIME_PLANES, HexPlane, HexPlaneConfig, hold_knots_outside


# ------------------------------------------------------------------------------------------------- helpers
def _bilerp(values: list[list[float]], u: float, v: float) -> float:
    """Bilinear lookup in a table ``values[row][col]`` at normalised coords u (columns) and v (rows) in
    [-1, 1], end nodes at +-1, clamped outside. Written independently of grid_sample."""
    rows, cols = len(values), len(values[0])

    def split(c: float, n: int) -> tuple[int, int, float]:
        if n == 1:
            return 0, 0, 0.0
        pos = (min(max(c, -1.0), 1.0) + 1.0) / 2.0 * (n - 1)
        i0 = min(int(math.floor(pos)), n - 2)
        return i0, i0 + 1, pos - i0

    c0, c1, fc = split(u, cols)
    r0, r1, fr = split(v, rows)
    top = values[r0][c0] * (1 - fc) + values[r0][c1] * fc
    bottom = values[r1][c0] * (1 - fc) + values[r1][c1] * fc
    return top * (1 - fr) + bottom * fr


# Hand-set planes for a tiny single-scale, single-channel HexPlane with (x, y, z, t) = (2, 3, 2, 3) nodes.
# Each table is indexed [second axis][first axis], e.g. XY[y][x], XT[t][x].
XY = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
XZ = [[1.0, 3.0], [5.0, 7.0]]
YZ = [[2.0, 4.0, 6.0], [8.0, 10.0, 12.0]]
XT = [[0.5, 1.5], [1.0, 2.0], [2.0, 3.0]]
YT = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
ZT = [[1.0, 0.5], [2.0, 1.0], [0.25, 4.0]]
TABLES = [XY, XZ, YZ, XT, YT, ZT]


def _tiny_hexplane() -> HexPlane:
    hp = HexPlane(HexPlaneConfig(feature_dim=1, resolution=(2, 3, 2, 3), multires=(1,))).double().requires_grad_(False)
    with torch.no_grad():
        for p, table in enumerate(TABLES):
            hp.grids[0][p].copy_(torch.tensor(table, dtype=torch.float64)[None, None])
    return hp


def _hand_value(x: float, y: float, z: float, t: float) -> float:
    s = 2.0 * t - 1.0  # time [0, 1] -> [-1, 1]
    return (
        _bilerp(XY, x, y) * _bilerp(XZ, x, z) * _bilerp(YZ, y, z)
        * _bilerp(XT, x, s) * _bilerp(YT, y, s) * _bilerp(ZT, z, s)
    )


def _small_field(**kw) -> DeformationField:
    hp = HexPlaneConfig(feature_dim=4, resolution=(6, 6, 6, 5), multires=(1, 2))
    return DeformationField(DeformationConfig(hexplane=hp, hidden_dim=16, **kw))


def _perturb(field: DeformationField, seed: int = 0) -> None:
    """Give every parameter (including the zero-initialised last layers) non-trivial random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ------------------------------------------------------------------------------------------------ HexPlane
def test_hexplane_shapes_and_init():
    cfg = HexPlaneConfig(feature_dim=3, resolution=(4, 5, 6, 7), multires=(1, 2), init_range=(0.1, 0.5))
    hp = HexPlane(cfg)
    assert len(hp.grids) == 2 and all(len(s) == 6 for s in hp.grids)
    assert PLANE_NAMES == ("xy", "xz", "yz", "xt", "yt", "zt")
    for s, mult in enumerate((1, 2)):
        rx, ry, rz, rt = 4 * mult, 5 * mult, 6 * mult, 7  # time is never multiplied
        expected = [(ry, rx), (rz, rx), (rz, ry), (rt, rx), (rt, ry), (rt, rz)]  # [res_b, res_a]
        for p, (hb, wa) in enumerate(expected):
            assert tuple(hp.grids[s][p].shape) == (1, 3, hb, wa)
        for p in range(3):
            assert hp.grids[s][p].min() >= 0.1 and hp.grids[s][p].max() <= 0.5
            assert hp.grids[s][p].std() > 0
        for p in range(3, 6):
            assert torch.equal(hp.grids[s][p], torch.ones_like(hp.grids[s][p]))
    assert hp(torch.rand(10, 4) * 2 - 1).shape == (10, 6) and hp.output_dim == 6


def test_hexplane_at_a_grid_node_is_product_of_node_values():
    hp = _tiny_hexplane()
    # x = -1 -> x node 0; y = 0 -> y node 1; z = 1 -> z node 1; t = 1 -> last time node (2).
    out = hp(torch.tensor([[-1.0, 0.0, 1.0, 1.0]], dtype=torch.float64))
    expected = XY[1][0] * XZ[1][0] * YZ[1][1] * XT[2][0] * YT[2][1] * ZT[2][1]
    assert expected == 3.0 * 5.0 * 10.0 * 2.0 * 8.0 * 4.0
    assert out.shape == (1, 1)
    assert float(out) == pytest.approx(expected, rel=1e-12)


def test_hexplane_at_a_cell_midpoint_averages_four_nodes():
    hp = _tiny_hexplane()
    # x = 0 -> 0.5 between x nodes; y = 0.5 -> 1.5; z = 0 -> 0.5; t = 0.25 -> s = -0.5 -> time node 0.5.
    out = hp(torch.tensor([[0.0, 0.5, 0.0, 0.25]], dtype=torch.float64))
    xy = (3 + 4 + 5 + 6) / 4
    xz = (1 + 3 + 5 + 7) / 4
    yz = (4 + 6 + 10 + 12) / 4
    xt = (0.5 + 1.5 + 1.0 + 2.0) / 4
    yt = (2 + 3 + 5 + 6) / 4
    zt = (1.0 + 0.5 + 2.0 + 1.0) / 4
    assert float(out) == pytest.approx(xy * xz * yz * xt * yt * zt, rel=1e-12)


def test_hexplane_matches_hand_bilinear_at_random_points_and_clamps_outside():
    hp = _tiny_hexplane()
    g = torch.Generator().manual_seed(3)
    pts = torch.cat([torch.rand(50, 3, generator=g, dtype=torch.float64) * 2 - 1,
                     torch.rand(50, 1, generator=g, dtype=torch.float64)], dim=-1)
    # Outside the box: border padding means the nearest border value.
    pts = torch.cat([pts, torch.tensor([[-3.0, 2.0, 0.3, 1.5], [0.2, -0.4, 5.0, -0.7]], dtype=torch.float64)])
    out = hp(pts)[:, 0]
    expected = torch.tensor([_hand_value(*p.tolist()) for p in pts], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("num_t", [2, 3, 5, 14, 25])
def test_time_mapping_hits_first_and_last_nodes_for_any_resolution(num_t):
    hp = HexPlane(HexPlaneConfig(feature_dim=1, resolution=(2, 2, 2, num_t), multires=(1,))).double()
    hp.requires_grad_(False)
    with torch.no_grad():
        for p in range(3):
            hp.grids[0][p].fill_(1.0)
        # xt varies with the time node index only: value at node i is i + 1. yt, zt stay 1.
        ramp = torch.arange(1, num_t + 1, dtype=torch.float64)
        hp.grids[0][3].copy_(ramp.reshape(1, 1, num_t, 1).expand(1, 1, num_t, 2))
    times = frame_times(num_t)  # node i is at t = i / (T - 1)
    xyz = torch.zeros(num_t, 3, dtype=torch.float64)
    out = hp(torch.cat([xyz, times[:, None]], dim=-1))[:, 0]
    torch.testing.assert_close(out, ramp, rtol=0, atol=1e-12)
    assert float(hp(torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64))) == pytest.approx(num_t)
    assert float(hp(torch.tensor([[0.0, 0.0, 0.0, 0.0]], dtype=torch.float64))) == pytest.approx(1.0)


def test_two_scales_concatenate_in_order():
    cfg = HexPlaneConfig(feature_dim=2, resolution=(2, 2, 2, 3), multires=(1, 2))
    hp = HexPlane(cfg).double()
    assert tuple(hp.grids[1][0].shape) == (1, 2, 4, 4) and tuple(hp.grids[1][3].shape) == (1, 2, 3, 4)
    per_scale_channel = [(2.0, 0.5), (3.0, 1.5)]
    with torch.no_grad():
        for s, (c0, c1) in enumerate(per_scale_channel):
            for p in range(3):
                hp.grids[s][p][:, 0] = c0
                hp.grids[s][p][:, 1] = c1
    out = hp(torch.rand(5, 4, dtype=torch.float64) * 2 - 1)
    # Three spatial planes multiplied (time planes are 1): scale 0 channels first, then scale 1.
    expected = torch.tensor([2.0**3, 0.5**3, 3.0**3, 1.5**3], dtype=torch.float64).expand(5, 4)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_plane_tv_formula_on_hand_set_planes():
    hp = HexPlane(HexPlaneConfig(feature_dim=1, resolution=(2, 3, 2, 3), multires=(1,))).double().requires_grad_(False)
    with torch.no_grad():
        for p in range(6):
            hp.grids[0][p].fill_(0.3)
    assert float(hp.plane_tv()) == 0.0  # constant planes
    with torch.no_grad():
        hp.grids[0][0].copy_(torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])[None, None])  # xy
        hp.grids[0][2].copy_(torch.tensor([[0.0, 1.0, 4.0], [0.0, 1.0, 4.0]])[None, None])  # yz
        hp.grids[0][4].copy_(torch.rand(1, 1, 3, 3))  # a time plane: must not count
    # xy: width diffs all 1 -> mean 1; height diffs 0.  yz: width diffs 1, 3 -> mean(1, 9) = 5; height 0.
    assert float(hp.plane_tv()) == pytest.approx(1.0 + 5.0, rel=1e-12)
    # And against the general formula on random planes.
    with torch.no_grad():
        for p in range(3):
            hp.grids[0][p].copy_(torch.rand_like(hp.grids[0][p]))
    expected = sum(
        ((pl[..., 1:, :] - pl[..., :-1, :]) ** 2).mean() + ((pl[..., :, 1:] - pl[..., :, :-1]) ** 2).mean()
        for pl in (hp.grids[0][0], hp.grids[0][1], hp.grids[0][2])
    )
    assert float(hp.plane_tv()) == pytest.approx(float(expected), rel=1e-12)


def test_time_smoothness_and_l1_formulas_on_hand_set_planes():
    hp = HexPlane(HexPlaneConfig(feature_dim=1, resolution=(2, 3, 2, 3), multires=(1,))).double().requires_grad_(False)
    assert float(hp.time_smoothness()) == 0.0 and float(hp.time_l1()) == 0.0  # time planes start at 1
    with torch.no_grad():
        hp.grids[0][3].copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [4.0, 4.0]])[None, None])  # xt: t^2
        hp.grids[0][5].copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])[None, None])  # zt: linear
        hp.grids[0][0].copy_(torch.rand(1, 1, 3, 2))  # a spatial plane: must not count
    # xt: 0 - 2 + 4 = 2 -> squared 4 at every (one) interior node; zt linear -> 0; yt constant -> 0.
    assert float(hp.time_smoothness()) == pytest.approx(4.0, rel=1e-12)
    # time_l1: xt mean|1 - [0,0,1,1,4,4]| = (1+1+0+0+3+3)/6 = 4/3; zt (1+1+0+0+1+1)/6 = 2/3; yt 0.
    assert float(hp.time_l1()) == pytest.approx(4 / 3 + 2 / 3, rel=1e-12)


def test_regularisers_sum_over_scales_and_are_differentiable():
    hp = HexPlane(HexPlaneConfig(feature_dim=2, resolution=(3, 3, 3, 4), multires=(1, 2)))
    with torch.no_grad():
        for s in hp.grids:
            for p in range(3, 6):
                s[p].add_(0.1 * torch.randn_like(s[p]))
    loss = hp.plane_tv() + hp.time_smoothness() + hp.time_l1()
    loss.backward()
    for s in hp.grids:
        for p in range(6):
            assert s[p].grad is not None and s[p].grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------- DeformationField
def test_deformation_is_exactly_zero_at_init():
    field = _small_field(deform_opacity=True)
    field.set_bounds(torch.tensor([-2.0, -1.0, -0.5]), torch.tensor([2.0, 3.0, 0.5]))
    means = torch.randn(200, 3) * 2
    for t in (0.0, 0.37, 1.0, torch.tensor(0.5), torch.rand(200), frame_times(7).float().repeat(29)[:200]):
        d = field(means, t)
        assert isinstance(d, Deformation)
        assert d.d_means.shape == (200, 3) and d.d_quats.shape == (200, 4)
        assert d.d_log_scales.shape == (200, 3) and d.d_opacity_logits.shape == (200,)
        for x in (d.d_means, d.d_quats, d.d_log_scales, d.d_opacity_logits):
            assert torch.equal(x, torch.zeros_like(x))
    # The zero comes from the heads' last layers, not from dead features.
    feats = field.hexplane(torch.cat([field.normalize_means(means), torch.rand(200, 1)], -1))
    assert feats.abs().min() > 0
    # Extreme coordinates and times: still finite and exactly zero.
    extreme = torch.tensor([[1e30, -1e30, 1e30], [-1e38, 1e38, 0.0], [0.0, 0.0, 0.0], [5.0, -7.0, 1e6]])
    with torch.no_grad():
        for t in (-10.0, 0.0, 1.0, 1e9, torch.tensor([-1e30, 2.0, 0.5, 1e30])):
            d = field(extreme, t)
            for x in (d.d_means, d.d_quats, d.d_log_scales, d.d_opacity_logits):
                assert torch.equal(x, torch.zeros_like(x))


def test_opacity_head_optional():
    d = _small_field()(torch.zeros(3, 3), 0.5)
    assert d.d_opacity_logits is None


def test_bad_time_shape_rejected():
    with pytest.raises(ValueError):
        _small_field()(torch.zeros(4, 3), torch.zeros(3))


def test_gradients_reach_heads_then_planes():
    field = _small_field(deform_opacity=True)
    opt = torch.optim.SGD(field.parameters(), lr=0.1)
    means = torch.rand(64, 3) * 2 - 1
    t = torch.rand(64)
    target = torch.randn(64, 3) * 0.1

    def step() -> None:
        opt.zero_grad()
        d = field(means, t)
        loss = (d.d_means - target).square().mean() + (d.d_log_scales - 0.1).square().mean()
        loss = loss + (d.d_quats - 0.05).square().mean() + (d.d_opacity_logits - 0.2).square().mean()
        loss.backward()
        opt.step()

    step()
    # With zero last layers only those layers get a gradient on the first step...
    for head in (field.means_head, field.quats_head, field.scales_head, field.opacity_head):
        assert head[-1].weight.grad.abs().sum() > 0 and head[-1].bias.grad.abs().sum() > 0
    # ...and the field is no longer the identity afterwards.
    with torch.no_grad():
        d = field(means, t)
    for x in (d.d_means, d.d_quats, d.d_log_scales, d.d_opacity_logits):
        assert x.abs().max() > 0
    planes_before = [p.detach().clone() for s in field.hexplane.grids for p in s]
    step()
    # From the second step on the gradient flows back through the heads and trunk into every plane.
    for head in (field.means_head, field.quats_head, field.scales_head, field.opacity_head):
        assert head[0].weight.grad.abs().sum() > 0
    assert field.trunk[0].weight.grad.abs().sum() > 0
    for s in field.hexplane.grids:
        for p in s:
            assert p.grad is not None and p.grad.abs().sum() > 0
    planes_after = [p.detach() for s in field.hexplane.grids for p in s]
    assert all(not torch.equal(a, b) for a, b in zip(planes_before, planes_after))


def test_deformation_is_continuous_in_time():
    field = _small_field(deform_opacity=True).double()
    _perturb(field)
    point = torch.tensor([[0.3, -0.2, 0.6]], dtype=torch.float64)

    def f(t: float) -> torch.Tensor:
        d = field(point, t)
        return torch.cat([d.d_means, d.d_quats, d.d_log_scales, d.d_opacity_logits[:, None]], -1)[0]

    with torch.no_grad():
        assert (f(0.0) - f(1.0)).abs().max() > 1e-3  # it really depends on t
        # Around time nodes (t = 0.25, 0.5 with 5 time nodes) and inside cells: the jump shrinks with h
        # (Lipschitz, as a product of piecewise-linear functions through an MLP).
        for t0 in (0.25, 0.5, 0.3, 0.77):
            big = (f(t0 + 1e-3) - f(t0 - 1e-3)).abs().max()
            small = (f(t0 + 1e-6) - f(t0 - 1e-6)).abs().max()
            assert small <= big * 1e-2 + 1e-12
            assert small < 1e-4
        # Dense sweep: adjacent samples never jump.
        ts = torch.linspace(0, 1, 2001, dtype=torch.float64)
        d = field(point.expand(ts.numel(), 3), ts)
        seq = torch.cat([d.d_means, d.d_quats, d.d_log_scales, d.d_opacity_logits[:, None]], -1)
        jumps = (seq[1:] - seq[:-1]).abs().max()
        span = (seq.max(0).values - seq.min(0).values).max()
        assert jumps < span * 0.02


def test_bounds_normalisation_and_state_dict():
    field = _small_field()
    field.set_bounds((0.0, -4.0, 10.0), (2.0, 4.0, 12.0))
    pts = torch.tensor([[0.0, -4.0, 10.0], [2.0, 4.0, 12.0], [1.0, 0.0, 11.0], [5.0, -9.0, 11.5]])
    expected = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, -1.0, 0.5]])
    torch.testing.assert_close(field.normalize_means(pts), expected)
    with pytest.raises(ValueError):
        field.set_bounds((0.0, 0.0, 0.0), (1.0, 0.0, 1.0))
    _perturb(field, seed=5)
    sd = field.state_dict()
    assert "aabb_min" in sd and "aabb_max" in sd
    other = _small_field()
    other.load_state_dict(sd)
    torch.testing.assert_close(other.aabb_max, torch.tensor([2.0, 4.0, 12.0]))
    a, b = field(pts, 0.4), other(pts, 0.4)
    torch.testing.assert_close(a.d_means, b.d_means)
    torch.testing.assert_close(a.d_quats, b.d_quats)


@pytest.mark.parametrize("resolution", [(6, 5, 4, 7), (3, 1, 4, 2)])
def test_fused_cpu_lookup_matches_grid_sample_values_and_gradients(resolution):
    """The numba pass (CPU default) against six grid_sample calls: values and gradients with respect to the
    coordinates and every plane, inside the box, outside it (border padding: no coordinate gradient) and along
    an axis with a single node."""
    cfg = HexPlaneConfig(feature_dim=3, resolution=resolution, multires=(1, 2))
    fused = HexPlane(cfg).double()
    plain = HexPlane(dataclasses.replace(cfg, fused_cpu=False)).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for pf, pp in zip(fused.parameters(), plain.parameters()):
            pf.copy_(0.5 + torch.rand(pf.shape, generator=g, dtype=torch.float64))
            pp.copy_(pf)
    pts = torch.cat([torch.rand(200, 3, generator=g, dtype=torch.float64) * 2.6 - 1.3,
                     torch.rand(200, 1, generator=g, dtype=torch.float64) * 1.2 - 0.1], dim=-1)
    weights = torch.randn(200, fused.output_dim, generator=g, dtype=torch.float64)
    grads = []
    for hp in (fused, plain):
        x = pts.clone().requires_grad_(True)
        out = hp(x)
        grads.append((out, *torch.autograd.grad((out * weights).sum(), [x, *hp.parameters()])))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    outside = (pts[:, :3].abs() > 1).any(-1)
    assert outside.any() and (grads[0][1][:, :3][pts[:, :3].abs() > 1] == 0).all()


def test_hold_times_outside_copies_the_window_edge_nodes():
    hp = HexPlane(HexPlaneConfig(feature_dim=2, resolution=(3, 3, 3, 11), multires=(1, 2)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hp.parameters():
            p.copy_(torch.rand(p.shape, generator=g))
    before = [[p.clone() for p in planes] for planes in hp.grids]
    hp.hold_times_outside(0.33, 0.61)  # 10 intervals: times in the window read nodes 3 .. 7
    for planes, old in zip(hp.grids, before):
        for p in range(6):
            new = planes[p]
            if p < 3:
                assert torch.equal(new, old[p])  # spatial planes untouched
                continue
            assert torch.equal(new[..., 3:8, :], old[p][..., 3:8, :])
            assert torch.equal(new[..., :3, :], old[p][..., 3:4, :].expand_as(new[..., :3, :]))
            assert torch.equal(new[..., 8:, :], old[p][..., 7:8, :].expand_as(new[..., 8:, :]))
    # then every time outside the window has the features of the window's nearest edge time
    pts = torch.rand(20, 3, generator=g) * 2 - 1
    at = lambda t: hp(torch.cat([pts, torch.full((20, 1), t)], -1))  # noqa: E731
    torch.testing.assert_close(at(0.0), at(0.3))
    torch.testing.assert_close(at(1.0), at(0.7))


def test_hold_times_outside_extrapolates_the_edge_step():
    # knots at clip times i / 10; a window reading knots 3 .. 7 (values linear in the knot there, quadratic outside)
    values = torch.arange(11.0).square().reshape(1, 1, 11, 1).repeat(1, 2, 1, 3)
    values[..., 3:8, :] = 5.0 * torch.arange(3.0, 8.0).reshape(1, 1, 5, 1) - 2.0
    kept = values[..., 3:8, :].clone()
    hold_knots_outside(values, -2, 0.33, 0.61, extrapolate=True)
    assert torch.equal(values[..., 3:8, :], kept)  # the window's knots are untouched
    line = 5.0 * torch.arange(11.0) - 2.0  # constant velocity: the line through the edge knots continues
    torch.testing.assert_close(values[0, 0, :, 0], line)
    # a window reading one knot has no step to continue: it is held
    one = torch.rand(4, 11)
    hold_knots_outside(one, 1, 0.5, 0.5, extrapolate=True)
    assert torch.equal(one, one[:, 5:6].expand_as(one))


def test_field_extrapolation_reaches_every_time_plane_and_scale():
    field = _small_field()
    _perturb(field, seed=3)
    planes = [[p.detach().clone() for p in scale] for scale in field.hexplane.grids]
    field.hold_times_outside(0.3, 0.7, extrapolate=True)
    for scale, old in zip(field.hexplane.grids, planes):
        for p, (new, before) in enumerate(zip(scale, old)):
            if p in TIME_PLANES:
                hold_knots_outside(before, -2, 0.3, 0.7, extrapolate=True)
            assert torch.equal(new, before)
