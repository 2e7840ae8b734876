"""CLIP similarity in PyTorch: cosine similarity of CLIP image embeddings with reference images or texts.

Images follow :mod:`gen4d.eval.metrics`: channel-last floats ``[N, H, W, 3]`` in ``[0, 1]``. The model is a
``transformers.CLIPModel``, given loaded or as a registry name, Hub id or local folder for
:func:`gen4d.models.registry.load_pretrained` (it has no weight file in :func:`gen4d.eval.common.metrics_dir`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPModel, CLIPTokenizer

from ..models.registry import load_pretrained
from .common import resize_center_crop

__all__ = ["CLIP_MEAN", "CLIP_STD", "clip_similarity"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_clip_cache: dict[tuple[str, str], Any] = {}


def _load_clip(model: Any, device: torch.device | None):
    if not isinstance(model, str):
        return model
    key = (model, str(device))
    if key not in _clip_cache:
        m = load_pretrained(CLIPModel, model).eval().requires_grad_(False)
        _clip_cache[key] = m.to(device) if device is not None else m
    return _clip_cache[key]


def _features(out: Any) -> Tensor:
    # transformers >= 5 returns a model output whose pooler_output is the projected embedding; older: a tensor.
    return out if isinstance(out, Tensor) else out.pooler_output


@torch.no_grad()
def _clip_image_embeds(clip, images: Tensor, batch_size: int) -> Tensor:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got {tuple(images.shape)}")
    size = int(clip.config.vision_config.image_size)
    param = next(clip.parameters())
    mean = torch.tensor(CLIP_MEAN, device=param.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=param.device).view(1, 3, 1, 1)
    embeds = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(param.device, torch.float32).permute(0, 3, 1, 2).clamp(0, 1)
        x = (resize_center_crop(x, size) - mean) / std
        embeds.append(_features(clip.get_image_features(pixel_values=x.to(param.dtype))).float())
    return F.normalize(torch.cat(embeds), dim=-1)


@torch.no_grad()
def _clip_text_embeds(clip, tokenizer, texts: Sequence[str]) -> Tensor:
    param = next(clip.parameters())
    max_len = int(clip.config.text_config.max_position_embeddings)
    tok = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    out = clip.get_text_features(input_ids=tok["input_ids"].to(param.device), attention_mask=tok["attention_mask"].to(param.device))
    return F.normalize(_features(out).float(), dim=-1)


def clip_similarity(
    images: Tensor,
    reference: Tensor | str | Sequence[str],
    model: Any = "openai/clip-vit-base-patch32",
    *,
    tokenizer: Any = None,
    reduction: str = "mean",
    batch_size: int = 32,
) -> Tensor:
    """Cosine similarity of CLIP embeddings between ``images`` and reference images or texts.

    images: ``[N, H, W, 3]`` in ``[0, 1]`` (e.g. the frames of a rendered video). Each image is resized so that its
    shorter side is the model's ``vision_config.image_size`` (bilinear, antialiased), centre-cropped to a square and
    normalised with the CLIP mean/std, all in torch (the geometry of ``CLIPImageProcessor``, which uses bicubic).

    reference: images ``[M, H', W', 3]`` in ``[0, 1]``, or a text / list of texts. Pairing: with ``M == N`` image
    ``i`` is compared with reference ``i``; with ``M == 1`` every image with the one reference; otherwise each image
    gets the mean of its similarities to all ``M`` references.

    model: registry name, Hub id or local folder of a ``transformers.CLIPModel`` (loaded through
    :func:`gen4d.models.registry.load_pretrained`, cached per device), or a loaded ``CLIPModel``. ``tokenizer``
    (texts only): a tokenizer or its name/folder; default: the model's own name/folder.

    reduction: ``"mean"`` (default) returns the 0-d mean over the ``N`` frames, ``"none"`` the ``[N]`` per-frame
    similarities. Values lie in ``[-1, 1]``.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    clip = _load_clip(model, images.device if isinstance(model, str) else None)
    img = _clip_image_embeds(clip, images, batch_size)  # [N, D]
    if isinstance(reference, Tensor):
        ref = _clip_image_embeds(clip, reference, batch_size)
    else:
        texts = [reference] if isinstance(reference, str) else list(reference)
        if not texts:
            raise ValueError("no reference texts given")
        if tokenizer is None or isinstance(tokenizer, str):
            name = tokenizer if tokenizer is not None else model
            if not isinstance(name, str):
                name = getattr(clip, "name_or_path", None) or getattr(clip.config, "_name_or_path", None)
                if not name:
                    raise ValueError("pass tokenizer= when comparing a loaded CLIPModel with texts")

            tokenizer = load_pretrained(CLIPTokenizer, name)
        ref = _clip_text_embeds(clip, tokenizer, texts)
    ref = ref.to(img.device)
    n, m = img.shape[0], ref.shape[0]
    if m == n:
        sim = (img * ref).sum(-1)
    elif m == 1:
        sim = img @ ref[0]
    else:
        sim = (img @ ref.T).mean(-1)
    sim = sim.clamp(-1.0, 1.0)
    return sim.mean() if reduction == "mean" else sim
