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

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import Tensor, nn
from transformers import CLIPVisionModelWithProjection

from ..models.registry import load_pretrained, resolve
from .base import Conditioning, DiffusionGuidance, GuidanceConfig
from .vae import decode_latents, encode_latents

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
    ref_el, ref_az, ref_r = (torch.as_tensor(v, dtype=torch.float32).to(el.device) for v in (ref_elevation_deg, ref_azimuth_deg, ref_radius))
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
    """Cached conditioning of reference views: one (R = 1, shared by every image) or one per image (R = N).

    Stack the references of several frames with :meth:`stack`, pick per-image ones with :meth:`select`.
    """

    clip_embed: Tensor
    """``[R, 1, D]`` CLIP image embeddings."""
    latent: Tensor
    """``[R, 4, h, w]`` unscaled VAE posterior means of the reference images."""
    elevation_deg: Tensor
    """``[R]`` reference camera elevations."""
    azimuth_deg: Tensor
    """``[R]`` reference camera azimuths."""
    radius: Tensor
    """``[R]`` reference camera distances."""

    def __len__(self) -> int:
        return self.clip_embed.shape[0]

    @staticmethod
    def stack(references: list["Zero123Reference"]) -> "Zero123Reference":
        return Zero123Reference(*(torch.cat([getattr(r, name) for r in references]) for name in
                                  ("clip_embed", "latent", "elevation_deg", "azimuth_deg", "radius")))

    def select(self, index: Tensor | list[int]) -> "Zero123Reference":
        idx = torch.as_tensor(index, dtype=torch.long)
        return Zero123Reference(*(getattr(self, name)[idx.to(getattr(self, name).device)] for name in
                                  ("clip_embed", "latent", "elevation_deg", "azimuth_deg", "radius")))

    def per_image(self, n: int) -> "Zero123Reference":
        """Each field with a leading dimension of ``n`` (a single reference repeated)."""
        if len(self) == n:
            return self
        if len(self) != 1:
            raise ValueError(f"{len(self)} Zero123 references for {n} images (give 1 or {n})")
        return Zero123Reference(*(getattr(self, name).expand(n, *getattr(self, name).shape[1:]) for name in
                                  ("clip_embed", "latent", "elevation_deg", "azimuth_deg", "radius")))


class Zero123Guidance(DiffusionGuidance):
    """SDS from Zero123-family novel-view diffusion relative to reference views.

    ``guidance(images, Conditioning(elevation_deg=, azimuth_deg=, radius=, reference=), step, generator)``; the
    cameras are absolute gen4d cameras of the rendered views; ``reference`` (a :class:`Zero123Reference`, one
    shared or one per image) defaults to the one set by :meth:`prepare_reference`.
    """

    offload_plan = {"unet": ("forward",), "vae": ("encode", "decode"), "image_encoder": ("forward",)}

    def __init__(self, config: Zero123Config | None = None, device: torch.device | str | None = None):
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
        self.place(device)

    # ------------------------------------------------------------------------------------------------ encoders
    def clip_embed(self, images: Tensor) -> Tensor:
        """CLIP image embeddings ``[B, 1, D]`` of images ``[B, 3, H, W]`` in [0, 1] (differentiable, no PIL)."""
        size = self.image_encoder.config.image_size
        x = F.interpolate(images.float(), (size, size), mode="bicubic", align_corners=True, antialias=True)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.dtype)
        return self.image_encoder(pixel_values=x).image_embeds[:, None].float()

    def _resize(self, images: Tensor) -> Tensor:
        r = self.config.resolution
        x = images.float().to(self.device)
        return x if x.shape[-2:] == (r, r) else F.interpolate(x, (r, r), mode="bilinear", align_corners=False)

    def encode_images(self, images: Tensor, scaled: bool = True) -> Tensor:
        """Latents ``[B, 4, r/8, r/8]`` (posterior mean, times scaling_factor unless ``scaled=False``) of images in
        [0, 1]."""
        chunk = 1 if self.config.vae_slicing else 0
        return encode_latents(self.vae, self._resize(images), scaled=scaled, chunk=chunk)

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        return decode_latents(self.vae, latents.to(self.device))

    @torch.no_grad()
    def prepare_reference(self, image: Tensor, elevation_deg: float = 0.0, azimuth_deg: float = 0.0, radius: float = 1.0,
                          remember: bool = True) -> Zero123Reference:
        """The conditioning of reference views ``image [R, 3, H, W]`` in [0, 1] (RGB, white background as Zero123
        was trained), all taken from camera ``(elevation_deg, azimuth_deg, radius)``; with ``remember`` it becomes
        the default reference of later calls."""
        image = image.to(self.device)
        if image.dim() == 3:
            image = image[None]
        R = image.shape[0]
        cam = [torch.full((R,), float(v), device=self.device) for v in (elevation_deg, azimuth_deg, radius)]
        ref = Zero123Reference(self.clip_embed(image), self.encode_images(image, scaled=False), *cam)
        if remember:
            self.reference = ref
        return ref

    def camera_embedding(self, elevation_deg, azimuth_deg, radius, reference: Zero123Reference | None = None) -> Tensor:
        """Pose vectors ``[B, 4]`` of target cameras relative to their references."""
        ref = self._reference(reference)
        return camera_embedding(elevation_deg, azimuth_deg, radius, ref.elevation_deg, ref.azimuth_deg, ref.radius,
                                stable=self.stable).to(self.device)

    def _reference(self, reference: Zero123Reference | None = None) -> Zero123Reference:
        ref = reference or self.reference
        if ref is None:
            raise RuntimeError("Zero123Guidance: call prepare_reference(image) first (or pass Conditioning.reference)")
        return ref

    # ----------------------------------------------------------------------------------------------- interface
    def encode_renders(self, renders: Tensor, cond: Conditioning, generator: torch.Generator | None) -> Tensor:
        return self.encode_images(renders)

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        """Zero123's U-Net on ``[x_t, reference latent]`` with the projected ``[CLIP(reference), pose]`` context; the
        unconditional branch zeroes both (see the module doc)."""
        cond.require("elevation_deg", "azimuth_deg", "radius", prior="Zero123")
        B = x_t.shape[0]
        ref = self._reference(cond.reference).per_image(B)
        cam = self.camera_embedding(cond.elevation_deg, cond.azimuth_deg, cond.radius, ref)
        if cam.shape[0] == 1 and B > 1:
            cam = cam.expand(B, -1)
        ctx_in = torch.cat([ref.clip_embed.to(self.device), cam.to(self.device, torch.float32)[:, None]], dim=-1)
        ctx = self.clip_camera_projection(ctx_in.to(self.dtype))
        ctx = torch.cat([ctx, torch.zeros_like(ctx)])
        concat = ref.latent.to(self.device, self.dtype)
        if concat.shape[-2:] != x_t.shape[-2:]:
            raise ValueError(f"reference latent {tuple(concat.shape[-2:])} != image latent {tuple(x_t.shape[-2:])}")
        concat = torch.cat([concat, torch.zeros_like(concat)])
        x = torch.cat([x_t, x_t]).to(self.dtype)
        x = torch.cat([x, concat], dim=1)
        eps = self.unet(x, torch.cat([t, t]).to(self.device), encoder_hidden_states=ctx).sample.float()
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_cond, eps_uncond
