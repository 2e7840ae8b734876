"""A tiny random-weight Stable Video Diffusion img2vid in the diffusers pipeline layout (same classes, tiny sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel

from .components import tiny_clip_vision, write_model_index

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def make_tiny_svd(folder: str | Path, seed: int = 0) -> Path:
    """Save ``unet`` / ``vae`` / ``image_encoder`` / ``scheduler`` / ``feature_extractor`` / ``model_index.json``
    under ``folder``: VAE downsampling 8, CLIP image_size 224 (the size the pipeline resizes to), published scheduler."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=(2, 4),
        num_frames=14,
    )
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.18215,
    )
    clip = tiny_clip_vision(image_size=224, patch_size=32, hidden_act="gelu")
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type="v_prediction", interpolation_type="linear", sigma_max=700.0, sigma_min=0.002,
        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
    )
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    clip.save_pretrained(folder / "image_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    fe = folder / "feature_extractor"
    fe.mkdir(exist_ok=True)
    (fe / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": _CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": _CLIP_STD,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 224},
    }, indent=2))
    write_model_index(
        folder,
        "StableVideoDiffusionPipeline",
        {
            "feature_extractor": ("transformers", "CLIPImageProcessor"),
            "image_encoder": ("transformers", "CLIPVisionModelWithProjection"),
            "scheduler": ("diffusers", "EulerDiscreteScheduler"),
            "unet": ("diffusers", "UNetSpatioTemporalConditionModel"),
            "vae": ("diffusers", "AutoencoderKLTemporalDecoder"),
        },
    )
    return folder
