"""Densification operations keep parameters and Adam state aligned; thresholds act as documented."""

import math

import torch

from gen4d.gaussians.model import GaussianModel
from gen4d.gaussians.strategy import DensifyConfig, DensifyStrategy, duplicate, remove, reset_opacity, split


def make(n=6):
    g = torch.Generator().manual_seed(0)
    model = GaussianModel.random_in_sphere(n, 1.0, sh_degree=1, generator=g)
    opts = {k: torch.optim.Adam([p], lr=1e-2) for k, p in model.params.items()}
    # one step so every optimiser has moments
    loss = sum((p**2).sum() for p in model.params.values())
    loss.backward()
    for o in opts.values():
        o.step()
        o.zero_grad()
    return model, opts


def moments(opts, name):
    p = opts[name].param_groups[0]["params"][0]
    return opts[name].state[p]["exp_avg"]


def test_duplicate_and_remove_keep_state_rows_aligned():
    model, opts = make()
    before = model.params["means"].detach().clone()
    m_before = moments(opts, "means").clone()
    duplicate(model, opts, torch.tensor([False, True, False, False, True, False]))
    assert len(model) == 8
    assert torch.equal(model.params["means"][6:], before[[1, 4]])
    assert torch.equal(moments(opts, "means")[:6], m_before)
    assert float(moments(opts, "means")[6:].abs().max()) == 0.0
    # the optimiser now holds exactly the model's tensors
    for name, p in model.params.items():
        assert opts[name].param_groups[0]["params"][0] is p
    remove(model, opts, torch.tensor([True] + [False] * 7))
    assert len(model) == 7
    assert torch.equal(model.params["means"][:5], before[1:6])
    assert torch.equal(moments(opts, "means")[:5], m_before[1:6])


def test_split_samples_two_smaller_gaussians_from_the_parent():
    model, opts = make()
    ls = model.params["log_scales"].detach().clone()
    mask = torch.zeros(6, dtype=torch.bool)
    mask[2] = True
    split(model, opts, mask, torch.Generator().manual_seed(1))
    assert len(model) == 7
    assert torch.allclose(model.params["log_scales"][-2:], (ls[2] - math.log(1.6)).expand(2, 3))
    assert torch.equal(model.params["log_scales"][:5], ls[[0, 1, 3, 4, 5]])


def test_reset_opacity_clamps_and_clears_moments():
    model, opts = make()
    reset_opacity(model, opts, 0.01)
    assert float(torch.sigmoid(model.params["opacity_logits"].detach()).max()) <= 0.01 + 1e-7
    assert float(moments(opts, "opacity_logits").abs().max()) == 0.0


def test_strategy_grows_high_gradient_gaussians_and_prunes_transparent_ones():
    model, opts = make(4)
    with torch.no_grad():
        model.params["opacity_logits"][:] = torch.tensor([2.0, 2.0, 2.0, -8.0])  # the last is ~0.0003 opaque
        model.params["log_scales"][:] = math.log(0.001)  # small: clone, not split
    strat = DensifyStrategy(DensifyConfig(refine_start=0, refine_every=1, reset_opacity_every=0, grow_grad2d=0.01), scene_extent=1.0)
    means2d = torch.zeros(1, 4, 2, requires_grad=True)
    (means2d * torch.tensor([[[1.0], [0.0], [0.0], [0.0]]]) * 0.1).sum().backward()  # only Gaussian 0 moves the loss
    info = {"means2d": means2d, "radii": torch.ones(1, 4, 2, dtype=torch.int32), "width": 2, "height": 2, "n_cameras": 1}
    report = strat.step_post_backward(model, opts, step=1, info=info)
    assert report["cloned"] == 1 and report["split"] == 0 and report["pruned"] == 1
    assert len(model) == 4  # 4 + 1 clone - 1 pruned
    assert torch.allclose(model.params["means"][-1], model.params["means"][0])
