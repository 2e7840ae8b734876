"""Stable Diffusion 2.1 (base) text-conditioned score distillation (DreamFusion SDS on the SD latents).

``StableDiffusionGuidance(model="sd21")`` loads ``scheduler/ unet/ vae/`` of a diffusers pipeline from a registry
name, Hub id or local folder (the text encoder is loaded by :class:`PromptEncoder` only when a prompt is not in its
cache). The networks are frozen; the only backward pass runs through the VAE encoder, from the latents to the
rendered images.

Call::

    emb = guidance.encode_prompt("a corgi", negative_prompt="")           # PromptEmbeddings
    out = guidance(images, emb, step, azimuth_deg=az, elevation_deg=el)  # images [B, 3, H, W] in [0, 1]
    out["loss_sds"].backward()

The returned dict holds only losses, like every prior: ``{"loss_sds": loss}`` (gradient ``w(t) (eps_hat - eps)``
w.r.t. the latents, summed over the batch as in :mod:`gen4d.guidance.sds`). Detached diagnostics go to a second
dict, ``guidance.last_info`` (also returned as ``(losses, info)`` with ``return_info=True``): ``grad_norm`` (L2
norm of that gradient over the whole batch) and ``timesteps`` (``[B]`` int64).

Memory options (``GuidanceConfig``): ``precision`` (fp16/bf16 weights and activations of the frozen networks;
the loss is computed in fp32), ``attention_slicing`` (``unet.set_attention_slice("auto")``), ``vae_slicing``
(encode one image at a time) and ``cpu_offload`` (networks live on the CPU and are moved with ``.to()`` to the
execution device only while they run; the activations kept for the backward pass through the VAE encoder stay
on the device until that backward has run).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DiffusionGuidance, GuidanceConfig
from .prompts import PromptEmbeddings, PromptEncoder
from .registry import load_pretrained


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


def _make_config(cls, config, overrides: dict):
    config = config if config is not None else cls()
    names = {f.name for f in fields(config)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown {type(config).__name__} fields: {sorted(unknown)}")
    return replace(config, **overrides)


class StableDiffusionGuidance(DiffusionGuidance):
    """SDS with Stable Diffusion: ``__call__(images, prompt_embeddings, step, ...) -> {"loss_sds", ...}``."""

    config_class = StableDiffusionConfig

    def __init__(self, config: StableDiffusionConfig | None = None, device: str | torch.device = "cpu", **overrides):
        """``config`` and/or its fields as keywords (``StableDiffusionGuidance(model=folder, guidance_scale=7.5)``)."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        config = _make_config(self.config_class, config, overrides)
        # The scheduler first: it is tiny, so missing weights fail fast with the registry's clear error.
        scheduler = load_pretrained(DDPMScheduler, config.model, subfolder="scheduler")
        super().__init__(config, scheduler.alphas_cumprod)
        self.scheduler_config = dict(scheduler.config)
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type != "epsilon":
            raise ValueError(f"{config.model}: prediction type {self.prediction_type!r} is not supported (epsilon only)")
        self.execution_device = torch.device(device)

        unet = load_pretrained(UNet2DConditionModel, config.model, subfolder="unet", torch_dtype=self.dtype)
        vae = load_pretrained(AutoencoderKL, config.model, subfolder="vae", torch_dtype=self.dtype)
        self.freeze(unet, vae)
        if config.attention_slicing:
            unet.set_attention_slice("auto")
        self.unet: nn.Module = unet
        self.vae: nn.Module = vae
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = int(unet.config.sample_size) * self.vae_scale_factor
        self.scaling_factor = float(vae.config.scaling_factor)
        self._prompts: PromptEncoder | None = None
        self.last_info: dict[str, Tensor] = {}
        """Diagnostics of the last call: ``grad_norm``, ``timesteps`` (detached)."""
        self.alphas_cumprod = self.alphas_cumprod.to(self.execution_device)
        if not self._offloads(self.unet):
            self.unet.to(self.execution_device)
        if not self._offloads(self.vae):
            self.vae.to(self.execution_device)

    # -- devices --------------------------------------------------------------------------------------------
    def _offloads(self, module: nn.Module) -> bool:
        return self.config.cpu_offload and self.execution_device.type != "cpu"

    @contextmanager
    def _onload(self, module: nn.Module):
        """Run ``module`` on the execution device; with ``cpu_offload`` move it back to the CPU afterwards."""
        if not self._offloads(module):
            yield module
            return
        module.to(self.execution_device)
        try:
            yield module
        finally:
            module.to("cpu")

    # -- prompts --------------------------------------------------------------------------------------------
    @property
    def prompt_encoder(self) -> PromptEncoder:
        if self._prompts is None:
            self._prompts = PromptEncoder(self.config.model, cache_dir=self.config.prompt_cache, device=self.execution_device)
        return self._prompts

    def encode_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool | None = None) -> PromptEmbeddings:
        vd = self.config.view_dependent if view_dependent is None else view_dependent
        return self.prompt_encoder(prompt, negative_prompt, view_dependent=vd)

    # -- networks -------------------------------------------------------------------------------------------
    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> scaled latents ``[B, 4, h, w]`` (fp32); differentiable w.r.t. images."""
        x = images
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = (x * 2 - 1).to(self.execution_device, self.dtype)
        chunks = x.split(1) if self.config.vae_slicing else (x,)
        out = []
        with self._onload(self.vae) as vae:
            for c in chunks:
                dist = vae.encode(c).latent_dist
                out.append(dist.sample(generator) if self.config.sample_latents else dist.mean)
        return torch.cat(out).float() * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Scaled latents -> images ``[B, 3, H, W]`` in [0, 1] (for previews; no gradient)."""
        z = (latents / self.scaling_factor).to(self.execution_device, self.dtype)
        chunks = z.split(1) if self.config.vae_slicing else (z,)
        with self._onload(self.vae) as vae:
            x = torch.cat([vae.decode(c).sample for c in chunks])
        return ((x.float() + 1) / 2).clamp(0, 1)

    def predict_noise(self, x_t: Tensor, t: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        """The UNet's noise prediction in fp32 (no ``no_grad`` here: callers choose)."""
        with self._onload(self.unet) as unet:
            eps = unet(
                x_t.to(self.execution_device, self.dtype),
                t.to(self.execution_device),
                encoder_hidden_states=encoder_hidden_states.to(self.execution_device, self.dtype),
            ).sample
        return eps.float()

    @torch.no_grad()
    def predict_noise_cfg(self, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor) -> tuple[Tensor, Tensor]:
        """``(eps_cond, eps_uncond)`` from one batched UNet call on ``[cond; uncond]``, without gradient."""
        eps = self.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]))
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_cond, eps_uncond

    # -- SDS ------------------------------------------------------------------------------------------------
    def _timesteps_and_noise(self, latents: Tensor, step: int, generator, t, noise) -> tuple[Tensor, Tensor]:
        B = latents.shape[0]
        if t is None:
            t = self.sample_timesteps(step, B, generator)
        t = torch.as_tensor(t, dtype=torch.long, device=self.alphas_cumprod.device).reshape(-1).expand(B)
        if noise is None:
            gen_device = generator.device if generator is not None else latents.device
            noise = torch.randn(latents.shape, generator=generator, device=gen_device)
        return t, noise.to(latents.device, torch.float32)

    def sds_latents(
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
        """SDS on latents ``[B, 4, h, w]`` with text embeddings ``cond``/``uncond`` ``[B, L, D]``.

        ``t`` (``[B]`` or a scalar) and ``noise`` (like ``latents``) fix the timestep and noise instead of
        sampling them (with ``generator``) -- for tests and deterministic evaluation. Returns ``{"loss_sds"}``, or
        ``({"loss_sds"}, info)`` with ``return_info``.
        """
        latents = latents.float()
        t, noise = self._timesteps_and_noise(latents, step, generator, t, noise)
        with torch.no_grad():
            x_t = self.add_noise(latents.detach(), noise, t)
            eps_cond, eps_uncond = self.predict_noise_cfg(x_t, t, cond, uncond)
            eps_hat = self.guide(eps_uncond, eps_cond, self.config.guidance_scale)
        loss = self.distillation_loss(latents, x_t, noise, eps_hat, t, eps_cond=eps_cond)
        # Every variant is 1/2 ||x - stopgrad(target)||^2, so the gradient's norm is sqrt(2 loss).
        self.last_info = {"grad_norm": (2 * loss.detach()).sqrt(), "timesteps": t.detach()}
        losses = {"loss_sds": loss}
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
        """SDS on rendered ``images [B, 3, H, W]`` in [0, 1] (or latents ``[B, 4, h, w]`` with ``rgb_as_latents``).

        ``azimuth_deg``/``elevation_deg`` (degrees, per image or one for all) select view-dependent prompts.
        ``t``/``noise``: see :meth:`sds_latents`. Returns ``{"loss_sds"}`` (and ``info`` with ``return_info``).
        """
        latents = images.float() if rgb_as_latents else self.encode_images(images, generator)
        cond, uncond = prompt_embeddings.get(latents.shape[0], azimuth_deg, elevation_deg)
        return self.sds_latents(latents, cond, uncond, step, generator=generator, t=t, noise=noise, return_info=return_info)
