"""MotionDirector's dual-path LoRA on a ``UNet3DConditionModel`` (Zhao et al. 2023), through PEFT: which layers get
an adapter, injection, scales, trainability and state dicts.

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

Trained adapters are saved and loaded in the folder format of :mod:`gen4d.video.lora_files`; published
MotionDirector checkpoints convert to it with :mod:`gen4d.video.lora_convert`.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from .. import Gen4DError

SPATIAL = "spatial"
TEMPORAL = "temporal"
DEFAULT_RANK = 32
"""MotionDirector's ``lora_rank`` in every published config."""
DEFAULT_DROPOUT = 0.1
"""MotionDirector's ``lora_unet_dropout``."""

_BLOCK = r"(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)"
_FF = r"ff\.net\.0\.proj|ff\.net\.2"
_SPATIAL_RE = re.compile(rf"^{_BLOCK}\.attentions\.\d+\.transformer_blocks\.\d+\.(?:attn1\.(?:to_q|to_k|to_v|to_out\.0)|{_FF})$")
_TEMPORAL_RE = re.compile(
    rf"^(?:transformer_in|{_BLOCK}\.temp_attentions\.\d+)\.transformer_blocks\.\d+\.(?:attn[12]\.(?:to_q|to_k|to_v|to_out\.0)|{_FF})$"
)
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer

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


@contextlib.contextmanager
def lora_off(unet: nn.Module) -> Iterator[nn.Module]:
    """Within the block every LoRA layer of ``unet`` computes its base output only (``W x``), whatever adapters
    are active: the model is the base model, bit for bit. On exit each layer's adapters, their scales and the
    ``requires_grad`` of every parameter are as before. A model without adapters is left as it is.

    MotionDirector inverts its training clips for the noise prior with the base model: ``handle_cache_latents``
    in ``MotionDirector_train.py`` runs ``inverse_video`` on a copy of the UNet whose LoRAs are still at their
    zero start (``B = 0``) and stores the result as ``inversion_noise`` in the cached latents.
    """
    layers = [m for _, m in _lora_layers(unet)]
    grads = {id(p): p.requires_grad for m in layers for p in m.parameters()}
    was_disabled = [bool(m.disable_adapters) for m in layers]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield unet
    finally:
        for m, disabled in zip(layers, was_disabled):
            if not disabled:
                m.enable_adapters(True)  # peft re-runs set_adapter(active): the same adapters stay active
            for p in m.parameters():
                p.requires_grad_(grads[id(p)])


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

    sd = get_peft_model_state_dict(unet, adapter_name=adapter)
    return {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}


def load_lora_state_dict(unet: nn.Module, adapter: str, state_dict: Mapping[str, Tensor], source: str = "") -> None:
    """Copy a PEFT state dict (as :func:`lora_state_dict` returns) into the injected ``adapter``; every key must
    match the adapter's layers exactly."""

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
