"""A tiny random-weight Zero123 in the diffusers layout of the published ports (same classes, tiny sizes)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler

from ..guidance.zero123 import CLIPCameraProjection
from .components import tiny_clip_vision, tiny_unet2d, tiny_vae, write_model_index


def make_tiny_zero123(folder: str | Path, seed: int = 0, embed_dim: int = 32) -> Path:
    """Save ``unet`` / ``vae`` / ``image_encoder`` / ``clip_camera_projection`` / ``scheduler`` / ``model_index.json``
    under ``folder`` (VAE downsampling 8, CLIP image_size 32, projection_dim ``embed_dim``); returns the folder."""


    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = tiny_unet2d(sample_size=32, in_channels=8, cross_attention_dim=embed_dim, norm_num_groups=32)
    vae = tiny_vae(sample_size=256)
    clip = tiny_clip_vision(image_size=32, patch_size=8, projection_dim=embed_dim, hidden_act="quick_gelu")
    proj = CLIPCameraProjection(embedding_dim=embed_dim, additional_embeddings=4)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        num_train_timesteps=1000, prediction_type="epsilon", set_alpha_to_one=False, steps_offset=1,
    )
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    clip.save_pretrained(folder / "image_encoder")
    proj.save_pretrained(folder / "clip_camera_projection")
    scheduler.save_pretrained(folder / "scheduler")
    write_model_index(
        folder,
        "Zero123Pipeline",
        {
            "clip_camera_projection": ("zero123", "CLIPCameraProjection"),
            "image_encoder": ("transformers", "CLIPVisionModelWithProjection"),
            "scheduler": ("diffusers", "DDIMScheduler"),
            "unet": ("diffusers", "UNet2DConditionModel"),
            "vae": ("diffusers", "AutoencoderKL"),
        },
    )
    return folder
