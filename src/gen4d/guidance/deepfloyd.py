"""DeepFloyd IF stage I (``DeepFloyd/IF-I-XL-v1.0``): text-conditioned score distillation in pixel space.

IF's first stage denoises 64 x 64 RGB images directly (no VAE): the renders are resized to 64 px and mapped to
[-1, 1], the U-Net (``UNet2DConditionModel`` with T5 text features projected by ``encoder_hid_proj``) predicts the
noise in its first three output channels (the other three are its learned variance, unused by SDS), conditioned
on T5-XXL embeddings of the prompt (77 tokens, with the attention mask, as diffusers' ``IFPipeline`` encodes them).
Dream-in-4D's image variant uses it beside Zero123 (CFG 20, t in [0.02, 0.5]).

Memory: the T5 encoder is only loaded on a prompt-cache miss (:class:`T5PromptEncoder`) and can be released after
encoding (``release_text_encoder``); the U-Net is the only network that stays.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import Tensor
from transformers import AutoTokenizer, T5EncoderModel

from ..models.registry import load_pretrained
from .base import Conditioning, DiffusionGuidance, GuidanceConfig, make_config
from .prompts import PromptEncoder, TextConditioned


@dataclass
class DeepFloydConfig(GuidanceConfig):
    """IF stage-I SDS settings."""

    model: str = "deepfloyd-if"
    guidance_scale: float = 20.0
    resolution: int = 0
    """Side the renders are resized to; 0: the U-Net's ``sample_size`` (64 for IF stage I)."""
    view_dependent: bool = True
    prompt_cache: str | None = None


class T5PromptEncoder(PromptEncoder):
    """The shared prompt cache and view-dependent prompts, with IF's T5 encoder (attention mask, 77 tokens)."""

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_pretrained(AutoTokenizer, self.model, subfolder="tokenizer")
        return self._tokenizer

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            te = load_pretrained(T5EncoderModel, self.model, subfolder="text_encoder")
            self._text_encoder = te.eval().requires_grad_(False).to(self.device)
        return self._text_encoder

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=77, truncation=True, add_special_tokens=True,
                                return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        out = self.text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
        return out[0].float().cpu()

    def release_text_encoder(self) -> None:
        """Free the T5 encoder (reloaded on the next cache miss)."""
        self._text_encoder = None


class DeepFloydIFGuidance(TextConditioned, DiffusionGuidance):
    """SDS with IF stage I: ``guidance(images [B, 3, H, W] in [0, 1], Conditioning(prompt=...), step, generator)``."""

    config_class = DeepFloydConfig
    offload_plan = {"unet": ("forward",)}

    def __init__(self, config: DeepFloydConfig | None = None, device: str | torch.device | None = None, **overrides):
        config = make_config(self.config_class, config, overrides)
        scheduler = load_pretrained(DDPMScheduler, config.model, subfolder="scheduler")
        super().__init__(config, scheduler.alphas_cumprod)
        if scheduler.config.prediction_type != "epsilon":
            raise ValueError(f"{config.model}: prediction type {scheduler.config.prediction_type!r} is not supported (epsilon only)")
        self.unet = load_pretrained(UNet2DConditionModel, config.model, subfolder="unet", torch_dtype=self.dtype)
        self.freeze(self.unet)
        if config.attention_slicing:
            self.unet.set_attention_slice("auto")
        self.place(device)

    def make_prompt_encoder(self) -> PromptEncoder:
        return T5PromptEncoder(self.config.model, cache_dir=self.config.prompt_cache, device=self.device, cache_tag="t5")

    def encode_renders(self, renders: Tensor, cond: Conditioning, generator: torch.Generator | None) -> Tensor:
        x = renders.to(self.device).float()
        S = self.config.resolution or int(self.unet.config.sample_size)
        if x.shape[-2:] != (S, S):
            x = F.interpolate(x, (S, S), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        cond.require("prompt", prior="DeepFloyd IF")
        text, uncond = cond.prompt.get(x_t.shape[0], cond.azimuth_deg, cond.elevation_deg)
        out = self.unet(torch.cat([x_t, x_t]).to(self.dtype), torch.cat([t, t]).to(self.device),
                        encoder_hidden_states=torch.cat([text, uncond]).to(self.device, self.dtype)).sample.float()
        eps = out[:, :3]  # the rest is the learned variance
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_cond, eps_uncond
