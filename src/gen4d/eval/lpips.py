"""LPIPS (Zhang et al. 2018), AlexNet variant with the v0.1 linear heads, in plain PyTorch with an own AlexNet trunk.

Images follow :mod:`gen4d.eval.metrics`: channel-last floats ``[..., H, W, 3]`` in ``[0, 1]``; :func:`lpips`
returns the leading shape ``[...]``.

No weights are downloaded here. :func:`load_lpips` needs two published files, by default in
:func:`gen4d.eval.common.metrics_dir`; a missing one raises one :class:`gen4d.Gen4DError` that names it and where
to get it:

* trunk: torchvision's ImageNet AlexNet, ``alexnet-owt-7be5be79.pth`` (:data:`ALEXNET_URL`);
* heads: the ``lpips`` package's ``weights/v0.1/alex.pth`` (:data:`LPIPS_ALEX_URL`).

:func:`convert_lpips_state_dicts` maps both published key layouts onto :class:`LPIPS` (no torchvision needed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .. import Gen4DError
from .common import load_state_dict, require_file

__all__ = [
    "ALEXNET_URL",
    "LPIPS",
    "LPIPS_ALEX_URL",
    "AlexNetFeatures",
    "convert_lpips_state_dicts",
    "expected_lpips_head_shapes",
    "expected_torchvision_alexnet_shapes",
    "load_lpips",
    "lpips",
]

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LPIPS_ALEX_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth"

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_ALEX_FILE = "alex.pth"


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
    lp = require_file(lpips_weights, LPIPS_ALEX_FILE, "LPIPS linear-head (lpips v0.1 alex.pth)", LPIPS_ALEX_URL)
    lpips_sd = load_state_dict(lp, "lpips alex.pth")
    if any(_LPIPS_SLICE_KEY.match(k) for k in lpips_sd) and alexnet_weights is None:
        alex_sd = None
    else:
        ap = require_file(alexnet_weights, ALEXNET_FILE, "LPIPS trunk (torchvision ImageNet AlexNet)", ALEXNET_URL)
        alex_sd = None if ap.resolve() == lp.resolve() else load_state_dict(ap, "torchvision alexnet")
    model = LPIPS.from_weights(alex_sd, lpips_sd)
    return model.to(device) if device is not None else model


def lpips(pred: Tensor, target: Tensor, model: LPIPS | None = None) -> Tensor:
    """LPIPS per image, ``[..., H, W, 3]`` in ``[0, 1]`` -> ``[...]`` (``model=None``: :func:`load_lpips` defaults)."""
    if model is None:
        model = load_lpips(device=pred.device)
    return model(pred, target)

