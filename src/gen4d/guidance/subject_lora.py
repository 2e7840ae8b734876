"""DreamBooth LoRAs of a personalised subject (Dream-in-4D's ``--subject``), in either published layout, loaded
into a Stable Diffusion U-Net through one converter.

Two layouts exist for the same weights:

* diffusers' current one, ``pytorch_lora_weights.safetensors`` as written by its DreamBooth-LoRA example
  (``save_lora_weights``): ``unet.<module>.to_q.lora.down.weight`` / ``.lora.up.weight`` (or peft's
  ``lora_A`` / ``lora_B`` names);
* the older attention-processor one of Dream-in-4D's subject checkpoints, ``pytorch_lora_weights.bin``:
  ``<module>.processor.to_q_lora.down.weight`` / ``.up.weight`` (``to_out_lora`` for ``to_out.0``).

:func:`to_peft_state_dict` maps both to peft's ``unet.<module>.lora_A.weight`` (down) / ``lora_B.weight`` (up),
which diffusers' ``load_lora_adapter`` (peft underneath) injects. Neither layout stores an alpha: the update is
``up @ down`` at scale 1 (alpha = rank), as both writers meant it. LoRAs of the text encoder are refused with a
clear message (the prompt embeddings are cached per model, not per LoRA).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import Gen4DError

FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
ADAPTER = "subject"

_PROCESSOR = re.compile(r"^(?:unet\.)?(?P<module>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<which>down|up)\.weight$")
_DIFFUSERS = re.compile(r"^unet\.(?P<module>.+)\.lora\.(?P<which>down|up)\.weight$")
_PEFT = re.compile(r"^unet\.(?P<module>.+)\.(?P<which>lora_A|lora_B)\.weight$")


def find_lora_file(path: str | Path) -> Path:
    """The LoRA file of ``path``: the file itself, ``pytorch_lora_weights.{safetensors,bin}`` in the folder, in its
    ``lora/`` (a ``gen4d subject train`` run) or in its last ``checkpoint-N`` subfolder (the DreamBooth script's
    intermediate saves)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise Gen4DError(f"subject LoRA {p} does not exist")
    for folder in [p, p / "lora"] + sorted(p.glob("checkpoint-*"), key=lambda d: int(d.name.split("-")[-1]) if d.name.split("-")[-1].isdigit() else -1, reverse=True):
        for name in FILES:
            if (folder / name).is_file():
                return folder / name
    raise Gen4DError(f"no {' or '.join(FILES)} in {p} (or its checkpoint-N folders): is it a DreamBooth LoRA folder?")


def read_lora_file(path: str | Path) -> dict[str, Tensor]:
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(p))
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or not a tensor file
        raise Gen4DError(f"cannot read the LoRA file {p}: {e}") from None


def to_peft_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Either layout (module doc) -> ``unet.<module>.lora_A.weight`` / ``lora_B.weight``."""
    if any(k.startswith(("text_encoder.", "text_model.")) for k in state):
        raise Gen4DError("this LoRA also adapts the text encoder; only U-Net LoRAs are supported (train with the "
                         "DreamBooth script's default, without --train_text_encoder)")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if m := _PROCESSOR.match(key):
            proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
            name = f"unet.{m['module']}.{proj}.{'lora_A' if m['which'] == 'down' else 'lora_B'}.weight"
        elif m := _DIFFUSERS.match(key):
            name = f"unet.{m['module']}.{'lora_A' if m['which'] == 'down' else 'lora_B'}.weight"
        elif _PEFT.match(key):
            name = key
        elif key.endswith(".alpha") or "network_alpha" in key:
            raise Gen4DError(f"LoRA key {key!r}: LoRAs with a network alpha (kohya layout) are not supported")
        else:
            raise Gen4DError(f"LoRA key {key!r} is in neither diffusers' nor the attention-processor layout")
        out[name] = value.float()
    if not out:
        raise Gen4DError("the LoRA file holds no weights")
    return out


def load_subject_lora(unet: nn.Module, path: str | Path, adapter_name: str = ADAPTER) -> int:
    """Inject the subject LoRA at ``path`` (file or folder) into ``unet``; returns the number of adapted layers."""
    state = to_peft_state_dict(read_lora_file(find_lora_file(path)))
    known = {name for name, _ in unet.named_modules()}
    missing = sorted({k[len("unet."):].rsplit(".", 2)[0] for k in state} - known)
    if missing:
        raise Gen4DError(f"the LoRA adapts layers this U-Net does not have (e.g. {missing[0]}): is it for another model?")
    dtype = next(unet.parameters()).dtype
    unet.load_lora_adapter({k: v.to(dtype) for k, v in state.items()}, prefix="unet", adapter_name=adapter_name)
    return len(state) // 2
