"""Variational score distillation (VSD, ProlificDreamer, Wang et al. 2023) with Stable Diffusion.

A LoRA (``peft``) is added to the **same** UNet, so no copy of the weights is made: with the adapter disabled the
UNet is the pretrained model, with it enabled it models the score of the current renderings. The gradient on the
latents is

    grad_x L_VSD = w(t) (eps_pretrained_cfg(x_t; y, t) - eps_lora(x_t; y, t))

i.e. the SDS step of :mod:`gen4d.guidance.base` with the LoRA's prediction as the baseline instead of the injected
noise. The LoRA is trained with the standard diffusion MSE ``|| eps_lora(x_t; y, t) - eps ||^2`` on **detached**
latents (:meth:`lora_loss`), with its own timesteps and noise, so the two losses touch disjoint parameters and may
be summed in one backward.

Differences from the paper: the LoRA is conditioned on the text only (ProlificDreamer also feeds the camera pose
through an extra embedding and drops it 10% of the time); that camera conditioning is not implemented.

``guidance(images, cond, step, generator)`` returns ``{"loss_vsd", "loss_lora"}``: ``loss_vsd`` moves the latents
only, ``loss_lora`` (when ``train_lora``) the LoRA parameters only. Put :meth:`lora_parameters` in an optimiser (the
paper uses AdamW, lr 1e-3 for the LoRA). With ``cpu_offload`` only the VAE is offloaded: the UNet stays on the
execution device because the LoRA's gradients need its weights there.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from peft import LoraConfig
from torch import Tensor, nn

from .base import Conditioning
from .sds import TimestepSchedule
from .stable_diffusion import StableDiffusionConfig, StableDiffusionGuidance

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_NAME = "vsd_lora"


@dataclass
class VSDConfig(StableDiffusionConfig):
    """ProlificDreamer defaults: CFG 7.5, LoRA rank 4 on the attention projections."""

    guidance_scale: float = 7.5
    lora_rank: int = 4
    lora_alpha: float = 4.0
    """LoRA scale is lora_alpha / lora_rank."""
    lora_targets: tuple[str, ...] = LORA_TARGETS
    lora_timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.0, 1.0, 0.0, 1.0))
    """Timestep range for training the LoRA (the whole schedule by default)."""
    train_lora: bool = True
    """Also return ``loss_lora`` on the same (detached) latents."""


class VariationalScoreDistillation(StableDiffusionGuidance):
    """SD guidance + a LoRA on the same UNet; ``guidance(images, cond, step)`` -> ``{"loss_vsd", "loss_lora"}``."""

    config_class = VSDConfig
    loss_name = "loss_vsd"
    offload_plan = {"vae": ("encode", "decode")}  # the UNet stays: the LoRA trains on it

    def __init__(self, config: VSDConfig | None = None, device: str | torch.device | None = None, **overrides):
        super().__init__(config, device=None, **overrides)
        if self.config.weighting not in ("sds", "uniform"):
            raise ValueError(f"VSD supports weighting 'sds' or 'uniform', not {self.config.weighting!r}")
        lora = LoraConfig(
            r=self.config.lora_rank,
            lora_alpha=self.config.lora_alpha,
            target_modules=list(self.config.lora_targets),
            init_lora_weights=True,  # B = 0: the LoRA UNet starts equal to the pretrained one
        )
        self.unet.add_adapter(lora, adapter_name=ADAPTER_NAME)
        for p in self.lora_parameters():
            p.data = p.data.float()  # trained in fp32 whatever the frozen weights' precision
            p.requires_grad_(True)
        self.place(device)

    @torch.no_grad()
    def reset_lora(self, generator: torch.Generator) -> None:
        """Draw the LoRA's starting weights from ``generator`` (peft's init: A Kaiming-uniform with a = sqrt(5), B = 0),
        so a run's LoRA does not depend on how much of the global random stream loading the models used."""
        for name, p in self.unet.named_parameters():
            if "lora_A" in name:
                bound = 1.0 / math.sqrt(p[0].numel())  # kaiming_uniform_(a=sqrt(5)): gain sqrt(1 / 3), bound gain * sqrt(3 / fan_in)
                p.copy_((torch.rand(p.shape, generator=generator) * 2.0 - 1.0).mul_(bound).to(p))
            elif "lora_B" in name:
                p.zero_()

    def lora_parameters(self) -> list[nn.Parameter]:
        """The trainable LoRA weights (for the LoRA's optimiser)."""
        return [p for n, p in self.unet.named_parameters() if "lora_" in n]

    @contextmanager
    def adapters_disabled(self):
        """The pretrained UNet (LoRA off) inside the block."""
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        """The pretrained UNet's ``(eps_cond, eps_uncond)`` (LoRA off)."""
        with self.adapters_disabled():
            return super().predict_noise(x_t, t, cond)

    def baseline_noise(self, x_t: Tensor, t: Tensor, cond: Conditioning, noise: Tensor) -> Tensor:
        """The LoRA UNet's text-conditioned prediction: the score of the current renderings."""
        text, _ = self.text_embeddings(cond, x_t.shape[0])
        return self.unet_noise(x_t, t, text)

    def lora_loss(self, latents: Tensor, text: Tensor, generator: torch.Generator | None = None,
                  t: Tensor | int | None = None, noise: Tensor | None = None) -> Tensor:
        """Diffusion MSE of the LoRA UNet on detached ``latents`` (gradient only into the LoRA weights)."""
        latents = latents.detach().float()
        B = latents.shape[0]
        if t is None:
            t = self.config.lora_timesteps.sample(0, self.num_train_timesteps, B, generator, self.alphas_cumprod.device)
        t, noise = self.draw(latents, 0, 1, generator, t, noise)
        x_t = self.add_noise(latents, noise, t)
        return F.mse_loss(self.unet_noise(x_t, t, text.detach()), noise)

    def extra_losses(self, x: Tensor, cond: Conditioning, generator: torch.Generator | None) -> dict[str, Tensor]:
        if not self.config.train_lora:
            return {}
        text, _ = self.text_embeddings(cond, x.shape[0])
        return {"loss_lora": self.lora_loss(x, text, generator=generator)}
