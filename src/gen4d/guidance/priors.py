"""Building priors by kind, so that a recipe names the priors it needs and a caller may supply others.

A *prior factory* is ``factory(kind, config, device) -> DiffusionGuidance``; :func:`build_prior` builds the published
models; ``gen4d.testing.oracles`` builds oracle priors of the same kinds (a denoiser that knows the scene), which
is how ``gen4d demo --recipe NAME`` checks a recipe end to end without weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import DiffusionGuidance, GuidanceConfig
from .controlnet_tile import ControlNetTileConfig, ControlNetTileGuidance
from .deepfloyd import DeepFloydConfig, DeepFloydIFGuidance
from .mvdream import MVDreamConfig, MVDreamGuidance
from .stable_diffusion import StableDiffusionConfig, StableDiffusionGuidance
from .video_sds import VideoSDSConfig, VideoSDSGuidance
from .vsd import VariationalScoreDistillation, VSDConfig
from .zero123 import Zero123Config, Zero123Guidance

PRIOR_KINDS: dict[str, tuple[type[GuidanceConfig], Callable[..., DiffusionGuidance]]] = {
    "sd": (StableDiffusionConfig, lambda c, d: StableDiffusionGuidance(c, device=d)),
    "vsd": (VSDConfig, lambda c, d: VariationalScoreDistillation(c, device=d)),
    "mvdream": (MVDreamConfig, lambda c, d: MVDreamGuidance.from_pretrained(c, device=d)),
    "zero123": (Zero123Config, lambda c, d: Zero123Guidance(c, device=d)),
    "video": (VideoSDSConfig, lambda c, d: VideoSDSGuidance(c, device=d)),
    "controlnet-tile": (ControlNetTileConfig, lambda c, d: ControlNetTileGuidance(c, device=d)),
    "deepfloyd": (DeepFloydConfig, lambda c, d: DeepFloydIFGuidance(c, device=d)),
}
"""Kind -> (config class, builder): text-to-image (SD), VSD, multi-view (MVDream), novel view (Zero123),
text-to-video (ZeroScope / ModelScope), ControlNet-tile, pixel-space text-to-image (DeepFloyd IF)."""

PriorFactory = Callable[[str, GuidanceConfig, torch.device], DiffusionGuidance]


def build_prior(kind: str, config: GuidanceConfig, device: torch.device | str | None = None) -> DiffusionGuidance:
    """The published prior of ``kind`` with ``config`` on ``device``."""
    if kind not in PRIOR_KINDS:
        raise KeyError(f"unknown prior kind {kind!r}; known: {', '.join(PRIOR_KINDS)}")
    cls, build = PRIOR_KINDS[kind]
    if not isinstance(config, cls):
        raise TypeError(f"a {kind} prior needs a {cls.__name__}, got {type(config).__name__}")
    return build(config, device)
