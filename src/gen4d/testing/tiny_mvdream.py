"""A tiny random-weight MVDream in the diffusers layout (same classes as the real one, kilobytes of weights).

``unet/``: ``UNet2DConditionModel`` with the projection class embedding (the camera MLP), built from a
``MultiViewUNetModel``-style config by :func:`gen4d.guidance.mvdream.unet_config_from_mvdream` (three levels,
the last without attention, like MVDream's); ``vae/``: ``AutoencoderKL`` with 4 levels (8x downsampling, as SD);
``text_encoder/``: ``CLIPTextModel``; ``tokenizer/``: the tiny CLIP tokenizer; ``scheduler/``: ``DDIMScheduler``
with MVDream's betas. ``unet_layout="mvdream"`` writes the U-Net instead as ashawkey/mvdream-sd2.1-diffusers
does: ``_class_name: MultiViewUNetModel`` and the original parameter names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from ..guidance.mvdream_checkpoint import MVDREAM_SD21_SCHEDULER, unet_config_from_mvdream, unet_state_dict_to_original
from .components import tiny_vae
from .tokenizer import tiny_vocab, write_tiny_clip_tokenizer

TINY_MVDREAM_UNET = {
    "attention_resolutions": [1, 2],
    "camera_dim": 16,
    "channel_mult": [1, 2, 2],
    "context_dim": 32,
    "image_size": 8,
    "in_channels": 4,
    "model_channels": 32,
    "num_head_channels": 16,
    "num_res_blocks": 1,
    "out_channels": 4,
    "transformer_depth": 1,
}


def tiny_mvdream_unet(seed: int = 0):
    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config(unet_config_from_mvdream(TINY_MVDREAM_UNET))


def make_tiny_mvdream(folder: str | Path, seed: int = 0, unet_layout: str = "diffusers") -> Path:
    """Write a tiny MVDream to ``folder`` (diffusers layout) and return the folder."""


    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet = tiny_mvdream_unet(seed)
    # Random init leaves the output conv and some projections at zero in places; perturb everything so the
    # tiny model's predictions depend on every input (cameras included).
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    if unet_layout == "diffusers":
        unet.save_pretrained(folder / "unet")
    elif unet_layout == "mvdream":
        (folder / "unet").mkdir(parents=True, exist_ok=True)
        sd = unet_state_dict_to_original(unet.state_dict(), dict(unet.config), prefix="")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
        (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "MultiViewUNetModel", **TINY_MVDREAM_UNET}, indent=2))
    else:
        raise ValueError(f"unet_layout must be 'diffusers' or 'mvdream', got {unet_layout!r}")

    torch.manual_seed(seed + 2)
    vae = tiny_vae(block_out_channels=(8, 8, 16, 16))
    vae.save_pretrained(folder / "vae")

    vocab = tiny_vocab()
    torch.manual_seed(seed + 3)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=TINY_MVDREAM_UNET["context_dim"],
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            hidden_act="gelu",
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    text_encoder.save_pretrained(folder / "text_encoder")
    write_tiny_clip_tokenizer(folder / "tokenizer")
    DDIMScheduler(**MVDREAM_SD21_SCHEDULER).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"] if unet_layout == "diffusers" else ["mv_unet", "MultiViewUNetModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
