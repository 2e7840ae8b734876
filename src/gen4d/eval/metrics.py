"""Image metrics in pure PyTorch (run on whatever device the images are on).

Images are channel-last floats, ``[..., H, W, C]`` (usually C = 3, values in ``[0, data_range]``). Every
metric returns **one value per image**: a tensor with the leading shape ``[...]`` (a 0-d tensor for a single
``[H, W, C]`` image); take ``.mean()`` for a dataset average.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["psnr", "ssim", "gaussian_window_1d"]


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim < 3:
        raise ValueError(f"images must be [..., H, W, C], got {tuple(pred.shape)}")


def _working_dtype(x: Tensor) -> torch.dtype:
    # Half precision loses too much in the variance terms (E[x^2] - E[x]^2); compute in at least float32.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB: ``10 * log10(data_range^2 / MSE)``.

    pred, target: ``[..., H, W, C]``. Returns ``[...]``; identical images give ``inf``.
    """
    _check_pair(pred, target)
    dtype = _working_dtype(pred)
    diff = pred.to(dtype) - target.to(dtype)
    mse = diff.square().mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(data_range**2 / mse)


def gaussian_window_1d(size: int = 11, sigma: float = 1.5, *, dtype=torch.float32, device=None) -> Tensor:
    """Normalised 1D Gaussian taps ``[size]`` centred on the middle tap (the 2D window is its outer product)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).to(dtype=dtype, device=device)


def _band_matrix(taps: Tensor, n: int) -> Tensor:
    """``[n, n - k + 1]`` matrix M with ``(x @ M)[j] = sum_i taps[i] x[j + i]`` (a valid 1D correlation)."""
    k = taps.shape[0]
    out = n - k + 1
    rows = torch.arange(out, device=taps.device)[None, :] + torch.arange(k, device=taps.device)[:, None]  # [k, out]
    m = torch.zeros(n, out, dtype=taps.dtype, device=taps.device)
    m[rows, torch.arange(out, device=taps.device).expand(k, out)] = taps[:, None].expand(k, out)
    return m


def ssim(
    pred: Tensor,
    target: Tensor,
    data_range: float = 1.0,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity (Wang et al. 2004) per image.

    Local statistics use a ``window_size x window_size`` Gaussian window (default 11, sigma 1.5) with population
    (not sample) covariance; the SSIM map is averaged over the **valid** region only (positions where the whole
    window lies inside the image) and over channels. This matches
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=data_range, channel_axis=-1)``.

    pred, target: ``[..., H, W, C]`` with H, W >= window_size. Returns ``[...]``.
    """
    _check_pair(pred, target)
    *lead, h, w, c = pred.shape
    if h < window_size or w < window_size:
        raise ValueError(f"images of {h}x{w} are smaller than the {window_size}x{window_size} SSIM window")
    dtype = _working_dtype(pred)

    # [..., H, W, C] -> [B*C, 1, H, W]: every channel is filtered independently with the same window.
    def to_planes(x: Tensor) -> Tensor:
        return x.to(dtype).reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(-1, 1, h, w)

    x, y = to_planes(pred), to_planes(target)
    g = gaussian_window_1d(window_size, sigma, dtype=dtype, device=pred.device)
    band_w = _band_matrix(g, w)  # [W, W - size + 1]
    band_h = _band_matrix(g, h)

    def blur(img: Tensor) -> Tensor:
        # Separable and without padding, so the output covers exactly the valid region. Written as two matrix
        # products with banded matrices: the same sums as a convolution, and far faster to differentiate on the
        # CPU than a 1-channel conv2d.
        return band_h.T @ (img @ band_w)

    if y.requires_grad or not x.requires_grad:  # one batched filtering pass for the five local moments
        mu_x, mu_y, e_xx, e_yy, e_xy = blur(torch.cat([x, y, x * x, y * y, x * y], dim=0)).chunk(5, dim=0)
    else:  # a loss against a fixed target: the target's two moments need no backward pass
        mu_x, e_xx, e_xy = blur(torch.cat([x, x * x, x * y], dim=0)).chunk(3, dim=0)
        with torch.no_grad():
            mu_y, e_yy = blur(torch.cat([y, y * y], dim=0)).chunk(2, dim=0)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    ssim_map = num / den  # [B*C, 1, H', W']
    per_image = ssim_map.reshape(-1, c, ssim_map.shape[-2] * ssim_map.shape[-1]).mean(dim=(-2, -1))
    return per_image.reshape(lead)

