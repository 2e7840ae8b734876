"""Stable Video Diffusion (img2vid): video generation from one image, and partial-denoise video refinement.

Components (the diffusers ``StableVideoDiffusionPipeline`` layout): ``unet`` (UNetSpatioTemporalConditionModel,
8 input channels = noisy latent (4) + conditioning-image latent (4)), ``vae`` (AutoencoderKLTemporalDecoder),
``image_encoder`` (CLIPVisionModelWithProjection), ``scheduler`` (EulerDiscreteScheduler: EDM / Karras sigmas,
v-prediction, continuous timesteps ``0.25 log sigma``) and ``feature_extractor`` (only used by :meth:`pipeline`).

Sampling loop (the same as the diffusers pipeline, written out here so that it can start mid-schedule)
-------------------------------------------------------------------------------------------------------
Conditioning: the CLIP embedding of the image (resized to the encoder's size with the pipeline's antialiased
resize) as a single cross-attention token; the VAE posterior *mode* (unscaled) of the image, with
``noise_aug_strength`` Gaussian noise added to the pixels first, repeated over frames and concatenated to the
latent channels; added time ids ``[fps - 1, motion_bucket_id, noise_aug_strength]``. CFG zeroes the CLIP token
and the image latent, with a guidance scale rising linearly over frames from ``min_guidance_scale`` to
``max_guidance_scale``. Each step: ``scheduler.scale_model_input`` (EDM input scaling ``x / sqrt(sigma^2 + 1)``),
U-Net, CFG, ``scheduler.step`` (Euler). Random numbers come from a CPU ``torch.Generator`` seeded with ``seed``,
drawn in the pipeline's order (augmentation noise, then latent noise), so :meth:`generate_video` reproduces
``pipeline()(image, ..., output_type="pt")`` for inputs already at the output size.

Refinement (DreamGaussian4D stage III, "SDEdit" style; Meng et al. 2022)
------------------------------------------------------------------------
``refine_video(frames, image, strength)``: with ``n = round(strength * steps)`` of ``steps`` Karras sigmas, the
frames are VAE-encoded (posterior mode x scaling_factor), noised to ``x = z0 + sigma_k * eps`` with
``k = steps - n`` (EDM forward process, no signal scaling), and the last ``n`` steps of the schedule are run
conditioned on the image. ``strength = 0`` returns ``decode(encode(frames))``; ``strength = 1`` starts from
``sigma_max`` and is (up to the ``z0`` offset, negligible at sigma 700) a fresh generation.

Differences from the pipeline: tensors are resized to the output size with bilinear antialiased interpolation
(the pipeline uses nearest for tensors); the CLIP input is always resized (the pipeline skips it for tensors).
"""

from __future__ import annotations

from dataclasses import dataclass

import diffusers
import torch
import torch.nn.functional as F
import transformers
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
from torch import Tensor
from transformers import CLIPVisionModelWithProjection

from ..devices import DTYPES, Precision
from ..models.registry import load_pretrained
from .base import offload_between_calls
from .vae import decode_latents, encode_latents

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _svd_pipeline_module():
    """diffusers' SVD pipeline module, looked up when first needed: importing it makes transformers announce its
    image-processor fallback, which belongs in the log of a run that uses SVD, not on every import of gen4d."""
    return diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion


@dataclass
class SVDConfig:
    model: str = "svd"
    """Registry name ("svd", "svd-xt"), Hub id or local folder."""
    precision: Precision = "fp32"
    min_guidance_scale: float = 1.0
    """CFG scale of the first frame (the pipeline's default)."""
    max_guidance_scale: float = 3.0
    """CFG scale of the last frame; <= 1 everywhere disables CFG."""
    attention_slicing: bool = False
    cpu_offload: bool = False
    """Keep the U-Net, VAE and image encoder on the CPU and move each to the device only while it runs."""


@dataclass
class _Cond:
    image_embeddings: Tensor  # [2 or 1, 1, D]
    image_latents: Tensor  # [2 or 1, T, 4, h, w]
    added_time_ids: Tensor  # [2 or 1, 3]
    guidance: Tensor  # [1, T, 1, 1, 1]
    cfg: bool


class StableVideoDiffusion:
    """SVD img2vid: :meth:`generate_video` and :meth:`refine_video`, frames ``[T, 3, H, W]`` in [0, 1]."""

    def __init__(self, config: SVDConfig | None = None, device: torch.device | str | None = None):
        self.config = config = config or SVDConfig()
        name = config.model
        self.scheduler = load_pretrained(EulerDiscreteScheduler, name, subfolder="scheduler")
        self.unet = load_pretrained(UNetSpatioTemporalConditionModel, name, subfolder="unet")
        self.vae = load_pretrained(AutoencoderKLTemporalDecoder, name, subfolder="vae")
        self.image_encoder = load_pretrained(CLIPVisionModelWithProjection, name, subfolder="image_encoder")
        self.dtype = DTYPES[config.precision]
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        for m in (self.unet, self.vae, self.image_encoder):
            m.eval()
            m.requires_grad_(False)
            # Always cast: transformers >= 5 loads in the dtype the config names (the published image encoder
            # says float16), which would otherwise leave an fp16 encoder in an fp32 run.
            m.to(self.device, dtype=self.dtype)
        if config.cpu_offload and self.device.type != "cpu":
            offload_between_calls(self.unet, self.device)
            offload_between_calls(self.vae, self.device, ("encode", "decode"))
            offload_between_calls(self.image_encoder, self.device)
        if config.attention_slicing and hasattr(self.unet, "set_attention_slice"):
            self.unet.set_attention_slice("auto")
        self._pipeline = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def pipeline(self):
        """The diffusers ``StableVideoDiffusionPipeline`` sharing these components (feature extractor from the
        model folder when it has one, else a CLIP-normalising ``CLIPImageProcessor``)."""
        if self._pipeline is None:
            processor = transformers.CLIPImageProcessor
            try:
                fe = load_pretrained(processor, self.config.model, subfolder="feature_extractor")
            except Exception:  # noqa: BLE001 - optional component
                fe = processor(image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
            self._pipeline = diffusers.StableVideoDiffusionPipeline(
                vae=self.vae, image_encoder=self.image_encoder, unet=self.unet, scheduler=self.scheduler, feature_extractor=fe
            )
            self._pipeline.set_progress_bar_config(disable=True)
        return self._pipeline

    # ------------------------------------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_frames(self, frames: Tensor, chunk: int | None = None) -> Tensor:
        """Scaled latents ``[T, 4, H/8, W/8]`` (posterior mode x scaling_factor) of frames ``[T, 3, H, W]`` in [0, 1]."""
        return encode_latents(self.vae, frames.to(self.device, torch.float32), chunk=chunk or 0)

    @torch.no_grad()
    def decode_latents(self, latents: Tensor, chunk: int | None = None) -> Tensor:
        """Frames ``[T, 3, H, W]`` in [0, 1] from scaled latents ``[T, 4, h, w]``, decoded ``chunk`` frames at a time."""
        return decode_latents(self.vae, latents.to(self.device), chunk=chunk or 0)

    @torch.no_grad()
    def _condition(self, image: Tensor, num_frames: int, height: int, width: int, fps: int, motion_bucket_id: int,
                   noise_aug_strength: float, generator: torch.Generator) -> _Cond:
        if image.dim() == 3:
            image = image[None]
        image = image[:1].to(self.device, torch.float32)
        size = self.image_encoder.config.image_size
        x = _svd_pipeline_module()._resize_with_antialiasing(image * 2.0 - 1.0, (size, size))
        x = (x + 1.0) / 2.0
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        emb = self.image_encoder(pixel_values=((x - mean) / std).to(self.dtype)).image_embeds[:, None]

        if image.shape[-2:] != (height, width):
            image = F.interpolate(image, (height, width), mode="bilinear", align_corners=False, antialias=True)
        image = image * 2.0 - 1.0
        noise = torch.randn(image.shape, generator=generator, dtype=image.dtype).to(image.device)
        image = image + noise_aug_strength * noise
        lat = self.vae.encode(image.to(self.dtype)).latent_dist.mode().to(emb.dtype)
        lat = lat[:, None].repeat(1, num_frames, 1, 1, 1)
        ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], dtype=emb.dtype, device=self.device)

        c = self.config
        guidance = torch.linspace(c.min_guidance_scale, c.max_guidance_scale, num_frames, device=self.device)
        guidance = guidance.view(1, num_frames, 1, 1, 1)
        cfg = max(c.min_guidance_scale, c.max_guidance_scale) > 1
        if cfg:
            emb = torch.cat([torch.zeros_like(emb), emb])
            lat = torch.cat([torch.zeros_like(lat), lat])
            ids = torch.cat([ids, ids])
        return _Cond(emb, lat, ids, guidance, cfg)

    @torch.no_grad()
    def _denoise(self, latents: Tensor, timesteps: Tensor, cond: _Cond) -> Tensor:
        """Run the scheduler over ``timesteps`` (the step index must already be set up) from latents ``[1, T, 4, h, w]``."""
        for t in timesteps:
            x = torch.cat([latents, latents]) if cond.cfg else latents
            x = self.scheduler.scale_model_input(x, t)
            x = torch.cat([x, cond.image_latents], dim=2).to(self.dtype)
            out = self.unet(x, t, encoder_hidden_states=cond.image_embeddings, added_time_ids=cond.added_time_ids, return_dict=False)[0]
            out = out.to(latents.dtype)
            if cond.cfg:
                u, c = out.chunk(2)
                out = u + cond.guidance.to(out.dtype) * (c - u)
            latents = self.scheduler.step(out, t, latents).prev_sample
        return latents

    @staticmethod
    def _check_size(height: int, width: int) -> None:
        if height % 8 or width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")

    # ---------------------------------------------------------------------------------------------- public API
    @torch.no_grad()
    def generate_video(
        self,
        image: Tensor,
        num_frames: int = 14,
        height: int = 576,
        width: int = 1024,
        steps: int = 25,
        motion_bucket_id: int = 127,
        fps: int = 7,
        noise_aug_strength: float = 0.02,
        seed: int = 0,
        decode_chunk_size: int | None = None,
    ) -> Tensor:
        """``[num_frames, 3, height, width]`` in [0, 1] animated from ``image [1, 3, H, W]`` in [0, 1] (any frame count)."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self._check_size(height, width)
        g = torch.Generator("cpu").manual_seed(seed)
        cond = self._condition(image, num_frames, height, width, fps, motion_bucket_id, noise_aug_strength, g)
        self.scheduler.set_timesteps(steps, device=self.device)
        f = self.vae_scale_factor
        shape = (1, num_frames, self.unet.config.out_channels, height // f, width // f)
        latents = torch.randn(shape, generator=g, dtype=torch.float32).to(self.device) * self.scheduler.init_noise_sigma
        latents = self._denoise(latents, self.scheduler.timesteps, cond)
        return self.decode_latents(latents[0], decode_chunk_size)

    @torch.no_grad()
    def refine_video(
        self,
        frames: Tensor,
        image: Tensor,
        strength: float = 0.5,
        steps: int = 25,
        motion_bucket_id: int = 127,
        fps: int = 7,
        noise_aug_strength: float = 0.02,
        seed: int = 0,
        decode_chunk_size: int | None = None,
        return_latents: bool = False,
    ) -> Tensor:
        """Partial re-denoising of ``frames [T, 3, H, W]`` in [0, 1] conditioned on ``image``; see the module doc.

        ``strength`` in [0, 1]: the fraction of the ``steps`` sampling steps that are re-run (0: VAE round trip only).
        ``return_latents``: return the refined scaled latents ``[T, 4, H/8, W/8]`` instead of decoded frames.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        T, _, H, W = frames.shape
        self._check_size(H, W)
        g = torch.Generator("cpu").manual_seed(seed)
        z0 = self.encode_frames(frames, decode_chunk_size)[None]  # [1, T, 4, h, w]
        n = min(round(strength * steps), steps)
        if n == 0:
            return z0[0] if return_latents else self.decode_latents(z0[0], decode_chunk_size)
        cond = self._condition(image, T, H, W, fps, motion_bucket_id, noise_aug_strength, g)
        self.scheduler.set_timesteps(steps, device=self.device)
        start = steps - n
        sigma = self.scheduler.sigmas[start].to(self.device, torch.float32)
        noise = torch.randn(z0.shape, generator=g, dtype=torch.float32).to(self.device)
        latents = z0 + sigma * noise
        self.scheduler.set_begin_index(start)
        latents = self._denoise(latents, self.scheduler.timesteps[start:], cond)
        return latents[0] if return_latents else self.decode_latents(latents[0], decode_chunk_size)
