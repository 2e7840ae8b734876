import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from gen4d.eval.metrics import psnr, ssim


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(
        structural_similarity(
            a.numpy(), b.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
            channel_axis=-1,
        )
    )


def _structured(h: int, w: int) -> torch.Tensor:
    """A smooth gradient with a bright square, a ring and stripes: edges at several scales."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h, dtype=torch.float64), torch.linspace(0, 1, w, dtype=torch.float64), indexing="ij")
    r = 0.5 * xx + 0.3 * yy
    g = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.09).double() * 0.8 + 0.1
    b = 0.5 + 0.5 * torch.sin(2 * math.pi * 6 * xx)
    img = torch.stack([r, g, b], -1)
    img[h // 4 : h // 2, w // 4 : w // 2] = 0.95
    return img.clamp(0, 1)


def test_psnr_constant_error_is_20db():
    target = torch.rand(2, 16, 20, 3) * 0.8
    pred = target + 0.1  # MSE = 0.01 -> -10 log10(0.01) = 20 dB
    out = psnr(pred, target)
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.full((2,), 20.0), atol=1e-4, rtol=0)


def test_psnr_matches_formula_per_image_and_data_range():
    target = torch.rand(3, 8, 9, 3, dtype=torch.float64)
    pred = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    mse = ((pred - target) ** 2).reshape(3, -1).mean(-1)
    torch.testing.assert_close(psnr(pred, target), -10 * torch.log10(mse))
    # data_range scales the peak: 255-range images of the same error have the same PSNR.
    torch.testing.assert_close(psnr(pred * 255, target * 255, data_range=255.0), -10 * torch.log10(mse))
    # A single [H, W, C] image gives a 0-d tensor.
    assert psnr(pred[0], target[0]).shape == ()


@pytest.mark.parametrize("case", ["random", "noisy_structured", "shifted_structured", "contrast"])
def test_ssim_matches_skimage(case):
    g = torch.Generator().manual_seed(1)
    if case == "random":
        a = torch.rand(32, 40, 3, generator=g, dtype=torch.float64)
        b = torch.rand(32, 40, 3, generator=g, dtype=torch.float64)
    elif case == "noisy_structured":
        a = _structured(48, 37)
        b = (a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    elif case == "shifted_structured":
        a = _structured(40, 40)
        b = torch.roll(a, shifts=(2, -3), dims=(0, 1))
    else:
        a = _structured(30, 50)
        b = 0.6 * a + 0.3
    expected = _skimage_ssim(a, b)
    got = ssim(a, b)
    assert got.shape == ()
    assert abs(float(got) - expected) < 1e-4, (float(got), expected)
    # float32 inputs agree too (the tolerance the spec asks for).
    assert abs(float(ssim(a.float(), b.float())) - expected) < 1e-4


def test_ssim_batch_is_per_image():
    a = torch.stack([_structured(24, 24), torch.rand(24, 24, 3, dtype=torch.float64)])
    b = (a + 0.05 * torch.randn_like(a)).clamp(0, 1)
    out = ssim(a, b)
    assert out.shape == (2,)
    for i in range(2):
        assert abs(float(out[i]) - _skimage_ssim(a[i], b[i])) < 1e-4
    # Arbitrary leading dims are kept.
    assert ssim(a.reshape(1, 2, 24, 24, 3), b.reshape(1, 2, 24, 24, 3)).shape == (1, 2)


def test_ssim_of_identical_images_is_one():
    for x in (torch.rand(2, 20, 20, 3), _structured(16, 16).float(), torch.zeros(12, 12, 3)):
        torch.testing.assert_close(ssim(x, x), torch.ones(x.shape[:-3]), atol=1e-6, rtol=0)


def test_ssim_rejects_images_smaller_than_window():
    with pytest.raises(ValueError):
        ssim(torch.rand(10, 20, 3), torch.rand(10, 20, 3))


def test_ssim_is_differentiable():
    a = torch.rand(16, 16, 3, requires_grad=True)
    b = torch.rand(16, 16, 3)
    (1 - ssim(a, b)).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_ssim_gradient_against_a_fixed_target_equals_the_five_moment_pass():
    # Against a target without gradient the target's moments are filtered without a backward pass: the value and
    # the prediction's gradient equal those of the one-pass computation (a target that requires grad), and both
    # match a finite difference.
    g = torch.Generator().manual_seed(3)
    a0 = torch.rand(2, 20, 18, 3, generator=g, dtype=torch.float64)
    b0 = torch.rand(2, 20, 18, 3, generator=g, dtype=torch.float64)
    grads, values = [], []
    for target_grad in (False, True):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_(target_grad)
        value = ssim(a, b).sum()
        value.backward()
        grads.append(a.grad)
        values.append(value.detach())
    torch.testing.assert_close(values[0], values[1], atol=1e-12, rtol=0)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=0)
    bump = torch.zeros_like(a0)
    bump[1, 7, 9, 2] = 1e-6
    numeric = (ssim(a0 + bump, b0).sum() - ssim(a0 - bump, b0).sum()) / 2e-6
    assert float(grads[0][1, 7, 9, 2]) == pytest.approx(float(numeric), rel=1e-5)


def test_inputs_are_not_modified():
    # ssim/psnr must not modify their inputs.
    a = torch.rand(12, 12, 3)
    b = torch.rand(12, 12, 3)
    a0, b0 = a.clone(), b.clone()
    ssim(a, b), psnr(a, b)
    assert torch.equal(a, a0) and torch.equal(b, b0)
    assert np.isfinite(float(ssim(a, b)))
