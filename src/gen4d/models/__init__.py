"""Pretrained models: short names -> Hub ids, loading from the Hub cache or a local folder, model sets
(``--models real|tiny``), and the preflight that checks a command's models and packages before any work.

Tests plug into this package (``gen4d.testing`` registers the ``tiny`` model set); nothing here imports them.
"""

from .preflight import ModelRequirement, PackageRequirement, Requirement, check_requirements, requirement_status
from .registry import (
    REGISTRY,
    ModelSpec,
    is_cached,
    load_pretrained,
    missing_weights_error,
    model_set,
    offline,
    register_model_set,
    resolve,
    set_model_set,
)

__all__ = [
    "REGISTRY",
    "ModelRequirement",
    "ModelSpec",
    "PackageRequirement",
    "Requirement",
    "check_requirements",
    "is_cached",
    "load_pretrained",
    "missing_weights_error",
    "model_set",
    "offline",
    "register_model_set",
    "requirement_status",
    "resolve",
    "set_model_set",
]
