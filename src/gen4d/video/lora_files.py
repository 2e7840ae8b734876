"""The motion LoRA folder: how the adapters of :mod:`gen4d.video.lora` are saved, and loaded into a UNet3D.

Folder format (a contract with the sampler, written by :func:`save_motion_lora`)::

    folder/spatial.safetensors     PEFT state dict of adapter "spatial" (keys "<module>.lora_A.weight" [r, in],
                                   "<module>.lora_B.weight" [out, r]; no adapter name in the keys)
    folder/spatial_<i>.safetensors further per-clip spatial adapters (clip i), when trained that way
    folder/temporal.safetensors    PEFT state dict of adapter "temporal"
    folder/lora_config.json        format, rank, alpha, target module names per adapter, base model, frames and
                                   size trained at

:func:`load_motion_lora` injects and loads whichever adapters exist, at the scales asked for (MotionDirector
samples with the temporal LoRA at 1 and the spatial one at 0, i.e. not loaded). Published MotionDirector
checkpoints are converted to this format by :mod:`gen4d.video.lora_convert`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .. import Gen4DError
from ..files import atomic_path, write_json
from ..models.registry import REGISTRY
from .lora import (
    _SPATIAL_NAME,
    SPATIAL,
    TEMPORAL,
    _adapter_config,
    disable_lora,
    inject_motion_lora,
    load_lora_state_dict,
    lora_adapters,
    lora_state_dict,
    set_lora_scale,
    set_lora_trainable,
)

CONFIG_NAME = "lora_config.json"
FORMAT = "gen4d-motion-lora"


def _write_folder(folder: Path, tensors: dict[str, dict[str, Tensor]], adapters: dict[str, dict], meta: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sd in tensors.items():
        with atomic_path(folder / f"{name}.safetensors") as tmp:
            save_file(sd, str(tmp), metadata={"format": "pt", "adapter": name})
    first = adapters.get(TEMPORAL) or next(iter(adapters.values()))
    config = {
        "format": FORMAT,
        "version": 1,
        "rank": first["rank"],
        "alpha": first["alpha"],
        "adapters": {name: {"file": f"{name}.safetensors", **a} for name, a in adapters.items()},
        **meta,
    }
    write_json(folder / CONFIG_NAME, config)
    return folder


def save_motion_lora(
    unet: nn.Module,
    folder: str | os.PathLike,
    *,
    base_model: str = "",
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the spatial / temporal adapters of ``unet`` in the folder format of the module docstring.

    ``base_model``: registry name, Hub id or folder of the UNet trained on; ``num_frames``, ``height``,
    ``width``: the clip size trained at (pixels); ``extra``: more JSON-able entries for ``lora_config.json``.
    """
    names = [a for a in lora_adapters(unet) if a == TEMPORAL or _SPATIAL_NAME.match(a)]
    if not names:
        raise ValueError("the UNet has no spatial or temporal LoRA adapter to save")
    base_id = base_model
    if base_model:
        base_id = REGISTRY[base_model].repo if base_model in REGISTRY else base_model
    meta = {"base_model": base_model, "base_model_id": base_id, "num_frames": num_frames, "height": height, "width": width}
    meta.update(dict(extra or {}))
    return _write_folder(
        Path(folder), {n: lora_state_dict(unet, n) for n in names}, {n: _adapter_config(unet, n) for n in names}, meta
    )


def read_motion_lora_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``lora_config.json`` of a motion LoRA folder, checked."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise Gen4DError(
            f"{folder} is not a motion LoRA folder (no {CONFIG_NAME}); train one with `gen4d motion train`, or "
            "convert a published MotionDirector checkpoint with gen4d.video.lora_convert.convert_motiondirector_checkpoint"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise Gen4DError(f"{path} is not valid JSON ({e}); the folder is damaged, train or convert it again") from None
    if config.get("format") != FORMAT or not isinstance(config.get("adapters"), dict):
        raise Gen4DError(f"{path} is not a {FORMAT} config; train or convert the LoRA again")
    return config


def load_motion_lora(
    unet: nn.Module,
    folder: str | os.PathLike,
    *,
    spatial_scale: float = 0.0,
    temporal_scale: float = 1.0,
) -> list[str]:
    """Inject and load the adapters of a motion LoRA folder into ``unet``; returns the active adapter names.

    The ``spatial`` adapter acts at ``spatial_scale``, the ``temporal`` one at ``temporal_scale``; a scale of 0
    leaves that adapter out (not loaded; deactivated if the UNet already holds it), as does a missing file (an
    appearance-only folder has no temporal adapter). Loading into a UNet that already holds the adapter replaces
    its weights. Injected adapters have dropout 0 and ``requires_grad`` False.
    """

    folder = Path(folder)
    config = read_motion_lora_config(folder)
    active = []
    for name, scale in ((SPATIAL, spatial_scale), (TEMPORAL, temporal_scale)):
        entry = config["adapters"].get(name)
        path = folder / (entry or {}).get("file", f"{name}.safetensors")
        if scale == 0 or entry is None or not path.is_file():
            if name in lora_adapters(unet):
                disable_lora(unet, name)
            continue
        if name not in lora_adapters(unet):
            inject_motion_lora(unet, name, entry["target_modules"], rank=entry["rank"], alpha=entry["alpha"], dropout=0.0)
        try:
            sd = load_file(str(path))
        except (OSError, SafetensorError) as e:
            raise Gen4DError(f"cannot read {path} ({e}); the LoRA folder is damaged") from None
        load_lora_state_dict(unet, name, sd, str(path))
        set_lora_trainable(unet, name, False)
        set_lora_scale(unet, name, scale)
        active.append(name)
    return active
