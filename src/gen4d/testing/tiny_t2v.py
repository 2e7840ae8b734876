"""A tiny text-to-video model (UNet3D + VAE + CLIP text encoder + DDPM schedule) in the diffusers layout.

Same classes as ZeroScope / ModelScope (``UNet3DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel``,
``CLIPTokenizer``), random weights, channels cut down so that a forward pass on a few frames takes milliseconds on
a CPU. Loaded back through :func:`gen4d.models.registry.load_pretrained` exactly like the real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet3DConditionModel

from .components import TINY_TEXT_DIM, save_latent_diffusion_stack


def make_tiny_t2v(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random text-to-video model to ``folder`` (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet3DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=8,
    )
    unet.save_pretrained(folder / "unet")
    save_latent_diffusion_stack(folder, seed, "TextToVideoSDPipeline", "UNet3DConditionModel")
    return folder
