"""What the text / image -> 4D score-distillation recipes on Gaussians share (4D-fy, Dream-in-4D): renders on
white, canonical Gaussians from a random ball, scenes rebuilt from checkpoints, and previews of four views at four
times."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..cameras import orbit_cameras
from ..export.images import save_png
from ..fields.deformation import DeformationConfig
from ..fields.hexplane import HexPlaneConfig
from ..gaussians.model import GaussianModel
from ..gaussians.strategy import DensifyConfig
from ..scene import Scene4D
from ..sh import sh_degree_from_bases


def distilled_densify() -> DensifyConfig:
    """Densification of Gaussians distilled from scratch: every 100 steps from step 100, screen-space gradient 0.002
    (0.01 left the oracle demos' 2,000 Gaussians as they were, and the held-out views blurred), at most 50,000."""
    return DensifyConfig(refine_start=100, refine_every=100, grow_grad2d=0.002, grow_scale3d=0.05, prune_opacity=0.01,
                         prune_scale3d=0.05, prune_large_always=True, reset_opacity_every=0, max_gaussians=50_000)


def distilled_deformation() -> DeformationConfig:
    """The deformation field of the text-to-4D recipes: K-planes 32 x 32 x 32 x 16 (one scale, 32 features) over
    the cube [-1.6, 1.6]^3."""
    return DeformationConfig(hexplane=HexPlaneConfig(feature_dim=32, resolution=(32, 32, 32, 16), multires=(1,)), bounds=1.6)


class DistilledRun:
    """Base of a recipe's run state: needs ``cfg`` with ``seed``, ``init_points``, ``init_radius``, ``deformation`` and
    ``preview_size``, and ``device``; sets ``white``."""

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        self.white = torch.ones(3, device=device)

    def preview(self, scene: Scene4D, step: int, folder: Path) -> None:
        """Azimuths 0 / 90 / 180 / 270 at elevation 15, distance 3, at times 0, 1/3, 2/3, 1, side by side."""
        S = self.cfg.preview_size
        with torch.no_grad():
            cams = orbit_cameras([0.0, 90.0, 180.0, 270.0], [15.0] * 4, 3.0, math.radians(40.0), S, S,
                                 times=[0.0, 1 / 3, 2 / 3, 1.0]).to(self.device)
            img = scene.render(cams, background=self.white).rgb
        save_png(folder / f"step_{step:06d}.png", torch.cat(list(img), dim=1))

    def init_scene(self) -> Scene4D:
        g = torch.Generator().manual_seed(self.cfg.seed)
        return Scene4D(GaussianModel.random_in_sphere(self.cfg.init_points, self.cfg.init_radius, 0, g)).to(self.device)

    def load_scene(self, tensors) -> Scene4D:
        degree = sh_degree_from_bases(1 + tensors["gaussians.shN"].shape[1])
        return Scene4D.from_tensors(tensors, degree, self.cfg.deformation).to(self.device)
