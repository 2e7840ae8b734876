"""SDS maths against formulas."""

import pytest
import torch

from gen4d.guidance.sds import TimestepSchedule, classifier_free_guidance, predict_x0, sds_loss, x0_loss


def test_cfg_formula():
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    assert torch.allclose(classifier_free_guidance(u, c, 7.5), torch.tensor([1.0 + 7.5 * 2.0, -2.0 + 7.5 * 2.5]))
    assert torch.equal(classifier_free_guidance(u, c, 1.0), c)


def test_timestep_annealing_is_linear_between_steps():
    s = TimestepSchedule(min_start=0.02, max_start=0.98, min_end=0.02, max_end=0.5, anneal_start=100, anneal_end=300)
    assert s.bounds(0) == pytest.approx((0.02, 0.98))
    assert s.bounds(100) == pytest.approx((0.02, 0.98))
    assert s.bounds(200) == pytest.approx((0.02, 0.74))
    assert s.bounds(300) == pytest.approx((0.02, 0.5))
    assert s.bounds(10_000) == pytest.approx((0.02, 0.5))
    assert s.integer_bounds(200, 1000) == (20, 740)
    t = s.sample(300, 1000, 4096, torch.Generator().manual_seed(0))
    assert int(t.min()) >= 20 and int(t.max()) <= 500 and int(t.max()) >= 490


def test_sds_gradient_is_weighted_noise_residual():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g, requires_grad=True)
    eps, eps_hat = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    a = torch.tensor([0.9, 0.5, 0.1])
    loss, _ = sds_loss(x, eps_hat, eps, a, "sds")
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.allclose(grad, (1 - a).reshape(3, 1, 1, 1) * (eps_hat - eps), atol=1e-6)
    loss_u, _ = sds_loss(x, eps_hat, eps, a, "uniform")
    (grad_u,) = torch.autograd.grad(loss_u, x)
    assert torch.allclose(grad_u, eps_hat - eps, atol=1e-6)


def test_x0_target_equals_sds_with_its_weight():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    eps, eps_hat = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    a = torch.tensor([0.8, 0.3], dtype=torch.float64)
    x_t = a.sqrt().reshape(2, 1, 1, 1) * x.detach() + (1 - a).sqrt().reshape(2, 1, 1, 1) * eps
    assert torch.allclose(predict_x0(x_t, eps, a), x.detach())  # the true noise recovers x exactly
    (grad,) = torch.autograd.grad(x0_loss(x, x_t, eps_hat, a), x)
    w = ((1 - a) / a).sqrt().reshape(2, 1, 1, 1)
    assert torch.allclose(grad, w * (eps_hat - eps), atol=1e-10)


def test_std_rescale_matches_conditional_std_per_group():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    x_t = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    eps_hat = 3 * torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    eps_cond = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    a = torch.full((4,), 0.5, dtype=torch.float64)
    (grad,) = torch.autograd.grad(x0_loss(x, x_t, eps_hat, a, eps_cond=eps_cond, std_rescale=1.0, group=2), x)
    target = x.detach() - grad
    x0_cond = predict_x0(x_t, eps_cond, a)
    for grp in (slice(0, 2), slice(2, 4)):
        assert float(target[grp].std()) == pytest.approx(float(x0_cond[grp].std()), rel=1e-9)


def test_offload_between_calls_moves_the_module_only_while_it_runs():
    from gen4d.guidance.base import offload_between_calls

    class Recorder(torch.nn.Linear):
        def __init__(self):
            super().__init__(2, 2)
            self.moves = []

        def to(self, *args, **kwargs):
            self.moves.append(str(args[0]))
            return super().to("cpu")  # the only device here; the order of requests is what is checked

        def encode(self, x, fail=False):
            if fail:
                raise RuntimeError("boom")
            return self(x)

    m = Recorder()
    offload_between_calls(m, "cuda:0", ("forward", "encode"))
    assert m.moves == ["cpu"]
    m.encode(torch.ones(1, 2))
    # one move in and one out, although encode calls the (also wrapped) forward inside
    assert m.moves == ["cpu", "cuda:0", "cpu"]
    with pytest.raises(RuntimeError):
        m.encode(torch.ones(1, 2), fail=True)
    assert m.moves[-1] == "cpu"
