"""MVDream checkpoints: the published configs, the original (LDM) parameter names, and conversion to diffusers.

* the ``ashawkey/mvdream-sd2.1-diffusers`` layout, whose ``unet/`` is a custom ``MultiViewUNetModel`` with the
  original parameter names: its config is translated by :func:`unet_config_from_mvdream` and its weights by
  :func:`convert_mvdream_checkpoint`; the other folders are standard;
* the original checkpoint (``MVDream/MVDream`` ``sd-v2.1-base-4view.pt``, LDM names ``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.model.*``): :func:`convert_mvdream_checkpoint`, which reuses
  diffusers' own LDM converters (``diffusers.loaders.single_file_utils``).

:func:`unet_key_to_original` is the inverse map (diffusers name -> original name), used to check the converter on
the full published key list.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from torch import Tensor

from .. import Gen4DError
from ..models.registry import missing_weights_error, offline

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_PREFIX = "cond_stage_model.model."

# Published MVDream architecture (ashawkey/mvdream-sd2.1-diffusers unet/config.json, see bench/model_configs).
MVDREAM_SD21_UNET = {
    "attention_resolutions": [4, 2, 1],
    "camera_dim": 16,
    "channel_mult": [1, 2, 4, 4],
    "context_dim": 1024,
    "image_size": 32,
    "in_channels": 4,
    "model_channels": 320,
    "num_head_channels": 64,
    "num_res_blocks": 2,
    "out_channels": 4,
    "transformer_depth": 1,
}
MVDREAM_SD21_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}
MVDREAM_SD21_TEXT_ENCODER = {
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,  # OpenCLIP-H's penultimate layer, as SD 2.x uses it
    "max_position_embeddings": 77,
    "projection_dim": 512,
    "vocab_size": 49408,
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
MVDREAM_SD21_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
}



# ------------------------------------------------------------------------------------------ configs and keys
def unet_config_from_mvdream(cfg: dict[str, Any]) -> dict[str, Any]:
    """A ``MultiViewUNetModel`` config (original hyperparameter names) -> ``UNet2DConditionModel`` config.

    Levels whose downsampling factor is in ``attention_resolutions`` get cross-attention blocks; heads are
    ``channels // num_head_channels`` (diffusers' ``attention_head_dim`` is a head count for this model);
    transformers use linear projections (SD 2.x); GroupNorm has 32 groups as in LDM.
    """
    mc = cfg["model_channels"]
    mult = list(cfg["channel_mult"])
    attn_res = set(cfg["attention_resolutions"])
    channels = [mc * m for m in mult]
    if "num_head_channels" in cfg and cfg["num_head_channels"] not in (None, -1):
        heads = [c // cfg["num_head_channels"] for c in channels]
    else:
        heads = [cfg["num_heads"]] * len(channels)
    down = ["CrossAttnDownBlock2D" if 2**i in attn_res else "DownBlock2D" for i in range(len(mult))]
    up = ["CrossAttnUpBlock2D" if d.startswith("CrossAttn") else "UpBlock2D" for d in reversed(down)]
    return {
        "sample_size": cfg.get("image_size", 32),
        "in_channels": cfg.get("in_channels", 4),
        "out_channels": cfg.get("out_channels", 4),
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": channels,
        "layers_per_block": cfg["num_res_blocks"],
        "attention_head_dim": heads,
        "cross_attention_dim": cfg["context_dim"],
        "transformer_layers_per_block": cfg.get("transformer_depth", 1),
        "use_linear_projection": True,
        "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": cfg.get("camera_dim", 16),
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "center_input_sample": False,
    }


_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                  "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TOP_TO_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "class_embedding.linear_1": "camera_embed.0", "class_embedding.linear_2": "camera_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def unet_key_to_original(key: str, config: dict[str, Any]) -> str:
    """One diffusers ``UNet2DConditionModel`` parameter name -> its original MVDream (LDM) name, no prefix."""
    per = config["layers_per_block"] + 1
    parts = key.split(".")
    for d, o in _TOP_TO_LDM.items():
        if key.startswith(d + "."):
            return o + key[len(d):]

    def resnet(rest: list[str]) -> str:
        return ".".join([_RESNET_TO_LDM.get(rest[0], rest[0])] + rest[1:])

    if parts[0] == "down_blocks":
        b, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.X
            return f"input_blocks.{(b + 1) * per}.0.op." + ".".join(parts[5:])
        j = int(parts[3])
        idx = 1 + b * per + j
        if kind == "resnets":
            return f"input_blocks.{idx}.0." + resnet(parts[4:])
        if kind == "attentions":
            return f"input_blocks.{idx}.1." + ".".join(parts[4:])
    if parts[0] == "mid_block":
        if parts[1] == "resnets":
            return f"middle_block.{2 * int(parts[2])}." + resnet(parts[3:])
        if parts[1] == "attentions":
            return f"middle_block.{2 * int(parts[2]) + 1}." + ".".join(parts[3:])
    if parts[0] == "up_blocks":
        b, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":  # after the last resnet (and its attention, if the level has one)
            slot = 2 if config["up_block_types"][b].startswith("CrossAttn") else 1
            return f"output_blocks.{b * per + per - 1}.{slot}.conv." + ".".join(parts[5:])
        j = int(parts[3])
        idx = b * per + j
        if kind == "resnets":
            return f"output_blocks.{idx}.0." + resnet(parts[4:])
        if kind == "attentions":
            return f"output_blocks.{idx}.1." + ".".join(parts[4:])
    raise KeyError(f"no original name for U-Net parameter {key!r}")


def unet_state_dict_to_original(state_dict: dict[str, Tensor], config: dict[str, Any], prefix: str = LDM_UNET_PREFIX) -> dict[str, Tensor]:
    """A diffusers MVDream U-Net state dict -> the original checkpoint's names (inverse of the converter)."""
    return {prefix + unet_key_to_original(k, config): v for k, v in state_dict.items()}


# -------------------------------------------------------------------------------------------------- converter
def convert_mvdream_checkpoint(
    state_dict: dict[str, Tensor],
    unet_config: dict[str, Any],
    vae_config: dict[str, Any] | None = None,
    text_hidden_size: int = 1024,
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, dict[str, Tensor] | None]:
    """Original MVDream state dict -> diffusers state dicts ``(unet, vae or None, text_encoder or None)``.

    The U-Net keys may carry the LDM prefix ``model.diffusion_model.`` (original ``.pt``) or none
    (``MultiViewUNetModel`` weights). ``camera_embed.{0,2}`` is renamed to LDM's ``label_emb.0.{0,2}``, which
    diffusers' ``convert_ldm_unet_checkpoint`` maps to ``class_embedding.linear_{1,2}`` for
    ``class_embed_type="projection"``. The VAE (``first_stage_model.*``) goes through ``convert_ldm_vae_checkpoint``
    (default config: SD 2.1's) and the OpenCLIP text tower (``cond_stage_model.model.*``) through
    ``convert_open_clip_checkpoint`` (its last block and ``text_projection`` are dropped, as SD 2.x does).
    """
    has_prefix = any(k.startswith(LDM_UNET_PREFIX) for k in state_dict)
    unet_in: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if has_prefix:
            if not k.startswith(LDM_UNET_PREFIX):
                continue
            k = k[len(LDM_UNET_PREFIX):]
        elif k.startswith((LDM_VAE_PREFIX, LDM_TEXT_PREFIX)):
            continue
        if k.startswith("camera_embed."):
            k = "label_emb.0." + k[len("camera_embed."):]
        unet_in[LDM_UNET_PREFIX + k] = v
    if not unet_in:
        raise Gen4DError("no MVDream U-Net weights found (expected keys 'model.diffusion_model.*' or 'input_blocks.*')")
    config = dict(unet_config)
    config.setdefault("class_embed_type", "projection")
    unet_sd = convert_ldm_unet_checkpoint(unet_in, config)
    if len(unet_sd) != len(unet_in):
        mapped = {unet_key_to_original(k, config) for k in unet_sd}
        lost = sorted(k[len(LDM_UNET_PREFIX):] for k in unet_in
                      if k[len(LDM_UNET_PREFIX):].replace("label_emb.0.", "camera_embed.") not in mapped)
        raise Gen4DError(f"{len(unet_in) - len(unet_sd)} MVDream U-Net weights were not converted, e.g. {lost[:5]}")

    vae_sd = None
    if any(k.startswith(LDM_VAE_PREFIX) for k in state_dict):
        vae_in = {k: v for k, v in state_dict.items() if k.startswith(LDM_VAE_PREFIX)}
        vae_sd = convert_ldm_vae_checkpoint(vae_in, dict(vae_config or MVDREAM_SD21_VAE))

    text_sd = None
    if any(k.startswith(LDM_TEXT_PREFIX) for k in state_dict):
        text_in = {k: v for k, v in state_dict.items() if k.startswith(LDM_TEXT_PREFIX)}
        shim = SimpleNamespace(config=SimpleNamespace(hidden_size=text_hidden_size))
        text_sd = convert_open_clip_checkpoint(shim, text_in, prefix=LDM_TEXT_PREFIX)
    return unet_sd, vae_sd, text_sd


def load_strict(model, sd: dict[str, Tensor], what: str) -> None:
    result = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise Gen4DError(f"{what}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                         f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise Gen4DError(f"{what}: {name} was not loaded")


def unet_from_original(state_dict: dict[str, Tensor], mvdream_config: dict[str, Any] | None = None):
    """A ``UNet2DConditionModel`` holding original-layout MVDream U-Net weights."""
    config = unet_config_from_mvdream(mvdream_config or MVDREAM_SD21_UNET)
    unet_sd, _, _ = convert_mvdream_checkpoint(state_dict, config)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    load_strict(unet, unet_sd, "MVDream U-Net")
    return unet


# ------------------------------------------------------------------------------------------------ file helpers
def download_checkpoint(name: str, repo: str, filename: str) -> Path:
    try:
        return Path(hf_hub_download(repo, filename, local_files_only=offline()))
    except (OSError, ValueError) as e:  # missing from the cache, or no network (hub errors are OSErrors)
        raise missing_weights_error(name, repo, type(e).__name__) from None


def load_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.exists():
        raise Gen4DError(f"MVDream checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def read_unet_config(repo: str) -> dict[str, Any]:
    """The unet config.json of a local folder or a cached Hub repo ({} when it cannot be read)."""
    p = Path(repo) / "unet" / "config.json"
    if not p.exists() and not Path(repo).exists():
        try:
                    p = Path(hf_hub_download(repo, "unet/config.json", local_files_only=offline()))
        except (OSError, ValueError):
            return {}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def read_unet_weights(repo: str) -> dict[str, Tensor]:
    names = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
    for name in names:
        p = Path(repo) / "unet" / name
        if not p.exists() and not Path(repo).exists():
            try:
                            p = Path(hf_hub_download(repo, f"unet/{name}", local_files_only=offline()))
            except (OSError, ValueError):  # this file name is absent: try the next
                continue
        if p.exists():
            return load_state_dict(p)
    raise missing_weights_error(repo, repo, "unet weights")
