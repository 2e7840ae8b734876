"""The one interface of the diffusion priors used for score distillation, and the distillation step, written once.

Every prior is called the same way::

    losses = prior(renders, cond, step, generator)     # -> {"loss_sds": loss} (or loss_sds_video, loss_vsd, ...)
    sum(losses.values()).backward()

``renders`` are images ``[N, 3, H, W]`` or videos ``[B, T, 3, H, W]`` in [0, 1]; ``cond`` is a
:class:`Conditioning` that carries whatever any prior may need (cameras, times, prompt embeddings, a reference
view), each prior reading only its part. The step (:meth:`DiffusionGuidance.forward`) is the same for every prior:

    1. x = encode_renders(renders)                       (differentiable: VAE latents, or pixels)
    2. t ~ U[t_min(step), t_max(step)] (one per group of ``timestep_group`` samples), eps ~ N(0, I)
    3. x_t = sqrt(a_t) x + sqrt(1 - a_t) eps              (``add_noise``; a_t = alpha_bar_t)
    4. eps_c, eps_u = predict_noise(x_t, t, cond)         (under ``torch.no_grad``: no backward through a U-Net)
    5. eps_hat = eps_u + s (eps_c - eps_u)                (classifier-free guidance)
    6. loss with gradient w(t) (eps_hat - baseline) on x  (``sds.py``: SDS / uniform / x0 weighting; baseline = eps,
                                                           or a LoRA's prediction for VSD) via a stop-gradient target

so a prior supplies only :meth:`~DiffusionGuidance.encode_renders` and :meth:`~DiffusionGuidance.predict_noise`
(and optionally the grouping of timesteps, the baseline and extra losses). Diagnostics of the last call (detached)
are in ``prior.last_info``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..devices import DTYPES, Precision
from .prompts import PromptEmbeddings
from .sds import TimestepSchedule, Weighting, classifier_free_guidance, ddim_step, sds_loss, stopgrad_target_loss, x0_loss


@dataclass
class GuidanceConfig:
    """Settings shared by every prior."""

    model: str = ""
    """Registry name (see :data:`gen4d.models.REGISTRY`), Hub id or local folder."""
    guidance_scale: float = 100.0
    """Classifier-free guidance scale s."""
    timesteps: TimestepSchedule = field(default_factory=TimestepSchedule)
    """Range of sampled timesteps and its annealing."""
    weighting: Weighting = "sds"
    """sds: w(t) = 1 - alpha_bar_t; uniform: w = 1; x0: regress the denoised latent (MVDream)."""
    std_rescale: float = 0.0
    """With weighting x0: blend of the std-matched denoised target (MVDream uses 0.5)."""
    hifa_steps: int = 1
    """With weighting hifa: DDIM steps (eta 1) from x_t to the target (Dream-in-4D's ``num_hifa_steps``)."""
    precision: Precision = "fp32"
    """Weights and activations of the frozen networks: fp32 | fp16 | bf16."""
    attention_slicing: bool = False
    """Compute attention in slices (lower peak memory, a little slower)."""
    vae_slicing: bool = False
    """Encode / decode one image at a time."""
    cpu_offload: bool = False
    """Keep the networks on the CPU and move each to the GPU only while it runs (one large model at a time)."""


def make_config(cls, config, overrides: dict):
    """``config`` (or ``cls()``) with the keyword ``overrides`` applied; unknown names are an error."""
    config = config if config is not None else cls()
    names = {f.name for f in fields(config)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown {type(config).__name__} fields: {sorted(unknown)}")
    return replace(config, **overrides) if overrides else config


@dataclass
class Conditioning:
    """What a prior may be conditioned on, for a batch of N images (a video batch ``[B, T]`` counts N = B T frames,
    video-major). Every field is optional; each prior reads the ones it needs and says so when one is missing.

    Angles follow :mod:`gen4d.cameras` (azimuth from +x towards +y, elevation above the xy plane, degrees).
    """

    c2w: Tensor | None = None
    """``[N, 4, 4]`` camera-to-world matrices, gen4d (OpenCV) axes (MVDream's camera embedding)."""
    elevation_deg: Tensor | None = None
    """``[N]`` elevations (Zero123's relative pose, view-dependent prompts)."""
    azimuth_deg: Tensor | None = None
    """``[N]`` azimuths."""
    radius: Tensor | None = None
    """``[N]`` distances from the origin."""
    fov_deg: Tensor | None = None
    """``[N]`` horizontal fields of view (no published prior reads it; oracle priors do, to see what was rendered)."""
    times: Tensor | None = None
    """``[N]`` times in [0, 1] of the rendered frames."""
    prompt: PromptEmbeddings | None = None
    """Text embeddings (from ``prior.encode_prompt``)."""
    reference: Any = None
    """Image-conditioned priors' reference (e.g. a :class:`~gen4d.guidance.zero123.Zero123Reference`, shared or
    one per image)."""
    num_views: int = 1
    """Views per object for multi-view priors: samples ``k V .. k V + V - 1`` are the views of object ``k``."""

    def require(self, *names: str, prior: str = "this prior") -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{prior} needs Conditioning.{', '.join(missing)}")


def offload_between_calls(module: nn.Module, device: torch.device | str, methods: tuple[str, ...] = ("forward",)) -> None:
    """Keep ``module`` on the CPU and move it to ``device`` only while one of ``methods`` runs.

    With every large network of a prior wrapped this way, at most one of them occupies the accelerator at a time
    (at the cost of a host-device copy per call). Tensors saved for a backward pass keep their device copies
    alive until that backward, so gradients through e.g. a VAE encoder still work.
    """
    module.to("cpu")
    depth = [0]  # wrapped methods may call each other (encode -> forward): move only at the outermost call

    for name in methods:
        original = getattr(module, name)

        def run_on_device(*args, _original=original, **kwargs):
            if depth[0] == 0:
                module.to(device)
            depth[0] += 1
            try:
                return _original(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    module.to("cpu")

        setattr(module, name, run_on_device)


class DiffusionGuidance(nn.Module):
    """Base class of every score-distillation prior: the distillation step (module doc) and device handling.

    Subclasses load their networks, call ``super().__init__(config, alphas_cumprod)`` and implement
    :meth:`encode_renders` and :meth:`predict_noise`.
    """

    loss_name: str = "loss_sds"
    """Key of the distillation loss in the returned dict."""
    offload_plan: dict[str, tuple[str, ...]] = {}
    """Large sub-networks and the methods that run them, e.g. ``{"unet": ("forward",), "vae": ("encode", "decode")}``."""

    def __init__(self, config: GuidanceConfig, alphas_cumprod: Tensor):
        super().__init__()
        self.config = config
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone(), persistent=False)
        self.last_info: dict[str, Any] = {}
        """Diagnostics of the last call (detached): ``t``, ``noise``, ``latents``, ``eps_hat``, ``eps_cond``,
        ``eps_uncond``, ``grad_norm``, and whatever the prior adds."""

    # ------------------------------------------------------------------------------------------------ hooks
    def encode_renders(self, renders: Tensor, cond: Conditioning, generator: torch.Generator | None) -> Tensor:
        """Renders in [0, 1] -> the diffusion model's clean sample ``x`` (differentiable w.r.t. the renders)."""
        raise NotImplementedError

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        """``(eps_cond, eps_uncond)`` in float32 for noisy samples ``x_t`` at timesteps ``t`` ``[B]``; called under
        ``torch.no_grad``."""
        raise NotImplementedError

    def timestep_group(self, cond: Conditioning, x: Tensor) -> int:
        """Consecutive samples that share one timestep (the views of one object for a multi-view prior)."""
        return 1

    def baseline_noise(self, x_t: Tensor, t: Tensor, cond: Conditioning, noise: Tensor) -> Tensor:
        """What ``eps_hat`` is compared with: the injected noise (SDS); VSD uses its LoRA's prediction."""
        return noise

    def extra_losses(self, x: Tensor, cond: Conditioning, generator: torch.Generator | None) -> dict[str, Tensor]:
        """Further losses of the same call (VSD's LoRA loss); none by default."""
        return {}

    # ------------------------------------------------------------------------------------------------ maths
    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.config.precision]

    @property
    def device(self) -> torch.device:
        """The execution device (networks offloaded to the CPU still run here)."""
        return self.alphas_cumprod.device

    def sample_timesteps(self, step: int, batch: int, generator: torch.Generator | None = None,
                         schedule: TimestepSchedule | None = None) -> Tensor:
        """Timesteps of ``schedule`` (default: the prior's own) at optimisation step ``step``."""
        schedule = schedule if schedule is not None else self.config.timesteps
        return schedule.sample(step, self.num_train_timesteps, batch, generator, self.alphas_cumprod.device)

    def add_noise(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``x_t = sqrt(a_t) x + sqrt(1 - a_t) eps``."""
        a = self.alphas_cumprod[t].reshape(-1, *([1] * (x.dim() - 1))).to(x)
        return a.sqrt() * x + (1 - a).sqrt() * eps

    @staticmethod
    def guide(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
        return classifier_free_guidance(eps_uncond, eps_cond, scale)

    def distillation_loss(self, x: Tensor, x_t: Tensor, baseline: Tensor, eps_hat: Tensor, t: Tensor,
                          eps_cond: Tensor | None = None, group: int = 1) -> Tensor:
        """The configured SDS variant on ``x`` (gradient flows only into ``x``): ``w(t) (eps_hat - baseline)`` for
        the sds / uniform weightings, the denoised-target regression for x0."""
        a = self.alphas_cumprod[t]
        if self.config.weighting in ("sds", "uniform"):
            return sds_loss(x, eps_hat, baseline, a, self.config.weighting)[0]
        return x0_loss(x, x_t, eps_hat, a, eps_cond=eps_cond, std_rescale=self.config.std_rescale, group=group)

    def hifa_target(self, x_t: Tensor, t: Tensor, eps_hat: Tensor, cond: Conditioning,
                    generator: torch.Generator | None) -> Tensor:
        """HiFA's target (``sds.py``): ``hifa_steps`` DDIM steps with eta 1 from ``x_t``, each ``T // hifa_steps``
        timesteps down (the guided prediction at each; ``eps_hat`` is the first), the last to ``alpha_bar_0``
        (a DDIM schedule with ``set_alpha_to_one: false``, as ZeroScope's). Called under ``torch.no_grad``."""
        stride = self.num_train_timesteps // max(1, self.config.hifa_steps)
        x, t, eps = x_t, t.clone(), eps_hat
        while True:
            active = t > 0
            prev = t - stride
            a_t = self.alphas_cumprod[t.clamp_min(0)]
            a_prev = torch.where(prev >= 0, self.alphas_cumprod[prev.clamp_min(0)], self.alphas_cumprod[0])
            noise = torch.randn(x.shape, generator=generator, device=generator.device if generator is not None else None).to(x)
            stepped = ddim_step(x, eps, a_t, a_prev, noise)
            x = torch.where(active.reshape(-1, *([1] * (x.dim() - 1))), stepped, x)
            t = torch.where(active, prev, t)
            if not bool((t > 0).any()):
                return x
            eps_cond, eps_uncond = self.predict_noise(x, t.clamp_min(0), cond)
            eps = self.guide(eps_uncond, eps_cond, self.config.guidance_scale)

    def draw(self, x: Tensor, step: int, group: int, generator: torch.Generator | None,
             t: Tensor | int | None = None, noise: Tensor | None = None,
             schedule: TimestepSchedule | None = None) -> tuple[Tensor, Tensor]:
        """Timesteps ``[B]`` (one per ``group`` consecutive samples) and noise like ``x``; given values are used
        as they are (tests, deterministic evaluation). Drawn in this order: t, then noise."""
        B = x.shape[0]
        if B % group:
            raise ValueError(f"a batch of {B} is not a whole number of groups of {group}")
        if t is None:
            t = self.sample_timesteps(step, B // group, generator, schedule).repeat_interleave(group)
        t = torch.as_tensor(t, dtype=torch.long, device=self.alphas_cumprod.device).reshape(-1).expand(B)
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=generator.device if generator is not None else None)
        return t, noise.to(x.device, torch.float32)

    # ------------------------------------------------------------------------------------------------ the step
    def forward(self, renders: Tensor, cond: Conditioning | None = None, step: int = 0,
                generator: torch.Generator | None = None, *, t: Tensor | int | None = None,
                noise: Tensor | None = None, schedule: TimestepSchedule | None = None) -> dict[str, Tensor]:
        """The distillation step (module doc) on ``renders``; returns ``{loss_name: loss, **extra_losses}``.

        ``t`` (``[B]`` or one value) and ``noise`` (shaped like the encoded sample) replace the random draws;
        ``schedule`` replaces the prior's timestep schedule for this call (a stage with its own step count).
        """
        cond = cond if cond is not None else Conditioning()
        self.last_info = {}  # encode_renders may record what it chose (e.g. the frames that carry a gradient)
        x = self.encode_renders(renders, cond, generator).float()
        group = self.timestep_group(cond, x)
        t, noise = self.draw(x, step, group, generator, t, noise, schedule)
        with torch.no_grad():
            x_t = self.add_noise(x.detach(), noise, t)
            eps_cond, eps_uncond = self.predict_noise(x_t, t, cond)
            eps_hat = self.guide(eps_uncond, eps_cond, self.config.guidance_scale)
            baseline = self.baseline_noise(x_t, t, cond, noise)
        if self.config.weighting == "hifa":
            with torch.no_grad():
                target = self.hifa_target(x_t, t, eps_hat, cond, generator)
            self.last_info["target"] = target
            loss = stopgrad_target_loss(x, torch.nan_to_num(x.detach() - target))  # as Dream-in-4D: nan_to_num(grad)
        else:
            loss = self.distillation_loss(x, x_t, baseline, eps_hat, t, eps_cond=eps_cond, group=group)
        # Every variant is 1/2 ||x - stopgrad(target)||^2, so the gradient's norm is sqrt(2 loss).
        self.last_info.update({
            "t": t.detach(), "noise": noise, "latents": x.detach(), "x_t": x_t, "eps_hat": eps_hat, "eps_cond": eps_cond,
            "eps_uncond": eps_uncond, "baseline": baseline, "grad_norm": (2 * loss.detach()).sqrt(),
        })
        return {self.loss_name: loss, **self.extra_losses(x, cond, generator)}

    # ------------------------------------------------------------------------------------------------ devices
    def place(self, device: torch.device | str | None) -> "DiffusionGuidance":
        """Move to ``device`` (None: stay). With ``config.cpu_offload`` on an accelerator, the networks of
        ``offload_plan`` then stay on the CPU and visit the device only while they run."""
        if device is None:
            return self
        self.to(device)
        if self.config.cpu_offload and torch.device(device).type != "cpu":
            for name, methods in self.offload_plan.items():
                module = getattr(self, name, None)
                if module is not None:
                    offload_between_calls(module, device, methods)
        return self

    @staticmethod
    def freeze(*modules: nn.Module) -> None:
        for m in modules:
            if m is not None:
                m.eval()
                m.requires_grad_(False)
