"""Stable Diffusion 2.1 (base) text-conditioned score distillation (DreamFusion SDS on the SD latents).

``StableDiffusionGuidance(model="sd21")`` loads ``scheduler/ unet/ vae/`` of a diffusers pipeline from a registry
name, Hub id or local folder (the text encoder is loaded by :class:`~gen4d.guidance.prompts.PromptEncoder` only
when a prompt is not in its cache). The networks are frozen; the only backward pass runs through the VAE encoder,
from the latents to the rendered images.

Call (the interface of every prior, :mod:`gen4d.guidance.base`)::

    emb = guidance.encode_prompt("a corgi", negative_prompt="")                  # PromptEmbeddings
    cond = Conditioning(prompt=emb, azimuth_deg=az, elevation_deg=el)            # angles: view-dependent prompts
    out = guidance(images, cond, step, generator)                                # images [B, 3, H, W] in [0, 1]
    out["loss_sds"].backward()

Memory options (``GuidanceConfig``): ``precision`` (fp16/bf16 weights and activations of the frozen networks;
the loss is computed in fp32), ``attention_slicing`` (``unet.set_attention_slice("auto")``), ``vae_slicing``
(encode one image at a time) and ``cpu_offload`` (networks live on the CPU and visit the execution device only
while they run; the activations kept for the backward pass through the VAE encoder stay on the device until that
backward has run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn

from ..models.registry import load_pretrained
from .base import Conditioning, DiffusionGuidance, GuidanceConfig, make_config
from .prompts import PromptEncoder, TextConditioned
from .subject_lora import load_subject_lora
from .vae import decode_latents, encode_latents, vae_downsampling


@dataclass
class StableDiffusionConfig(GuidanceConfig):
    """SD 2.1 SDS settings (DreamFusion / threestudio defaults: CFG 100, t in [0.02, 0.98], w(t) = 1 - alpha_bar)."""

    model: str = "sd21"
    guidance_scale: float = 100.0
    sample_latents: bool = True
    """Encode with a sample of the VAE posterior (True) or its mean (False)."""
    view_dependent: bool = True
    """Append ``, front/side/back/overhead view`` to the prompt according to the camera (see ``prompts.py``)."""
    prompt_cache: str | None = None
    """Folder of the text-embedding cache (None: ``$GEN4D_CACHE/prompts`` or ``~/.cache/gen4d/prompts``)."""
    latent_renders: bool = False
    """The renders are already SD latents ``[B, 4, h, w]`` (a latent-space representation, as in latent NeRFs)."""
    lora: str = ""
    """A DreamBooth LoRA of a personalised subject (file or folder, either layout: :mod:`~gen4d.guidance.subject_lora`)
    loaded into the U-Net; empty: none."""


class StableDiffusionGuidance(TextConditioned, DiffusionGuidance):
    """SDS with Stable Diffusion: ``guidance(images, Conditioning(prompt=...), step, generator) -> {"loss_sds"}``."""

    config_class = StableDiffusionConfig
    offload_plan = {"unet": ("forward",), "vae": ("encode", "decode")}

    def __init__(self, config: StableDiffusionConfig | None = None, device: str | torch.device | None = None, **overrides):
        """``config`` and/or its fields as keywords (``StableDiffusionGuidance(model=folder, guidance_scale=7.5)``)."""
        config = make_config(self.config_class, config, overrides)
        # The scheduler first: it is tiny, so missing weights fail fast with the registry's clear error.
        scheduler = load_pretrained(DDPMScheduler, config.model, subfolder="scheduler")
        super().__init__(config, scheduler.alphas_cumprod)
        self.scheduler_config = dict(scheduler.config)
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type != "epsilon":
            raise ValueError(f"{config.model}: prediction type {self.prediction_type!r} is not supported (epsilon only)")
        self.unet: nn.Module = load_pretrained(UNet2DConditionModel, config.model, subfolder="unet", torch_dtype=self.dtype)
        self.vae: nn.Module = load_pretrained(AutoencoderKL, config.model, subfolder="vae", torch_dtype=self.dtype)
        if config.lora:
            load_subject_lora(self.unet, config.lora)
        self.freeze(self.unet, self.vae)
        if config.attention_slicing:
            self.unet.set_attention_slice("auto")
        self.resolution = int(self.unet.config.sample_size) * vae_downsampling(self.vae)
        self.place(device)

    def make_prompt_encoder(self) -> PromptEncoder:
        return PromptEncoder(self.config.model, cache_dir=self.config.prompt_cache, device=self.device)

    # -- networks -------------------------------------------------------------------------------------------
    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> scaled latents ``[B, 4, h, w]`` (fp32); differentiable w.r.t. images."""
        x = images.to(self.device)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return encode_latents(self.vae, x, sample=self.config.sample_latents, generator=generator,
                              chunk=1 if self.config.vae_slicing else 0)

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Scaled latents -> images ``[B, 3, H, W]`` in [0, 1] (for previews; no gradient)."""
        return decode_latents(self.vae, latents.to(self.device), chunk=1 if self.config.vae_slicing else 0)

    def unet_noise(self, x_t: Tensor, t: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        """The UNet's noise prediction in fp32 (no ``no_grad`` here: callers choose)."""
        return self.unet(
            x_t.to(self.device, self.dtype), t.to(self.device), encoder_hidden_states=encoder_hidden_states.to(self.device, self.dtype),
        ).sample.float()

    # -- the interface --------------------------------------------------------------------------------------
    def encode_renders(self, renders: Tensor, cond: Conditioning, generator: torch.Generator | None) -> Tensor:
        """``renders`` ``[B, 3, H, W]`` in [0, 1], or with ``latent_renders`` already latents ``[B, 4, h, w]``."""
        return renders.float().to(self.device) if self.config.latent_renders else self.encode_images(renders, generator)

    def text_embeddings(self, cond: Conditioning, batch: int) -> tuple[Tensor, Tensor]:
        cond.require("prompt", prior=type(self).__name__)
        return cond.prompt.get(batch, cond.azimuth_deg, cond.elevation_deg)

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        """``(eps_cond, eps_uncond)`` from one batched UNet call on ``[cond; uncond]``."""
        text, uncond = self.text_embeddings(cond, x_t.shape[0])
        eps = self.unet_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text, uncond]))
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_cond, eps_uncond
