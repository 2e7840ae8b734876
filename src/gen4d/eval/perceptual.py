"""Learned perceptual metrics in plain PyTorch: LPIPS (AlexNet), CLIP similarity and FVD.

Images follow :mod:`gen4d.eval.metrics`: channel-last floats ``[..., H, W, 3]`` in ``[0, 1]``; per-image metrics
return the leading shape ``[...]``. Videos are ``[B, T, H, W, 3]`` in ``[0, 1]``.

No weights are downloaded here. The three metrics need published files that must be on disk (or, for CLIP, in the
Hugging Face cache); each missing file raises one :class:`gen4d.Gen4DError` that names it and where to get it.
By default the files are looked up in :func:`metrics_dir` (``$GEN4D_CACHE/metrics`` or ``~/.cache/gen4d/metrics``):

* LPIPS trunk: torchvision's ImageNet AlexNet, ``alexnet-owt-7be5be79.pth`` (:data:`ALEXNET_URL`).
* LPIPS heads: the ``lpips`` package's ``weights/v0.1/alex.pth`` (:data:`LPIPS_ALEX_URL`).
* FVD detector, either of two files, told apart by their content (:func:`load_i3d`):

  - ``i3d_pretrained_400.pt`` (:data:`I3D_STATE_DICT_URL`): a plain state dict of the Kinetics-400 InceptionI3d,
    the file Consistent4D's FVD script loads; the network is :class:`gen4d.eval.i3d.InceptionI3d`;
  - ``i3d_torchscript.pt`` (:data:`I3D_URL`): the TorchScript I3D of StyleGAN-V's FVD.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import Gen4DError
from .i3d import InceptionI3d

__all__ = [
    "ALEXNET_URL",
    "CLIP_MEAN",
    "CLIP_STD",
    "I3D_KWARGS",
    "I3D_STATE_DICT_URL",
    "I3D_URL",
    "LPIPS",
    "LPIPS_ALEX_URL",
    "AlexNetFeatures",
    "clip_similarity",
    "convert_lpips_state_dicts",
    "expected_lpips_head_shapes",
    "expected_torchvision_alexnet_shapes",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "fvd",
    "i3d_features",
    "is_torchscript_file",
    "load_i3d",
    "load_lpips",
    "lpips",
    "metrics_dir",
]

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LPIPS_ALEX_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
# Linked from Consistent4D's README (the file DisCo's FVD evaluation uses).
I3D_STATE_DICT_URL = "https://drive.google.com/file/d/1J8w3fGj6H6kmcW9G8Ff6tRQofblaG5Vn/view"

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_ALEX_FILE = "alex.pth"
I3D_FILE = "i3d_torchscript.pt"
I3D_STATE_DICT_FILE = "i3d_pretrained_400.pt"


def metrics_dir() -> Path:
    """Default folder of the metric weights: ``$GEN4D_CACHE/metrics`` or ``~/.cache/gen4d/metrics``."""
    root = os.environ.get("GEN4D_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "gen4d") / "metrics"


def _require_file(path: str | os.PathLike | None, default_name: str, what: str, url: str) -> Path:
    p = Path(path) if path is not None else metrics_dir() / default_name
    if not p.is_file():
        raise Gen4DError(
            f"{what} weights not found at {p}; download {url} and save it there "
            f"(or pass its path explicitly)"
        )
    return p


def _load_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:  # truncated, an HTML page...
        raise Gen4DError(f"{path} is not a loadable {what} state dict: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise Gen4DError(f"{path} does not hold a state dict ({what}), found {type(sd).__name__}")
    return dict(sd)


# --------------------------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------------------------

# (index in torchvision's ``alexnet.features``, in channels, out channels, kernel, stride, padding)
_ALEX_CONVS = ((0, 3, 64, 11, 4, 2), (3, 64, 192, 5, 1, 2), (6, 192, 384, 3, 1, 1), (8, 384, 256, 3, 1, 1), (10, 256, 256, 3, 1, 1))
_ALEX_TAPS = (1, 4, 7, 9, 11)  # the five ReLUs whose outputs LPIPS compares
LPIPS_CHANNELS = (64, 192, 384, 256, 256)
# lpips' ScalingLayer, applied to inputs in [-1, 1]: (x - shift) / scale.
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class AlexNetFeatures(nn.Module):
    """The convolutional trunk of AlexNet (torchvision's ``alexnet().features`` without its last max-pool).

    ``self.features`` uses torchvision's indices, so ``features.{0,3,6,8,10}.{weight,bias}`` load unchanged.
    ``forward`` returns the activations after the five ReLUs (64, 192, 384, 256, 256 channels).
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for idx, cin, cout, k, s, p in _ALEX_CONVS:
            if idx in (3, 6):  # max-pools before conv 2 and conv 3
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            layers.append(nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p))
            layers.append(nn.ReLU(inplace=False))
        assert len(layers) == 12
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _ALEX_TAPS:
                taps.append(x)
        return taps


def expected_torchvision_alexnet_shapes(include_classifier: bool = True) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ``alexnet()`` state dict (what ``alexnet-owt-7be5be79.pth`` holds)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for idx, cin, cout, k, _, _ in _ALEX_CONVS:
        shapes[f"features.{idx}.weight"] = (cout, cin, k, k)
        shapes[f"features.{idx}.bias"] = (cout,)
    if include_classifier:
        for idx, cin, cout in ((1, 256 * 6 * 6, 4096), (4, 4096, 4096), (6, 4096, 1000)):
            shapes[f"classifier.{idx}.weight"] = (cout, cin)
            shapes[f"classifier.{idx}.bias"] = (cout,)
    return shapes


def expected_lpips_head_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the ``lpips`` package's ``weights/v0.1/alex.pth`` (dropout at ``model.0``, conv at ``model.1``)."""
    return {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)}


_TV_KEY = re.compile(r"^(?:module\.)?(?:features\.)(\d+)\.(weight|bias)$")
_LPIPS_SLICE_KEY = re.compile(r"^(?:module\.)?net\.slice([1-5])\.(\d+)\.(weight|bias)$")
_LPIPS_HEAD_KEY = re.compile(r"^(?:module\.)?lin([0-4])\.model\.([01])\.weight$")


def convert_lpips_state_dicts(
    alexnet_state_dict: Mapping[str, Tensor] | None, lpips_state_dict: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Map the published key layouts onto :class:`LPIPS`'s own state dict (``trunk.features.*``, ``heads.*``).

    * ``alexnet_state_dict``: torchvision's ``alexnet`` layout (``features.{0,3,6,8,10}.{weight,bias}``; the
      ``classifier.*`` entries are dropped, LPIPS does not use them). ``None`` when ``lpips_state_dict`` is a whole
      ``lpips.LPIPS`` model state dict that already carries the trunk as ``net.slice{1..5}.{idx}.*``.
    * ``lpips_state_dict``: the ``lpips`` package's ``alex.pth`` (``lin{0..4}.model.1.weight``, ``[1, C, 1, 1]``;
      ``model.0`` also accepted, the layout without dropout). ``scaling_layer.*`` buffers are checked, not loaded.

    Any key that fits neither layout, a missing key or a wrong shape raises :class:`Gen4DError`.
    """
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    tv_shapes = expected_torchvision_alexnet_shapes(include_classifier=False)

    def put(dst: str, value: Tensor, src: str) -> None:
        if dst in out:
            raise Gen4DError(f"LPIPS weights: {src} duplicates an entry already given for {dst}")
        out[dst] = value

    for key, value in (alexnet_state_dict or {}).items():
        m = _TV_KEY.match(key)
        if m and f"features.{m.group(1)}.{m.group(2)}" in tv_shapes:
            put(f"trunk.features.{m.group(1)}.{m.group(2)}", value, key)
        elif re.match(r"^(?:module\.)?classifier\.\d+\.(weight|bias)$", key):
            continue
        else:
            unexpected.append(key)
    for key, value in lpips_state_dict.items():
        m = _LPIPS_HEAD_KEY.match(key)
        if m:
            put(f"heads.{m.group(1)}.weight", value, key)
            continue
        m = _LPIPS_SLICE_KEY.match(key)
        if m and f"features.{m.group(2)}.{m.group(3)}" in tv_shapes:
            put(f"trunk.features.{m.group(2)}.{m.group(3)}", value, key)
            continue
        if key in ("scaling_layer.shift", "scaling_layer.scale"):
            ref = torch.tensor(_LPIPS_SHIFT if key.endswith("shift") else _LPIPS_SCALE)
            if value.numel() != 3 or not torch.allclose(value.detach().float().reshape(3).cpu(), ref, atol=1e-6):
                raise Gen4DError(f"LPIPS weights: {key} = {value.flatten().tolist()} differs from the standard {ref.tolist()}")
            continue
        unexpected.append(key)

    expected = {f"trunk.{k}": v for k, v in tv_shapes.items()}
    expected.update({f"heads.{k}.weight": (1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)})
    missing = sorted(set(expected) - set(out))
    if unexpected or missing:
        raise Gen4DError(
            "LPIPS weights do not match torchvision's alexnet + lpips' alex.pth layouts: "
            f"missing {missing or 'none'}, unexpected {sorted(unexpected) or 'none'}"
        )
    for k, shape in expected.items():
        if tuple(out[k].shape) != shape:
            raise Gen4DError(f"LPIPS weights: {k} has shape {tuple(out[k].shape)}, expected {shape}")
    return out


class LPIPS(nn.Module):
    """LPIPS distance (Zhang et al. 2018), AlexNet variant, v0.1 heads.

    For images in ``[0, 1]``: map to ``[-1, 1]``, apply lpips' scaling layer, take the five AlexNet ReLU taps of
    both images, unit-normalise every feature vector over channels, square the difference, weight the channels with
    the non-negative 1x1 head of that tap (no bias), average over space and sum over the five taps. This matches
    ``lpips.LPIPS(net="alex", version="0.1")(pred, target, normalize=True)`` (no input resizing; images must be at
    least 31 x 31 pixels).

    ``forward(pred, target)``: ``[..., H, W, 3]`` -> ``[...]``; gradients flow to both inputs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = AlexNetFeatures()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_weights(
        cls, alexnet_state_dict: Mapping[str, Tensor] | None, lpips_state_dict: Mapping[str, Tensor]
    ) -> LPIPS:
        """Build from the published state dicts (see :func:`convert_lpips_state_dicts`).

        The heads must be non-negative (as published); a negative entry means a wrong file and raises.
        """
        model = cls()
        sd = convert_lpips_state_dicts(alexnet_state_dict, lpips_state_dict)
        for k in range(len(LPIPS_CHANNELS)):
            if (sd[f"heads.{k}.weight"] < 0).any():
                raise Gen4DError(f"LPIPS head {k} has negative weights; this is not an lpips linear-head file")
        result = model.load_state_dict(sd, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        return model

    def features(self, x: Tensor) -> list[Tensor]:
        """Unit-normalised taps for ``x`` ``[B, 3, H, W]`` in ``[0, 1]``."""
        x = (x * 2.0 - 1.0 - self.shift) / self.scale
        # lpips' normalize_tensor: divide by (L2 norm over channels + 1e-10).
        return [f / (f.square().sum(dim=1, keepdim=True).sqrt() + 1e-10) for f in self.trunk(x)]

    def forward(self, pred: Tensor, target: Tensor, *, batch_size: int = 32) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        if pred.ndim < 3 or pred.shape[-1] != 3:
            raise ValueError(f"images must be [..., H, W, 3], got {tuple(pred.shape)}")
        *lead, h, w, _ = pred.shape
        if h < 31 or w < 31:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least 31x31 pixels, got {h}x{w}")
        dtype = self.shift.dtype
        a = pred.reshape(-1, h, w, 3).permute(0, 3, 1, 2).to(dtype)
        b = target.reshape(-1, h, w, 3).permute(0, 3, 1, 2).to(dtype)
        out = []
        for i in range(0, a.shape[0], batch_size):
            fa = self.features(a[i : i + batch_size])
            fb = self.features(b[i : i + batch_size])
            d = 0.0
            for head, xa, xb in zip(self.heads, fa, fb):
                d = d + head((xa - xb).square()).mean(dim=(1, 2, 3))
            out.append(d)
        res = torch.cat(out) if out else pred.new_zeros(0, dtype=dtype)
        return res.reshape(lead)


def load_lpips(
    alexnet_weights: str | os.PathLike | None = None,
    lpips_weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> LPIPS:
    """LPIPS from local files (default: ``metrics_dir()/alexnet-owt-7be5be79.pth`` and ``metrics_dir()/alex.pth``).

    ``alexnet_weights`` may also be the same file as ``lpips_weights`` when that file is a whole ``lpips.LPIPS``
    state dict (trunk included). A missing file raises :class:`Gen4DError` naming it and its download address.
    """
    lp = _require_file(lpips_weights, LPIPS_ALEX_FILE, "LPIPS linear-head (lpips v0.1 alex.pth)", LPIPS_ALEX_URL)
    lpips_sd = _load_state_dict(lp, "lpips alex.pth")
    if any(_LPIPS_SLICE_KEY.match(k) for k in lpips_sd) and alexnet_weights is None:
        alex_sd = None
    else:
        ap = _require_file(alexnet_weights, ALEXNET_FILE, "LPIPS trunk (torchvision ImageNet AlexNet)", ALEXNET_URL)
        alex_sd = None if ap.resolve() == lp.resolve() else _load_state_dict(ap, "torchvision alexnet")
    model = LPIPS.from_weights(alex_sd, lpips_sd)
    return model.to(device) if device is not None else model


def lpips(pred: Tensor, target: Tensor, model: LPIPS | None = None) -> Tensor:
    """LPIPS per image, ``[..., H, W, 3]`` in ``[0, 1]`` -> ``[...]`` (``model=None``: :func:`load_lpips` defaults)."""
    if model is None:
        model = load_lpips(device=pred.device)
    return model(pred, target)


# --------------------------------------------------------------------------------------------------------------
# CLIP similarity
# --------------------------------------------------------------------------------------------------------------

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_clip_cache: dict[tuple[str, str], Any] = {}


def _resize_center_crop(x: Tensor, size: int) -> Tensor:
    """``[B, C, H, W]``: resize the shorter side to ``size`` (bilinear, antialiased), then centre-crop ``size``^2."""
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top : top + size, left : left + size]
    return x


def _load_clip(model: Any, device: torch.device | None):
    if not isinstance(model, str):
        return model
    key = (model, str(device))
    if key not in _clip_cache:
        from transformers import CLIPModel

        from ..guidance.registry import load_pretrained

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
        x = (_resize_center_crop(x, size) - mean) / std
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
    :func:`gen4d.guidance.registry.load_pretrained`, cached per device), or a loaded ``CLIPModel``. ``tokenizer``
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
            from transformers import CLIPTokenizer

            from ..guidance.registry import load_pretrained

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


# --------------------------------------------------------------------------------------------------------------
# Frechet distance and FVD
# --------------------------------------------------------------------------------------------------------------


def _as_f64(x: Any) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x.detach().cpu()).to(torch.float64)


def _sym_sqrt(a: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh(0.5 * (a + a.T))
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Frechet distance between Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``:

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``.

    ``tr((sigma1 sigma2)^{1/2})`` is computed as ``tr((A sigma2 A)^{1/2})`` with ``A = sigma1^{1/2}`` (the two
    matrices are similar, and ``A sigma2 A`` is symmetric PSD): two symmetric eigendecompositions in float64,
    negative round-off eigenvalues clamped to 0. Accepts numpy arrays or tensors; returns a Python float.
    """
    mu1, mu2, s1, s2 = (_as_f64(v) for v in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must be equal-length vectors, got {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    d = mu1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be [{d}, {d}], got {tuple(s1.shape)} and {tuple(s2.shape)}")
    a = _sym_sqrt(s1)
    m = a @ s2 @ a
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2.0 * tr_sqrt
    return float(fd)


def frechet_distance_from_features(features_a: Any, features_b: Any) -> float:
    """:func:`frechet_distance` between the Gaussians fitted to two feature sets ``[Na, D]`` and ``[Nb, D]`` (means
    and sample covariances, ddof 1), computed without forming the ``D x D`` covariances when a set is smaller than
    ``D`` (e.g. 4 view videos against 400-d I3D features).

    With centred features ``A`` (``[Na, D]``) and ``B``, ``Sa = A^T A / (Na - 1)`` and ``Sb = B^T B / (Nb - 1)``;
    the non-zero eigenvalues of ``Sa Sb`` are those of ``M M^T`` with ``M = A B^T / sqrt((Na - 1)(Nb - 1))``, so
    ``tr((Sa Sb)^{1/2})`` is the sum of the singular values of the small matrix ``M``, and ``tr(Sa)``, ``tr(Sb)``
    are sums of squares. Exact (float64); falls back to :func:`frechet_distance` when both sets have ``>= D`` rows.
    """
    fa, fb = _as_f64(features_a), _as_f64(features_b)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1] or min(fa.shape[0], fb.shape[0]) < 2:
        raise ValueError(f"need two [N >= 2, D] feature sets with the same D, got {tuple(fa.shape)} and {tuple(fb.shape)}")
    if min(fa.shape[0], fb.shape[0]) >= fa.shape[1]:
        return frechet_distance(*feature_statistics(fa), *feature_statistics(fb))
    a, b = fa - fa.mean(0), fb - fb.mean(0)
    na, nb = fa.shape[0] - 1, fb.shape[0] - 1
    cross = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt(na * nb)
    fd = (fa.mean(0) - fb.mean(0)).square().sum() + a.square().sum() / na + b.square().sum() / nb - 2.0 * cross
    return float(fd)


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and sample covariance ``[D, D]`` (``np.cov(rowvar=False)``, ddof 1) of ``[N, D]`` features."""
    f = _as_f64(features).numpy()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need [N >= 2, D] features for a covariance, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


# The call of StyleGAN-V's FVD (and of the evaluation code derived from it): raw 400-d logits-layer features.
I3D_KWARGS: dict[str, Any] = {"rescale": False, "resize": True, "return_features": True}


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """True for a TorchScript archive (a zip with a ``code/`` folder or ``constants.pkl``); False for a plain
    ``torch.save`` file (zip or legacy pickle), whatever its name."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())


def _default_i3d_file() -> Path:
    for name in (I3D_STATE_DICT_FILE, I3D_FILE):
        if (metrics_dir() / name).is_file():
            return metrics_dir() / name
    raise Gen4DError(
        f"FVD detector weights not found in {metrics_dir()}; download {I3D_STATE_DICT_URL} (Consistent4D's "
        f"{I3D_STATE_DICT_FILE}) or {I3D_URL} ({I3D_FILE}) and save it there (or pass its path explicitly)"
    )


def load_i3d(path: str | os.PathLike | None = None, device: str | torch.device | None = "cpu") -> torch.jit.ScriptModule | InceptionI3d:
    """Load an FVD detector; what the file holds decides how (its name does not matter).

    * a TorchScript archive (StyleGAN-V's ``i3d_torchscript.pt``): ``torch.jit.load``;
    * a plain state dict (Consistent4D's ``i3d_pretrained_400.pt``, the InceptionI3d layout):
      :meth:`InceptionI3d.from_state_dict` (strict).

    ``path=None``: ``metrics_dir()/i3d_pretrained_400.pt``, else ``metrics_dir()/i3d_torchscript.pt``. A missing or
    unreadable file raises :class:`Gen4DError` naming it and where to download the weights.
    """
    if path is None:
        p = _default_i3d_file()
    else:
        url = I3D_STATE_DICT_URL if Path(path).name == I3D_STATE_DICT_FILE else I3D_URL
        p = _require_file(path, I3D_FILE, "FVD detector (I3D)", url)
    if not is_torchscript_file(p):
        det = InceptionI3d.from_state_dict(_load_state_dict(p, "InceptionI3d"))
        return det.to(device) if device is not None else det
    try:
        with warnings.catch_warnings():  # recent torch flags TorchScript as deprecated; the published file is one
            warnings.simplefilter("ignore", DeprecationWarning)
            det = torch.jit.load(str(p), map_location=device)
    except (RuntimeError, OSError, ValueError) as e:
        raise Gen4DError(f"{p} is not a loadable TorchScript module: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return det.eval()


def _resize_stretch_bicubic(x: Tensor, size: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, C, size, size]``: bicubic, antialiased when shrinking, aspect ratio not kept,
    no clamping (the resize of Consistent4D's FVD script: PIL bicubic on float channels)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


@torch.no_grad()
def i3d_features(
    videos: Tensor,
    detector: Callable[..., Tensor],
    *,
    detector_kwargs: Mapping[str, Any] | None = None,
    resolution: int | None = 224,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> Tensor:
    """Detector features ``[B, F]`` of videos ``[B, T, H, W, 3]`` in ``[0, 1]``.

    Two protocols, chosen by the detector:

    * :class:`InceptionI3d` (Consistent4D's FVD): every frame is resized to ``resolution`` x ``resolution``
      (bicubic, aspect ratio not kept, no crop; ``None``: as is), mapped to ``[-1, 1]`` (Consistent4D:
      ``uint8 / 127.5 - 1``), the whole clip is laid out as ``[B, 3, T, H, W]`` and the features are the 400-d
      logits averaged over time (``F = 400``).
    * anything else, e.g. the TorchScript I3D (StyleGAN-V's FVD): each frame is (if ``resolution`` is set) resized so
      its shorter side is ``resolution`` (bilinear, antialiased) and centre-cropped to ``resolution``^2, mapped to
      ``[-1, 1]``, laid out as ``[B, 3, T, H, W]`` and passed as ``detector(x, **detector_kwargs)`` (default
      :data:`I3D_KWARGS`: ``rescale=False, resize=True, return_features=True``, i.e. the input is already in
      ``[-1, 1]`` and the I3D returns its 400-d pre-softmax features). That I3D needs at least ~10 frames of 224x224.
    """
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be [B, T, H, W, 3], got {tuple(videos.shape)}")
    stretch = isinstance(detector, InceptionI3d)
    kwargs = {} if stretch else dict(I3D_KWARGS if detector_kwargs is None else detector_kwargs)
    if device is None:
        p = next(iter(detector.parameters()), None) if hasattr(detector, "parameters") else None
        device = p.device if p is not None else videos.device
    b, t, h, w, _ = videos.shape
    feats = []
    for i in range(0, b, batch_size):
        v = videos[i : i + batch_size].to(device, torch.float32).clamp(0, 1)
        n = v.shape[0]
        x = v.reshape(n * t, h, w, 3).permute(0, 3, 1, 2)
        if resolution is not None:
            x = _resize_stretch_bicubic(x, resolution) if stretch else _resize_center_crop(x, resolution)
        x = x.reshape(n, t, 3, x.shape[-2], x.shape[-1]).permute(0, 2, 1, 3, 4).contiguous()
        out = detector(x * 2.0 - 1.0, **kwargs)
        feats.append(out.reshape(n, -1).double().cpu())
    return torch.cat(feats)


def fvd(
    videos_a: Tensor,
    videos_b: Tensor,
    detector: Callable[..., Tensor] | str | os.PathLike | None = None,
    *,
    detector_kwargs: Mapping[str, Any] | None = None,
    resolution: int | None = 224,
    batch_size: int = 8,
) -> float:
    """Frechet video distance between two sets of videos ``[B, T, H, W, 3]`` in ``[0, 1]`` (B >= 2 each).

    detector: a loaded detector (an :class:`InceptionI3d`, or any callable with the TorchScript I3D's call
    signature), a path to either weight file (:func:`load_i3d` tells them apart by content), or ``None`` for the
    default files of :func:`load_i3d`. Features come from :func:`i3d_features` (whose protocol follows the
    detector); the score is the Frechet distance between their means and sample covariances
    (:func:`frechet_distance_from_features`). Like every FVD,
    the value depends on the number of videos; compare scores computed with equal set sizes.
    """
    if detector is None or isinstance(detector, (str, os.PathLike)):
        detector = load_i3d(detector)
    kw = {"detector_kwargs": detector_kwargs, "resolution": resolution, "batch_size": batch_size}
    return frechet_distance_from_features(i3d_features(videos_a, detector, **kw), i3d_features(videos_b, detector, **kw))
