"""Variational score distillation (VSD, ProlificDreamer, Wang et al. 2023) with Stable Diffusion.

A LoRA (``peft``) is added to the **same** UNet, so no copy of the weights is made: with the adapter disabled the
UNet is the pretrained model, with it enabled it models the score of the current renderings. The gradient on the
latents is

    grad_x L_VSD = w(t) (eps_pretrained_cfg(x_t; y, t) - eps_lora(x_t; y, t))

(noise predictions without gradient; applied with the stop-gradient target trick). The LoRA is trained with the
standard diffusion MSE ``|| eps_lora(x_t; y, t) - eps ||^2`` on **detached** latents (:meth:`lora_loss`), with
its own timesteps and noise, so the two losses touch disjoint parameters and may be summed in one backward.

Differences from the paper: the LoRA is conditioned on the text only (ProlificDreamer also feeds the camera pose
through an extra embedding and drops it 10% of the time); that camera conditioning is not implemented.

``__call__`` returns ``{"loss_vsd", "loss_lora"}``: ``loss_vsd`` moves the latents only, ``loss_lora`` (when
``train_lora``) the LoRA parameters only; diagnostics (``grad_norm``, ``timesteps``) go to ``last_info`` as for SDS. Put :meth:`lora_parameters` in an optimiser (the paper
uses AdamW, lr 1e-3 for the LoRA). With ``cpu_offload`` only the VAE is offloaded: the UNet stays on the
execution device because the LoRA's gradients need its weights there.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .prompts import PromptEmbeddings
from .sds import TimestepSchedule, sds_weight, stopgrad_target_loss
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
    """``__call__`` also returns ``loss_lora`` on the same (detached) latents."""


class VariationalScoreDistillation(StableDiffusionGuidance):
    """SD guidance + a LoRA on the same UNet; ``__call__`` -> ``{"loss_vsd", "loss_lora", ...}``."""

    config_class = VSDConfig

    def __init__(self, config: VSDConfig | None = None, device: str | torch.device = "cpu", **overrides):
        super().__init__(config, device=device, **overrides)
        if self.config.weighting not in ("sds", "uniform"):
            raise ValueError(f"VSD supports weighting 'sds' or 'uniform', not {self.config.weighting!r}")
        from peft import LoraConfig

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

    def _offloads(self, module: nn.Module) -> bool:
        return module is not self.unet and super()._offloads(module)

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

    def predict_noise_pretrained_cfg(self, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor) -> tuple[Tensor, Tensor]:
        with self.adapters_disabled():
            return self.predict_noise_cfg(x_t, t, cond, uncond)

    def predict_noise_lora(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """LoRA UNet's prediction (adapter enabled), text-conditioned; differentiable w.r.t. the LoRA weights."""
        return self.predict_noise(x_t, t, cond)

    def lora_loss(
        self,
        latents: Tensor,
        cond: Tensor,
        generator: torch.Generator | None = None,
        t: Tensor | int | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Diffusion MSE of the LoRA UNet on detached ``latents`` (gradient only into the LoRA weights)."""
        latents = latents.detach().float()
        B = latents.shape[0]
        if t is None:
            t = self.config.lora_timesteps.sample(0, self.num_train_timesteps, B, generator, self.alphas_cumprod.device)
        t, noise = self._timesteps_and_noise(latents, 0, generator, t, noise)
        x_t = self.add_noise(latents, noise, t)
        eps = self.predict_noise_lora(x_t, t, cond.detach())
        return F.mse_loss(eps, noise)

    def vsd_latents(
        self,
        latents: Tensor,
        cond: Tensor,
        uncond: Tensor,
        step: int = 0,
        generator: torch.Generator | None = None,
        t: Tensor | int | None = None,
        noise: Tensor | None = None,
        return_info: bool = False,
    ):
        """VSD on latents; ``t``/``noise`` fix the timestep and noise as in :meth:`sds_latents`."""
        latents = latents.float()
        t, noise = self._timesteps_and_noise(latents, step, generator, t, noise)
        with torch.no_grad():
            x_t = self.add_noise(latents.detach(), noise, t)
            eps_cond, eps_uncond = self.predict_noise_pretrained_cfg(x_t, t, cond, uncond)
            eps_pretrained = self.guide(eps_uncond, eps_cond, self.config.guidance_scale)
            eps_lora = self.predict_noise_lora(x_t, t, cond)
            w = sds_weight(self.alphas_cumprod[t], self.config.weighting).reshape(-1, *([1] * (latents.dim() - 1)))
            grad = torch.nan_to_num(w * (eps_pretrained - eps_lora))
        loss = stopgrad_target_loss(latents, grad)
        self.last_info = {"grad_norm": grad.norm(), "timesteps": t.detach()}
        losses = {"loss_vsd": loss}
        return (losses, self.last_info) if return_info else losses

    def forward(
        self,
        images: Tensor,
        prompt_embeddings: PromptEmbeddings,
        step: int,
        azimuth_deg=None,
        elevation_deg=None,
        generator: torch.Generator | None = None,
        t: Tensor | int | None = None,
        noise: Tensor | None = None,
        rgb_as_latents: bool = False,
        return_info: bool = False,
    ):
        """VSD on rendered ``images [B, 3, H, W]`` in [0, 1]; arguments as in :meth:`StableDiffusionGuidance.forward`."""
        latents = images.float() if rgb_as_latents else self.encode_images(images, generator)
        cond, uncond = prompt_embeddings.get(latents.shape[0], azimuth_deg, elevation_deg)
        out = self.vsd_latents(latents, cond, uncond, step, generator=generator, t=t, noise=noise)
        if self.config.train_lora:
            out["loss_lora"] = self.lora_loss(latents, cond, generator=generator)
        return (out, self.last_info) if return_info else out
