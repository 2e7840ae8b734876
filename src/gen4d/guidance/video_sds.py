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

Call: ``guidance(videos [B, T, 3, h, w] in [0, 1], Conditioning(prompt=guidance.encode_prompt(...)), step,
generator) -> {"loss_sds_video": loss}`` (:mod:`gen4d.guidance.base`); ``guidance.last_info`` adds the frame size
fed to the VAE and the frames that received a gradient.

Guidance scale: 100 by default, as in DreamFusion-style SDS and in 4D-fy's ZeroScope guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from ..models.registry import load_pretrained
from .base import Conditioning, DiffusionGuidance, GuidanceConfig
from .prompts import PromptEncoder, TextConditioned
from .sds import TimestepSchedule
from .vae import decode_latents, encode_latents, latent_shape


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
    view_dependent: bool = False
    """Append ``, front/side/back/overhead view`` to the prompt by the camera of each clip's first frame
    (Dream-in-4D's ``view_dependent_prompting``); False: one prompt for every view (4D-fy)."""
    color_weight: float = 0.0
    """With weighting hifa: weight of HiFA's image-space loss, ``sum (frames - decode(target))^2 / B`` between the
    frames at the model's resolution and the decoded target (Dream-in-4D's ``lambda_sds_color``: 0.1); returned
    weighted as ``loss_sds_color``."""


class VideoSDSGuidance(TextConditioned, DiffusionGuidance):
    """SDS with a ``UNet3DConditionModel`` text-to-video prior on videos ``[B, T, 3, h, w]`` (one timestep per video)."""

    loss_name = "loss_sds_video"
    offload_plan = {"unet": ("forward",), "vae": ("encode", "decode"), "text_encoder": ("forward",)}

    def __init__(self, config: VideoSDSConfig | None = None, device: str | torch.device | None = None, load_text_encoder: bool = True):
        config = config or VideoSDSConfig()
        scheduler = load_pretrained(DDPMScheduler, config.model, subfolder="scheduler")
        super().__init__(config, scheduler.alphas_cumprod)
        self.unet = load_pretrained(UNet3DConditionModel, config.model, subfolder="unet", torch_dtype=self.dtype)
        self.vae = load_pretrained(AutoencoderKL, config.model, subfolder="vae", torch_dtype=self.dtype)
        self.tokenizer = None
        self.text_encoder = None
        if load_text_encoder:
            self.tokenizer = load_pretrained(CLIPTokenizer, config.model, subfolder="tokenizer")
            self.text_encoder = load_pretrained(CLIPTextModel, config.model, subfolder="text_encoder", dtype=self.dtype)
        self.freeze(self.unet, self.vae, self.text_encoder)
        if config.attention_slicing:
            self.unet.set_attention_slice("auto")
        self.place(device)

    def make_prompt_encoder(self) -> PromptEncoder:
        if self.text_encoder is None:
            return PromptEncoder(self.config.model, device=self.device)  # loads the text encoder on a cache miss
        return PromptEncoder(self.config.model, device=self.device, tokenizer=self.tokenizer, text_encoder=self.text_encoder)

    def select_grad_frames(self, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
        """Frames encoded with a gradient this call (sorted)."""
        c = self.config
        if c.grad_frame_indices is not None:
            return sorted({int(i) % num_frames for i in c.grad_frame_indices})
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
        grad_idx = list(grad_idx)
        rest = [i for i in range(T) if i not in set(grad_idx)]

        def enc(idx: list[int]) -> Tensor:
            x = self.resize(videos[:, idx].flatten(0, 1))
            n = None if posterior_noise is None else posterior_noise[:, idx].flatten(0, 1)
            lat = encode_latents(self.vae, x, noise=n)
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

    # ----------------------------------------------------------------------------------------------- interface
    def encode_renders(self, renders: Tensor, cond: Conditioning, generator: torch.Generator | None) -> Tensor:
        """Videos ``[B, T, 3, h, w]`` -> latents ``[B, C, T, H/8, W/8]``. Draws (in this order) the posterior noise
        and the frames that carry a gradient; with gradients disabled no frame does."""
        if renders.dim() != 5 or renders.shape[2] != 3:
            raise ValueError(f"videos must be [B, T, 3, H, W], got {tuple(renders.shape)}")
        videos = renders.to(self.device)
        B, T = videos.shape[:2]
        post = None
        if self.config.vae_sample:
            shape = latent_shape(self.vae, videos[0, :1].new_empty(1, 3, self.config.model_height, self.config.model_width))
            post = torch.randn((B, T, *shape[1:]), generator=generator).to(self.device)
        grad_idx = self.select_grad_frames(T, generator) if torch.is_grad_enabled() else []
        self.last_info.update(vae_input_size=(self.config.model_height, self.config.model_width), grad_frames=grad_idx)
        return self.encode_video(videos, grad_idx, post)

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        """(eps_cond, eps_uncond) for noisy video latents ``x_t [B, C, T, h, w]`` (one U-Net call, batch 2B)."""
        cond.require("prompt", prior="the text-to-video prior")
        B = x_t.shape[0]
        if cond.prompt.view_dependent and cond.azimuth_deg is not None:  # each clip by the view of its first frame
            first = lambda v: None if v is None else v.reshape(B, -1)[:, 0]  # noqa: E731
            text, uncond = cond.prompt.get(B, first(cond.azimuth_deg), first(cond.elevation_deg))
        else:
            text, uncond = cond.prompt.get(B)
        emb = torch.cat([text, uncond]).to(self.device, self.dtype)
        eps = self.unet(torch.cat([x_t, x_t]).to(self.dtype), torch.cat([t, t]), encoder_hidden_states=emb).sample.float()
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_cond, eps_uncond

    def forward(self, renders: Tensor, cond: Conditioning | None = None, step: int = 0,
                generator: torch.Generator | None = None, **kw) -> dict[str, Tensor]:
        """The distillation step; with HiFA and ``color_weight`` also the image-space loss (``VideoSDSConfig``)."""
        out = super().forward(renders, cond, step, generator, **kw)
        target = self.last_info.get("target")
        if self.config.color_weight > 0 and target is not None:
            B, C, T = target.shape[:3]
            with torch.no_grad():
                lat = target.permute(0, 2, 1, 3, 4).flatten(0, 1)
                decoded = decode_latents(self.vae, lat, chunk=self.config.vae_chunk or (1 if self.config.vae_slicing else 0))
            frames = self.resize(renders.to(self.device).flatten(0, 1).float())
            out["loss_sds_color"] = self.config.color_weight * (frames - decoded.float()).square().sum() / B
        return out
