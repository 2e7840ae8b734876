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

Textual inversion: :func:`load_textual_inversion` reads the diffusers ``learned_embeds.bin`` format
(``{"<token>": tensor[D]}``), the same in safetensors, and the A1111 / ``emb_params`` variants; the token is added
to the tokenizer and its vector written into the (resized) token-embedding table of the text encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import Gen4DError
from .base import DTYPES, DiffusionGuidance, GuidanceConfig
from .registry import load_pretrained
from .prompts import encode_prompt, encode_prompt_pair
from .video_sds import encode_pixels, expand_embeddings

__all__ = [
    "ControlNetTileConfig",
    "ControlNetTileGuidance",
    "encode_prompt",
    "expand_textual_inversion_prompt",
    "load_textual_inversion",
    "read_textual_inversion",
]


# ----------------------------------------------------------------------------------------------------------------
# textual inversion


def read_textual_inversion(path_or_dict: str | Path | Mapping, token: str | None = None) -> tuple[str, Tensor]:
    """``(token, vectors [N, D])`` from a textual-inversion file or an already loaded state dict.

    Formats: diffusers ``{"<token>": tensor[D] or [N, D]}`` (``learned_embeds.bin`` / ``.safetensors``),
    A1111 ``{"string_to_param": {"*": tensor[N, D]}, "name": ...}`` and ``{"emb_params": tensor[N, D]}``.
    ``token`` overrides the stored name (needed for the formats that have none).
    """
    if isinstance(path_or_dict, Mapping):
        state = dict(path_or_dict)
        source = "the given dict"
    else:
        path = Path(path_or_dict)
        if path.is_dir():
            for name in ("learned_embeds.safetensors", "learned_embeds.bin"):
                if (path / name).exists():
                    path = path / name
                    break
        if not path.is_file():
            raise Gen4DError(f"textual inversion file {str(path)!r} does not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        source = str(path)

    if "string_to_param" in state:  # A1111
        vec = next(iter(state["string_to_param"].values()))
        name = state.get("name")
    elif "emb_params" in state:
        vec, name = state["emb_params"], None
    elif len(state) == 1:
        name, vec = next(iter(state.items()))
    else:
        raise Gen4DError(f"{source} is not a textual-inversion embedding (keys: {sorted(state)[:5]})")
    token = token or name
    if not token:
        raise Gen4DError(f"{source} stores no token name; pass token='<name>'")
    if not isinstance(vec, Tensor):
        raise Gen4DError(f"{source}: the embedding of {token!r} is not a tensor")
    vec = vec.detach().float()
    if vec.dim() == 1:
        vec = vec[None]
    if vec.dim() != 2:
        raise Gen4DError(f"{source}: embedding of shape {tuple(vec.shape)}, expected [D] or [N, D]")
    return str(token), vec


def textual_inversion_tokens(token: str, num_vectors: int) -> list[str]:
    """Tokens for an ``num_vectors``-vector embedding: ``token, token_1, ...`` (the diffusers convention)."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def expand_textual_inversion_prompt(prompt: str, token: str, num_vectors: int) -> str:
    """Replace ``token`` in ``prompt`` by all its vector tokens (a no-op for single-vector embeddings)."""
    if num_vectors <= 1:
        return prompt
    return prompt.replace(token, " ".join(textual_inversion_tokens(token, num_vectors)))


def load_textual_inversion(tokenizer, text_encoder, path_or_dict: str | Path | Mapping, token: str | None = None) -> list[str]:
    """Add a learned token to ``tokenizer`` and write its vector(s) into ``text_encoder``'s embedding table.

    Returns the added tokens (one per vector; multi-vector prompts need :func:`expand_textual_inversion_prompt`).
    Loading the same token again overwrites its vector; a token that is an ordinary word of the vocabulary is
    refused.
    """
    token, vectors = read_textual_inversion(path_or_dict, token)
    emb = text_encoder.get_input_embeddings()
    if vectors.shape[1] != emb.weight.shape[1]:
        raise Gen4DError(
            f"textual inversion {token!r} has dimension {vectors.shape[1]}, but the text encoder's token embeddings "
            f"have {emb.weight.shape[1]} (an embedding trained for another model?)"
        )
    tokens = textual_inversion_tokens(token, vectors.shape[0])
    added = tokenizer.get_added_vocab()
    for tok in tokens:
        if tok not in added and tok in tokenizer.get_vocab():
            raise Gen4DError(f"textual inversion token {tok!r} is already a word of the tokenizer's vocabulary")
    tokenizer.add_tokens([tok for tok in tokens if tok not in added])
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if len(tokenizer) > emb.weight.shape[0]:
        text_encoder.resize_token_embeddings(len(tokenizer))
        emb = text_encoder.get_input_embeddings()
    with torch.no_grad():
        for i, vec in zip(ids, vectors):
            emb.weight[i] = vec.to(emb.weight)
    return tokens


# ----------------------------------------------------------------------------------------------------------------
# guidance


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


class ControlNetTileGuidance(DiffusionGuidance):
    """``__call__(images [B, 3, H, W] in [0, 1], (cond, uncond), step)`` -> ``{"loss_sds": loss}``."""

    offload_plan = {"unet": ("forward",), "controlnet": ("forward",), "vae": ("encode", "decode"), "text_encoder": ("forward",)}

    def __init__(self, config: ControlNetTileConfig | None = None, device: str | torch.device | None = None):
        from diffusers import (
            AutoencoderKL,
            ControlNetModel,
            DDPMScheduler,
            UNet2DConditionModel,
        )
        from transformers import CLIPTextModel, CLIPTokenizer

        config = config or ControlNetTileConfig()
        scheduler = load_pretrained(DDPMScheduler, config.model, subfolder="scheduler")
        super().__init__(config, scheduler.alphas_cumprod)
        dtype = DTYPES[config.precision]
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
        self.last: dict = {}
        if device is not None:
            self.place(device)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def load_textual_inversion(self, path_or_dict, token: str | None = None) -> list[str]:
        tokens = load_textual_inversion(self.tokenizer, self.text_encoder, path_or_dict, token)
        self.text_encoder.requires_grad_(False)
        return tokens

    @torch.no_grad()
    def encode_prompts(self, prompts: str | Sequence[str], negative: str | Sequence[str] = "") -> tuple[Tensor, Tensor]:
        """(cond, uncond) embeddings; prompts may contain a loaded textual-inversion token."""
        return encode_prompt_pair(self.tokenizer, self.text_encoder, prompts, negative)

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
    def predict_noise(
        self,
        x_t: Tensor,
        t: Tensor,
        embeddings: Tensor,
        control: Tensor | None = None,
        conditioning_scale: float | None = None,
    ) -> Tensor:
        """Noise prediction for ``x_t [N, 4, h, w]``; ``control [N, 3, 8h, 8w]`` in [0, 1] or None (plain U-Net)."""
        dtype = DTYPES[self.config.precision]
        x_t = x_t.to(dtype)
        embeddings = embeddings.to(x_t.device, dtype)
        kwargs = {}
        if control is not None:
            scale = self.config.controlnet_conditioning_scale if conditioning_scale is None else conditioning_scale
            down, mid = self.controlnet(
                x_t, t, encoder_hidden_states=embeddings, controlnet_cond=control.to(dtype),
                conditioning_scale=float(scale), return_dict=False,
            )
            kwargs = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return self.unet(x_t, t, encoder_hidden_states=embeddings, **kwargs).sample.float()

    def __call__(
        self,
        images: Tensor,
        text_embeddings: tuple[Tensor, Tensor],
        step: int = 0,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """SDS loss on ``images [B, 3, H, W]`` in [0, 1]; ``t`` and ``noise`` override the random draws."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        cond, uncond = text_embeddings
        B = images.shape[0]
        dev = images.device
        r = self.config.resolution
        shape = (B, self.vae.config.latent_channels, r // 8, r // 8)
        if t is None:
            t = self.sample_timesteps(step, B, generator)
        t = t.to(dev).long()
        if noise is None:
            noise = torch.randn(shape, generator=generator).to(dev)
        post = torch.randn(shape, generator=generator).to(dev) if self.config.vae_sample else None

        latents = encode_pixels(self.vae, self.resize(images), post, DTYPES[self.config.precision])
        control = self.control_image(images)
        x_t = self.add_noise(latents.detach(), noise, t)
        emb = torch.cat([expand_embeddings(cond, B), expand_embeddings(uncond, B)])
        eps = self.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), emb, torch.cat([control, control]))
        eps_c, eps_u = eps.chunk(2)
        eps_hat = self.guide(eps_u, eps_c, self.config.guidance_scale)
        loss = self.distillation_loss(latents, x_t, noise, eps_hat, t, eps_cond=eps_c)
        self.last = {"t": t, "noise": noise, "latents": latents.detach(), "eps_hat": eps_hat, "eps_cond": eps_c, "control": control}
        return {"loss_sds": loss}
