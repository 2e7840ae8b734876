"""Adaptive density control (3D Gaussian Splatting, Kerbl et al. 2023, Sec. 5.2) as a strategy object.

The training loop calls ``step_pre_backward`` before ``loss.backward()`` and ``step_post_backward`` after it;
the strategy keeps its statistics and edits the parameters *and their Adam state* in place:

* Gaussians whose average screen-space positional gradient exceeds ``grow_grad2d`` are grown: small ones
  (max scale <= ``grow_scale3d`` x scene extent) are cloned, large ones are split in two, sampled from
  themselves with scales divided by 1.6;
* Gaussians with opacity below ``prune_opacity`` (or huge ones, after an opacity reset) are removed;
* every ``reset_opacity_every`` steps opacities are clamped down to ``2 x prune_opacity`` so that floaters must
  earn their opacity back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..cameras import quat_to_rotmat
from .model import GaussianModel


@dataclass
class DensifyConfig:
    """Schedule and thresholds of adaptive density control (steps count within the stage)."""

    refine_start: int = 500
    """First step at which Gaussians are grown or pruned."""
    refine_stop: int = 15_000
    """No growing or pruning from this step on."""
    refine_every: int = 100
    """Steps between two refinements."""
    reset_opacity_every: int = 3_000
    """Steps between opacity resets (0 disables them)."""
    grow_grad2d: float = 0.0002
    """Average screen-space gradient norm (in NDC-like units) above which a Gaussian is grown."""
    grow_scale3d: float = 0.01
    """Gaussians larger than this fraction of the scene extent are split, smaller ones cloned."""
    prune_opacity: float = 0.005
    """Gaussians less opaque than this are removed."""
    prune_scale3d: float = 0.1
    """After the first opacity reset (or always, with ``prune_large_always``), Gaussians larger than this fraction
    of the scene extent are removed."""
    prune_large_always: bool = False
    """Remove the large Gaussians at every refinement, not only after an opacity reset (DreamGaussian)."""
    max_gaussians: int = 1_000_000
    """Hard cap on the number of Gaussians; growth takes the largest gradients first when the cap binds."""


def replace_parameters(
    model: GaussianModel,
    optimizers: dict[str, torch.optim.Optimizer],
    param_fn: Callable[[str, Tensor], Tensor],
    state_fn: Callable[[str, Tensor], Tensor],
) -> None:
    """Swap every Gaussian parameter for ``param_fn(name, old)`` and each of its Adam moments for
    ``state_fn(key, old_moment)``, keeping each optimiser pointing at the new tensors."""
    for name in list(model.params.keys()):
        old = model.params[name]
        model.params[name] = swap_parameter(optimizers.get(name), old, param_fn(name, old.detach()), state_fn)


def swap_parameter(optimizer: torch.optim.Optimizer | None, old: Tensor, value: Tensor,
                   state_fn: Callable[[str, Tensor], Tensor]) -> torch.nn.Parameter:
    """A new parameter holding ``value`` that takes ``old``'s place in ``optimizer`` (if any, in whichever group
    holds it), with each Adam moment of ``old`` mapped by ``state_fn(key, moment)`` (the step count kept)."""
    new = torch.nn.Parameter(value, requires_grad=old.requires_grad)
    if optimizer is not None:
        state = optimizer.state.pop(old, None)
        for group in optimizer.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        if state is not None:
            optimizer.state[new] = {k: (state_fn(k, v) if k != "step" else v) for k, v in state.items()}
    return new


@torch.no_grad()
def duplicate(model: GaussianModel, optimizers: dict, mask: Tensor) -> None:
    idx = mask.nonzero().squeeze(-1)
    replace_parameters(
        model,
        optimizers,
        lambda _, p: torch.cat([p, p[idx]]),
        lambda _, s: torch.cat([s, torch.zeros_like(s[idx])]),
    )


@torch.no_grad()
def split(model: GaussianModel, optimizers: dict, mask: Tensor, generator: torch.Generator | None = None) -> None:
    """Replace each selected Gaussian by two samples drawn from it, with scales divided by 1.6."""
    idx = mask.nonzero().squeeze(-1)
    keep = ~mask
    p = model.params
    scales = torch.exp(p["log_scales"][idx])
    R = quat_to_rotmat(p["quats"][idx])
    noise = torch.randn(2, len(idx), 3, generator=generator, dtype=scales.dtype)
    offsets = (R @ (scales * noise)[..., None])[..., 0]  # [2, M, 3]
    new_means = (p["means"][idx] + offsets).reshape(-1, 3)
    new_log_scales = torch.log(scales / 1.6).repeat(2, 1)

    def param_fn(name: str, old: Tensor) -> Tensor:
        if name == "means":
            added = new_means
        elif name == "log_scales":
            added = new_log_scales
        else:
            added = old[idx].repeat(2, *([1] * (old.dim() - 1)))
        return torch.cat([old[keep], added])

    replace_parameters(
        model, optimizers, param_fn, lambda _, s: torch.cat([s[keep], torch.zeros_like(s[idx]).repeat(2, *([1] * (s.dim() - 1)))])
    )


@torch.no_grad()
def remove(model: GaussianModel, optimizers: dict, mask: Tensor) -> None:
    keep = ~mask
    replace_parameters(model, optimizers, lambda _, p: p[keep], lambda _, s: s[keep])


@torch.no_grad()
def reset_opacity(model: GaussianModel, optimizers: dict, value: float) -> None:
    """Clamp opacities to at most ``value`` and forget their Adam moments."""
    logit = math.log(value / (1 - value))
    param = model.params["opacity_logits"]
    param.data.clamp_(max=logit)
    opt = optimizers.get("opacity_logits")
    if opt is not None and param in opt.state:
        for k, v in opt.state[param].items():
            if k != "step":
                v.zero_()


class DensifyStrategy:
    """Adaptive density control; statistics are plain tensors so they can be checkpointed (``state_dict``)."""

    def __init__(self, config: DensifyConfig, scene_extent: float):
        self.config = config
        self.scene_extent = scene_extent
        self.grad2d: Tensor | None = None
        self.count: Tensor | None = None

    def state_dict(self) -> dict[str, Tensor]:
        if self.grad2d is None:
            return {}
        return {"grad2d": self.grad2d, "count": self.count}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.grad2d = state.get("grad2d")
        self.count = state.get("count")

    def step_pre_backward(self, info: dict | list[dict]) -> None:
        """``info``: the render metadata of the step, or a list of them (every render whose screen-space gradients
        should count: e.g. the reference view and the score-distillation views)."""
        for meta in info if isinstance(info, list) else [info]:
            means2d = meta["means2d"]
            if means2d.requires_grad:
                means2d.retain_grad()

    @torch.no_grad()
    def step_post_backward(
        self, model: GaussianModel, optimizers: dict, step: int, info: dict | list[dict], generator: torch.Generator | None = None
    ) -> dict[str, int]:
        """Accumulate statistics, then grow / prune / reset on schedule. Returns counts of what changed (and
        ``refined: 1`` at a refinement step)."""
        cfg = self.config
        if step >= cfg.refine_stop:
            return {}
        for meta in info if isinstance(info, list) else [info]:
            self._accumulate(meta, len(model))
        report: dict[str, int] = {}
        if step > cfg.refine_start and step % cfg.refine_every == 0:
            report.update(self._grow(model, optimizers, generator))
            report.update(self._prune(model, optimizers, step))
            report["refined"] = 1
            self.grad2d = torch.zeros(len(model), device=model.params["means"].device)
            self.count = torch.zeros_like(self.grad2d)
        if cfg.reset_opacity_every > 0 and step > 0 and step % cfg.reset_opacity_every == 0:
            reset_opacity(model, optimizers, 2.0 * cfg.prune_opacity)
            report["reset"] = 1
        return report

    def _accumulate(self, info: dict, n: int) -> None:
        means2d = info["means2d"]
        if means2d.grad is None:
            return
        grads = means2d.grad.clone()  # [C, N, 2]
        # The loss averages over cameras and pixels; undo that so thresholds don't depend on batch or size.
        grads[..., 0] *= info["width"] / 2.0 * info["n_cameras"]
        grads[..., 1] *= info["height"] / 2.0 * info["n_cameras"]
        visible = (info["radii"] > 0).all(dim=-1)  # [C, N]
        norms = grads.norm(dim=-1) * visible
        if self.grad2d is None or self.grad2d.shape[0] != n:
            self.grad2d = torch.zeros(n, device=grads.device)
            self.count = torch.zeros(n, device=grads.device)
        self.grad2d += norms.sum(0)
        self.count += visible.sum(0).to(self.count.dtype)

    def _grow(self, model: GaussianModel, optimizers: dict, generator) -> dict[str, int]:
        cfg = self.config
        avg = self.grad2d / self.count.clamp_min(1)
        candidates = avg > cfg.grow_grad2d
        room = cfg.max_gaussians - len(model)
        if room <= 0:
            return {"cloned": 0, "split": 0}
        if int(candidates.sum()) > room:
            # Keep the strongest gradients within the cap (a split adds one Gaussian net, a clone one).
            top = torch.topk(torch.where(candidates, avg, torch.full_like(avg, -1.0)), room).indices
            candidates = torch.zeros_like(candidates)
            candidates[top] = True
        big = torch.exp(model.params["log_scales"]).max(dim=-1).values > cfg.grow_scale3d * self.scene_extent
        to_clone = candidates & ~big
        to_split = candidates & big
        duplicate(model, optimizers, to_clone)
        # Cloned Gaussians are appended, so pad the split mask for them.
        to_split = torch.cat([to_split, torch.zeros(int(to_clone.sum()), dtype=torch.bool, device=to_split.device)])
        split(model, optimizers, to_split, generator)
        return {"cloned": int(to_clone.sum()), "split": int(to_split.sum())}

    def _prune(self, model: GaussianModel, optimizers: dict, step: int) -> dict[str, int]:
        cfg = self.config
        opacity = torch.sigmoid(model.params["opacity_logits"])
        mask = opacity < cfg.prune_opacity
        if cfg.prune_large_always or (cfg.reset_opacity_every > 0 and step > cfg.reset_opacity_every):
            mask |= torch.exp(model.params["log_scales"]).max(dim=-1).values > cfg.prune_scale3d * self.scene_extent
        if bool(mask.all()):
            mask[torch.argmax(opacity)] = False  # never prune the scene to nothing
        remove(model, optimizers, mask)
        return {"pruned": int(mask.sum())}
