"""A tiny random-weight Stable Diffusion 2.1 look-alike, saved in the diffusers pipeline layout.

Same classes as the real model (``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel``, ``CLIPTokenizer``,
``DDPMScheduler`` with the SD 2.1 base noise schedule), so the loading and guidance code is exercised exactly as
with real weights; only the sizes differ. The VAE downsamples 2x and the UNet works on 8x8 latents, so the model
resolution is 16x16 pixels. Outputs are meaningless.

``make_tiny_sd(folder)`` writes ``unet/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json``;
``tiny_model_dir("sd21")`` builds it once under the gen4d cache and returns the folder (used by ``--models tiny``).
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, DDPMScheduler
from transformers import CLIPTextConfig, CLIPTextModel

from .components import TINY_TEXT_DIM, tiny_unet2d
from .tokenizer import SPECIAL, tiny_vocab, write_tiny_clip_tokenizer


def _seeded(seed: int):
    torch.manual_seed(seed)


def make_tiny_sd(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny SD kit with fixed seeds and save it under ``folder`` (diffusers pipeline layout)."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    rng_state = torch.random.get_rng_state()
    try:
        _seeded(seed)
        unet = tiny_unet2d(use_linear_projection=True)  # as SD 2.x
        _seeded(seed + 1)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16,
            scaling_factor=0.18215,
        )
        _seeded(seed + 2)
        vocab = tiny_vocab()
        text_config = CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=TINY_TEXT_DIM,
            intermediate_size=37,
            projection_dim=TINY_TEXT_DIM,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            hidden_act="gelu",
            bos_token_id=vocab[SPECIAL[0]],
            eos_token_id=vocab[SPECIAL[1]],
            pad_token_id=vocab[SPECIAL[1]],
        )
        text_encoder = CLIPTextModel(text_config).eval()
    finally:
        torch.random.set_rng_state(rng_state)

    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )

    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    write_tiny_clip_tokenizer(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "_transformers_version": transformers.__version__,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
