"""MVDream's U-Net surgery: joint multi-view self-attention as a diffusers attention processor.

Each transformer block's self-attention sees the tokens of all V views of one object: ``[B*V, L, C] -> [B, V*L, C]``
before attending, back after. :class:`MultiViewAttnProcessor` does this on every ``attn1``; cross-attention
(``attn2``) is untouched. LayerNorm (``norm1``) is per token, so reshaping inside the processor equals reshaping
before the norm, as the original ``BasicTransformerBlock3D`` does. The camera embedding needs no surgery: it is
diffusers' ``class_embed_type="projection"`` (see :mod:`gen4d.guidance.mvdream`).
"""

from __future__ import annotations

import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import Tensor


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
    procs = {}
    for name in unet.attn_processors:
        procs[name] = MultiViewAttnProcessor(num_views) if name.endswith("attn1.processor") else AttnProcessor2_0()
    unet.set_attn_processor(procs)


def set_num_views(unet, num_views: int) -> None:
    """Change the view count of the multi-view processors already set on ``unet``."""
    for proc in unet.attn_processors.values():
        if isinstance(proc, MultiViewAttnProcessor):
            proc.num_views = int(num_views)
