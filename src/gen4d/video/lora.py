"""MotionDirector's dual-path LoRA on a ``UNet3DConditionModel`` (Zhao et al. 2023), through PEFT.

Two families of low-rank adapters, ``W x + (alpha / r) B A x``, are injected with
:func:`peft.inject_adapter_in_model` (no patched model files):

* **spatial** (adapter ``"spatial"``; with one adapter per training clip also ``"spatial_1"``, ``"spatial_2"``,
  ...): the *spatial* transformers (``Transformer2DModel`` in ``{down,up}_blocks.*.attentions.*`` and
  ``mid_block.attentions.*``): self-attention ``attn1.{to_q,to_k,to_v,to_out.0}`` and the feed-forward
  ``ff.net.0.proj``, ``ff.net.2``. Cross-attention (``attn2``) stays frozen, so text conditioning is untouched.
* **temporal** (adapter ``"temporal"``): the temporal transformers (``transformer_in`` and every
  ``*.temp_attentions.*``): ``attn1`` and ``attn2`` (both are self-attention over frames in a
  ``TransformerTemporalModel``) ``{to_q,to_k,to_v,to_out.0}`` and the feed-forward.

These are exactly the layers MotionDirector's cloneofsimo-style ``inject_trainable_lora_extended`` replaces: every
``nn.Linear`` inside a ``Transformer2DModel`` whose path contains ``attn1`` or ``ff``, and inside a
``TransformerTemporalModel`` whose path contains ``attn1``, ``attn2`` or ``ff``. Defaults follow its configs:
rank 32, scale 1 (``alpha = rank``), dropout 0.1 during training, ``A ~ N(0, 1/r^2)``, ``B = 0`` (PEFT's
``"gaussian"`` initialisation is that one). One difference: PEFT applies LoRA dropout to the layer input,
``B A dropout(x)``, where cloneofsimo's layer drops the LoRA output; both are identity at inference.

Folder format (a contract with the sampler, written by :func:`save_motion_lora`)::

    folder/spatial.safetensors     PEFT state dict of adapter "spatial" (keys "<module>.lora_A.weight" [r, in],
                                   "<module>.lora_B.weight" [out, r]; no adapter name in the keys)
    folder/spatial_<i>.safetensors further per-clip spatial adapters (clip i), when trained that way
    folder/temporal.safetensors    PEFT state dict of adapter "temporal"
    folder/lora_config.json        format, rank, alpha, target module names per adapter, base model, frames and
                                   size trained at

:func:`load_motion_lora` injects and loads whichever adapters exist, at the scales asked for (MotionDirector
samples with the temporal LoRA at 1 and the spatial one at 0, i.e. not loaded).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import Gen4DError
from ..files import atomic_path, write_json

SPATIAL = "spatial"
TEMPORAL = "temporal"
DEFAULT_RANK = 32
"""MotionDirector's ``lora_rank`` in every published config."""
DEFAULT_DROPOUT = 0.1
"""MotionDirector's ``lora_unet_dropout``."""
CONFIG_NAME = "lora_config.json"
FORMAT = "gen4d-motion-lora"

_BLOCK = r"(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)"
_FF = r"ff\.net\.0\.proj|ff\.net\.2"
_SPATIAL_RE = re.compile(rf"^{_BLOCK}\.attentions\.\d+\.transformer_blocks\.\d+\.(?:attn1\.(?:to_q|to_k|to_v|to_out\.0)|{_FF})$")
_TEMPORAL_RE = re.compile(
    rf"^(?:transformer_in|{_BLOCK}\.temp_attentions\.\d+)\.transformer_blocks\.\d+\.(?:attn[12]\.(?:to_q|to_k|to_v|to_out\.0)|{_FF})$"
)
_SPATIAL_NAME = re.compile(r"^spatial(?:_\d+)?$")


# ----------------------------------------------------------------------------------------------- target modules
def _names(model_or_names: nn.Module | Iterable[str]) -> list[str]:
    if isinstance(model_or_names, nn.Module):
        return [n for n, _ in model_or_names.named_modules()]
    return list(model_or_names)


def spatial_lora_targets(model_or_names: nn.Module | Iterable[str]) -> list[str]:
    """Names of the linear layers that get the spatial LoRA, in the given (``named_modules``) order.

    ``model_or_names``: a UNet3D or its module names. Matches
    ``{down_blocks.i,up_blocks.i,mid_block}.attentions.j.transformer_blocks.k.{attn1.to_q, attn1.to_k,
    attn1.to_v, attn1.to_out.0, ff.net.0.proj, ff.net.2}``.
    """
    return [n for n in _names(model_or_names) if _SPATIAL_RE.match(n)]


def temporal_lora_targets(model_or_names: nn.Module | Iterable[str]) -> list[str]:
    """Names of the linear layers that get the temporal LoRA, in the given (``named_modules``) order.

    Matches ``{transformer_in, <block>.temp_attentions.j}.transformer_blocks.k.{attn1.*, attn2.*, ff.*}`` with
    ``*`` one of ``to_q, to_k, to_v, to_out.0`` (attention) or ``net.0.proj, net.2`` (feed-forward).
    """
    return [n for n in _names(model_or_names) if _TEMPORAL_RE.match(n)]


def lora_targets(model_or_names: nn.Module | Iterable[str], kind: str) -> list[str]:
    """:func:`spatial_lora_targets` or :func:`temporal_lora_targets` for ``kind`` in {"spatial", "temporal"}."""
    if kind == SPATIAL:
        return spatial_lora_targets(model_or_names)
    if kind == TEMPORAL:
        return temporal_lora_targets(model_or_names)
    raise ValueError(f"kind must be 'spatial' or 'temporal', got {kind!r}")


def _kind(adapter: str) -> str:
    if _SPATIAL_NAME.match(adapter):
        return SPATIAL
    if adapter == TEMPORAL:
        return TEMPORAL
    raise ValueError(f"adapter names are 'spatial', 'spatial_<i>' or 'temporal', got {adapter!r}")


# ----------------------------------------------------------------------------------------------- injection & state
def _lora_layers(unet: nn.Module, adapter: str | None = None) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in unet.named_modules() if isinstance(m, LoraLayer) and (adapter is None or adapter in m.lora_A)]


def lora_adapters(unet: nn.Module) -> list[str]:
    """Names of the adapters injected into ``unet`` (in injection order)."""
    return list(getattr(unet, "peft_config", {}) or {})


def lora_parameters(unet: nn.Module, adapter: str) -> list[nn.Parameter]:
    """The ``A`` and ``B`` matrices of ``adapter``, layer by layer in ``named_modules`` order."""
    params = []
    for _, layer in _lora_layers(unet, adapter):
        params += [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
    return params


def set_lora_trainable(unet: nn.Module, adapter: str, trainable: bool) -> None:
    """``requires_grad`` of every parameter of ``adapter``; a frozen adapter still acts in the forward pass."""
    for p in lora_parameters(unet, adapter):
        p.requires_grad_(trainable)


def _set_layer_active(layer: nn.Module, active: list[str]) -> None:
    # peft's set_adapter also flips requires_grad; keep trainability a separate, explicit setting.
    grads = {id(p): p.requires_grad for p in layer.parameters()}
    layer.set_adapter(active)
    for p in layer.parameters():
        p.requires_grad_(grads[id(p)])


def set_lora_scale(unet: nn.Module, adapter: str, scale: float) -> None:
    """Output of ``adapter`` becomes ``scale * (alpha / r) B A x``; ``scale = 0`` deactivates it (not computed)."""
    if adapter not in lora_adapters(unet):
        raise KeyError(f"no LoRA adapter {adapter!r} in this model (have {lora_adapters(unet)})")
    for _, layer in _lora_layers(unet, adapter):
        layer.set_scale(adapter, float(scale))
        current = [a for a in layer.active_adapters if a in layer.lora_A]
        wanted = [a for a in layer.lora_A if (a in current and a != adapter) or (a == adapter and scale != 0)]
        if wanted != current:
            _set_layer_active(layer, wanted)


def enable_lora(unet: nn.Module, adapter: str, scale: float = 1.0) -> None:
    """Activate ``adapter`` at ``scale``."""
    set_lora_scale(unet, adapter, scale)


def disable_lora(unet: nn.Module, adapter: str) -> None:
    """Deactivate ``adapter`` (the layers compute their base output only, as far as this adapter goes)."""
    set_lora_scale(unet, adapter, 0.0)


def active_lora_scales(unet: nn.Module) -> dict[str, float]:
    """``{adapter: scale}`` of the active adapters (scale relative to ``alpha / r``)."""
    out: dict[str, float] = {}
    for _, layer in _lora_layers(unet):
        for a in layer.active_adapters:
            if a in layer.lora_A and a not in out:
                out[a] = float(layer.scaling[a] * layer.r[a] / layer.lora_alpha[a])
    return out


def configure_adapters(unet: nn.Module, scales: Mapping[str, float], trainable: Iterable[str] = ()) -> None:
    """Set every adapter at once: those in ``scales`` act at their scale (0: inactive), all others are inactive;
    only those in ``trainable`` have ``requires_grad``. One pass over the layers (called twice per step)."""
    trainable = set(trainable)
    for _, layer in _lora_layers(unet):
        for a in layer.lora_A:
            layer.set_scale(a, float(scales.get(a, 0.0)))
        wanted = [a for a in layer.lora_A if scales.get(a, 0.0) != 0]
        if wanted != [a for a in layer.active_adapters if a in layer.lora_A]:
            layer.set_adapter(wanted)
        for a in layer.lora_A:
            layer.lora_A[a].weight.requires_grad_(a in trainable)
            layer.lora_B[a].weight.requires_grad_(a in trainable)


def inject_motion_lora(
    unet: nn.Module,
    adapter: str,
    targets: Sequence[str] | None = None,
    rank: int = DEFAULT_RANK,
    alpha: float | None = None,
    dropout: float = DEFAULT_DROPOUT,
) -> list[str]:
    """Inject a fresh LoRA named ``adapter`` (``A ~ N(0, 1/r^2)``, ``B = 0``: the model's output is unchanged).

    ``targets``: module names (default: :func:`spatial_lora_targets` for ``spatial*`` names, else
    :func:`temporal_lora_targets`); ``alpha`` defaults to ``rank`` (scale 1, as in MotionDirector). The new
    adapter is active at scale 1 and trainable, in the model's train/eval mode; other adapters keep their
    activity and trainability.
    Returns the target names.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if adapter in lora_adapters(unet):
        raise ValueError(f"LoRA adapter {adapter!r} is already injected")
    targets = list(targets) if targets is not None else lora_targets(unet, _kind(adapter))
    if not targets:
        raise Gen4DError(f"no layers for LoRA adapter {adapter!r} in {type(unet).__name__}; is it a UNet3DConditionModel?")
    present = {n for n, _ in unet.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise Gen4DError(
            f"LoRA adapter {adapter!r} targets {len(missing)} layers this UNet lacks (e.g. {missing[0]}); "
            "it was trained on a different base model"
        )
    before = {n: [a for a in m.active_adapters if a in m.lora_A] for n, m in _lora_layers(unet)}
    grads = {id(p): p.requires_grad for p in unet.parameters()}
    config = LoraConfig(
        r=int(rank), lora_alpha=float(alpha if alpha is not None else rank), lora_dropout=float(dropout),
        target_modules=targets, init_lora_weights="gaussian", bias="none",
    )
    with warnings.catch_warnings():  # peft warns that several adapters share the model: that is the design
        warnings.simplefilter("ignore")
        inject_adapter_in_model(config, unet, adapter_name=adapter)
    unet.train(unet.training)  # new dropout modules are born in training mode; follow the model's mode
    # peft re-activates only the newest adapter in every layer; restore the others' state explicitly
    for n, m in _lora_layers(unet):
        wanted = before.get(n, []) + ([adapter] if adapter in m.lora_A else [])
        _set_layer_active(m, [a for a in m.lora_A if a in wanted])
    for p in unet.parameters():
        if id(p) in grads:
            p.requires_grad_(grads[id(p)])
    set_lora_trainable(unet, adapter, True)
    return targets


def _adapter_config(unet: nn.Module, adapter: str) -> dict[str, Any]:
    cfg = unet.peft_config[adapter]
    targets = cfg.target_modules
    targets = sorted(targets) if isinstance(targets, (set, frozenset)) else list(targets)
    names = [n for n, _ in _lora_layers(unet, adapter)]
    return {"rank": int(cfg.r), "alpha": float(cfg.lora_alpha), "target_modules": names or targets}


def lora_state_dict(unet: nn.Module, adapter: str) -> dict[str, Tensor]:
    """PEFT state dict of ``adapter`` (keys without the adapter name), float32 on the CPU."""
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(unet, adapter_name=adapter)
    return {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}


def load_lora_state_dict(unet: nn.Module, adapter: str, state_dict: Mapping[str, Tensor], source: str = "") -> None:
    """Copy a PEFT state dict (as :func:`lora_state_dict` returns) into the injected ``adapter``; every key must
    match the adapter's layers exactly."""
    from peft import set_peft_model_state_dict

    expected = set(lora_state_dict(unet, adapter))
    given = set(state_dict)
    where = f" in {source}" if source else ""
    if given != expected:
        extra, lacking = sorted(given - expected), sorted(expected - given)
        detail = f"unexpected {extra[0]}" if extra else f"missing {lacking[0]}"
        raise Gen4DError(f"LoRA weights{where} do not fit adapter {adapter!r} of this UNet ({detail}); was it trained on another base model?")
    try:
        set_peft_model_state_dict(unet, dict(state_dict), adapter_name=adapter)
    except RuntimeError as e:  # shape mismatch
        raise Gen4DError(f"LoRA weights{where} do not fit this UNet: {str(e).splitlines()[-1].strip()}") from None


# ----------------------------------------------------------------------------------------------- folder format
def _write_folder(folder: Path, tensors: dict[str, dict[str, Tensor]], adapters: dict[str, dict], meta: dict) -> Path:
    from safetensors.torch import save_file

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
        from ..guidance.registry import REGISTRY

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
            "convert a published MotionDirector checkpoint with gen4d.video.lora.convert_motiondirector_checkpoint"
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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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


# ----------------------------------------------------------------------------------------------- published checkpoints
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
    from ..data.preprocess import natural_sort_key

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
    from ..guidance.registry import REGISTRY

    base_id = REGISTRY[base_model].repo if base_model in REGISTRY else base_model
    meta = {
        "base_model": base_model, "base_model_id": base_id, "num_frames": num_frames, "height": height, "width": width,
        "converted_from": str(checkpoint),
    }
    return _write_folder(Path(out), tensors, adapters, meta)
