"""Score distillation sampling (SDS): the maths shared by every diffusion prior.

Notation (DreamFusion, Poole et al. 2022; DDPM, Ho et al. 2020)
--------------------------------------------------------------
    x        latents of the rendered images (VAE-encoded, or the pixels for pixel-space models)
    t        diffusion timestep, alpha_bar_t the cumulative product of (1 - beta)
    eps      Gaussian noise, x_t = sqrt(alpha_bar_t) x + sqrt(1 - alpha_bar_t) eps
    eps_hat  the model's noise prediction with classifier-free guidance (Ho & Salimans 2022):
             eps_hat = eps_u + s (eps_c - eps_u)
    w(t)     weighting; DreamFusion uses w(t) = sigma_t^2 = 1 - alpha_bar_t

SDS gradient:  grad_x L_SDS = w(t) (eps_hat - eps)   -- the U-Net Jacobian is dropped, so **no backward runs
through the U-Net**. It is applied with the stop-gradient target trick:

    target = stopgrad(x - g),   L = 1/2 || x - target ||^2   =>   dL/dx = g

The variant that regresses the denoised latent instead (same trick, different target), i.e. the latent-space
denoised target of HiFA (Zhu et al. 2023) and MVDream's x0 reconstruction:
    * ``x0``: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t), optionally
      rescaled so its per-sample std matches the prediction without CFG (``std_rescale``, MVDream uses 0.5);
      L = 1/2 || x - stopgrad(x0_hat) ||^2. Since x - x0_hat = sqrt((1 - a) / a) (eps_hat - eps), this is SDS
      with w(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t).
    * ``hifa``: HiFA's multi-step target (Dream-in-4D's ``use_hifa``, ``num_hifa_steps = n``): from x_t, n DDIM steps
      with eta = 1 (each ``T / n`` timesteps down, the last to ``alpha_bar = alpha_bar_0``) with the guided prediction
      give x_hat; L = 1/2 || x - stopgrad(x_hat) ||^2. With n = 1 this is the x0 target (up to the last step's
      alpha_bar_0 < 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Weighting = Literal["sds", "uniform", "x0", "hifa"]


def classifier_free_guidance(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """``eps_u + s (eps_c - eps_u)``; ``scale = 1`` gives the conditional prediction."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


@dataclass
class TimestepSchedule:
    """Range of diffusion timesteps sampled for SDS, as fractions of the training steps, annealed linearly.

    At optimisation step ``s``, the range is ``[min_start, max_start]`` before ``anneal_start``, moves linearly to
    ``[min_end, max_end]`` between ``anneal_start`` and ``anneal_end`` and stays there after (the seeds' configs
    write this as ``[start_step, start_value, end_value, end_step]``). Equal start and end values: no annealing.
    """

    min_start: float = 0.02
    """Lower bound of t / T before annealing."""
    max_start: float = 0.98
    """Upper bound of t / T before annealing."""
    min_end: float = 0.02
    """Lower bound after annealing."""
    max_end: float = 0.98
    """Upper bound after annealing."""
    anneal_start: int = 0
    """Optimisation step where annealing begins."""
    anneal_end: int = 0
    """Optimisation step where annealing ends (<= anneal_start: no annealing)."""
    deterministic: bool = False
    """DreamGaussian's schedule instead of sampling: one ``t = round((1 - r) T)`` for the whole batch, clipped to
    ``[int(min_start T), int(max_start T)]``, where ``r = min(1, (step + 1) / anneal_end)`` (DreamGaussian counts
    steps from 1: its last step has ``r = 1`` and the lowest ``t``)."""

    def bounds(self, step: int) -> tuple[float, float]:
        if self.anneal_end <= self.anneal_start:
            f = 0.0
        else:
            f = min(max((step - self.anneal_start) / (self.anneal_end - self.anneal_start), 0.0), 1.0)
        lo = self.min_start + f * (self.min_end - self.min_start)
        hi = self.max_start + f * (self.max_end - self.max_start)
        return lo, hi

    def integer_bounds(self, step: int, num_train_timesteps: int) -> tuple[int, int]:
        """Inclusive integer range ``[t_min, t_max]`` of timesteps at ``step``."""
        lo, hi = self.bounds(step)
        t_min = int(round(lo * num_train_timesteps))
        t_max = int(round(hi * num_train_timesteps))
        return max(0, t_min), min(num_train_timesteps - 1, max(t_min, t_max))

    def sample(self, step: int, num_train_timesteps: int, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """``[batch]`` int64 timesteps: uniform in the range at ``step``, or DreamGaussian's one (``deterministic``)."""
        if self.deterministic:
            r = min(1.0, (step + 1) / max(self.anneal_end, 1))
            lo, hi = int(num_train_timesteps * self.min_start), int(num_train_timesteps * self.max_start)
            t = min(max(round((1.0 - r) * num_train_timesteps), lo), hi)
            return torch.full((batch,), t, dtype=torch.long, device=device)
        t_min, t_max = self.integer_bounds(step, num_train_timesteps)
        return torch.randint(t_min, t_max + 1, (batch,), generator=generator).to(device)


def sds_weight(alphas_cumprod_t: Tensor, weighting: Weighting) -> Tensor:
    """w(t) for the noise-residual form: ``1 - alpha_bar_t`` (sds) or 1 (uniform)."""
    if weighting == "sds":
        return 1.0 - alphas_cumprod_t
    if weighting == "uniform":
        return torch.ones_like(alphas_cumprod_t)
    raise ValueError(f"weighting {weighting!r} has no noise-residual weight; use 'sds' or 'uniform'")


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like)


def stopgrad_target_loss(x: Tensor, grad: Tensor) -> Tensor:
    """``1/2 || x - stopgrad(x - grad) ||^2`` summed: its gradient w.r.t. ``x`` is exactly ``grad``."""
    target = (x - grad).detach()
    return 0.5 * ((x - target) ** 2).sum()


def sds_loss(x: Tensor, eps_hat: Tensor, eps: Tensor, alphas_cumprod_t: Tensor, weighting: Weighting = "sds") -> tuple[Tensor, Tensor]:
    """SDS loss on latents ``x [B, ...]`` whose gradient is ``w(t) (eps_hat - eps)``; returns (loss, grad)."""
    grad = _bcast(sds_weight(alphas_cumprod_t, weighting), x) * (eps_hat - eps)
    grad = torch.nan_to_num(grad.detach())
    return stopgrad_target_loss(x, grad), grad


def predict_x0(x_t: Tensor, eps_hat: Tensor, alphas_cumprod_t: Tensor) -> Tensor:
    """Denoised estimate ``(x_t - sqrt(1 - a) eps_hat) / sqrt(a)``."""
    a = _bcast(alphas_cumprod_t, x_t)
    return (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()


def x0_loss(
    x: Tensor,
    x_t: Tensor,
    eps_hat: Tensor,
    alphas_cumprod_t: Tensor,
    eps_cond: Tensor | None = None,
    std_rescale: float = 0.0,
    group: int = 1,
) -> Tensor:
    """Regress ``x`` onto the (stop-gradient) denoised estimate, MVDream style.

    std_rescale: blend factor r of the std-matched target ``x0 * std(x0_cond) / std(x0)`` (needs ``eps_cond``,
    the prediction without CFG); stds are taken per group of ``group`` consecutive samples (the views of one
    object for multi-view models).
    """
    x0 = predict_x0(x_t, eps_hat, alphas_cumprod_t)
    if std_rescale > 0:
        if eps_cond is None:
            raise ValueError("std_rescale needs eps_cond, the noise prediction without guidance")
        x0_cond = predict_x0(x_t, eps_cond, alphas_cumprod_t)
        B = x.shape[0]
        shape = (B // group, -1)
        factor = x0_cond.reshape(shape).std(dim=1) / x0.reshape(shape).std(dim=1).clamp_min(1e-8)
        factor = factor.repeat_interleave(group)
        x0 = std_rescale * (x0 * _bcast(factor, x0)) + (1 - std_rescale) * x0
    return stopgrad_target_loss(x, x - x0.detach())


def ddim_step(x_t: Tensor, eps: Tensor, alpha_t: Tensor, alpha_prev: Tensor, noise: Tensor, eta: float = 1.0) -> Tensor:
    """One DDIM step (Song et al. 2021, eq. 12) from ``x_t`` to the timestep with ``alpha_bar = alpha_prev``:

        x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t),   sigma^2 = eta^2 (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev)
        x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma noise
    """
    a_t, a_prev = _bcast(alpha_t, x_t), _bcast(alpha_prev, x_t)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    var = eta**2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    return a_prev.sqrt() * x0 + (1 - a_prev - var).clamp_min(0).sqrt() * eps + var.sqrt() * noise
