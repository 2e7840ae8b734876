"""MVDream (Shi et al. 2023): a multi-view diffusion prior built from stock diffusers parts.

MVDream is the Stable Diffusion 2.1 U-Net with two changes, both expressed here without any custom model class:

* **Camera embedding.** A 2-layer MLP (``Linear(16, 4c) - SiLU - Linear(4c, 4c)``, ``camera_embed`` in the
  original code) of the flattened 4x4 camera-to-world matrix is added to the timestep embedding. This is exactly
  diffusers' ``UNet2DConditionModel(class_embed_type="projection", projection_class_embeddings_input_dim=16)``:
  ``class_embedding`` is a ``TimestepEmbedding(16, 4c)`` (``linear_1 - SiLU - linear_2``) whose output is added
  to the time embedding; the cameras are passed as ``class_labels``.
* **Joint multi-view self-attention.** Each transformer block's self-attention sees the tokens of all V views
  of one object: ``[B*V, L, C] -> [B, V*L, C]`` before attending, back after: a diffusers attention processor
  on every ``attn1`` (:mod:`gen4d.guidance.mvdream_unet`).

Batches are **object-major**: sample ``i`` is view ``i % V`` of object ``i // V``.

Cameras
-------
MVDream's training cameras (``mvdream/camera_utils.py``, ``get_camera(..., blender_coord=True)``) are
camera-to-world matrices with **OpenGL camera axes** (+x right, +y up, camera looks along -z) in a **z-up**,
right-handed world (a y-up construction rotated by ``flip_yz``), with the camera position normalised to the unit
sphere (``normalize_camera``). gen4d's world is also z-up and right-handed, so :func:`mvdream_camera` keeps the
world frame, flips the camera's y and z axes (OpenCV -> OpenGL, :func:`gen4d.cameras.opengl_to_opencv`), divides
the translation by its norm and flattens row-major to 16 numbers. Azimuths differ by a constant only: MVDream's
azimuth ``a`` puts the camera at ``(sin a, -cos a)`` (azimuth 0 looks along +y from -y), gen4d's
:func:`gen4d.cameras.orbit_eye` puts azimuth ``phi`` at ``(cos phi, sin phi)``, so ``a = phi + 90``: the camera
``orbit_c2w(a - 90, e, r)`` converts to exactly MVDream's ``get_camera`` matrix for azimuth ``a``, elevation ``e``.

Weights (converters in :mod:`gen4d.guidance.mvdream_checkpoint`)
-----------------------------------------------------------------
* diffusers layout (``unet/`` a ``UNet2DConditionModel`` with the projection class embedding, plus ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``): loaded with ``from_pretrained`` via ``load_pretrained``.
* the ``ashawkey/mvdream-sd2.1-diffusers`` layout, whose ``unet/`` is a custom ``MultiViewUNetModel`` with the
  original parameter names: its config is translated by :func:`unet_config_from_mvdream` and its weights by
  :func:`convert_mvdream_checkpoint`; the other folders are standard.
* the original checkpoint (``MVDream/MVDream`` ``sd-v2.1-base-4view.pt``, LDM names ``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.model.*``): :func:`convert_mvdream_checkpoint`, which reuses
  diffusers' own LDM converters (``diffusers.loaders.single_file_utils``); the tokenizer (not in the checkpoint)
  comes from SD 2.1 base (``MVDreamConfig.tokenizer_model``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .. import Gen4DError
from ..cameras import opengl_to_opencv
from ..models.registry import load_pretrained, resolve
from .base import Conditioning, DiffusionGuidance, GuidanceConfig
from .mvdream_checkpoint import (
    MVDREAM_SD21_SCHEDULER,
    MVDREAM_SD21_TEXT_ENCODER,
    MVDREAM_SD21_UNET,
    MVDREAM_SD21_VAE,
    convert_mvdream_checkpoint,
    download_checkpoint,
    load_state_dict,
    load_strict,
    read_unet_config,
    read_unet_weights,
    unet_config_from_mvdream,
    unet_from_original,
)
from .mvdream_unet import set_multiview_attention, set_num_views
from .prompts import PromptEncoder, TextConditioned
from .vae import decode_latents, encode_latents


def mvdream_camera(c2w: Tensor) -> Tensor:
    """gen4d OpenCV camera-to-world ``[N, 4, 4]`` -> MVDream camera conditioning ``[N, 16]`` (see module doc)."""
    gl = opengl_to_opencv(c2w.double())  # the axis flip is an involution: OpenCV -> OpenGL
    t = gl[..., :3, 3]
    gl = gl.clone()
    gl[..., :3, 3] = t / (t.norm(dim=-1, keepdim=True) + 1e-8)
    return gl.reshape(*c2w.shape[:-2], 16).to(torch.float32)



@dataclass
class MVDreamConfig(GuidanceConfig):
    """MVDream prior settings (defaults: the MVDream paper's SDS recipe)."""

    model: str = "mvdream"
    guidance_scale: float = 50.0
    weighting: str = "x0"
    std_rescale: float = 0.5
    num_views: int = 4
    """Views per object V; batches are object-major."""
    resolution: int = 256
    """Images are resized to this square size before encoding (MVDream was trained at 256)."""
    tokenizer_model: str = "sd21"
    """Where the tokenizer comes from when the weights are the original checkpoint (which has none)."""


class MVDreamGuidance(TextConditioned, DiffusionGuidance):
    """Multi-view SDS with MVDream. Build with :meth:`from_pretrained` (any supported layout) or from modules.

    ``guidance(images [B*V, 3, H, W], Conditioning(prompt=, c2w=, num_views=V), step, generator)``: batches are
    object-major (``num_views`` defaults to the config's); one timestep per object.
    """

    offload_plan = {"unet": ("forward",), "vae": ("encode", "decode"), "text_encoder": ("forward",)}

    def __init__(self, config: MVDreamConfig, unet, vae, text_encoder, tokenizer, scheduler, device=None):
        super().__init__(config, scheduler.alphas_cumprod)
        if getattr(unet.config, "class_embed_type", None) != "projection":
            raise Gen4DError("the MVDream U-Net needs class_embed_type='projection' (the camera embedding)")
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.freeze(unet, vae, text_encoder)
        dtype = self.dtype
        self.vae_dtype = torch.float32 if (dtype == torch.float16 and getattr(vae.config, "force_upcast", False)) else dtype
        for module, want in ((unet, dtype), (text_encoder, dtype), (vae, self.vae_dtype)):
            if next(module.parameters()).dtype != want:
                module.to(want)
        # attention_slicing does not apply: the multi-view processors already use SDPA.
        set_multiview_attention(unet, config.num_views)
        self.place(device)

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, config: MVDreamConfig | None = None, device=None, **overrides) -> MVDreamGuidance:
        config = config or MVDreamConfig(**overrides)
        repo, spec = resolve(config.model)
        path = Path(repo)
        original = None
        if path.is_file():
            original = path
        elif spec is not None and spec.file is not None and not path.exists():
            original = download_checkpoint(config.model, repo, spec.file)
        if original is not None:
            return cls.from_original_checkpoint(original, config, device=device)

        unet_cfg = read_unet_config(repo)
        if unet_cfg.get("_class_name") == "MultiViewUNetModel":
            unet = unet_from_original(read_unet_weights(repo), unet_cfg)
        else:
            unet = load_pretrained(UNet2DConditionModel, repo, subfolder="unet")
        vae = load_pretrained(AutoencoderKL, repo, subfolder="vae")
        text_encoder = load_pretrained(CLIPTextModel, repo, subfolder="text_encoder")
        tokenizer = load_pretrained(CLIPTokenizer, repo, subfolder="tokenizer")
        scheduler = load_pretrained(DDIMScheduler, repo, subfolder="scheduler")
        return cls(config, unet, vae, text_encoder, tokenizer, scheduler, device=device)

    @classmethod
    def from_original_checkpoint(cls, checkpoint: str | Path | dict[str, Tensor], config: MVDreamConfig | None = None,
                                 device=None) -> MVDreamGuidance:
        """Build from the original ``sd-v2.1-base-4view.pt`` (a file or an already loaded state dict)."""
        config = config or MVDreamConfig()
        sd = checkpoint if isinstance(checkpoint, dict) else load_state_dict(Path(checkpoint))
        unet_config = unet_config_from_mvdream(MVDREAM_SD21_UNET)
        unet_sd, vae_sd, text_sd = convert_mvdream_checkpoint(sd, unet_config, MVDREAM_SD21_VAE)
        if vae_sd is None or text_sd is None:
            raise Gen4DError("the MVDream checkpoint lacks the VAE (first_stage_model.*) or text encoder (cond_stage_model.model.*)")
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(unet_config)
            vae = AutoencoderKL.from_config(MVDREAM_SD21_VAE)
        load_strict(unet, unet_sd, "MVDream U-Net")
        load_strict(vae, vae_sd, "MVDream VAE")
        text_encoder = CLIPTextModel(CLIPTextConfig(**MVDREAM_SD21_TEXT_ENCODER))
        load_strict(text_encoder, text_sd, "MVDream text encoder")
        tokenizer = load_pretrained(CLIPTokenizer, config.tokenizer_model, subfolder="tokenizer")
        scheduler = DDIMScheduler(**MVDREAM_SD21_SCHEDULER)
        return cls(config, unet, vae, text_encoder, tokenizer, scheduler, device=device)

    # ----------------------------------------------------------------------------------------- networks
    def make_prompt_encoder(self) -> PromptEncoder:
        return PromptEncoder(self.config.model, device=self.device, tokenizer=self.tokenizer, text_encoder=self.text_encoder)

    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> scaled latents, a posterior sample (differentiable w.r.t. the images)."""
        size = self.config.resolution
        images = images.to(self.device)
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False)
        return encode_latents(self.vae, images, sample=True, generator=generator, chunk=1 if self.config.vae_slicing else 0)

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        return decode_latents(self.vae, latents.to(self.device), chunk=1 if self.config.vae_slicing else 0)

    # ----------------------------------------------------------------------------------------- interface
    def num_views(self, cond: Conditioning) -> int:
        return int(cond.num_views if cond.num_views > 1 else self.config.num_views)

    def timestep_group(self, cond: Conditioning, x: Tensor) -> int:
        return self.num_views(cond)

    def encode_renders(self, renders: Tensor, cond: Conditioning, generator: torch.Generator | None) -> Tensor:
        V = self.num_views(cond)
        if renders.shape[0] % V:
            raise ValueError(f"{renders.shape[0]} images are not a multiple of num_views={V}")
        return self.encode_images(renders, generator)

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        cond.require("prompt", "c2w", prior="MVDream")
        N, V = x_t.shape[0], self.num_views(cond)
        if cond.c2w.shape[0] != N:
            raise ValueError(f"c2w has {cond.c2w.shape[0]} cameras for {N} images")
        text, uncond = cond.prompt.get(N)
        cameras = mvdream_camera(cond.c2w).to(self.device)
        set_num_views(self.unet, V)
        eps = self.unet(torch.cat([x_t, x_t]).to(self.dtype), torch.cat([t, t]),
                        encoder_hidden_states=torch.cat([text, uncond]).to(self.device, self.dtype),
                        class_labels=torch.cat([cameras, cameras]).to(self.dtype)).sample
        eps_cond, eps_uncond = eps.float().chunk(2)
        return eps_cond, eps_uncond


__all__ = ["MVDreamConfig", "MVDreamGuidance", "mvdream_camera"]
