"""Diffusion priors for score distillation, all behind one interface (:mod:`gen4d.guidance.base`)::

    prior(renders, Conditioning(...), step, generator) -> {"loss_sds": ...}

Priors: Stable Diffusion (:mod:`.stable_diffusion`, VSD in :mod:`.vsd`), MVDream (:mod:`.mvdream`), Zero123 /
Stable Zero123 (:mod:`.zero123`), text-to-video (:mod:`.video_sds`), ControlNet-tile (:mod:`.controlnet_tile`);
Stable Video Diffusion generation and refinement (:mod:`.svd`) is not a distillation prior.
"""

from .base import Conditioning, DiffusionGuidance, GuidanceConfig
from .sds import TimestepSchedule

__all__ = ["Conditioning", "DiffusionGuidance", "GuidanceConfig", "TimestepSchedule"]
