"""The VAE between pixels and latents, shared by every latent-diffusion prior (image and video) and by training.

Images are ``[N, 3, H, W]`` in [0, 1]; latents ``[N, C, H/f, W/f]`` (f the VAE's downsampling factor), float32,
multiplied by the VAE's ``scaling_factor`` unless ``scaled=False`` (Zero123 concatenates the *unscaled* posterior
mean of its reference image). Encoding is differentiable with respect to the images; the posterior is either
its mean (= mode) or the sample ``mean + std * noise``, the noise given or drawn whole before any chunking, so the
result does not depend on the chunk size.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLTemporalDecoder
from torch import Tensor, nn


def vae_downsampling(vae: nn.Module) -> int:
    """Pixels per latent along each axis (8 for the Stable Diffusion VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_shape(vae: nn.Module, images: Tensor) -> tuple[int, ...]:
    f = vae_downsampling(vae)
    return (images.shape[0], vae.config.latent_channels, images.shape[-2] // f, images.shape[-1] // f)


def _dtype(vae: nn.Module) -> torch.dtype:
    return next(vae.parameters()).dtype


def encode_latents(
    vae: nn.Module,
    images: Tensor,
    sample: bool = False,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    scaled: bool = True,
    chunk: int = 0,
) -> Tensor:
    """Latents of ``images`` (see the module doc): the posterior mean, or with ``sample`` (or a given ``noise``
    ``[N, C, h, w]``) ``mean + std * noise``; ``noise`` is drawn with ``generator`` when not given. ``chunk``:
    images per VAE call (0: all at once)."""
    if sample and noise is None:
        noise = torch.randn(latent_shape(vae, images), generator=generator, device=generator.device if generator is not None else None)
    dtype = _dtype(vae)
    x = (2.0 * images - 1.0).to(dtype)
    chunk = chunk or x.shape[0]
    out = []
    for s in range(0, x.shape[0], chunk):
        dist = vae.encode(x[s : s + chunk]).latent_dist
        z = dist.mean if noise is None else dist.mean + dist.std * noise[s : s + chunk].to(dist.mean)
        out.append(z)
    z = torch.cat(out).float()
    return z * vae.config.scaling_factor if scaled else z


def decode_latents(vae: nn.Module, latents: Tensor, chunk: int = 0, scaled: bool = True) -> Tensor:
    """Images ``[N, 3, H, W]`` in [0, 1] from latents ``[N, C, h, w]``, ``chunk`` at a time (0: all at once).
    A temporal decoder (Stable Video Diffusion's) treats each chunk as consecutive frames of one clip."""
    z = latents / vae.config.scaling_factor if scaled else latents
    z = z.to(_dtype(vae))
    chunk = chunk or z.shape[0]
    temporal = isinstance(vae, AutoencoderKLTemporalDecoder)
    out = []
    for s in range(0, z.shape[0], chunk):
        part = z[s : s + chunk]
        out.append(vae.decode(part, num_frames=part.shape[0]).sample if temporal else vae.decode(part).sample)
    return (torch.cat(out).float() / 2 + 0.5).clamp(0, 1)
