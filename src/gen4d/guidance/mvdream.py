"""MVDream (Shi et al. 2023): a multi-view diffusion prior built from stock diffusers parts.

MVDream is the Stable Diffusion 2.1 U-Net with two changes, both expressed here without any custom model class:

* **Camera embedding.** A 2-layer MLP (``Linear(16, 4c) - SiLU - Linear(4c, 4c)``, ``camera_embed`` in the
  original code) of the flattened 4x4 camera-to-world matrix is added to the timestep embedding. This is exactly
  diffusers' ``UNet2DConditionModel(class_embed_type="projection", projection_class_embeddings_input_dim=16)``:
  ``class_embedding`` is a ``TimestepEmbedding(16, 4c)`` (``linear_1 - SiLU - linear_2``) whose output is added
  to the time embedding; the cameras are passed as ``class_labels``.
* **Joint multi-view self-attention.** Each transformer block's self-attention sees the tokens of all V views
  of one object: ``[B*V, L, C] -> [B, V*L, C]`` before attending, back after. :class:`MultiViewAttnProcessor`
  does this as a diffusers attention processor set on every ``attn1``; cross-attention (``attn2``) is untouched.
  LayerNorm (``norm1``) is per token, so reshaping inside the processor equals reshaping before the norm, as the
  original ``BasicTransformerBlock3D`` does.

Batches are **object-major**: sample ``i`` is view ``i % V`` of object ``i // V``.

Cameras
-------
MVDream's training cameras (``mvdream/camera_utils.py``, ``get_camera(..., blender_coord=True)``) are
camera-to-world matrices with **OpenGL camera axes** (+x right, +y up, camera looks along -z) in a **z-up**,
right-handed world (a y-up construction rotated by ``flip_yz``), with the camera position normalised to the unit
sphere (``normalize_camera``). gen4d's world is also z-up and right-handed, so :func:`mvdream_camera` keeps the
world frame, flips the camera's y and z axes (OpenCV -> OpenGL, :func:`gen4d.cameras.opengl_to_opencv`), divides
the translation by its norm and flattens row-major to 16 numbers. Azimuths differ by a constant only: MVDream's
azimuth ``a`` puts the camera at ``(sin a, -cos a)`` (azimuth 0 looks along +y from -y), gen4d's
:func:`gen4d.cameras.orbit_eye` puts azimuth ``phi`` at ``(cos phi, sin phi)``, so ``a = phi + 90``: the camera
``orbit_c2w(a - 90, e, r)`` converts to exactly MVDream's ``get_camera`` matrix for azimuth ``a``, elevation ``e``.

Weights
-------
* diffusers layout (``unet/`` a ``UNet2DConditionModel`` with the projection class embedding, plus ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``): loaded with ``from_pretrained`` via ``load_pretrained``.
* the ``ashawkey/mvdream-sd2.1-diffusers`` layout, whose ``unet/`` is a custom ``MultiViewUNetModel`` with the
  original parameter names: its config is translated by :func:`unet_config_from_mvdream` and its weights by
  :func:`convert_mvdream_checkpoint`; the other folders are standard.
* the original checkpoint (``MVDream/MVDream`` ``sd-v2.1-base-4view.pt``, LDM names ``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.model.*``): :func:`convert_mvdream_checkpoint`, which reuses
  diffusers' own LDM converters (``diffusers.loaders.single_file_utils``); the tokenizer (not in the checkpoint)
  comes from SD 2.1 base (``MVDreamConfig.tokenizer_model``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import Gen4DError
from ..cameras import opengl_to_opencv
from .base import DiffusionGuidance, GuidanceConfig
from .prompts import encode_prompt
from .registry import load_pretrained, missing_weights_error, offline, resolve

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_PREFIX = "cond_stage_model.model."

# Published MVDream architecture (ashawkey/mvdream-sd2.1-diffusers unet/config.json, see shared/model_configs).
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


# ---------------------------------------------------------------------------------------------------- cameras
def mvdream_camera(c2w: Tensor) -> Tensor:
    """gen4d OpenCV camera-to-world ``[N, 4, 4]`` -> MVDream camera conditioning ``[N, 16]`` (see module doc)."""
    gl = opengl_to_opencv(c2w.double())  # the axis flip is an involution: OpenCV -> OpenGL
    t = gl[..., :3, 3]
    gl = gl.clone()
    gl[..., :3, 3] = t / (t.norm(dim=-1, keepdim=True) + 1e-8)
    return gl.reshape(*c2w.shape[:-2], 16).to(torch.float32)


# --------------------------------------------------------------------------------------------------- attention
class MultiViewAttnProcessor:
    """Self-attention over the tokens of all ``num_views`` views of each object (MVDream's 3D attention).

    Hidden states ``[B*V, L, C]`` are regrouped to ``[B, V*L, C]``, attended with
    ``F.scaled_dot_product_attention`` and regrouped back. ``num_views = 1`` is plain self-attention.
    With ``encoder_hidden_states`` (cross-attention) the views are not joined.
    """

    def __init__(self, num_views: int = 4):
        self.num_views = int(num_views)

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            n, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(n, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        n, length, _ = hidden_states.shape
        views = self.num_views if encoder_hidden_states is None else 1
        if n % views:
            raise ValueError(f"batch of {n} images is not a whole number of {views}-view groups")
        if attention_mask is not None and views > 1:
            raise NotImplementedError("attention masks are not supported with joint multi-view attention")

        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)

        groups = n // views
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        # [B*V, L, C] -> [B, V*L, heads, d] -> [B, heads, V*L, d]
        query = query.reshape(groups, -1, heads, head_dim).transpose(1, 2)
        key = key.reshape(groups, -1, heads, head_dim).transpose(1, 2)
        value = value.reshape(groups, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[2], n)
            attention_mask = attention_mask.view(n, heads, -1, attention_mask.shape[-1])

        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, scale=attn.scale)
        out = out.transpose(1, 2).reshape(n, length, heads * head_dim).to(query.dtype)  # back to [B*V, L, C]
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(n, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def set_multiview_attention(unet, num_views: int) -> None:
    """Put a :class:`MultiViewAttnProcessor` on every self-attention (``attn1``) and SDPA on the rest."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    procs = {}
    for name in unet.attn_processors:
        procs[name] = MultiViewAttnProcessor(num_views) if name.endswith("attn1.processor") else AttnProcessor2_0()
    unet.set_attn_processor(procs)


def set_num_views(unet, num_views: int) -> None:
    """Change the view count of the multi-view processors already set on ``unet``."""
    for proc in unet.attn_processors.values():
        if isinstance(proc, MultiViewAttnProcessor):
            proc.num_views = int(num_views)


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
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

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


def _load_strict(model, sd: dict[str, Tensor], what: str) -> None:
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
    from diffusers import UNet2DConditionModel

    config = unet_config_from_mvdream(mvdream_config or MVDREAM_SD21_UNET)
    unet_sd, _, _ = convert_mvdream_checkpoint(state_dict, config)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    _load_strict(unet, unet_sd, "MVDream U-Net")
    return unet


# --------------------------------------------------------------------------------------------------- guidance
@dataclass
class MVDreamConfig(GuidanceConfig):
    """MVDream prior settings (defaults: the MVDream paper's SDS recipe)."""

    model: str = "mvdream"
    guidance_scale: float = 50.0
    weighting: str = "x0"
    std_rescale: float = 0.5
    num_views: int = 4
    """Views per object V; batches are object-major."""
    resolution: int = 256
    """Images are resized to this square size before encoding (MVDream was trained at 256)."""
    tokenizer_model: str = "sd21"
    """Where the tokenizer comes from when the weights are the original checkpoint (which has none)."""


class MVDreamGuidance(DiffusionGuidance):
    """Multi-view SDS with MVDream. Build with :meth:`from_pretrained` (any supported layout) or from modules."""

    offload_plan = {"unet": ("forward",), "vae": ("encode", "decode"), "text_encoder": ("forward",)}

    def __init__(self, config: MVDreamConfig, unet, vae, text_encoder, tokenizer, scheduler):
        super().__init__(config, scheduler.alphas_cumprod)
        if getattr(unet.config, "class_embed_type", None) != "projection":
            raise Gen4DError("the MVDream U-Net needs class_embed_type='projection' (the camera embedding)")
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.freeze(unet, vae, text_encoder)
        dtype = self.dtype
        self.vae_dtype = torch.float32 if (dtype == torch.float16 and getattr(vae.config, "force_upcast", False)) else dtype
        for module, want in ((unet, dtype), (text_encoder, dtype), (vae, self.vae_dtype)):
            if next(module.parameters()).dtype != want:
                module.to(want)
        if config.vae_slicing:
            vae.enable_slicing()
        # attention_slicing does not apply: the multi-view processors already use SDPA.
        set_multiview_attention(unet, config.num_views)

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, config: MVDreamConfig | None = None, **overrides) -> MVDreamGuidance:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        config = config or MVDreamConfig(**overrides)
        repo, spec = resolve(config.model)
        path = Path(repo)
        original = None
        if path.is_file():
            original = path
        elif spec is not None and spec.file is not None and not path.exists():
            original = _download(config.model, repo, spec.file)
        if original is not None:
            return cls.from_original_checkpoint(original, config)

        unet_cfg = _read_unet_config(repo)
        if unet_cfg.get("_class_name") == "MultiViewUNetModel":
            unet = unet_from_original(_read_unet_weights(repo), unet_cfg)
        else:
            unet = load_pretrained(UNet2DConditionModel, repo, subfolder="unet")
        vae = load_pretrained(AutoencoderKL, repo, subfolder="vae")
        text_encoder = load_pretrained(CLIPTextModel, repo, subfolder="text_encoder")
        tokenizer = load_pretrained(CLIPTokenizer, repo, subfolder="tokenizer")
        scheduler = load_pretrained(DDIMScheduler, repo, subfolder="scheduler")
        return cls(config, unet, vae, text_encoder, tokenizer, scheduler)

    @classmethod
    def from_original_checkpoint(cls, checkpoint: str | Path | dict[str, Tensor], config: MVDreamConfig | None = None) -> MVDreamGuidance:
        """Build from the original ``sd-v2.1-base-4view.pt`` (a file or an already loaded state dict)."""
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        config = config or MVDreamConfig()
        sd = checkpoint if isinstance(checkpoint, dict) else _load_state_dict(Path(checkpoint))
        unet_config = unet_config_from_mvdream(MVDREAM_SD21_UNET)
        unet_sd, vae_sd, text_sd = convert_mvdream_checkpoint(sd, unet_config, MVDREAM_SD21_VAE)
        if vae_sd is None or text_sd is None:
            raise Gen4DError("the MVDream checkpoint lacks the VAE (first_stage_model.*) or text encoder (cond_stage_model.model.*)")
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(unet_config)
            vae = AutoencoderKL.from_config(MVDREAM_SD21_VAE)
        _load_strict(unet, unet_sd, "MVDream U-Net")
        _load_strict(vae, vae_sd, "MVDream VAE")
        text_encoder = CLIPTextModel(CLIPTextConfig(**MVDREAM_SD21_TEXT_ENCODER))
        _load_strict(text_encoder, text_sd, "MVDream text encoder")
        tokenizer = load_pretrained(CLIPTokenizer, config.tokenizer_model, subfolder="tokenizer")
        scheduler = DDIMScheduler(**MVDREAM_SD21_SCHEDULER)
        return cls(config, unet, vae, text_encoder, tokenizer, scheduler)

    # ----------------------------------------------------------------------------------------- networks
    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @torch.no_grad()
    def encode_text(self, prompts: list[str] | str) -> Tensor:
        """Prompts -> text embeddings ``[P, 77, D]`` (SD 2.x: last hidden state of the truncated tower)."""
        return encode_prompt(self.tokenizer, self.text_encoder, prompts)

    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> latents (differentiable w.r.t. the images)."""
        size = self.config.resolution
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False)
        x = (2.0 * images - 1.0).to(self.vae_dtype)
        posterior = self.vae.encode(x).latent_dist
        return (posterior.sample(generator) * self.vae.config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def predict_noise(self, latents_noisy: Tensor, t: Tensor, text: Tensor, cameras: Tensor, num_views: int) -> Tensor:
        """U-Net noise prediction; all arguments already batched to the same N (a multiple of ``num_views``)."""
        set_num_views(self.unet, num_views)
        return self.unet(latents_noisy.to(self.dtype), t, encoder_hidden_states=text.to(self.dtype),
                         class_labels=cameras.to(self.dtype)).sample

    # ------------------------------------------------------------------------------------------------ SDS
    def __call__(self, images: Tensor, text_embeddings: tuple[Tensor, Tensor], c2w: Tensor, step: int,
                 generator: torch.Generator | None = None, num_views: int | None = None) -> dict[str, Tensor]:
        """Multi-view SDS loss.

        images: ``[B*V, 3, H, W]`` in [0, 1], object-major. text_embeddings: ``(cond, uncond)``, each
        ``[1 | B | B*V, 77, D]``. c2w: ``[B*V, 4, 4]`` gen4d (OpenCV) camera-to-world. Returns ``{"loss_sds"}``.
        """
        V = int(num_views or self.config.num_views)
        N = images.shape[0]
        if N % V:
            raise ValueError(f"{N} images are not a multiple of num_views={V}")
        B = N // V
        if c2w.shape[0] != N:
            raise ValueError(f"c2w has {c2w.shape[0]} cameras for {N} images")
        cond, uncond = (self._per_image(e, B, V) for e in text_embeddings)
        cameras = mvdream_camera(c2w).to(self.device)

        latents = self.encode_images(images, generator)
        with torch.no_grad():
            t = self.sample_timesteps(step, B, generator).repeat_interleave(V)
            eps = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
            x_t = self.add_noise(latents.detach(), eps, t)
            noise = self.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]),
                                       torch.cat([cameras, cameras]), V)
            eps_cond, eps_uncond = noise.float().chunk(2)
            eps_hat = self.guide(eps_uncond, eps_cond, self.config.guidance_scale)
        loss = self.distillation_loss(latents.float(), x_t.float(), eps.float(), eps_hat, t, eps_cond=eps_cond, group=V)
        return {"loss_sds": loss}

    def _per_image(self, emb: Tensor, B: int, V: int) -> Tensor:
        emb = emb.to(self.device)
        if emb.shape[0] == B * V:
            return emb
        if emb.shape[0] == 1:
            return emb.expand(B * V, *emb.shape[1:])
        if emb.shape[0] == B:
            return emb.repeat_interleave(V, dim=0)
        raise ValueError(f"text embeddings for {emb.shape[0]} prompts do not fit {B} objects x {V} views")


# ------------------------------------------------------------------------------------------------ file helpers
def _download(name: str, repo: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=offline()))
    except (OSError, ValueError) as e:  # missing from the cache, or no network (hub errors are OSErrors)
        raise missing_weights_error(name, repo, type(e).__name__) from None


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.exists():
        raise Gen4DError(f"MVDream checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def _read_unet_config(repo: str) -> dict[str, Any]:
    """The unet config.json of a local folder or a cached Hub repo ({} when it cannot be read)."""
    p = Path(repo) / "unet" / "config.json"
    if not p.exists() and not Path(repo).exists():
        try:
            from huggingface_hub import hf_hub_download

            p = Path(hf_hub_download(repo, "unet/config.json", local_files_only=offline()))
        except (OSError, ValueError):
            return {}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def _read_unet_weights(repo: str) -> dict[str, Tensor]:
    names = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
    for name in names:
        p = Path(repo) / "unet" / name
        if not p.exists() and not Path(repo).exists():
            try:
                from huggingface_hub import hf_hub_download

                p = Path(hf_hub_download(repo, f"unet/{name}", local_files_only=offline()))
            except (OSError, ValueError):  # this file name is absent: try the next
                continue
        if p.exists():
            return _load_state_dict(p)
    raise missing_weights_error(repo, repo, "unet weights")


__all__ = [
    "MVDreamConfig",
    "MVDreamGuidance",
    "MultiViewAttnProcessor",
    "convert_mvdream_checkpoint",
    "mvdream_camera",
    "set_multiview_attention",
    "set_num_views",
    "unet_config_from_mvdream",
    "unet_from_original",
    "unet_state_dict_to_original",
]
