"""A tiny SD 1.5-like model plus a ControlNet matching its U-Net, in the diffusers layout.

``folder/`` holds unet/, vae/, text_encoder/, tokenizer/, scheduler/ and model_index.json like
``stable-diffusion-v1-5``; ``folder/controlnet/`` holds a ``ControlNetModel`` built from the tiny U-Net (same
channels, cross-attention width and heads), as ``lllyasviel/control_v11f1e_sd15_tile`` is for SD 1.5.

A freshly initialised ControlNet has zero convolutions on every residual it hands to the U-Net, so it would not
change any prediction; the tiny one re-initialises them with small random weights so that tests can see the
control signal.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers import ControlNetModel

from .components import save_latent_diffusion_stack, tiny_unet2d


def _unzero(module: torch.nn.Module, std: float, generator: torch.Generator) -> None:
    for p in module.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=generator) * std)


def make_tiny_sd15_controlnet(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny SD 1.5 model to ``folder`` and its ControlNet to ``folder/controlnet``; returns ``folder``."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = tiny_unet2d()
    unet.save_pretrained(folder / "unet")
    # four conditioning blocks: the control image is downsampled by 8, like the latents
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    g = torch.Generator().manual_seed(seed + 3)
    _unzero(controlnet.controlnet_cond_embedding.conv_out, 0.05, g)
    _unzero(controlnet.controlnet_down_blocks, 0.05, g)
    _unzero(controlnet.controlnet_mid_block, 0.05, g)
    controlnet.save_pretrained(folder / "controlnet")
    save_latent_diffusion_stack(folder, seed, "StableDiffusionPipeline", "UNet2DConditionModel")
    return folder


def make_tiny_controlnet_tile(folder: str | Path, seed: int = 0) -> Path:
    """The tiny SD 1.5 stack with its ControlNet also at the folder's root, where a ControlNet repository
    (``lllyasviel/control_v11f1e_sd15_tile``) keeps it, so that ``--models tiny`` loads it from the registry name."""
    folder = make_tiny_sd15_controlnet(folder, seed)
    for f in (folder / "controlnet").iterdir():
        shutil.copy2(f, folder / f.name)
    return folder
