"""The one score-distillation stage of every text / image -> 4D recipe.

A step of :class:`ScoreDistillation`:

1. **reference views** (image-conditioned recipes, optional): the asset rendered at the input camera at the times of
   the reference frames (all of them, or a random subset per step) and compared with them (RGB and mask MSE, and a
   depth correlation where a reference depth is given). The first frame drawn is the step's *reference frame*:
   terms with ``times="reference"`` render at its time;
2. **guidance terms**: each term has a prior, a camera x time sampler (:mod:`gen4d.distill.views`), a weight and a
   render-resolution schedule, and the parameter groups it may update (``static``: the canonical Gaussians,
   ``dynamic``: the deformation field). The combination rule is ``sum`` (every term every step: Dream-in-4D,
   DreamGaussian4D) or ``one`` (one term per step, drawn with the terms' probabilities: 4D-fy's hybrid SDS);
3. **regularisers** by name (:data:`gen4d.training.losses.REGULARISERS`), and the deformation field's own (a node
   field's as-rigid-as-possible term) at the times rendered in the step.

Each loss is routed to its term's groups (:class:`~gen4d.training.loop.StepLosses`), so a term limited to the static
Gaussians leaves the deformation field untouched, bit for bit, and the reverse.

Image-conditioned priors get their reference per view: a term's ``references`` holds one entry (shared) or one per
reference frame, and each view takes the entry of the frame nearest its time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import Gen4DError
from ..cameras import Cameras
from ..guidance.base import DiffusionGuidance
from ..guidance.prompts import PromptEmbeddings
from ..guidance.sds import TimestepSchedule
from ..render import RenderOutput
from ..scene import Scene4D
from ..training.loop import StepLosses
from ..training.losses import field_regularisers, regulariser_losses
from .views import ViewBatch, ViewSampling, sample_views

Schedule = float | Callable[[int], float]
"""A number, or a function of the stage's step."""


def at(value, step: int):
    """The value of a schedule at ``step``."""
    return value(step) if callable(value) else value


@dataclass
class GuidanceTerm:
    """One prior's contribution to a score-distillation stage."""

    name: str
    """Loss name (the prior's extra losses get ``<name>_<key>``)."""
    prior: DiffusionGuidance
    views: ViewSampling
    weight: Schedule = 1.0
    per_view: bool = False
    """Divide the loss by the number of rendered images (a weight per view instead of per step)."""
    resolution: int | tuple[int, int] | Callable[[int], int | tuple[int, int]] = 256
    """Render size: a square side, ``(width, height)``, or a function of the step."""
    groups: tuple[str, ...] | None = None
    """Parameter groups the term may update (None: all)."""
    probability: float = 1.0
    """Relative probability of the term under the ``one`` rule."""
    timesteps: TimestepSchedule | None = None
    """The term's timestep schedule (its steps count within the stage); None: the prior's own."""
    lr_scale: dict[str, float] = field(default_factory=dict)
    """Optimiser name -> learning-rate factor on the steps this term runs (``one`` rule)."""
    prompt: PromptEmbeddings | None = None
    references: Any = None
    """Image-conditioned priors: one reference, or one per reference frame (anything with ``__len__`` and
    ``select(index)``)."""
    deform: bool = True
    """Render through the deformation field (False: the canonical Gaussians, e.g. a static stage)."""
    densify: bool = True
    """Feed this term's render statistics (screen-space gradients of its views) to the densification strategy."""
    azimuth_limit: float = 180.0
    """Only views with an azimuth strictly within this many degrees of the front (azimuth 0) reach the prior; a
    step with none skips the term (Dream-in-4D's ``SD_view``: 180 = every view, 145 = no SD on the back)."""
    share_views: str | None = None
    """Name of a term earlier in the list whose views and render this term judges too (same step, no second render:
    Dream-in-4D's SD guidance sees MVDream's views); None: the term draws and renders its own."""
    view_losses: Callable[[Scene4D, ViewBatch, RenderOutput], dict[str, Tensor]] | None = None
    """Further losses on the step's views and their render (e.g. a smoothness of the displacement rendered at those
    cameras), already weighted; they reach the term's ``groups`` and are named ``<term>_<key>``."""


@dataclass
class ReferenceViews:
    """The input view(s) of an image-conditioned recipe: one camera per reference frame, each at its frame's time."""

    cameras: Cameras
    """``[T]`` cameras (their ``times`` are the frames' times)."""
    rgb: Tensor
    """``[T, H, W, 3]`` colours composited on the render background."""
    alpha: Tensor
    """``[T, H, W, 1]`` foreground masks."""
    rgb_weight: Schedule = 1.0
    mask_weight: Schedule = 1.0
    depth: Tensor | None = None
    """``[T, H, W, 1]`` reference depth (any scale: the loss is a correlation), or None."""
    depth_weight: Schedule = 0.0
    frames_per_step: int = 0
    """Frames compared per step, drawn without replacement (0: all of them)."""
    groups: tuple[str, ...] | None = None
    deform: bool = True
    densify: bool = True
    """Feed the reference render's statistics to the densification strategy."""

    def __len__(self) -> int:
        return len(self.cameras)


def azimuth_within(azimuth_deg: Tensor, limit_deg: float) -> Tensor:
    """Views whose azimuth, wrapped to [-180, 180), lies strictly within ``limit_deg`` of the front (azimuth 0)."""
    wrapped = torch.remainder(azimuth_deg + 180.0, 360.0) - 180.0
    return (wrapped > -limit_deg) & (wrapped < limit_deg)


def depth_correlation_loss(depth: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``1 - Pearson(depth, target)`` over the foreground pixels of each image, averaged (scale-free)."""
    losses = []
    for d, t, m in zip(depth, target, mask):
        sel = m[..., 0] > 0.5
        if sel.sum() < 2:
            continue
        a, b = d[..., 0][sel], t[..., 0][sel]
        a, b = a - a.mean(), b - b.mean()
        losses.append(1.0 - (a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-8))
    return torch.stack(losses).mean() if losses else depth.sum() * 0.0


class ScoreDistillation:
    """The loss function of a score-distillation stage (module doc): ``(scene, step, generator) -> StepLosses``.

    ``history`` counts how often each term ran (the ``one`` rule's draws); ``last_views`` holds each term's views of
    its latest step (a recipe may act on what was drawn, e.g. Animate124's clips that start at t = 0).
    """

    def __init__(self, terms: list[GuidanceTerm], reference: ReferenceViews | None = None,
                 regularisers: dict[str, float] | None = None, rule: str = "sum",
                 background: Tensor | None = None):
        if rule not in ("sum", "one"):
            raise Gen4DError(f"the combination rule must be sum or one, got {rule!r}")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise Gen4DError(f"guidance term names must differ, got {names}")
        for t in terms:
            t.views.check()
        if rule == "one" and terms and sum(t.probability for t in terms) <= 0:
            raise Gen4DError("the one-branch rule needs a positive probability on some term")
        self.terms, self.reference, self.rule = terms, reference, rule
        self.regularisers = dict(regularisers or {})
        self.background = background
        self.history: dict[str, int] = {t.name: 0 for t in terms}
        self.last_views: dict[str, ViewBatch] = {}

    # ------------------------------------------------------------------------------------------------ pieces
    def choose(self, generator: torch.Generator) -> list[GuidanceTerm]:
        """The terms that run this step: all (``sum``), or one drawn with the terms' probabilities (``one``)."""
        if self.rule == "sum" or len(self.terms) <= 1:
            return list(self.terms)
        p = torch.tensor([t.probability for t in self.terms], dtype=torch.float64)
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        k = int(torch.searchsorted(torch.cumsum(p / p.sum(), 0), torch.tensor([u], dtype=torch.float64), right=True))
        return [self.terms[min(k, len(self.terms) - 1)]]

    @staticmethod
    def _params(scene: Scene4D, groups: tuple[str, ...]) -> list[Tensor]:
        available = scene.parameter_groups()
        unknown = sorted(set(groups) - set(available))
        if unknown:
            raise Gen4DError(f"unknown parameter group(s) {', '.join(unknown)}; the scene has {', '.join(available)}")
        return [p for g in groups for p in available[g]]

    def reference_losses(self, scene: Scene4D, step: int, generator: torch.Generator, background):
        """Reference-view losses, the render's metadata and the step's reference frame time."""
        ref = self.reference
        T = len(ref)
        device = ref.rgb.device
        if T > 1:
            k = ref.frames_per_step if 0 < ref.frames_per_step < T else T
            idx = torch.randperm(T, generator=generator)[:k]
            cams = Cameras(ref.cameras.viewmats[idx], ref.cameras.Ks[idx], ref.cameras.width, ref.cameras.height, ref.cameras.times[idx])
            idx = idx.to(device)
            rgb, alpha = ref.rgb[idx], ref.alpha[idx]
            depth = None if ref.depth is None else ref.depth[idx]
            time = float(ref.cameras.times[int(idx[0])])
        else:
            cams, rgb, alpha, depth, time = ref.cameras, ref.rgb, ref.alpha, ref.depth, float(ref.cameras.times[0])
        out = scene.render(cams, background=background, deform=ref.deform)
        losses = {
            "rgb": at(ref.rgb_weight, step) * (out.rgb - rgb).square().mean(),
            "mask": at(ref.mask_weight, step) * (out.alpha - alpha).square().mean(),
        }
        w_depth = at(ref.depth_weight, step)
        if depth is not None and w_depth:
            losses["depth"] = w_depth * depth_correlation_loss(out.depth, depth, alpha)
        return losses, out.meta, time

    def term_views(self, term: GuidanceTerm, scene: Scene4D, step: int, generator: torch.Generator, background,
                   reference_time: float | None, shared: dict[str, tuple[ViewBatch, Any]]):
        """The term's views and their render: its own draw, or those of the term it shares with (``share_views``),
        kept to the views within ``azimuth_limit`` (None when no view is)."""
        if term.share_views is not None:
            if term.share_views not in shared:
                raise Gen4DError(f"term {term.name!r} shares the views of {term.share_views!r}, which did not run before it")
            views, out = shared[term.share_views]
        else:
            size = at(term.resolution, step)
            width, height = (size, size) if isinstance(size, int) else size
            reference_times = None if self.reference is None else self.reference.cameras.times
            views, out = sample_views(term.views, generator, width, height, reference_time, reference_times), None
        if term.azimuth_limit < 180.0:
            if views.frames > 1:
                raise Gen4DError(f"term {term.name!r}: azimuth_limit applies to still views, not clips")
            keep = torch.nonzero(azimuth_within(views.azimuth_deg, term.azimuth_limit)).flatten()
            if len(keep) == 0:
                return None, None
            if len(keep) < len(views.azimuth_deg):
                views = views.select(keep)
                out = None if out is None else out.select(keep.to(out.rgb.device))
        if out is None:
            device = scene.gaussians.params["means"].device
            views = views.to(device)
            out = scene.render(views.cameras, background=background, deform=term.deform)
        return views, out

    def term_losses(self, term: GuidanceTerm, scene: Scene4D, step: int, generator: torch.Generator, background,
                    reference_time: float | None, shared: dict[str, tuple[ViewBatch, Any]] | None = None):
        shared = {} if shared is None else shared
        views, out = self.term_views(term, scene, step, generator, background, reference_time, shared)
        if views is None:
            return {}, None, 0
        shared[term.name] = (views, out)
        self.last_views[term.name] = views
        cams = views.cameras
        images = out.rgb.permute(0, 3, 1, 2)
        if views.frames > 1:
            images = images.reshape(-1, views.frames, *images.shape[1:])
        reference = term.references
        if reference is not None and len(reference) > 1:
            frame = (cams.times * (len(reference) - 1)).round().long().clamp(0, len(reference) - 1)
            reference = reference.select(frame.cpu())
        cond = views.conditioning(prompt=term.prompt, reference=reference, num_views=term.views.views)
        losses = term.prior(images, cond, step, generator, schedule=term.timesteps)
        if term.view_losses is not None:
            losses = {**losses, **{f"view_{k}": v for k, v in term.view_losses(scene, views, out).items()}}
        meta = None if term.share_views is not None else out.meta  # a shared render's statistics count once
        return losses, meta, len(cams)

    # ------------------------------------------------------------------------------------------------ a step
    def __call__(self, scene: Scene4D, step: int, generator: torch.Generator) -> StepLosses:
        device = scene.gaussians.params["means"].device
        background = None if self.background is None else self.background.to(device)
        losses: dict[str, Tensor] = {}
        routes: dict[str, list[Tensor]] = {}
        metas: list[dict] = []
        reference_time = None
        if self.reference is not None:
            ref_losses, ref_meta, reference_time = self.reference_losses(scene, step, generator, background)
            losses.update(ref_losses)
            if self.reference.densify:
                metas.append(ref_meta)
            if self.reference.groups is not None:
                params = self._params(scene, self.reference.groups)
                routes.update({k: params for k in ref_losses})
        lr_scale: dict[str, float] = {}
        shared: dict[str, tuple[ViewBatch, Any]] = {}
        times: list[Tensor] = []
        for term in self.choose(generator):
            w = at(term.weight, step)
            if not w:
                continue
            out, term_meta, n_images = self.term_losses(term, scene, step, generator, background, reference_time, shared)
            if not n_images:  # no view within the term's azimuth limit this step
                continue
            self.history[term.name] += 1
            times.append(self.last_views[term.name].times)
            if term.densify and term_meta is not None:
                metas.append(term_meta)
            for key, value in out.items():
                if key == term.prior.loss_name:
                    losses[term.name] = w * value / n_images if term.per_view else w * value
                    if term.groups is not None:
                        routes[term.name] = self._params(scene, term.groups)
                elif key.startswith("view_"):  # the term's own view losses: weighted already, routed like the term
                    losses[f"{term.name}_{key[5:]}"] = value
                    if term.groups is not None:
                        routes[f"{term.name}_{key[5:]}"] = self._params(scene, term.groups)
                else:  # e.g. VSD's LoRA loss: unweighted, it reaches only the prior's own parameters
                    losses[f"{term.name}_{key.removeprefix('loss_')}"] = value
            lr_scale.update(term.lr_scale)
        losses.update(regulariser_losses(scene, self.regularisers))
        if times and scene.deformation is not None:  # the field's own terms (a node field's ARAP) at this step's times
            losses.update(field_regularisers(scene, torch.cat(times)))
        return StepLosses(losses, metas or None, routes or None, lr_scale or None)
