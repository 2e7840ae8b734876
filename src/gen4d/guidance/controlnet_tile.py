"""ControlNet-tile SDS on Stable Diffusion 1.5, with a textual-inversion token (Animate124 stage 3).

Animate124 (Zhao et al. 2023) refines its 4D result with SD 1.5 + ControlNet 1.1 *tile*
(``lllyasviel/control_v11f1e_sd15_tile``) and a personalised token learned by textual inversion on the reference
image. The tile ControlNet was trained to re-synthesise detail on top of a degraded copy of the image, so the
control image is the **rendered image itself** (detached): SDS then pushes the render towards a sharper,
identity-consistent version of what it already shows, instead of towards an arbitrary image matching the prompt.

Control image used here: the render resized to the model resolution, detached; with ``control_downscale`` > 1
it is first area-downsampled by that factor and upsampled back bilinearly (the blurred low-resolution copy the
tile model was trained on). ``control_downscale = 1`` (default) feeds the render as is.

The noise prediction with control is ``unet(x_t, t, text, down/mid residuals = controlnet(x_t, t, text,
control) * controlnet_conditioning_scale)``; it is made for both CFG branches under ``torch.no_grad``.

The learned token (:mod:`gen4d.guidance.textual_inversion`) is loaded into the text encoder at construction
(``textual_inversion=``) or later (:meth:`ControlNetTileGuidance.load_textual_inversion`); prompts may then use it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from ..models.registry import load_pretrained
from .base import Conditioning, DiffusionGuidance, GuidanceConfig
from .prompts import PromptEncoder, TextConditioned
from .textual_inversion import load_textual_inversion
from .vae import encode_latents, latent_shape


@dataclass
class ControlNetTileConfig(GuidanceConfig):
    """SD 1.5 + ControlNet-tile SDS."""

    model: str = "sd15"
    controlnet: str = "controlnet-tile"
    """Registry name, Hub id or folder of the ControlNet."""
    controlnet_subfolder: str | None = None
    """Subfolder of ``controlnet`` holding it (None: the root, as in lllyasviel/control_v11f1e_sd15_tile)."""
    guidance_scale: float = 7.5
    """CFG scale. The control image already fixes layout and colours, so far less CFG than text-only SDS (100) is
    used here; this default is a choice of gen4d, not a value taken from the Animate124 release."""
    controlnet_conditioning_scale: float = 1.0
    """Multiplier of the ControlNet residuals (0: plain SD 1.5)."""
    control_downscale: float = 1.0
    """> 1: blur the control image by area-downsampling by this factor and upsampling back."""
    resolution: int = 512
    """Square size the render is resized to (bilinear) before encoding; SD 1.5 works at 512."""
    vae_sample: bool = True
    """Sample the VAE posterior rather than take its mean."""
    textual_inversion: str | None = None
    """Optional ``learned_embeds.bin`` / ``.safetensors`` loaded at construction."""
    textual_inversion_token: str | None = None
    """Token name for that file (None: the name stored in it)."""


class ControlNetTileGuidance(TextConditioned, DiffusionGuidance):
    """``guidance(images [B, 3, H, W] in [0, 1], Conditioning(prompt=...), step, generator)`` -> ``{"loss_sds"}``;
    the control image is the detached render (module doc)."""

    offload_plan = {"unet": ("forward",), "controlnet": ("forward",), "vae": ("encode", "decode"), "text_encoder": ("forward",)}

    def __init__(self, config: ControlNetTileConfig | None = None, device: str | torch.device | None = None):
        config = config or ControlNetTileConfig()
        scheduler = load_pretrained(DDPMScheduler, config.model, subfolder="scheduler")
        super().__init__(config, scheduler.alphas_cumprod)
        dtype = self.dtype
        self.unet = load_pretrained(UNet2DConditionModel, config.model, subfolder="unet", torch_dtype=dtype)
        self.vae = load_pretrained(AutoencoderKL, config.model, subfolder="vae", torch_dtype=dtype)
        self.tokenizer = load_pretrained(CLIPTokenizer, config.model, subfolder="tokenizer")
        self.text_encoder = load_pretrained(CLIPTextModel, config.model, subfolder="text_encoder", dtype=dtype)
        self.controlnet = load_pretrained(ControlNetModel, config.controlnet, subfolder=config.controlnet_subfolder, torch_dtype=dtype)
        self.freeze(self.unet, self.vae, self.text_encoder, self.controlnet)
        if config.attention_slicing:
            self.unet.set_attention_slice("auto")
            self.controlnet.set_attention_slice("auto")
        self.ti_tokens: list[str] = []
        if config.textual_inversion:
            self.ti_tokens = self.load_textual_inversion(config.textual_inversion, config.textual_inversion_token)
        self.place(device)

    def load_textual_inversion(self, path_or_dict, token: str | None = None) -> list[str]:
        tokens = load_textual_inversion(self.tokenizer, self.text_encoder, path_or_dict, token)
        self.text_encoder.requires_grad_(False)
        self._prompt_encoder = None  # the vocabulary changed: new cache tag
        return tokens

    def make_prompt_encoder(self) -> PromptEncoder:
        # The cached embeddings of prompts with a learned token depend on its vector: key the cache on it.
        ids = self.tokenizer.convert_tokens_to_ids(self.ti_tokens)
        vectors = self.text_encoder.get_input_embeddings().weight[ids].detach().float().cpu().numpy()
        tag = hashlib.sha256(vectors.tobytes()).hexdigest()[:16] if self.ti_tokens else ""
        return PromptEncoder(self.config.model, device=self.device, tokenizer=self.tokenizer, text_encoder=self.text_encoder, cache_tag=tag)

    def resize(self, images: Tensor) -> Tensor:
        r = self.config.resolution
        if tuple(images.shape[-2:]) == (r, r):
            return images
        return F.interpolate(images, size=(r, r), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def control_image(self, images: Tensor) -> Tensor:
        """The tile control image: the detached render at model resolution, optionally blurred (see module doc)."""
        x = self.resize(images.detach().float()).clamp(0, 1)
        f = self.config.control_downscale
        if f > 1:
            r = self.config.resolution
            small = max(1, round(r / f))
            x = F.interpolate(x, size=(small, small), mode="area")
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def unet_noise(self, x_t: Tensor, t: Tensor, embeddings: Tensor, control: Tensor | None = None,
                   conditioning_scale: float | None = None) -> Tensor:
        """Noise prediction for ``x_t [N, 4, h, w]``; ``control [N, 3, 8h, 8w]`` in [0, 1] or None (plain U-Net)."""
        x_t = x_t.to(self.dtype)
        embeddings = embeddings.to(x_t.device, self.dtype)
        kwargs = {}
        if control is not None:
            scale = self.config.controlnet_conditioning_scale if conditioning_scale is None else conditioning_scale
            down, mid = self.controlnet(
                x_t, t, encoder_hidden_states=embeddings, controlnet_cond=control.to(self.dtype),
                conditioning_scale=float(scale), return_dict=False,
            )
            kwargs = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return self.unet(x_t, t, encoder_hidden_states=embeddings, **kwargs).sample.float()

    # ----------------------------------------------------------------------------------------------- interface
    def encode_renders(self, renders: Tensor, cond: Conditioning, generator: torch.Generator | None) -> Tensor:
        if renders.dim() != 4 or renders.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(renders.shape)}")
        x = self.resize(renders.to(self.device))
        noise = torch.randn(latent_shape(self.vae, x), generator=generator).to(self.device) if self.config.vae_sample else None
        # predict_noise needs the control image of these renders; it is kept for the rest of this call.
        self._control = self.last_info["control"] = self.control_image(x)
        return encode_latents(self.vae, x, noise=noise)

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        cond.require("prompt", prior="ControlNet-tile")
        B = x_t.shape[0]
        text, uncond = cond.prompt.get(B)
        control = self._control
        eps = self.unet_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text, uncond]), torch.cat([control, control]))
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_cond, eps_uncond
