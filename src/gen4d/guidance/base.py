"""The common interface of diffusion priors used for score distillation.

A prior is a ``DiffusionGuidance``: frozen pretrained networks, a noise schedule, and a ``__call__`` that takes
rendered images ``[B, 3, H, W]`` in [0, 1] (or videos ``[B, T, 3, H, W]``), the conditioning and the optimisation
step, and returns **named losses** (``loss_sds``, ``loss_sds_video``, ...) whose gradient w.r.t. the latents is
``w(t) (eps_hat - eps)`` (see ``sds.py``). No backward pass ever runs through a U-Net: noise predictions are made
under ``torch.no_grad`` and enter the loss only through the stop-gradient target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .sds import TimestepSchedule, Weighting, classifier_free_guidance, sds_loss, x0_loss

Precision = Literal["fp32", "fp16", "bf16"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class GuidanceConfig:
    """Settings shared by every prior."""

    model: str = ""
    """Registry name (see ``registry.REGISTRY``), Hub id or local folder."""
    guidance_scale: float = 100.0
    """Classifier-free guidance scale s."""
    timesteps: TimestepSchedule = field(default_factory=TimestepSchedule)
    """Range of sampled timesteps and its annealing."""
    weighting: Weighting = "sds"
    """sds: w(t) = 1 - alpha_bar_t; uniform: w = 1; x0: regress the denoised latent (MVDream)."""
    std_rescale: float = 0.0
    """With weighting x0: blend of the std-matched denoised target (MVDream uses 0.5)."""
    precision: Precision = "fp32"
    """Weights and activations of the frozen networks: fp32 | fp16 | bf16."""
    attention_slicing: bool = False
    """Compute attention in slices (lower peak memory, a little slower)."""
    vae_slicing: bool = False
    """Encode / decode one image at a time."""
    cpu_offload: bool = False
    """Keep the networks on the CPU and move each to the GPU only while it runs (one large model at a time)."""


def offload_between_calls(module: nn.Module, device: torch.device | str, methods: tuple[str, ...] = ("forward",)) -> None:
    """Keep ``module`` on the CPU and move it to ``device`` only while one of ``methods`` runs.

    With every large network of a prior wrapped this way, at most one of them occupies the accelerator at a time
    (at the cost of a host-device copy per call). Tensors saved for a backward pass keep their device copies
    alive until that backward, so gradients through e.g. a VAE encoder still work.
    """
    module.to("cpu")
    depth = [0]  # wrapped methods may call each other (encode -> forward): move only at the outermost call

    for name in methods:
        original = getattr(module, name)

        def run_on_device(*args, _original=original, **kwargs):
            if depth[0] == 0:
                module.to(device)
            depth[0] += 1
            try:
                return _original(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    module.to("cpu")

        setattr(module, name, run_on_device)


class DiffusionGuidance(nn.Module):
    """Base class: holds ``alphas_cumprod`` and the SDS bookkeeping; subclasses load networks and predict noise."""

    def __init__(self, config: GuidanceConfig, alphas_cumprod: Tensor):
        super().__init__()
        self.config = config
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone(), persistent=False)

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.config.precision]

    def sample_timesteps(self, step: int, batch: int, generator: torch.Generator | None = None) -> Tensor:
        return self.config.timesteps.sample(step, self.num_train_timesteps, batch, generator, self.alphas_cumprod.device)

    def add_noise(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``x_t = sqrt(a_t) x + sqrt(1 - a_t) eps``."""
        a = self.alphas_cumprod[t].reshape(-1, *([1] * (x.dim() - 1))).to(x)
        return a.sqrt() * x + (1 - a).sqrt() * eps

    @staticmethod
    def guide(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
        return classifier_free_guidance(eps_uncond, eps_cond, scale)

    def distillation_loss(
        self,
        x: Tensor,
        x_t: Tensor,
        eps: Tensor,
        eps_hat: Tensor,
        t: Tensor,
        eps_cond: Tensor | None = None,
        group: int = 1,
    ) -> Tensor:
        """The configured SDS variant on latents ``x`` (gradient flows only into ``x``)."""
        a = self.alphas_cumprod[t]
        if self.config.weighting in ("sds", "uniform"):
            return sds_loss(x, eps_hat, eps, a, self.config.weighting)[0]
        return x0_loss(x, x_t, eps_hat, a, eps_cond=eps_cond, std_rescale=self.config.std_rescale, group=group)

    offload_plan: dict[str, tuple[str, ...]] = {}
    """Large sub-networks and the methods that run them, e.g. ``{"unet": ("forward",), "vae": ("encode", "decode")}``."""

    def place(self, device: torch.device | str) -> "DiffusionGuidance":
        """Move to ``device``. With ``config.cpu_offload`` on an accelerator, the networks of ``offload_plan`` then
        stay on the CPU and visit the device only while they run (:func:`offload_between_calls`)."""
        self.to(device)
        if self.config.cpu_offload and torch.device(device).type != "cpu":
            for name, methods in self.offload_plan.items():
                module = getattr(self, name, None)
                if module is not None:
                    offload_between_calls(module, device, methods)
        return self

    @staticmethod
    def freeze(*modules: nn.Module) -> None:
        for m in modules:
            if m is not None:
                m.eval()
                m.requires_grad_(False)
