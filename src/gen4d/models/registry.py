"""Model registry: short names -> Hub ids, and loading from the Hub cache or a local folder with clear errors.

A *model set* decides what a registry name loads: ``real`` (the default) loads the published weights; other sets
are registered by whoever provides them (``gen4d.testing`` registers ``tiny``: tiny random-weight models of the
same classes, saved in the Hub layout and loaded through this same ``from_pretrained`` path).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from transformers import PreTrainedModel

from .. import Gen4DError


@dataclass(frozen=True)
class ModelSpec:
    """A pretrained model: Hub id, optional file inside it, and what it is for."""

    repo: str
    description: str
    file: str | None = None


REGISTRY: dict[str, ModelSpec] = {
    "sd21": ModelSpec("stabilityai/stable-diffusion-2-1-base", "Stable Diffusion 2.1 base (text SDS, VSD)"),
    "sd15": ModelSpec("stable-diffusion-v1-5/stable-diffusion-v1-5", "Stable Diffusion 1.5 (ControlNet-tile base)"),
    "mvdream": ModelSpec("MVDream/MVDream", "MVDream 4-view SD 2.1 (original checkpoint)", file="sd-v2.1-base-4view.pt"),
    "mvdream-diffusers": ModelSpec("ashawkey/mvdream-sd2.1-diffusers", "MVDream, diffusers port"),
    "zero123-xl": ModelSpec("ashawkey/zero123-xl-diffusers", "Zero123-XL novel-view diffusion"),
    "stable-zero123": ModelSpec("ashawkey/stable-zero123-diffusers", "Stable Zero123 novel-view diffusion"),
    "zero123": ModelSpec("bennyguo/zero123-diffusers", "Zero123 (threestudio conversion; Animate124's stages 2 and 3)"),
    "zero123-xl-bennyguo": ModelSpec("bennyguo/zero123-xl-diffusers", "Zero123-XL (threestudio conversion)"),
    "svd": ModelSpec("stabilityai/stable-video-diffusion-img2vid", "Stable Video Diffusion, 14 frames"),
    "svd-xt": ModelSpec("stabilityai/stable-video-diffusion-img2vid-xt", "Stable Video Diffusion XT, 25 frames"),
    "zeroscope": ModelSpec("cerspense/zeroscope_v2_576w", "ZeroScope v2 576w text-to-video"),
    "modelscope": ModelSpec("damo-vilab/text-to-video-ms-1.7b", "ModelScope 1.7B text-to-video"),
    "controlnet-tile": ModelSpec("lllyasviel/control_v11f1e_sd15_tile", "ControlNet 1.1 tile for SD 1.5"),
    "deepfloyd-if": ModelSpec("DeepFloyd/IF-I-XL-v1.0", "DeepFloyd IF stage I (pixel space)"),
}

METRIC_WEIGHTS = "metrics"
"""The name under which a model set serves the evaluation metrics' weights (LPIPS, CLIP, I3D) as one folder."""

ModelSetResolver = Callable[[str], Path]
"""``resolver(registry_name) -> folder`` holding that model in its Hub layout."""

_model_sets: dict[str, ModelSetResolver | None] = {"real": None}
_model_set = "real"


def register_model_set(name: str, resolver: ModelSetResolver) -> None:
    """Make ``--models NAME`` load registry names from ``resolver(name)`` (e.g. ``tiny`` from :mod:`gen4d.testing`)."""
    _model_sets[name] = resolver


def set_model_set(name: str) -> None:
    """``real``: registry names load the published weights; another registered set: its folders."""
    global _model_set
    if name not in _model_sets:
        raise Gen4DError(f"--models must be one of {', '.join(sorted(_model_sets))}, got {name!r}")
    _model_set = name


def model_set() -> str:
    return _model_set


def model_set_folder(name: str) -> Path | None:
    """The current model set's folder for registry name ``name`` (None for the real set)."""
    resolver = _model_sets[_model_set]
    return None if resolver is None else resolver(name)


def resolve(name_or_path: str) -> tuple[str, ModelSpec | None]:
    """A registry name -> its Hub id (or its folder in the current model set); an existing folder or any other Hub
    id is returned as is."""
    if name_or_path in REGISTRY:
        folder = model_set_folder(name_or_path)
        if folder is not None:
            return str(folder), REGISTRY[name_or_path]
        return REGISTRY[name_or_path].repo, REGISTRY[name_or_path]
    return name_or_path, None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def download_command(repo: str) -> str:
    return f"hf download {repo}"


def missing_weights_error(name: str, repo: str, detail: str = "") -> Gen4DError:
    """The one error for weights that cannot be found: what is missing and exactly how to get it."""
    where = "the Hub is unreachable (offline)" if offline() else "it could not be downloaded"
    msg = (
        f"model {name!r} ({repo}) is not in the local Hugging Face cache and {where}; download it once with "
        f"`{download_command(repo)}` (or `huggingface-cli download {repo}`), or point gen4d at a local copy with "
        f"models.{name}=/path/to/folder"
    )
    return Gen4DError(msg + (f" [{detail}]" if detail else ""))


def is_cached(name_or_path: str) -> bool:
    """Whether ``name_or_path`` can be loaded without the network: a local folder or file, a model of the current
    non-real model set, or a Hub repo with a snapshot in the local cache."""
    repo, _ = resolve(name_or_path)
    if Path(repo).exists():
        return True
    try:
        snapshot_download(repo, local_files_only=True)
    except (OSError, ValueError):  # huggingface_hub's "not in the cache" errors are OSError subclasses
        return False
    return True


def load_pretrained(cls, name_or_path: str, subfolder: str | None = None, **kwargs):
    """``cls.from_pretrained`` for a registry name, Hub id or local folder, with one clear error if missing."""
    repo, _ = resolve(name_or_path)
    if not ({"dtype", "torch_dtype"} & kwargs.keys()) and isinstance(cls, type) and issubclass(cls, PreTrainedModel):
        # transformers >= 5 loads weights in the dtype a checkpoint's config names (float16 for SVD's image encoder
        # and ModelScope's text encoder); gen4d casts to the precision the user chose, so load float32 by default
        # as diffusers does.
        kwargs["dtype"] = torch.float32
    if Path(repo).exists():
        repo = str(Path(repo))
    try:
        if subfolder is None:
            return cls.from_pretrained(repo, **kwargs)
        return cls.from_pretrained(repo, subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as e:  # huggingface_hub raises OSError subclasses for missing files
        if Path(repo).exists():
            raise Gen4DError(f"{repo} does not hold a loadable {cls.__name__}{f' in {subfolder}/' if subfolder else ''}: {str(e).splitlines()[0]}") from None
        raise missing_weights_error(name_or_path, repo, type(e).__name__) from None
