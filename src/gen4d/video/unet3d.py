"""Two run-time changes to diffusers' ``UNet3DConditionModel`` without copying its model file.

Skipping the temporal layers
----------------------------
MotionDirector's spatial path feeds one frame as a 1-frame video and runs the UNet with every temporal layer
skipped: its patched UNet3D bypasses ``transformer_in``, each ``temp_attentions`` transformer **and** each
``temp_convs`` layer when ``num_frames == 1`` (``use_temporal`` in its ``unet_3d_blocks.py``). All three are
residual (``x + f(x)``), so skipping one means returning its input. :func:`skip_temporal_layers` does the same
for a stock diffusers UNet by replacing those modules' ``forward`` with an identity for the duration of a
``with`` block. We skip ``temp_convs`` too, as MotionDirector does: the spatial path is then exactly the
text-to-image model inside the video model, the one the spatial LoRA is meant to adapt; with one frame a
temporal convolution (zero-padded in time) and a temporal attention (a softmax over one key) are not
identities, so running them would make that path see a different network.

Gradient checkpointing
----------------------
diffusers 0.42.1 declares ``UNet3DConditionModel._supports_gradient_checkpointing = False``
(``enable_gradient_checkpointing`` raises), and its 3D blocks never read their ``gradient_checkpointing``
flag. :func:`enable_gradient_checkpointing` wraps the ``forward`` of every ResNet, temporal convolution, spatial
transformer and temporal transformer (and ``transformer_in``), MotionDirector's granularity, with
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: activations inside each are recomputed in the
backward pass instead of stored. The random state is restored for the recomputation, so dropout masks (LoRA
dropout, the temporal convolutions' dropout) and hence the gradients are the same as without checkpointing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import (
    TransformerTemporalModel,
    TransformerTemporalModelOutput,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

_CHECKPOINTED = "_gen4d_checkpointed_forward"


def _temporal_classes() -> tuple[type, type]:
    return TransformerTemporalModel, TemporalConvLayer


def temporal_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the layers mixing information across frames: ``transformer_in``, every
    ``*.temp_attentions.*`` (``TransformerTemporalModel``) and every ``*.temp_convs.*`` (``TemporalConvLayer``)."""
    classes = _temporal_classes()
    return {n: m for n, m in unet.named_modules() if isinstance(m, classes)}


def _identity_forward(module: nn.Module):
    transformer_cls, _ = _temporal_classes()
    if isinstance(module, transformer_cls):
        def skip_transformer(hidden_states, *args, return_dict: bool = True, **kwargs):
            return TransformerTemporalModelOutput(sample=hidden_states) if return_dict else (hidden_states,)

        return skip_transformer

    def skip_conv(hidden_states, *args, **kwargs):
        return hidden_states

    return skip_conv


@contextlib.contextmanager
def _replace_forward(modules: dict[str, nn.Module], make) -> Iterator[None]:
    saved = {}
    for name, m in modules.items():
        saved[name] = m.__dict__.get("forward")  # an instance-level forward (e.g. checkpointing), or None
        m.forward = make(m)
    try:
        yield
    finally:
        for name, m in modules.items():
            if saved[name] is None:
                del m.forward
            else:
                m.forward = saved[name]


@contextlib.contextmanager
def skip_temporal_layers(unet: nn.Module) -> Iterator[None]:
    """Within the block, ``unet``'s temporal layers (:func:`temporal_modules`) return their input unchanged:
    their weights (and any LoRA on them) take no part in the forward pass and get no gradient. Meant for
    1-frame inputs ``[B, C, 1, h, w]`` (MotionDirector's spatial path)."""
    with _replace_forward(temporal_modules(unet), _identity_forward):
        yield


def checkpointed_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """Modules wrapped by :func:`enable_gradient_checkpointing`: ``transformer_in`` and, in every down/mid/up
    block, each of ``resnets``, ``temp_convs``, ``attentions`` and ``temp_attentions``."""
    out = {"transformer_in": unet.transformer_in}
    blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    blocks += [("mid_block", unet.mid_block)] if unet.mid_block is not None else []
    blocks += [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
    for prefix, block in blocks:
        for group in ("resnets", "temp_convs", "attentions", "temp_attentions"):
            for j, m in enumerate(getattr(block, group, None) or []):
                out[f"{prefix}.{group}.{j}"] = m
    return out


def _checkpointed(module: nn.Module):
    # The bound class forward: whatever replaces module.forward later (e.g. skip_temporal_layers) wins.
    inner = type(module).forward.__get__(module)

    def forward(*args, **kwargs):
        if torch.is_grad_enabled() and module.training:
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    setattr(forward, _CHECKPOINTED, True)
    return forward


def enable_gradient_checkpointing(unet: nn.Module) -> None:
    """Recompute the activations of each :func:`checkpointed_modules` module in the backward pass (while the
    UNet is in training mode and autograd is on). Idempotent; undone by :func:`disable_gradient_checkpointing`."""
    for m in checkpointed_modules(unet).values():
        if not getattr(m.__dict__.get("forward"), _CHECKPOINTED, False):
            m.forward = _checkpointed(m)


def disable_gradient_checkpointing(unet: nn.Module) -> None:
    """Undo :func:`enable_gradient_checkpointing`."""
    for m in checkpointed_modules(unet).values():
        if getattr(m.__dict__.get("forward"), _CHECKPOINTED, False):
            del m.forward


def gradient_checkpointing_enabled(unet: nn.Module) -> bool:
    """True when every :func:`checkpointed_modules` module is wrapped."""
    return all(getattr(m.__dict__.get("forward"), _CHECKPOINTED, False) for m in checkpointed_modules(unet).values())
