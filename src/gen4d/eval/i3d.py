"""Inception-v1 I3D (Carreira & Zisserman 2017), the video classifier whose features FVD compares.

Parameter names and shapes follow the widely used PyTorch port of the Kinetics-400 RGB I3D (the layout of
``i3d_pretrained_400.pt``, the file Consistent4D's FVD script loads with ``load_state_dict(strict=True)``):

* stem: ``Conv3d_1a_7x7`` (7x7x7, stride 2, 64 ch), ``MaxPool3d_2a_3x3`` (1x3x3, stride 1x2x2),
  ``Conv3d_2b_1x1`` (64 ch), ``Conv3d_2c_3x3`` (192 ch), ``MaxPool3d_3a_3x3`` (1x3x3, stride 1x2x2);
* inception blocks ``Mixed_3b``, ``Mixed_3c``, ``MaxPool3d_4a_3x3`` (3x3x3, stride 2), ``Mixed_4b`` .. ``Mixed_4f``,
  ``MaxPool3d_5a_2x2`` (2x2x2, stride 2), ``Mixed_5b``, ``Mixed_5c``; each block has branches ``b0`` (1x1x1),
  ``b1a`` (1x1x1) -> ``b1b`` (3x3x3), ``b2a`` (1x1x1) -> ``b2b`` (3x3x3), ``b3a`` (3x3x3 max-pool, stride 1) ->
  ``b3b`` (1x1x1), concatenated along channels in that order;
* ``logits``: a 1x1x1 convolution with bias (1024 -> 400), no batch norm, no activation.

Every convolution unit ``Unit3D`` holds ``conv3d`` (no bias) and ``bn`` (``BatchNorm3d``, eps 1e-3, momentum 0.01)
followed by a ReLU; so the state dict has ``<unit>.conv3d.weight`` and ``<unit>.bn.{weight, bias, running_mean,
running_var, num_batches_tracked}`` for every unit, and ``logits.conv3d.{weight, bias}``.

Padding is TensorFlow's "SAME", computed from the input size at run time: along an axis of size ``n`` with kernel
``k`` and stride ``s`` the total padding is ``max(k - s, 0)`` if ``n % s == 0`` else ``max(k - n % s, 0)``,
``total // 2`` in front and the rest behind (max-pools pad with zeros as well; their inputs are ReLU outputs).

Forward: ``x [B, 3, T, H, W]`` in ``[-1, 1]`` -> stem and blocks -> mean over the spatial positions of the last
map (identical to the original 1x7x7 average pool at 224 x 224 inputs, where that map is 7 x 7; defined at any
size here) -> dropout (identity at evaluation) -> ``logits`` -> mean over the remaining time steps ->
``[B, num_classes]``. These 400-d time-averaged logits are the features Consistent4D's FVD uses.

The channel widths are a :class:`I3DWidths`; the default is the published network. Smaller widths give tiny
random networks of the same class with the same parameter names (tests, ``--models tiny``), and
:meth:`InceptionI3d.from_state_dict` reads the widths back from any state dict of this layout.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import Gen4DError

__all__ = ["I3DWidths", "InceptionI3d", "same_padding"]

#: Inception blocks in order: name -> output channels of (b0, b1a, b1b, b2a, b2b, b3b).
BLOCKS: tuple[tuple[str, tuple[int, int, int, int, int, int]], ...] = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)
BRANCHES = ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding ``(front, back)`` along one axis: the output has ``ceil(size / stride)`` steps."""
    rem = size % stride
    total = max(kernel - stride, 0) if rem == 0 else max(kernel - rem, 0)
    return total // 2, total - total // 2


def _pad_same(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    t, h, w = x.shape[-3:]
    pt, ph, pw = (same_padding(n, k, s) for n, k, s in zip((t, h, w), kernel, stride))
    if not any(pt + ph + pw):
        return x
    return F.pad(x, (*pw, *ph, *pt))  # F.pad lists the last axis first


@dataclass(frozen=True)
class I3DWidths:
    """Channel widths of an :class:`InceptionI3d`: the three stem convolutions and each block's six branches."""

    stem: tuple[int, int, int] = (64, 64, 192)
    blocks: tuple[tuple[int, int, int, int, int, int], ...] = tuple(c for _, c in BLOCKS)

    def scaled(self, divisor: int) -> I3DWidths:
        """Every width divided by ``divisor`` (at least 1 channel): a tiny network with the same layout."""
        def f(c: int) -> int:
            return max(1, c // divisor)

        return I3DWidths(tuple(f(c) for c in self.stem), tuple(tuple(f(c) for c in b) for b in self.blocks))

    @staticmethod
    def block_out(b: tuple[int, ...]) -> int:
        """Channels a block outputs: b0 + b1b + b2b + b3b."""
        return b[0] + b[2] + b[4] + b[5]


class Unit3D(nn.Module):
    """3D convolution (SAME padding, no bias unless ``bias``) -> optional batch norm -> optional ReLU."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True, relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, kernel_size=self.kernel, stride=self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max-pool with SAME zero padding (no parameters)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated along channels: 1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3 | pool -> 1x1x1."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = widths
        self.b0 = Unit3D(cin, c0)
        self.b1a = Unit3D(cin, c1a)
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3))
        self.b2a = Unit3D(cin, c2a)
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, c3b)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """The I3D network of the module docstring. ``forward(x [B, C, T, H, W] in [-1, 1]) -> [B, num_classes]``.

    ``forward(x, per_time=True)`` returns the logits before the mean over time, ``[B, num_classes, T']`` with
    ``T' = ceil(T / 8)``. The network runs in evaluation mode by default (batch norm uses its running statistics).
    """

    def __init__(self, num_classes: int = 400, in_channels: int = 3, widths: I3DWidths | None = None):
        super().__init__()
        w = widths or I3DWidths()
        self.widths, self.num_classes = w, num_classes
        s1, s2, s3 = w.stem
        layers: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", Unit3D(in_channels, s1, (7, 7, 7), (2, 2, 2))),
            ("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ("Conv3d_2b_1x1", Unit3D(s1, s2)),
            ("Conv3d_2c_3x3", Unit3D(s2, s3, (3, 3, 3))),
            ("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
        ]
        cin = s3
        for (name, _), widths_b in zip(BLOCKS, w.blocks, strict=True):
            if name == "Mixed_4b":
                layers.append(("MaxPool3d_4a_3x3", MaxPool3dSame((3, 3, 3), (2, 2, 2))))
            elif name == "Mixed_5b":
                layers.append(("MaxPool3d_5a_2x2", MaxPool3dSame((2, 2, 2), (2, 2, 2))))
            layers.append((name, InceptionBlock(cin, widths_b)))
            cin = I3DWidths.block_out(widths_b)
        for name, module in layers:
            self.add_module(name, module)
        self._order = [name for name, _ in layers]
        self.logits = Unit3D(cin, num_classes, bn=False, relu=False, bias=True)
        self.eval()

    def forward(self, x: Tensor, per_time: bool = False) -> Tensor:
        if x.ndim != 5:
            raise ValueError(f"I3D input must be [B, C, T, H, W], got {tuple(x.shape)}")
        for name in self._order:
            x = getattr(self, name)(x)
        x = x.mean(dim=(3, 4), keepdim=True)  # the 1x7x7 average pool of the original at 224 x 224
        x = self.logits(x)[..., 0, 0]  # [B, classes, T']
        return x if per_time else x.mean(dim=2)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor]) -> InceptionI3d:
        """Build the network whose widths match ``state_dict`` and load it with ``strict=True``.

        Accepts the published layout (see the module docstring), optionally with a ``module.`` prefix
        (``nn.DataParallel``). Missing or unexpected keys, or inconsistent shapes, raise :class:`Gen4DError`.
        """
        sd = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}

        def out_channels(unit: str) -> int:
            key = f"{unit}.conv3d.weight"
            if key not in sd or sd[key].ndim != 5:
                raise Gen4DError(f"I3D weights: no 5-D tensor {key}; this is not an InceptionI3d state dict")
            return int(sd[key].shape[0])

        stem = tuple(out_channels(u) for u in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"))
        blocks = tuple(tuple(out_channels(f"{name}.{b}") for b in BRANCHES) for name, _ in BLOCKS)
        in_channels = int(sd["Conv3d_1a_7x7.conv3d.weight"].shape[1])
        model = cls(num_classes=out_channels("logits"), in_channels=in_channels, widths=I3DWidths(stem, blocks))
        own = model.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        # Files saved before batch norm counted its updates lack num_batches_tracked; load_state_dict fills it in
        # (a plain dict carries no version metadata, so torch treats it as such an old file).
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise Gen4DError(
                "I3D weights do not match the InceptionI3d layout: "
                f"missing {missing[:6] or 'none'}{' ...' if len(missing) > 6 else ''}, "
                f"unexpected {unexpected[:6] or 'none'}{' ...' if len(unexpected) > 6 else ''}"
            )
        for k, v in sd.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise Gen4DError(f"I3D weights: {k} has shape {tuple(v.shape)}, the network expects {tuple(own[k].shape)}")
        model.load_state_dict(sd, strict=True)
        return model.eval()


def i3d_num_time_steps(num_frames: int) -> int:
    """Time steps of the logits for ``num_frames`` input frames (three stride-2 stages in time)."""
    t = num_frames
    for _ in range(3):
        t = math.ceil(t / 2)
    return t
