"""Rasterizer backends against the dense float64 reference, and rendering invariants."""

import math

import pytest
import torch

from gen4d.cameras import orbit_cameras
from gen4d.render import rasterize
from gen4d.render.projection import project_gaussians
from gen4d.render.reference import rasterize_dense
from gen4d.sh import C0, C1, eval_sh, sh_basis

CPU_BACKENDS = ["numba", "torch"]


def random_gaussians(n, dtype=torch.float64, seed=0, scale=(0.02, 0.12)):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype)
    means = means / means.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g, dtype=dtype) ** (1 / 3)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = scale[0] + (scale[1] - scale[0]) * torch.rand(n, 3, generator=g, dtype=dtype)
    opacities = 0.05 + 0.95 * torch.rand(n, generator=g, dtype=dtype)
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    return [means, quats, scales, opacities, colors]


def cameras(dtype=torch.float64, size=(40, 32)):
    cams = orbit_cameras([0.0, 100.0, 215.0], [15.0, -20.0, 60.0], 3.0, 0.9, size[0], size[1])
    return cams.viewmats.to(dtype), cams.Ks.to(dtype), size[0], size[1]


def weighted_sum(rgb, alpha, depth):
    # Fixed random weights make every pixel and channel matter in the gradient comparison.
    g = torch.Generator().manual_seed(1)
    return (
        (rgb * torch.rand(rgb.shape, generator=g, dtype=rgb.dtype)).sum()
        + (alpha * torch.rand(alpha.shape, generator=g, dtype=alpha.dtype)).sum()
        + 0.1 * (depth * torch.rand(depth.shape, generator=g, dtype=depth.dtype)).sum()
    )


def rel_err(a, b):
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-30))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("antialiased", [False, True])
def test_backend_matches_dense_reference_float64(backend, antialiased):
    params = [p.requires_grad_() for p in random_gaussians(150)]
    viewmats, Ks, W, H = cameras()
    out = rasterize(*params, viewmats, Ks, W, H, antialiased=antialiased, backend=backend)
    acc_depth = out.depth * out.alpha
    ref_rgb, ref_alpha, ref_depth = rasterize_dense(*params, viewmats, Ks, W, H, antialiased=antialiased)
    assert float(ref_alpha.detach().max()) > 0.5  # the scene is really in view
    assert rel_err(out.rgb, ref_rgb) < 1e-4
    assert rel_err(out.alpha, ref_alpha) < 1e-4
    assert rel_err(acc_depth, ref_depth) < 1e-4
    grads = torch.autograd.grad(weighted_sum(out.rgb, out.alpha, acc_depth), params)
    ref_grads = torch.autograd.grad(weighted_sum(ref_rgb, ref_alpha, ref_depth), params)
    for name, g, r in zip(["means", "quats", "scales", "opacities", "colors"], grads, ref_grads):
        assert float(r.abs().max()) > 0, name
        assert rel_err(g, r) < 1e-4, name


def test_numba_and_torch_backends_agree_in_float32_with_sh():
    params = random_gaussians(300, dtype=torch.float32, seed=3)
    sh = 0.3 * torch.randn(300, 16, 3, generator=torch.Generator().manual_seed(4))
    params[4] = sh
    params = [p.requires_grad_() for p in params]
    viewmats, Ks, W, H = cameras(torch.float32)
    outs, grads = [], []
    for backend in CPU_BACKENDS:
        out = rasterize(*params, viewmats, Ks, W, H, sh_degree=3, backend=backend)
        outs.append(out)
        grads.append(torch.autograd.grad(weighted_sum(out.rgb, out.alpha, out.depth * out.alpha), params))
    assert torch.allclose(outs[0].rgb, outs[1].rgb, atol=2e-5)
    for g0, g1 in zip(*grads):
        assert rel_err(g0, g1) < 1e-3


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_alpha_in_unit_interval_and_background_compositing(backend):
    params = random_gaussians(400, dtype=torch.float32, seed=5, scale=(0.05, 0.3))
    viewmats, Ks, W, H = cameras(torch.float32)
    plain = rasterize(*params, viewmats, Ks, W, H, backend=backend)
    bg = torch.tensor([0.2, 0.5, 0.9])
    over = rasterize(*params, viewmats, Ks, W, H, backgrounds=bg, backend=backend)
    assert float(plain.alpha.min()) >= 0.0 and float(plain.alpha.max()) <= 1.0
    assert float(plain.alpha.max()) > 0.99  # dense enough to saturate somewhere
    assert torch.allclose(over.rgb, plain.rgb + (1 - plain.alpha) * bg, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_early_stop_matches_hand_computation(backend):
    # Three coincident Gaussians at a pixel centre, opacity 0.995 each: after the first, T = 0.005, and the
    # second would bring T to 2.5e-5 <= 1e-4, so compositing stops: alpha = 0.995 and colour = first colour.
    W = H = 8
    K = torch.tensor([[10.0, 0, 4.0], [0, 10.0, 4.0], [0, 0, 1]], dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    # pixel (4, 4) has its centre at (4.5, 4.5): put the means there, at depths 2, 3, 4.
    z = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
    means = torch.stack([0.05 * z, 0.05 * z, z], -1)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=torch.float64)
    scales = torch.full((3, 3), 0.05, dtype=torch.float64)
    opac = torch.full((3,), 0.995, dtype=torch.float64)
    colors = torch.eye(3, dtype=torch.float64)
    out = rasterize(means, quats, scales, opac, colors, viewmat[None], K[None], W, H, backend=backend)
    assert float(out.alpha[0, 4, 4, 0]) == pytest.approx(0.995, abs=1e-12)
    assert torch.allclose(out.rgb[0, 4, 4], torch.tensor([0.995, 0.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert float(out.depth[0, 4, 4, 0]) == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_per_camera_gaussians_equal_separate_renders(backend):
    params = random_gaussians(200, dtype=torch.float64, seed=7)
    viewmats, Ks, W, H = cameras()
    shifted = [p.clone() for p in params]
    shifted[0] = shifted[0] + torch.tensor([0.1, -0.05, 0.2], dtype=torch.float64)
    batched = [torch.stack([a, b, a]) for a, b in zip(params, shifted)]
    out = rasterize(*batched, viewmats, Ks, W, H, backend=backend)
    for c, p in enumerate([params, shifted, params]):
        single = rasterize(*p, viewmats[c : c + 1], Ks[c : c + 1], W, H, backend=backend)
        assert torch.allclose(out.rgb[c], single.rgb[0], atol=1e-12)


def test_nothing_in_front_of_the_camera_renders_background():
    params = random_gaussians(50, dtype=torch.float32)
    params[0] = params[0] + torch.tensor([0.0, 0.0, -10.0])  # all behind a camera at the origin looking +z
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]])
    for backend in CPU_BACKENDS:
        out = rasterize(*params, torch.eye(4)[None], K[None], 16, 16, backgrounds=torch.ones(3), backend=backend)
        assert float(out.alpha.abs().max()) == 0.0
        assert torch.equal(out.rgb, torch.ones_like(out.rgb))


def test_projection_jacobian_matches_autograd():
    # The EWA covariance uses J, the Jacobian of the pinhole map at the camera-space mean: compare J Sigma J^T
    # with autograd's Jacobian for an isotropic Gaussian of known covariance.
    K = torch.tensor([[50.0, 0, 20.0], [0, 60.0, 15.0], [0, 0, 1]], dtype=torch.float64)
    mean = torch.tensor([[0.1, -0.2, 2.5]], dtype=torch.float64)
    s = 0.07
    proj = project_gaussians(
        mean[None], torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64), torch.full((1, 3), s, dtype=torch.float64),
        torch.ones(1, dtype=torch.float64), torch.eye(4, dtype=torch.float64)[None], K[None], 40, 30, eps2d=0.0,
    )

    def pinhole(p):
        return torch.stack([K[0, 0] * p[0] / p[2] + K[0, 2], K[1, 1] * p[1] / p[2] + K[1, 2]])

    J = torch.autograd.functional.jacobian(pinhole, mean[0])
    cov2d = s * s * J @ J.T
    a, b, c = proj.conics[0, 0]
    conic = torch.tensor([[a, b], [b, c]])
    assert torch.allclose(torch.linalg.inv(conic), cov2d, rtol=1e-10)
    assert torch.allclose(proj.means2d[0, 0], pinhole(mean[0]), rtol=1e-12)


@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_numba_projection_matches_the_pytorch_projection(antialiased, dtype):
    # Values and gradients of every projected quantity, with Gaussians behind the cameras, past the far plane and
    # far off-screen (where the tangent-plane coordinates are clamped), means and opacities per camera while
    # quaternions and scales are shared (as a deformed scene renders several times at once).
    from gen4d.render.numba_backend import project_gaussians_numba

    means, quats, scales, opacities, _ = random_gaussians(300, dtype=dtype, seed=11)
    viewmats, Ks, W, H = cameras(dtype)
    C = len(viewmats)
    means = torch.stack([means + 0.05 * c for c in range(C)])
    means[:, :10] += torch.tensor([0.0, 0.0, 6.0], dtype=dtype)  # behind one camera or another
    means[:, 10:20] *= 40.0  # far outside the views
    opacities = torch.stack([opacities * (1.0 - 0.2 * c) for c in range(C)])
    inputs = [means, quats, scales, opacities]
    results = []
    for project in (project_gaussians, project_gaussians_numba):
        params = [p.clone().requires_grad_() for p in inputs]
        proj = project(*params, viewmats, Ks, W, H, far_plane=4.0, antialiased=antialiased)
        outputs = [proj.means2d, proj.conics, proj.depths, proj.opacities]
        g = torch.Generator().manual_seed(2)
        loss = sum((o * torch.rand(o.shape, generator=g, dtype=dtype)).sum() for o in outputs)
        results.append((proj, outputs, torch.autograd.grad(loss, params)))
    (ref, ref_out, ref_grads), (proj, out, grads) = results
    tol = 1e-10 if dtype == torch.float64 else 2e-6
    assert torch.equal(proj.valid, ref.valid) and torch.equal(proj.radii, ref.radii)
    assert 0 < int(ref.valid.sum()) < ref.valid.numel()  # some culled, some drawn
    for o, r in zip(out, ref_out):
        assert rel_err(o, r) < tol
    for name, g, r in zip(["means", "quats", "scales", "opacities"], grads, ref_grads):
        assert float(r.abs().max()) > 0, name
        assert rel_err(g, r) < 5 * tol, name


def test_sh_constants_and_orthonormality():
    coeffs = torch.zeros(1, 4, 3)
    coeffs[0, 0] = torch.tensor([1.0, -1.0, 0.5])
    coeffs[0, 2] = torch.tensor([0.2, 0.0, 0.0])  # the z-aligned degree-1 basis
    rgb = eval_sh(1, coeffs, torch.tensor([[0.0, 0.0, 2.0]]))
    expected = torch.clamp_min(torch.tensor([C0 * 1 + C1 * 0.2, -C0, 0.5 * C0]) + 0.5, 0)
    assert torch.allclose(rgb[0], expected, atol=1e-7)
    # Real SH of degree <= 3 are orthonormal on the sphere: E[Y_i Y_j] * 4 pi = delta_ij.
    g = torch.Generator().manual_seed(0)
    d = torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    Y = sh_basis(3, d)
    gram = 4 * math.pi * (Y.T @ Y) / len(d)
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=0.03)


def test_means2d_gradient_is_available_for_densification():
    params = random_gaussians(100, dtype=torch.float32)
    params[0][:10] += 50.0  # far outside every view
    params = [p.requires_grad_() for p in params]
    viewmats, Ks, W, H = cameras(torch.float32)
    out = rasterize(*params, viewmats, Ks, W, H)
    out.meta["means2d"].retain_grad()
    out.rgb.sum().backward()
    g = out.meta["means2d"].grad
    assert g is not None and g.shape == (3, 100, 2)
    visible = (out.meta["radii"] > 0).all(-1)
    assert float(g[~visible].abs().max()) == 0.0
    assert float(g[visible].abs().max()) > 0.0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_antialiased_gaussian_seen_edge_on_keeps_gradients_finite(backend):
    # A flat Gaussian (no extent along y) straight ahead of the camera has det(cov2d - eps2d I) = 0: its
    # compensated opacity is 0, so it draws nothing, and the gradients must stay finite (the square root's derivative
    # at 0 is unbounded; times the zero gradient of a Gaussian that draws nothing it was NaN). The other Gaussian's
    # gradients are those of a render without the flat one.
    W = H = 16
    K = torch.tensor([[20.0, 0, 8.0], [0, 20.0, 8.0], [0, 0, 1]], dtype=torch.float64)[None]
    viewmat = torch.eye(4, dtype=torch.float64)[None]
    params = [
        torch.tensor([[0.0, 0.0, 3.0], [0.1, 0.1, 4.0]], dtype=torch.float64),
        torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, -0.2, 0.3]], dtype=torch.float64),
        torch.tensor([[0.3, 0.0, 0.3], [0.3, 0.2, 0.25]], dtype=torch.float64),
        torch.tensor([0.9, 0.8], dtype=torch.float64),
        torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64),
    ]
    both = [p.clone().requires_grad_() for p in params]
    alone = [p[1:].clone().requires_grad_() for p in params]
    out = rasterize(*both, viewmat, K, W, H, antialiased=True, backend=backend)
    ref = rasterize(*alone, viewmat, K, W, H, antialiased=True, backend=backend)
    assert torch.allclose(out.rgb, ref.rgb, atol=1e-12) and float(ref.alpha.max()) > 0.5
    grads = torch.autograd.grad(weighted_sum(out.rgb, out.alpha, out.depth * out.alpha), both)
    ref_grads = torch.autograd.grad(weighted_sum(ref.rgb, ref.alpha, ref.depth * ref.alpha), alone)
    for g, r in zip(grads, ref_grads):
        assert bool(torch.isfinite(g).all())
        assert torch.allclose(g[1:], r, rtol=1e-9, atol=1e-12)
