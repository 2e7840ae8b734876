"""Oracle priors: diffusion "models" whose denoiser knows the answer, for checking score-distillation recipes
without weights.

An oracle prior of each kind takes the same renders and :class:`~gen4d.guidance.base.Conditioning` as the
published prior, goes through the same distillation step (:class:`~gen4d.guidance.base.DiffusionGuidance`), and
predicts the noise as if it knew the clean image: the synthetic scene (:mod:`gen4d.data.synthetic`) ray-cast at
the camera and time the conditioning describes, composited on the render background, in pixel space (identity
"VAE": ``x = 2 image - 1``):

    x0 = 2 raycast(camera, time) - 1,      eps_oracle(x_t, t) = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)

so ``eps_oracle - eps = sqrt(a_t / (1 - a_t)) (x - x0)`` and score distillation pulls every render towards the
scene as seen from where the recipe says it rendered. Both classifier-free-guidance branches get the oracle's
prediction (guidance then changes nothing). Each oracle reads the camera from what its published counterpart
reads, so a recipe that passes a wrong camera, time or reference view distils a wrong scene:

* ``sd`` (text -> image) and ``video`` (text -> video, clips of one camera): ``c2w`` and ``times``;
* ``mvdream`` (multi-view): MVDream's camera embedding of ``c2w`` (:func:`gen4d.guidance.mvdream.mvdream_camera`,
  a unit-distance OpenGL camera) turned back into a camera at ``radius``;
* ``zero123`` (novel view from a reference): Zero123's relative pose
  (:func:`gen4d.guidance.zero123.camera_embedding`) added to the reference camera of each view.

``fov_deg`` gives the field of view (no published prior reads it; the oracle must know what was rendered).
:class:`OraclePriors` is a prior factory (:data:`gen4d.guidance.priors.PriorFactory`) building them by kind.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..cameras import Cameras, intrinsics_from_fov, opengl_to_opencv, orbit_c2w, viewmat_from_c2w
from ..data.synthetic import SyntheticScene, get_scene, render_scene
from ..guidance.base import Conditioning, DiffusionGuidance, GuidanceConfig
from ..guidance.mvdream import mvdream_camera
from ..guidance.zero123 import Zero123Reference, camera_embedding

KINDS = ("sd", "mvdream", "zero123", "video")
ALIASES = {"vsd": "sd", "controlnet-tile": "sd", "deepfloyd": "sd"}
"""Prior kinds whose oracle is another's: VSD and ControlNet-tile see an image and a camera, as SD does."""


def sd_alphas_cumprod(steps: int = 1000) -> Tensor:
    """Stable Diffusion's schedule (scaled-linear betas 0.00085 .. 0.012): ``alpha_bar_t``."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


class OraclePrior(DiffusionGuidance):
    """A prior of ``kind`` (see the module doc) that knows ``scene``."""

    def __init__(self, kind: str, config: GuidanceConfig, scene: str | SyntheticScene, background=(1.0, 1.0, 1.0),
                 supersample: int = 2, device: torch.device | str | None = None):
        kind = ALIASES.get(kind, kind)
        if kind not in KINDS:
            raise ValueError(f"unknown oracle kind {kind!r}; choose from {', '.join(KINDS)}")
        super().__init__(config, sd_alphas_cumprod())
        self.kind = kind
        self.scene = get_scene(scene)
        self.background = torch.tensor(background, dtype=torch.float32)
        self.supersample = supersample
        self.reference: Zero123Reference | None = None
        self.loss_name = "loss_sds_video" if kind == "video" else "loss_sds"
        self.place(device)

    # -------------------------------------------------------------------------------- Zero123's reference API
    @torch.no_grad()
    def prepare_reference(self, image: Tensor, elevation_deg: float = 0.0, azimuth_deg: float = 0.0, radius: float = 1.0,
                          remember: bool = True) -> Zero123Reference:
        """A reference carrying only its camera (the oracle needs no image features)."""
        n = 1 if image.dim() == 3 else image.shape[0]
        cam = [torch.full((n,), float(v)) for v in (elevation_deg, azimuth_deg, radius)]
        ref = Zero123Reference(torch.zeros(n, 1, 1), torch.zeros(n, 1, 1, 1), *cam)
        if remember:
            self.reference = ref
        return ref

    def encode_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool | None = None):
        """Text is irrelevant to an oracle: no embeddings."""
        return None

    # -------------------------------------------------------------------------------- where the view was taken
    def camera_to_world(self, cond: Conditioning, n: int) -> Tensor:
        """``[n, 4, 4]`` OpenCV camera-to-world of the views, read the way the published prior reads them."""
        if self.kind in ("sd", "video"):
            cond.require("c2w", prior=f"the {self.kind} oracle")
            return cond.c2w.detach().double().cpu()
        if self.kind == "mvdream":
            cond.require("c2w", "radius", prior="the mvdream oracle")
            return self._mvdream_c2w(cond)
        cond.require("elevation_deg", "azimuth_deg", "radius", prior="the zero123 oracle")
        ref = (cond.reference or self.reference)
        if ref is None:
            raise RuntimeError("the zero123 oracle needs a reference (prepare_reference or Conditioning.reference)")
        ref = ref.per_image(n)
        pose = camera_embedding(cond.elevation_deg.cpu(), cond.azimuth_deg.cpu(), cond.radius.cpu(),
                                ref.elevation_deg.cpu(), ref.azimuth_deg.cpu(), ref.radius.cpu()).double()
        elevation = ref.elevation_deg.double() - torch.rad2deg(pose[:, 0])
        azimuth = ref.azimuth_deg.double() + torch.rad2deg(torch.atan2(pose[:, 1], pose[:, 2]))
        radius = ref.radius.double() + pose[:, 3]
        return orbit_c2w(azimuth, elevation, radius)

    @staticmethod
    def _mvdream_c2w(cond: Conditioning) -> Tensor:
        gl = mvdream_camera(cond.c2w.detach().cpu()).double().reshape(-1, 4, 4)
        cv = opengl_to_opencv(gl)
        cv[:, :3, 3] = cv[:, :3, 3] * cond.radius.detach().cpu().double()[:, None]
        return cv

    def clean_images(self, cond: Conditioning, n: int, height: int, width: int) -> Tensor:
        """``[n, 3, H, W]`` the scene ray-cast at the views, composited on the background, in [0, 1]."""
        cond.require("fov_deg", prior=f"the {self.kind} oracle")
        c2w = self.camera_to_world(cond, n)
        fov = cond.fov_deg.detach().cpu().double().reshape(-1).expand(n)
        Ks = torch.stack([intrinsics_from_fov(math.radians(float(f)), width, height) for f in fov]).float()
        times = torch.zeros(n) if cond.times is None else cond.times.detach().cpu().float().reshape(-1)
        cams = Cameras(viewmat_from_c2w(c2w).float(), Ks, width, height, times)
        rgb, alpha = render_scene(self.scene, cams, supersample=self.supersample)
        return (rgb + (1.0 - alpha) * self.background).permute(0, 3, 1, 2)

    # -------------------------------------------------------------------------------- the prior interface
    def encode_renders(self, renders: Tensor, cond: Conditioning, generator: torch.Generator | None) -> Tensor:
        return 2.0 * renders.to(self.device) - 1.0

    def timestep_group(self, cond: Conditioning, x: Tensor) -> int:
        return max(1, cond.num_views) if self.kind == "mvdream" else 1

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        flat = x_t.reshape(-1, *x_t.shape[-3:])
        x0 = 2.0 * self.clean_images(cond, flat.shape[0], flat.shape[-2], flat.shape[-1]).to(x_t) - 1.0
        x0 = x0.reshape(x_t.shape)
        a = self.alphas_cumprod[t].reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t)
        eps = (x_t - a.sqrt() * x0) / (1.0 - a).sqrt()
        return eps, eps


class OraclePriors:
    """A prior factory (``factory(kind, config, device)``) building oracle priors that know ``scene``."""

    def __init__(self, scene: str | SyntheticScene, background=(1.0, 1.0, 1.0), supersample: int = 2):
        self.scene, self.background, self.supersample = scene, background, supersample
        self.built: dict[str, OraclePrior] = {}

    def __call__(self, kind: str, config: GuidanceConfig, device: torch.device | str | None = None) -> OraclePrior:
        prior = OraclePrior(kind, config, self.scene, self.background, self.supersample, device)
        self.built[kind] = prior
        return prior
