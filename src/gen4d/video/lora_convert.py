"""Published MotionDirector checkpoints (cloneofsimo-style ``.pt`` lists) -> the motion LoRA folder of
:mod:`gen4d.video.lora_files`.

A MotionDirector checkpoint folder (``checkpoint-default/``) holds ``spatial/lora/<step>_unet.pt`` and/or
``temporal/lora/<step>_unet.pt``: pickled lists ``[up_0, down_0, up_1, down_1, ...]``, one pair per LoRA layer in
the order MotionDirector injects them (:func:`motiondirector_order`). :func:`convert_motiondirector_checkpoint`
maps them onto the PEFT layers of :mod:`gen4d.video.lora` and writes a folder that
:func:`gen4d.video.lora_files.load_motion_lora` reads.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import Gen4DError
from ..data.frames import natural_sort_key
from ..models.registry import REGISTRY
from .lora import SPATIAL, TEMPORAL, lora_targets
from .lora_files import _write_folder

_TOP_ORDER = {"transformer_in": 0, "down_blocks": 1, "up_blocks": 2, "mid_block": 3}
_LEAF_ORDER = [f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")] + ["ff.net.0.proj", "ff.net.2"]


def _motiondirector_key(name: str) -> tuple[int, ...]:
    parts = name.split(".")
    if parts[0] == "transformer_in":
        head, rest = (0, 0, 0), parts[1:]
    elif parts[0] == "mid_block":
        head, rest = (_TOP_ORDER["mid_block"], 0, int(parts[2])), parts[3:]
    else:
        head, rest = (_TOP_ORDER[parts[0]], int(parts[1]), int(parts[3])), parts[4:]
    return (*head, int(rest[1]), _LEAF_ORDER.index(".".join(rest[2:])))


def motiondirector_order(targets: Iterable[str]) -> list[str]:
    """Target names in the order MotionDirector injects (and saves) its LoRAs.

    Its ``inject_trainable_lora_extended`` walks ``unet.named_modules()`` for each ``Transformer2DModel``
    (spatial) or ``TransformerTemporalModel`` (temporal) and, inside each, its linear layers in registration
    order. Its UNet3D registers ``transformer_in``, then the ``down_blocks`` and ``up_blocks`` lists, then
    ``mid_block`` (assigned after both lists were created), so the mid block comes **last**; a block lists its
    transformers by index; a transformer block registers ``attn1`` (``to_q, to_k, to_v, to_out.0``), ``attn2``,
    then ``ff`` (``net.0.proj``, ``net.2``). This sorts by that key instead of trusting the registration order
    of the installed diffusers.
    """
    return sorted(targets, key=_motiondirector_key)


def load_motiondirector_pt(path: str | os.PathLike) -> list[Tensor]:
    """A MotionDirector LoRA file (``.../lora/*unet*.pt``): a pickled list ``[up_0, down_0, up_1, down_1, ...]``."""
    path = Path(path)
    if not path.is_file():
        raise Gen4DError(f"MotionDirector LoRA file not found: {path}")
    try:
        weights = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:  # what unpickling raises
        raise Gen4DError(f"cannot read {path} as a MotionDirector LoRA list ({type(e).__name__}: {e})") from None
    if not isinstance(weights, (list, tuple)) or not all(isinstance(w, Tensor) for w in weights):
        raise Gen4DError(f"{path} does not hold a list of tensors [up, down, ...]; is it a MotionDirector LoRA file?")
    return [w.detach() for w in weights]


def convert_motiondirector_lora(weights: Sequence[Tensor], unet: nn.Module, kind: str) -> dict[str, Tensor]:
    """MotionDirector's ``[up, down, up, down, ...]`` list (``up`` = ``lora_up.weight`` ``[out, r]``, ``down`` =
    ``lora_down.weight`` ``[r, in]``, one pair per layer in :func:`motiondirector_order`) -> PEFT state dict
    ``{"<module>.lora_A.weight": down, "<module>.lora_B.weight": up}`` for ``unet``'s ``kind`` layers.

    cloneofsimo's LoRA computes ``W x + up(down(x)) * 1``, i.e. PEFT with ``alpha = r``.
    """
    targets = motiondirector_order(lora_targets(unet, kind))
    if len(weights) != 2 * len(targets):
        raise Gen4DError(
            f"the {kind} LoRA list has {len(weights)} tensors but this UNet has {len(targets)} {kind} LoRA layers "
            f"({2 * len(targets)} tensors expected); was it trained on a different base model?"
        )
    modules = dict(unet.named_modules())
    sd: dict[str, Tensor] = {}
    for i, name in enumerate(targets):
        up, down = weights[2 * i], weights[2 * i + 1]
        base = modules[name]
        base = getattr(base, "base_layer", base)
        if (
            up.dim() != 2 or down.dim() != 2 or up.shape[1] != down.shape[0]
            or down.shape[1] != base.in_features or up.shape[0] != base.out_features
        ):
            raise Gen4DError(
                f"{kind} LoRA pair {i} ({name}) has up {tuple(up.shape)} / down {tuple(down.shape)}, expected "
                f"[{base.out_features}, r] / [r, {base.in_features}]; the list does not match this UNet"
            )
        sd[f"{name}.lora_A.weight"] = down.float().contiguous()
        sd[f"{name}.lora_B.weight"] = up.float().contiguous()
    return sd


def _find_pt(folder: Path) -> Path | None:
    """The UNet LoRA file of a MotionDirector ``lora/`` folder (``<step>_unet.pt``; the latest step if several)."""
    files = sorted((p for p in folder.glob("*.pt") if "unet" in p.name), key=lambda p: natural_sort_key(p.name)) if folder.is_dir() else []
    return files[-1] if files else None


def convert_motiondirector_checkpoint(
    checkpoint: str | os.PathLike,
    unet: nn.Module,
    out: str | os.PathLike,
    *,
    base_model: str = "zeroscope",
    num_frames: int | None = 16,
    height: int | None = None,
    width: int | None = None,
) -> Path:
    """Convert a published MotionDirector checkpoint folder (``checkpoint-default/`` with
    ``spatial/lora/*unet*.pt`` and/or ``temporal/lora/*unet*.pt``) to a motion LoRA folder at ``out``.

    ``unet``: the base UNet3D (only its layer names and sizes are read). Returns ``out``.
    """
    checkpoint = Path(checkpoint)
    tensors, adapters = {}, {}
    for kind in (SPATIAL, TEMPORAL):
        pt = _find_pt(checkpoint / kind / "lora")
        if pt is None:
            continue
        sd = convert_motiondirector_lora(load_motiondirector_pt(pt), unet, kind)
        rank = int(next(iter(sd.values())).shape[0])
        tensors[kind] = sd
        targets = motiondirector_order(lora_targets(unet, kind))
        adapters[kind] = {"rank": rank, "alpha": float(rank), "target_modules": targets}
    if not tensors:
        raise Gen4DError(f"no MotionDirector LoRA under {checkpoint} (expected spatial/lora/*unet*.pt or temporal/lora/*unet*.pt)")
    base_id = REGISTRY[base_model].repo if base_model in REGISTRY else base_model
    meta = {
        "base_model": base_model, "base_model_id": base_id, "num_frames": num_frames, "height": height, "width": width,
        "converted_from": str(checkpoint),
    }
    return _write_folder(Path(out), tensors, adapters, meta)
