"""Score distillation from a text-to-video latent diffusion model (ZeroScope v2 576w, ModelScope 1.7B).

4D-fy (Bahmani et al. 2024) supervises the dynamic stage with ZeroScope: the 4D field is rendered as a short
low-resolution video (288 x 160 in 4D-fy), the frames are upsampled bilinearly to the model's resolution
(576 x 320 for ZeroScope, 256 x 256 for ModelScope), VAE-encoded frame by frame and stacked into the video latent
``[B, C, T, H/8, W/8]`` (the layout of ``UNet3DConditionModel``). SDS then runs on that latent exactly as for
images (see ``sds.py``): one timestep per video, the same noise schedule for all frames, classifier-free guidance
under ``torch.no_grad``.

Low-memory VAE encode
---------------------
Back-propagating through the VAE encoder of 16+ frames at 576 x 320 costs several GB of activations. All frames
must be *encoded* (the U-Net needs the whole clip), but only a few need a gradient: ``grad_frames`` frames
(chosen at random each step, or ``grad_frame_indices``) are encoded with autograd, the others under
``torch.no_grad`` in chunks of ``vae_chunk`` frames. The SDS gradient on the selected frames is the same as with a
full encode (the VAE encodes each frame independently); the other frames get no gradient this step. 4D-fy uses
this trick with a random subset of frames per iteration.

Guidance scale: 100 by default, as in DreamFusion-style SDS and in 4D-fy's ZeroScope guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DTYPES, DiffusionGuidance, GuidanceConfig
from .prompts import encode_prompt_pair
from .registry import load_pretrained
from .sds import TimestepSchedule


def expand_embeddings(emb: Tensor, batch: int) -> Tensor:
    """``[1 or B, L, D]`` -> ``[B, L, D]``."""
    if emb.dim() == 2:
        emb = emb[None]
    if emb.shape[0] == batch:
        return emb
    if emb.shape[0] == 1:
        return emb.expand(batch, *emb.shape[1:])
    raise ValueError(f"text embeddings have batch {emb.shape[0]}, expected 1 or {batch}")


def encode_pixels(vae, images: Tensor, noise: Tensor | None, dtype: torch.dtype) -> Tensor:
    """VAE latents (times the scaling factor) of ``images [N, 3, H, W]`` in [0, 1].

    ``noise`` (``[N, C, H/8, W/8]`` or None) samples the posterior as ``mean + std * noise``; None takes its mean.
    """
    dist = vae.encode((images * 2 - 1).to(dtype)).latent_dist
    lat = dist.mean if noise is None else dist.mean + dist.std * noise.to(dist.mean)
    return lat.float() * vae.config.scaling_factor


@dataclass
class VideoSDSConfig(GuidanceConfig):
    """Text-to-video SDS; ``model`` is a registry name (``zeroscope``, ``modelscope``), Hub id or folder."""

    model: str = "zeroscope"
    guidance_scale: float = 100.0
    """CFG scale (4D-fy uses 100 with ZeroScope)."""
    timesteps: TimestepSchedule = field(default_factory=lambda: TimestepSchedule(0.02, 0.98, 0.02, 0.98))
    model_width: int = 576
    """Width the frames are resized to before encoding (ZeroScope 576w: 576; ModelScope: 256)."""
    model_height: int = 320
    """Height the frames are resized to (ZeroScope 576w: 320; ModelScope: 256)."""
    grad_frames: int = 0
    """Frames encoded with a gradient, drawn at random each call; 0 (or >= T): all frames."""
    grad_frame_indices: tuple[int, ...] | None = None
    """Explicit frames to back-propagate through (overrides ``grad_frames``)."""
    vae_chunk: int = 0
    """Frames per VAE call for the frames encoded without gradient; 0: all at once (1 with vae_slicing)."""
    vae_sample: bool = True
    """Sample the VAE posterior (mean + std * noise) rather than take its mean."""


class VideoSDSGuidance(DiffusionGuidance):
    """SDS with a ``UNet3DConditionModel`` text-to-video prior.

    ``__call__(videos [B, T, 3, h, w] in [0, 1], (cond, uncond), step)`` -> ``{"loss_sds_video": loss}``; the
    gradient of the loss w.r.t. the video latent is ``w(t) (eps_hat - eps)``. Text embeddings are tensors
    ``[1 or B, L, D]``; :meth:`encode_prompts` makes them with the model's own text encoder.
    After a call, ``self.last`` holds diagnostics (t, noise, latents, eps_hat, the frame size fed to the VAE, the frames that
    received a gradient).
    """

    offload_plan = {"unet": ("forward",), "vae": ("encode", "decode"), "text_encoder": ("forward",)}

    def __init__(self, config: VideoSDSConfig | None = None, device: str | torch.device | None = None, load_text_encoder: bool = True):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel

        config = config or VideoSDSConfig()
        scheduler = load_pretrained(DDPMScheduler, config.model, subfolder="scheduler")
        super().__init__(config, scheduler.alphas_cumprod)
        dtype = DTYPES[config.precision]
        self.unet = load_pretrained(UNet3DConditionModel, config.model, subfolder="unet", torch_dtype=dtype)
        self.vae = load_pretrained(AutoencoderKL, config.model, subfolder="vae", torch_dtype=dtype)
        self.tokenizer = None
        self.text_encoder = None
        if load_text_encoder:
            from transformers import CLIPTextModel, CLIPTokenizer

            self.tokenizer = load_pretrained(CLIPTokenizer, config.model, subfolder="tokenizer")
            self.text_encoder = load_pretrained(CLIPTextModel, config.model, subfolder="text_encoder", dtype=dtype)
        self.freeze(self.unet, self.vae, self.text_encoder)
        if config.attention_slicing:
            self.unet.set_attention_slice("auto")
        self.last: dict = {}
        self.last_vae_input_size: tuple[int, int] | None = None
        if device is not None:
            self.place(device)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @torch.no_grad()
    def encode_prompts(self, prompts: str | Sequence[str], negative: str | Sequence[str] = "") -> tuple[Tensor, Tensor]:
        """(cond, uncond) embeddings for the prompts and the negative prompt(s)."""
        if self.text_encoder is None:
            raise RuntimeError("this guidance was built without its text encoder (load_text_encoder=False)")
        return encode_prompt_pair(self.tokenizer, self.text_encoder, prompts, negative)

    def select_grad_frames(self, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
        """Frames encoded with a gradient this call (sorted)."""
        c = self.config
        if c.grad_frame_indices is not None:
            idx = sorted({int(i) % num_frames for i in c.grad_frame_indices})
            return idx
        if c.grad_frames <= 0 or c.grad_frames >= num_frames:
            return list(range(num_frames))
        perm = torch.randperm(num_frames, generator=generator)[: c.grad_frames]
        return sorted(perm.tolist())

    def resize(self, frames: Tensor) -> Tensor:
        """Bilinear resize of ``[N, 3, h, w]`` to the model resolution (a no-op when already there)."""
        size = (self.config.model_height, self.config.model_width)
        if tuple(frames.shape[-2:]) == size:
            return frames
        return F.interpolate(frames, size=size, mode="bilinear", align_corners=False)

    def encode_video(self, videos: Tensor, grad_idx: Sequence[int], posterior_noise: Tensor | None = None) -> Tensor:
        """Latents ``[B, C, T, H/8, W/8]`` of ``videos [B, T, 3, h, w]``; only frames ``grad_idx`` carry a gradient.

        ``posterior_noise [B, T, C, H/8, W/8]`` (or None for the posterior mean) is shared by both paths, so the
        result does not depend on which frames carry a gradient or on the chunking.
        """
        B, T = videos.shape[:2]
        dtype = DTYPES[self.config.precision]
        grad_idx = list(grad_idx)
        rest = [i for i in range(T) if i not in set(grad_idx)]

        def enc(idx: list[int]) -> Tensor:
            x = self.resize(videos[:, idx].flatten(0, 1))
            self.last_vae_input_size = tuple(x.shape[-2:])
            n = None if posterior_noise is None else posterior_noise[:, idx].flatten(0, 1)
            lat = encode_pixels(self.vae, x, n, dtype)
            return lat.reshape(B, len(idx), *lat.shape[1:])

        frames: list[Tensor | None] = [None] * T
        if grad_idx:
            lat = enc(grad_idx)
            for j, i in enumerate(grad_idx):
                frames[i] = lat[:, j]
        if rest:
            chunk = self.config.vae_chunk or (1 if self.config.vae_slicing else len(rest))
            with torch.no_grad():
                for s in range(0, len(rest), chunk):
                    part = rest[s : s + chunk]
                    lat = enc(part)
                    for j, i in enumerate(part):
                        frames[i] = lat[:, j]
        return torch.stack(frames, dim=2)  # B, C, T, h, w

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor) -> tuple[Tensor, Tensor]:
        """(eps_cond, eps_uncond) for noisy video latents ``x_t [B, C, T, h, w]`` (one U-Net call, batch 2B)."""
        dtype = DTYPES[self.config.precision]
        B = x_t.shape[0]
        inp = torch.cat([x_t, x_t]).to(dtype)
        emb = torch.cat([expand_embeddings(cond, B), expand_embeddings(uncond, B)]).to(x_t.device, dtype)
        eps = self.unet(inp, torch.cat([t, t]), encoder_hidden_states=emb).sample.float()
        eps_c, eps_u = eps.chunk(2)
        return eps_c, eps_u

    def __call__(
        self,
        videos: Tensor,
        text_embeddings: tuple[Tensor, Tensor],
        step: int = 0,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """SDS loss on ``videos [B, T, 3, h, w]`` in [0, 1]. ``t`` ([B] int) and ``noise`` (shaped like the video
        latent) override the random draws, for tests and reproducibility."""
        if videos.dim() != 5 or videos.shape[2] != 3:
            raise ValueError(f"videos must be [B, T, 3, H, W], got {tuple(videos.shape)}")
        cond, uncond = text_embeddings
        B, T = videos.shape[:2]
        dev = videos.device
        h, w = self.config.model_height // 8, self.config.model_width // 8
        C = self.vae.config.latent_channels
        # draws in a fixed order, independent of which frames carry a gradient
        if t is None:
            t = self.sample_timesteps(step, B, generator)
        t = t.to(dev).long()
        if noise is None:
            noise = torch.randn((B, C, T, h, w), generator=generator).to(dev)
        post = torch.randn((B, T, C, h, w), generator=generator).to(dev) if self.config.vae_sample else None
        grad_idx = self.select_grad_frames(T, generator) if torch.is_grad_enabled() else []

        latents = self.encode_video(videos, grad_idx, post)
        x_t = self.add_noise(latents.detach(), noise, t)
        eps_c, eps_u = self.predict_noise(x_t, t, cond, uncond)
        eps_hat = self.guide(eps_u, eps_c, self.config.guidance_scale)
        loss = self.distillation_loss(latents, x_t, noise, eps_hat, t, eps_cond=eps_c)
        self.last = {
            "t": t, "noise": noise, "latents": latents.detach(), "eps_hat": eps_hat, "eps_cond": eps_c, "eps_uncond": eps_u,
            "vae_input_size": self.last_vae_input_size, "latent_shape": tuple(latents.shape),
            "grad_frames": grad_idx,
        }
        return {"loss_sds_video": loss}
