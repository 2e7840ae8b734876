"""The 4D asset every recipe trains: canonical Gaussians + a deformation field, rendered at per-camera times.

Its parameters come in two groups that stages route losses to (:meth:`Scene4D.parameter_groups`): ``static``
(the canonical Gaussians) and ``dynamic`` (the deformation field).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .cameras import Cameras
from .fields.deformation import DeformationConfig, DeformationField, make_deformation_field
from .fields.nodes import NodeDeformationField
from .gaussians.frame import GaussianFrame
from .gaussians.model import GaussianModel
from .render import RenderOutput, rasterize
from .render.mesh import TexturedMesh


class Scene4D(nn.Module):
    """Canonical Gaussians ``gaussians`` moved over time by ``deformation`` (None for a static scene).

    antialiased: render with the antialiasing opacity compensation (gsplat's "antialiased" mode) by default.
    mesh: a UV-textured mesh made from the Gaussians at t = 0 and moved by them (DreamGaussian4D's stage III trains
    its texture); the exports use it when present.
    """

    def __init__(self, gaussians: GaussianModel, deformation: DeformationField | None = None, antialiased: bool = False,
                 mesh: TexturedMesh | None = None):
        super().__init__()
        self.gaussians = gaussians
        self.deformation = deformation
        self.antialiased = antialiased
        self.mesh = mesh

    # ------------------------------------------------------------------ state
    def tensors(self) -> dict[str, Tensor]:
        out = {f"gaussians.{k}": v for k, v in self.gaussians.params.items()}
        if self.deformation is not None:
            out.update({f"deformation.{k}": v for k, v in self.deformation.state_dict().items()})
        if self.mesh is not None:
            out.update({f"mesh.{k}": v for k, v in self.mesh.tensors().items()})
        return out

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, Tensor], sh_degree: int, deformation_config: DeformationConfig | None, antialiased: bool = False
    ) -> "Scene4D":
        gaussians = GaussianModel({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("gaussians.")}, sh_degree)
        deformation = None
        field_state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("deformation.")}
        if field_state:
            config = deformation_config or DeformationConfig()
            num_nodes = field_state["positions"].shape[0] if "positions" in field_state else None
            deformation = make_deformation_field(config, num_nodes)
            deformation.load_state_dict(field_state)
        mesh_state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("mesh.")}
        return cls(gaussians, deformation, antialiased, TexturedMesh.from_tensors(mesh_state) if mesh_state else None)

    def attach_deformation(self, config: DeformationConfig, seed: int, padding: float = 0.1) -> "Scene4D":
        """Add a zero-initialised deformation field (the scene still renders exactly as before) whose normalisation
        box is the cube ``config.bounds`` or, when that is 0, the Gaussians' bounding box padded by ``padding`` of its
        size. Its random feature-plane init is seeded here, independent of the global RNG's history, so reruns and
        resumed runs agree. A nodes or bases field (``config.type``) also places its nodes (the bases' pivots) on
        the canonical Gaussians here (``min(nodes.count, N)`` or ``min(bases.count, N)`` of them, seeded)."""
        means = self.gaussians.params["means"].detach()
        count = {"nodes": config.nodes.count, "bases": config.bases.count}.get(config.type)
        num_nodes = None if count is None else min(count, means.shape[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            field = make_deformation_field(config, num_nodes)
        if config.bounds > 0:
            field.set_bounds([-config.bounds] * 3, [config.bounds] * 3)
        else:
            lo, hi = means.min(0).values, means.max(0).values
            pad = padding * (hi - lo).clamp_min(1e-3)
            field.set_bounds(lo - pad, hi + pad)
        field = field.to(means.device)
        if isinstance(field, NodeDeformationField):
            field.init_nodes(means, seed)
        self.deformation = field
        return self

    def refine_deformation(self, optimizers: dict) -> dict[str, int]:
        """After the Gaussians were densified or pruned: a node field adds nodes where Gaussians lie beyond its
        nodes' reach and drops nodes no Gaussian follows (``nodes.refine``), editing the ``deformation``
        optimiser to match. Other fields have nothing to refine."""
        refine = getattr(self.deformation, "refine_nodes", None)
        if refine is None:
            return {}
        return refine(self.gaussians.params["means"], optimizers.get("deformation"))

    def summary(self) -> dict:
        out = {"num_gaussians": len(self.gaussians)}
        if isinstance(self.deformation, NodeDeformationField):  # a motion-bases field is one, its nodes the bases
            key = "num_nodes" if self.deformation.radial else "num_bases"
            out[key] = self.deformation.num_nodes
        return out

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``static``: the canonical Gaussians' parameters; ``dynamic``: the deformation field's (empty without one)."""
        return {
            "static": list(self.gaussians.params.values()),
            "dynamic": [] if self.deformation is None else list(self.deformation.parameters()),
        }

    # ------------------------------------------------------------------ evaluation
    def frame_at(self, t: float | Tensor | None) -> GaussianFrame:
        """The activated Gaussians at time ``t`` in [0, 1] (canonical if ``t`` is None or there is no field)."""
        if t is None or self.deformation is None:
            return self.gaussians.frame()
        means = self.gaussians.params["means"]
        t = torch.as_tensor(t, dtype=means.dtype, device=means.device).reshape(1)
        means, quats, scales, opacities = (x[0] for x in self._deformed(t))
        return GaussianFrame(means, quats, scales, opacities, self.gaussians.sh())

    def _deformed(self, times: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Means, quats, scales and opacities ``[U, N, ...]`` of the Gaussians at each of the ``U`` times, from one
        evaluation of the field for all of them (one batched lookup rather than one per time)."""
        p = self.gaussians.params
        n, u = p["means"].shape[0], times.numel()
        times = times.to(dtype=p["means"].dtype, device=p["means"].device).reshape(u)

        def tiled(x: Tensor) -> Tensor:
            return x if u == 1 else x.repeat(u, *([1] * (x.dim() - 1)))

        t = times if u == 1 else times.repeat_interleave(n)
        means, quats = tiled(p["means"]), tiled(p["quats"])
        d = self.deformation(means, t, quats=quats)
        opacity_logits = tiled(p["opacity_logits"])
        if d.d_opacity_logits is not None:
            opacity_logits = opacity_logits + d.d_opacity_logits
        return (
            (means + d.d_means).reshape(u, n, 3),
            (quats + d.d_quats).reshape(u, n, 4),
            torch.exp(tiled(p["log_scales"]) + d.d_log_scales).reshape(u, n, 3),
            torch.sigmoid(opacity_logits).reshape(u, n),
        )

    def render(
        self,
        cameras: Cameras,
        background: Tensor | None = None,
        deform: bool = True,
        antialiased: bool | None = None,
        backend: str = "auto",
    ) -> RenderOutput:
        """Render each camera at its own time. The field is evaluated once per distinct time in the batch."""
        sh_degree = self.gaussians.sh_degree
        antialiased = self.antialiased if antialiased is None else antialiased
        if not deform or self.deformation is None:
            f = self.gaussians.frame()
            return rasterize(
                f.means, f.quats, f.scales, f.opacities, f.sh, cameras.viewmats, cameras.Ks, cameras.width,
                cameras.height, sh_degree=sh_degree, backgrounds=background, antialiased=antialiased, backend=backend,
            )
        per_camera = self._per_camera(cameras)
        means, quats, scales, opacities = per_camera
        out = rasterize(
            means, quats, scales, opacities, self.gaussians.sh(), cameras.viewmats, cameras.Ks, cameras.width,
            cameras.height, sh_degree=sh_degree, backgrounds=background, antialiased=antialiased, backend=backend,
        )
        out.meta["per_camera"] = per_camera  # the moved Gaussians, for a second render of the same cameras
        return out

    def _per_camera(self, cameras: Cameras) -> list[Tensor]:
        """The moved Gaussians' means, quats, scales, opacities per camera (the field evaluated once for all of the
        cameras' distinct times)."""
        times, inverse = torch.unique(cameras.times, return_inverse=True)
        # index_select, not advanced indexing: its backward (index_add) sums the gradients of cameras sharing a time
        # in a fixed order, where indexing's backward (an accumulating index_put) is nondeterministic on the CPU
        return [x.index_select(0, inverse) for x in self._deformed(times)]

    def render_displacement(self, cameras: Cameras, antialiased: bool | None = None, backend: str = "auto",
                            per_camera: tuple[Tensor, ...] | None = None, geometry_grad: bool = True) -> Tensor:
        """``[C, H, W, 3]``: the deformation's displacement of the means at each camera's time, composited like
        colours (alpha-weighted, 0 where nothing is): Dream-in-4D's rendered ``comp_displacement``. ``per_camera``:
        the moved Gaussians of a render of the same cameras (its ``meta["per_camera"]``), so the field is not
        evaluated twice. ``geometry_grad=False``: gradients reach the displacement values only, not where the moved
        Gaussians are drawn (a loss on the image then cannot shrink by moving or hiding what moves)."""
        if self.deformation is None:
            raise ValueError("a scene without a deformation field has no displacement to render")
        antialiased = self.antialiased if antialiased is None else antialiased
        if per_camera is None:
            per_camera = self._per_camera(cameras)
        means, quats, scales, opacities = per_camera
        displacement = means - self.gaussians.params["means"][None]
        if not geometry_grad:
            means, quats, scales, opacities = (x.detach() for x in (means, quats, scales, opacities))
        return rasterize(means, quats, scales, opacities, displacement, cameras.viewmats, cameras.Ks, cameras.width,
                         cameras.height, antialiased=antialiased, backend=backend).rgb
