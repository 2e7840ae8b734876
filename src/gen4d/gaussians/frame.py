"""The Gaussians of one instant, activated (what renderers and exporters consume)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..sh import sh_degree_from_bases


@dataclass
class GaussianFrame:
    """N Gaussians at one time, with activations applied.

    means: ``[N, 3]`` world positions. quats: ``[N, 4]`` rotations, wxyz, not necessarily unit.
    scales: ``[N, 3]`` standard deviations along the local axes (world units, > 0).
    opacities: ``[N]`` in (0, 1). sh: ``[N, K, 3]`` SH coefficients, K = (degree + 1)^2; ``sh[:, 0]`` is DC.
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh: Tensor

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_bases(self.sh.shape[1])

    def detach(self) -> "GaussianFrame":
        return GaussianFrame(*(t.detach() for t in self.tensors()))

    def to(self, device=None, dtype=None) -> "GaussianFrame":
        return GaussianFrame(*(t.to(device=device, dtype=dtype) for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.means, self.quats, self.scales, self.opacities, self.sh

    def select(self, mask: Tensor) -> "GaussianFrame":
        return GaussianFrame(*(t[mask] for t in self.tensors()))

    @staticmethod
    def from_raw(means: Tensor, quats: Tensor, log_scales: Tensor, opacity_logits: Tensor, sh: Tensor) -> "GaussianFrame":
        """From the stored (unconstrained) parameterisation used in checkpoints and INRIA PLY files."""
        return GaussianFrame(means, quats, torch.exp(log_scales), torch.sigmoid(opacity_logits.reshape(-1)), sh)
