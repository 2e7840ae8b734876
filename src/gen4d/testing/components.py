"""Building blocks shared by the tiny-model kits: a tiny 2D U-Net, VAE, CLIP text encoder, DDPM schedule and the
``model_index.json`` writer. Same classes as the published models, channels cut down."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from .tokenizer import tiny_vocab, write_tiny_clip_tokenizer

TINY_TEXT_DIM = 32
TINY_MAX_LENGTH = 32


def tiny_text_encoder_config(hidden_size: int = TINY_TEXT_DIM, max_length: int = TINY_MAX_LENGTH):
    vocab = tiny_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        hidden_act="quick_gelu",
        projection_dim=hidden_size,
    )


def tiny_vae(sample_size: int = 64, block_out_channels: tuple[int, ...] = (8, 8, 8, 8)):
    """AutoencoderKL with four encoder blocks (downsampling by 8, as in SD), 8 channels everywhere by default."""

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=sample_size,
        scaling_factor=0.18215,
    )


def tiny_ddpm_scheduler():
    """The SD / ModelScope schedule: scaled-linear betas 0.00085 .. 0.012 over 1000 steps."""

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
    )


def save_text_components(folder: Path, seed: int) -> None:
    torch.manual_seed(seed + 1)
    write_tiny_clip_tokenizer(folder / "tokenizer", model_max_length=TINY_MAX_LENGTH)
    CLIPTextModel(tiny_text_encoder_config()).save_pretrained(folder / "text_encoder")


def write_model_index(folder: Path, pipeline: str, components: dict[str, tuple[str, str]]) -> None:
    index = {"_class_name": pipeline, "_diffusers_version": "0.42.1"}
    index.update({k: list(v) for k, v in components.items()})
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))




def tiny_unet2d(**overrides):
    """A two-level ``UNet2DConditionModel`` (cross-attention on the outer level); keyword arguments override."""

    kwargs = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    kwargs.update(overrides)
    return UNet2DConditionModel(**kwargs)


def save_latent_diffusion_stack(folder: Path, seed: int, pipeline: str, unet_class: str) -> None:
    """Save the tiny VAE, text encoder + tokenizer and DDPM schedule beside an already saved ``unet/``, and the
    ``model_index.json`` of ``pipeline`` (SD-style layout: scheduler, text_encoder, tokenizer, unet, vae)."""
    torch.manual_seed(seed + 2)
    tiny_vae().save_pretrained(folder / "vae")
    save_text_components(folder, seed)
    tiny_ddpm_scheduler().save_pretrained(folder / "scheduler")
    write_model_index(
        folder,
        pipeline,
        {
            "scheduler": ("diffusers", "DDPMScheduler"),
            "text_encoder": ("transformers", "CLIPTextModel"),
            "tokenizer": ("transformers", "CLIPTokenizer"),
            "unet": ("diffusers", unet_class),
            "vae": ("diffusers", "AutoencoderKL"),
        },
    )


def tiny_clip_vision(**overrides):
    """A two-layer ``CLIPVisionModelWithProjection`` (width 32); keyword arguments override the config."""

    kwargs = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    kwargs.update(overrides)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**kwargs))
