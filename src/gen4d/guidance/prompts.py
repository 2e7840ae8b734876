"""Text prompts for text-conditioned priors: CLIP encoding with an on-disk cache, negative and view-dependent prompts.

View-dependent prompts (DreamFusion, Poole et al. 2022) append the direction the camera sees the object from:
``"{prompt}, front view"``, ``", side view"``, ``", back view"``, ``", overhead view"``.

Azimuth convention (the gen4d one, see :func:`gen4d.cameras.orbit_eye`): world +z is up; angles in **degrees**;
azimuth is measured in the xy plane from +x towards +y; elevation is the angle above the xy plane. Azimuth 0,
elevation 0 is the camera on the +x axis looking at the origin, and that is the object's **front**. Directions:

* ``overhead`` when elevation > 60°;
* otherwise, with the azimuth wrapped to (-180°, 180°]: ``front`` when |azimuth| <= 45°, ``back`` when
  |azimuth| >= 135°, ``side`` in between.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from ..models.registry import load_pretrained, resolve

DIRECTIONS: tuple[str, ...] = ("front", "side", "back", "overhead")
"""Index order of view directions used everywhere (``view_direction_index`` returns indices into this)."""

OVERHEAD_ELEVATION_DEG = 60.0
FRONT_HALF_ANGLE_DEG = 45.0


def view_direction_index(azimuth_deg, elevation_deg) -> Tensor:
    """Index into :data:`DIRECTIONS` for each (azimuth, elevation) in degrees; broadcasts; returns int64."""
    az = torch.as_tensor(azimuth_deg, dtype=torch.float64)
    el = torch.as_tensor(elevation_deg, dtype=torch.float64)
    az, el = torch.broadcast_tensors(az, el)
    a = torch.remainder(az + 180.0, 360.0) - 180.0  # [-180, 180)
    a = a.abs()
    idx = torch.full(a.shape, DIRECTIONS.index("side"), dtype=torch.int64)
    idx[a <= FRONT_HALF_ANGLE_DEG] = DIRECTIONS.index("front")
    idx[a >= 180.0 - FRONT_HALF_ANGLE_DEG] = DIRECTIONS.index("back")
    idx[el > OVERHEAD_ELEVATION_DEG] = DIRECTIONS.index("overhead")
    return idx


def view_prompt(prompt: str, direction: str) -> str:
    """``"{prompt}, {direction} view"``."""
    return f"{prompt}, {direction} view"


def encode_prompt(tokenizer, text_encoder, prompts: str | Sequence[str], device: torch.device | str | None = None) -> Tensor:
    """CLIP text embeddings ``[N, L, D]`` (last hidden state, padded to the tokenizer's max length), computed on
    ``device`` (default: where the text encoder's weights are; give it when the encoder is offloaded)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = device if device is not None else next(text_encoder.parameters()).device
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(device))[0]


def encode_prompt_pair(tokenizer, text_encoder, prompts: str | Sequence[str], negative: str | Sequence[str] = "") -> tuple[Tensor, Tensor]:
    """(cond, uncond) embeddings for the prompts and the negative prompt(s) (one negative is repeated)."""
    cond = encode_prompt(tokenizer, text_encoder, prompts)
    if isinstance(negative, str):
        negative = [negative] * cond.shape[0]
    return cond, encode_prompt(tokenizer, text_encoder, negative)


def expand_batch(emb: Tensor, batch: int) -> Tensor:
    """Text embeddings ``[1 or B, L, D]`` (or ``[L, D]``) -> ``[B, L, D]``."""
    if emb.dim() == 2:
        emb = emb[None]
    if emb.shape[0] == batch:
        return emb
    if emb.shape[0] == 1:
        return emb.expand(batch, *emb.shape[1:])
    raise ValueError(f"text embeddings have batch {emb.shape[0]}, expected 1 or {batch}")


@dataclass
class PromptEmbeddings:
    """Text embeddings of one prompt: plain, and per view direction, with the negative (unconditional) ones.

    ``cond``/``uncond``: ``[L, D]`` for the plain prompt / the negative prompt.
    ``cond_dirs``/``uncond_dirs``: ``[len(DIRECTIONS), L, D]``, the view-dependent prompts in :data:`DIRECTIONS`
    order and the matching negatives (the same negative prompt for every direction).
    """

    prompt: str
    negative_prompt: str
    cond: Tensor
    uncond: Tensor
    cond_dirs: Tensor
    uncond_dirs: Tensor
    view_dependent: bool = True

    def get(self, batch: int, azimuth_deg=None, elevation_deg=None) -> tuple[Tensor, Tensor]:
        """``(cond [B, L, D], uncond [B, L, D])``; view-dependent when enabled and angles are given."""
        if self.view_dependent and azimuth_deg is not None:
            el = 0.0 if elevation_deg is None else elevation_deg
            idx = view_direction_index(azimuth_deg, el).reshape(-1)
            if idx.numel() == 1:
                idx = idx.expand(batch)
            if idx.numel() != batch:
                raise ValueError(f"{idx.numel()} camera angles for a batch of {batch}")
            idx = idx.to(self.cond_dirs.device)
            return self.cond_dirs[idx], self.uncond_dirs[idx]
        return self.cond.expand(batch, -1, -1), self.uncond.expand(batch, -1, -1)

    def to(self, device=None, dtype=None) -> PromptEmbeddings:
        f = lambda t: t.to(device=device, dtype=dtype)
        return PromptEmbeddings(self.prompt, self.negative_prompt, f(self.cond), f(self.uncond), f(self.cond_dirs), f(self.uncond_dirs), self.view_dependent)


def default_cache_dir() -> Path:
    """``$GEN4D_CACHE/prompts`` or ``~/.cache/gen4d/prompts``."""
    root = os.environ.get("GEN4D_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "gen4d") / "prompts"


class PromptEncoder:
    """CLIP tokenizer + text encoder of a diffusers pipeline (``tokenizer/``, ``text_encoder/``), with a cache.

    Embeddings (the text encoder's last hidden state, ``[L, D]`` per prompt, as the SD pipelines use) are stored
    as ``<cache_dir>/<sha256(model id, prompt)>.safetensors``; a hit skips the text encoder, which is only loaded
    on the first miss. ``cache_dir=None``: the default cache; ``cache_dir=False``: no cache.
    """

    def __init__(self, model: str = "sd21", cache_dir: str | Path | None | bool = None, device: str | torch.device = "cpu",
                 tokenizer=None, text_encoder=None, cache_tag: str = ""):
        """``tokenizer`` / ``text_encoder``: already loaded modules (else loaded from ``model`` on the first cache
        miss). ``cache_tag``: extra text in the cache key, for encoders whose vocabulary was changed (e.g. a loaded
        textual-inversion token)."""
        self.model = model
        repo, _ = resolve(model)
        self.model_id = str(Path(repo).resolve()) if Path(repo).exists() else repo
        if cache_dir is False:
            self.cache_dir = None
        else:
            self.cache_dir = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
        self.device = torch.device(device)
        self.cache_tag = cache_tag
        self._tokenizer = tokenizer
        self._text_encoder = text_encoder
        self.hits = 0
        self.misses = 0

    # -- loading --------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_pretrained(CLIPTokenizer, self.model, subfolder="tokenizer")
        return self._tokenizer

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            te = load_pretrained(CLIPTextModel, self.model, subfolder="text_encoder")
            te.eval().requires_grad_(False)
            self._text_encoder = te.to(self.device)
        return self._text_encoder

    # -- cache ----------------------------------------------------------------------------------------------
    def cache_key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.model_id}\x00{self.cache_tag}\x00{prompt}".encode()).hexdigest()

    def cache_path(self, prompt: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{self.cache_key(prompt)}.safetensors"

    def _load_cached(self, prompt: str) -> Tensor | None:
        path = self.cache_path(prompt)
        if path is None or not path.exists():
            return None
        try:
            return load_file(str(path))["embedding"]
        except (OSError, KeyError, SafetensorError):  # a corrupt cache entry is recomputed
            return None

    def _store(self, prompt: str, emb: Tensor) -> None:
        path = self.cache_path(prompt)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"embedding": emb.detach().cpu().contiguous()}, str(tmp), metadata={"model": self.model_id, "prompt": prompt})
        os.replace(tmp, path)

    # -- encoding -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> Tensor:
        return encode_prompt(self.tokenizer, self.text_encoder, prompts, self.device).float().cpu()

    def encode(self, prompts: list[str] | str) -> Tensor:
        """``[B, L, D]`` float32 embeddings on ``self.device``, from the cache where possible."""
        if isinstance(prompts, str):
            prompts = [prompts]
        out: list[Tensor | None] = [self._load_cached(p) for p in prompts]
        missing = [i for i, e in enumerate(out) if e is None]
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        if missing:
            todo = list(dict.fromkeys(prompts[i] for i in missing))
            new = dict(zip(todo, self._encode_uncached(todo)))
            for p, e in new.items():
                self._store(p, e)
            for i in missing:
                out[i] = new[prompts[i]]
        return torch.stack(out).to(self.device)

    def __call__(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> PromptEmbeddings:
        """Plain, negative and view-dependent embeddings of ``prompt`` (see :class:`PromptEmbeddings`)."""
        texts = [prompt, negative_prompt] + [view_prompt(prompt, d) for d in DIRECTIONS]
        emb = self.encode(texts)
        uncond = emb[1]
        return PromptEmbeddings(
            prompt=prompt,
            negative_prompt=negative_prompt,
            cond=emb[0],
            uncond=uncond,
            cond_dirs=emb[2:],
            uncond_dirs=uncond.unsqueeze(0).expand(len(DIRECTIONS), -1, -1).clone(),
            view_dependent=view_dependent,
        )


class TextConditioned:
    """Mixin of text-conditioned priors: one prompt API for all of them.

    ``prior.encode_prompt(prompt, negative_prompt="", view_dependent=None) -> PromptEmbeddings``; the embeddings go
    into ``Conditioning.prompt``. A prior provides :meth:`make_prompt_encoder` (its own tokenizer and text
    encoder, or the model name to load them from); ``view_dependent`` defaults to the prior config's
    ``view_dependent`` field when it has one, else False.
    """

    _prompt_encoder: PromptEncoder | None = None

    def make_prompt_encoder(self) -> PromptEncoder:
        raise NotImplementedError

    @property
    def prompt_encoder(self) -> PromptEncoder:
        if self._prompt_encoder is None:
            self._prompt_encoder = self.make_prompt_encoder()
        return self._prompt_encoder

    def encode_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool | None = None) -> PromptEmbeddings:
        if view_dependent is None:
            view_dependent = bool(getattr(self.config, "view_dependent", False))
        return self.prompt_encoder(prompt, negative_prompt, view_dependent=view_dependent).to(self.device)
