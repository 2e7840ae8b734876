"""Zero123 / Stable-Zero123 novel-view score distillation (image-to-3D prior).

Model layout (diffusers ports: ashawkey/zero123-xl-diffusers, ashawkey/stable-zero123-diffusers,
bennyguo/zero123-xl-diffusers): ``unet`` (UNet2DConditionModel, 8 input channels = noisy latent (4) + reference
latent (4)), ``vae`` (AutoencoderKL), ``image_encoder`` (CLIPVisionModelWithProjection), ``clip_camera_projection``
(:class:`CLIPCameraProjection`, a Linear(D + 4 -> D)) and ``scheduler`` (DDIM, epsilon prediction).

Conditioning (Liu et al. 2023, "Zero-1-to-3")
---------------------------------------------
* cross-attention context: ``proj([clip_image_embed(ref), pose])``, one token ``[B, 1, D]``;
* channel concat: the **unscaled** VAE posterior mean of the reference image (no ``scaling_factor``);
* classifier-free guidance: the unconditional branch zeroes both the projected context and the concat latent
  (as the threestudio and DreamGaussian guidance code does).

Pose (the 4 numbers appended to the CLIP embedding)
---------------------------------------------------
gen4d angles: azimuth measured from +x towards +y, elevation above the xy plane (``cameras.orbit_eye``). Zero123 was
trained with a *polar* angle ``theta = 90 deg - elevation`` (from +z, growing downwards) and an azimuth with the same
handedness as gen4d's, so with the reference camera ``(el_r, az_r, r_r)`` and the target camera ``(el, az, r)``:

    zero123:         [ rad(el_r - el),  sin(rad(az - az_r)),  cos(rad(az - az_r)),  r - r_r          ]
    stable-zero123:  [ rad(el_r - el),  sin(rad(az - az_r)),  cos(rad(az - az_r)),  rad(90 - el_r)   ]

The first entry is ``theta - theta_r`` (**minus** the elevation change: a camera moving up gives a negative value).
Stable Zero123 was trained with the absolute polar angle of the *reference* view in place of the radius change
(threestudio's ``stable_zero123_guidance`` and DreamGaussian's ``use_stable_zero123`` both do this); the variant
is picked from the model name (``variant="auto"``) or set explicitly.

Guidance scale: default 3 (threestudio's zero123 configs); DreamGaussian's image-to-3D stage uses 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DiffusionGuidance, GuidanceConfig
from .registry import load_pretrained, resolve

try:  # diffusers is a hard dependency of the guidance package
    from diffusers import ModelMixin
    from diffusers.configuration_utils import ConfigMixin, register_to_config
except ImportError:  # pragma: no cover - very old diffusers layout
    from diffusers.models.modeling_utils import ModelMixin
    from diffusers.configuration_utils import ConfigMixin, register_to_config

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Variant = Literal["auto", "zero123", "stable-zero123"]


class CLIPCameraProjection(ModelMixin, ConfigMixin):
    """Projects ``[clip_image_embed (D), pose (additional_embeddings)]`` back to ``D`` (weights ``proj.*``)."""

    @register_to_config
    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4):
        super().__init__()
        self.proj = nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

    def forward(self, embedding: Tensor) -> Tensor:
        return self.proj(embedding)


def camera_embedding(
    elevation_deg: Tensor,
    azimuth_deg: Tensor,
    radius: Tensor,
    ref_elevation_deg: float | Tensor = 0.0,
    ref_azimuth_deg: float | Tensor = 0.0,
    ref_radius: float | Tensor = 1.0,
    stable: bool = False,
) -> Tensor:
    """Zero123 pose vectors ``[B, 4]`` of target cameras relative to the reference camera (see module doc)."""
    el, az, r = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float32) for v in (elevation_deg, azimuth_deg, radius)))
    el, az, r = el.reshape(-1), az.reshape(-1), r.reshape(-1)
    ref_el = torch.as_tensor(ref_elevation_deg, dtype=torch.float32)
    ref_az = torch.as_tensor(ref_azimuth_deg, dtype=torch.float32)
    ref_r = torch.as_tensor(ref_radius, dtype=torch.float32)
    d_polar = torch.deg2rad(ref_el - el)
    d_az = torch.deg2rad(az - ref_az)
    last = torch.deg2rad(90.0 - ref_el).expand_as(el) if stable else r - ref_r
    return torch.stack([d_polar, d_az.sin(), d_az.cos(), last], dim=-1)


@dataclass
class Zero123Config(GuidanceConfig):
    """Zero123 settings (see the module doc for the pose convention)."""

    model: str = "zero123-xl"
    guidance_scale: float = 3.0
    variant: Variant = "auto"
    """auto: stable-zero123 pose embedding when the model name contains 'stable', otherwise zero123."""
    resolution: int = 256
    """Images are resized to this square size before VAE encoding (Zero123 works at 256 -> 32x32 latents)."""


@dataclass
class Zero123Reference:
    """Cached conditioning of one reference view."""

    clip_embed: Tensor
    """``[1, 1, D]`` CLIP image embedding."""
    latent: Tensor
    """``[1, 4, h, w]`` unscaled VAE posterior mean of the reference image."""
    elevation_deg: float = 0.0
    azimuth_deg: float = 0.0
    radius: float = 1.0
    extras: dict = field(default_factory=dict)


class Zero123Guidance(DiffusionGuidance):
    """SDS from Zero123-family novel-view diffusion, relative to a reference image set by :meth:`prepare_reference`."""

    offload_plan = {"unet": ("forward",), "vae": ("encode", "decode"), "image_encoder": ("forward",)}

    def __init__(self, config: Zero123Config | None = None, device: torch.device | str | None = None):
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPVisionModelWithProjection

        config = config or Zero123Config()
        name = config.model
        scheduler = load_pretrained(DDIMScheduler, name, subfolder="scheduler")
        super().__init__(config, scheduler.alphas_cumprod)
        self.scheduler = scheduler
        self.unet = load_pretrained(UNet2DConditionModel, name, subfolder="unet")
        self.vae = load_pretrained(AutoencoderKL, name, subfolder="vae")
        self.image_encoder = load_pretrained(CLIPVisionModelWithProjection, name, subfolder="image_encoder")
        self.clip_camera_projection = load_pretrained(CLIPCameraProjection, name, subfolder="clip_camera_projection")
        self.freeze(self.unet, self.vae, self.image_encoder, self.clip_camera_projection)
        if self.dtype != torch.float32:
            for m in (self.unet, self.vae, self.image_encoder, self.clip_camera_projection):
                m.to(dtype=self.dtype)
        if config.attention_slicing:
            self.unet.set_attention_slice("auto")
        if config.variant == "auto":
            repo, _ = resolve(name)
            self.stable = "stable" in (name + " " + repo).lower()
        else:
            self.stable = config.variant == "stable-zero123"
        self.reference: Zero123Reference | None = None
        if device is not None:
            self.place(device)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    # ------------------------------------------------------------------------------------------------ encoders
    def clip_embed(self, images: Tensor) -> Tensor:
        """CLIP image embeddings ``[B, 1, D]`` of images ``[B, 3, H, W]`` in [0, 1] (differentiable, no PIL)."""
        size = self.image_encoder.config.image_size
        x = F.interpolate(images.float(), (size, size), mode="bicubic", align_corners=True, antialias=True)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.dtype)
        return self.image_encoder(pixel_values=x).image_embeds[:, None].float()

    def _vae_mean(self, images: Tensor) -> Tensor:
        r = self.config.resolution
        x = images.float()
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, (r, r), mode="bilinear", align_corners=False)
        x = (2.0 * x - 1.0).to(self.dtype)
        if self.config.vae_slicing and x.shape[0] > 1:
            return torch.cat([self.vae.encode(xi[None]).latent_dist.mean for xi in x]).float()
        return self.vae.encode(x).latent_dist.mean.float()

    def encode_images(self, images: Tensor) -> Tensor:
        """Scaled latents ``[B, 4, r/8, r/8]`` (posterior mean x scaling_factor) of images in [0, 1]."""
        return self._vae_mean(images) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        x = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.dtype)).sample.float()
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def prepare_reference(self, image: Tensor, elevation_deg: float = 0.0, azimuth_deg: float = 0.0, radius: float = 1.0) -> Zero123Reference:
        """Cache the conditioning of the reference view ``image [1, 3, H, W]`` in [0, 1] (RGB, white background
        as Zero123 was trained), taken from camera ``(elevation_deg, azimuth_deg, radius)``; returns it too."""
        image = image.to(self.device)
        if image.dim() == 3:
            image = image[None]
        ref = Zero123Reference(
            clip_embed=self.clip_embed(image[:1]),
            latent=self._vae_mean(image[:1]),
            elevation_deg=float(elevation_deg),
            azimuth_deg=float(azimuth_deg),
            radius=float(radius),
        )
        self.reference = ref
        return ref

    def camera_embedding(self, elevation_deg, azimuth_deg, radius, reference: Zero123Reference | None = None) -> Tensor:
        ref = reference or self._reference()
        return camera_embedding(elevation_deg, azimuth_deg, radius, ref.elevation_deg, ref.azimuth_deg, ref.radius, stable=self.stable).to(self.device)

    def _reference(self, reference: Zero123Reference | None = None) -> Zero123Reference:
        ref = reference or self.reference
        if ref is None:
            raise RuntimeError("Zero123Guidance: call prepare_reference(image) first (or pass reference=)")
        return ref

    # ----------------------------------------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict_noise(self, latents_noisy: Tensor, t: Tensor, cam: Tensor, reference: Zero123Reference | None = None) -> tuple[Tensor, Tensor]:
        """``(eps_uncond, eps_cond)`` for noisy latents ``[B, 4, h, w]``, timesteps ``[B]`` and poses ``[B, 4]``."""
        ref = self._reference(reference)
        B = latents_noisy.shape[0]
        ctx_in = torch.cat([ref.clip_embed.to(self.device).expand(B, 1, -1), cam.to(self.device, torch.float32)[:, None]], dim=-1)
        ctx = self.clip_camera_projection(ctx_in.to(self.dtype))
        ctx = torch.cat([ctx, torch.zeros_like(ctx)])
        concat = ref.latent.to(self.device, self.dtype).expand(B, -1, -1, -1)
        if concat.shape[-2:] != latents_noisy.shape[-2:]:
            raise ValueError(f"reference latent {tuple(concat.shape[-2:])} != image latent {tuple(latents_noisy.shape[-2:])}")
        concat = torch.cat([concat, torch.zeros_like(concat)])
        x = torch.cat([latents_noisy, latents_noisy]).to(self.dtype)
        x = torch.cat([x, concat], dim=1)
        eps = self.unet(x, torch.cat([t, t]).to(self.device), encoder_hidden_states=ctx).sample.float()
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_uncond, eps_cond

    def __call__(
        self,
        images: Tensor,
        elevation_deg,
        azimuth_deg,
        radius,
        step: int = 0,
        generator: torch.Generator | None = None,
        reference: Zero123Reference | None = None,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        return_aux: bool = False,
    ) -> dict[str, Tensor]:
        """SDS loss of rendered views ``images [B, 3, H, W]`` in [0, 1] seen from absolute gen4d cameras
        ``(elevation_deg, azimuth_deg, radius)`` (each a float or ``[B]``), relative to the reference camera.

        ``t`` / ``noise`` fix the timestep ``[B]`` and the noise (tests); ``return_aux`` adds the latents, noise,
        timesteps and predictions (keys without the ``loss_`` prefix).
        """
        ref = self._reference(reference)
        latents = self.encode_images(images.to(self.device))
        B = latents.shape[0]
        cam = self.camera_embedding(elevation_deg, azimuth_deg, radius, ref)
        if cam.shape[0] == 1 and B > 1:
            cam = cam.expand(B, -1)
        if t is None:
            t = self.sample_timesteps(step, B, generator)
        t = t.to(self.device).long().reshape(-1).expand(B)
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, device=generator.device if generator is not None else None).to(latents)
        with torch.no_grad():
            latents_noisy = self.add_noise(latents.detach(), noise, t)
            eps_uncond, eps_cond = self.predict_noise(latents_noisy, t, cam, ref)
            eps_hat = self.guide(eps_uncond, eps_cond, self.config.guidance_scale)
        loss = self.distillation_loss(latents, latents_noisy, noise, eps_hat, t, eps_cond=eps_cond)
        out = {"loss_sds": loss}
        if return_aux:
            out.update(latents=latents, latents_noisy=latents_noisy, noise=noise, t=t, eps_hat=eps_hat, eps_cond=eps_cond, eps_uncond=eps_uncond, camera=cam)
        return out
