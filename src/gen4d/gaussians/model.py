"""Canonical Gaussians: the learnable, unconstrained parameters of a Gaussian scene."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..sh import num_sh_bases, rgb_to_sh0
from .frame import GaussianFrame

PARAM_NAMES = ("means", "quats", "log_scales", "opacity_logits", "sh0", "shN")


class GaussianModel(nn.Module):
    """N Gaussians stored unconstrained: means ``[N,3]``, quats ``[N,4]`` (wxyz, normalised when used),
    log_scales ``[N,3]``, opacity_logits ``[N]``, sh0 ``[N,1,3]`` (DC) and shN ``[N,K-1,3]`` (higher degrees).

    The parameters live in ``self.params`` (a ParameterDict) so that a densification strategy can replace them
    together with their optimiser state.
    """

    def __init__(self, params: dict[str, Tensor], sh_degree: int = 0):
        super().__init__()
        self.sh_degree = sh_degree
        self.params = nn.ParameterDict({k: nn.Parameter(params[k].detach().clone()) for k in PARAM_NAMES})

    def __len__(self) -> int:
        return self.params["means"].shape[0]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_points(
        cls,
        points: Tensor,
        colors: Tensor,
        sh_degree: int = 0,
        init_scale: float | Tensor = 0.01,
        init_opacity: float = 0.1,
    ) -> "GaussianModel":
        """Isotropic Gaussians at ``points [N,3]`` with RGB ``colors [N,3]`` in [0,1]."""
        n = points.shape[0]
        scale = torch.as_tensor(init_scale, dtype=torch.float32).expand(n).reshape(n, 1).expand(n, 3)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        params = {
            "means": points.float(),
            "quats": quats,
            "log_scales": torch.log(scale.clamp_min(1e-8)),
            "opacity_logits": torch.full((n,), math.log(init_opacity / (1 - init_opacity))),
            "sh0": rgb_to_sh0(colors.float().clamp(0, 1))[:, None, :],
            "shN": torch.zeros(n, num_sh_bases(sh_degree) - 1, 3),
        }
        return cls(params, sh_degree)

    @classmethod
    def random_in_sphere(
        cls, n: int, radius: float, sh_degree: int = 0, generator: torch.Generator | None = None, init_opacity: float = 0.1
    ) -> "GaussianModel":
        """``n`` Gaussians uniformly in a ball, random colours, scale = mean spacing of the points."""
        dirs = torch.randn(n, 3, generator=generator)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        r = radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
        colors = torch.rand(n, 3, generator=generator)
        spacing = radius * (4.0 / 3.0 * math.pi / n) ** (1.0 / 3.0)
        return cls.from_points(dirs * r, colors, sh_degree, init_scale=0.5 * spacing, init_opacity=init_opacity)

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], sh_degree: int) -> "GaussianModel":
        return cls({k: state[f"params.{k}"] for k in PARAM_NAMES}, sh_degree)

    # ------------------------------------------------------------------ views
    def frame(self) -> GaussianFrame:
        p = self.params
        return GaussianFrame(p["means"], p["quats"], torch.exp(p["log_scales"]), torch.sigmoid(p["opacity_logits"]), self.sh())

    def sh(self) -> Tensor:
        """All SH coefficients ``[N, K, 3]``: the DC term then the higher degrees."""
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)
