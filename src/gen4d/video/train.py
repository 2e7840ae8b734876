"""MotionDirector training (Zhao et al. 2023): dual-path LoRA on a text-to-video UNet3D.

Notation: ``x0`` the clean video latent ``[B, C, F, h, w]`` (VAE latents times the scaling factor), ``t`` a
timestep drawn uniformly from ``{0, ..., T-1}``, ``eps ~ N(0, I)``, ``a_t`` the cumulative product of
``1 - beta`` (``alphas_cumprod``), ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` and the target ``y = eps``
(``y = sqrt(a_t) eps - sqrt(1 - a_t) x0`` for v-prediction models). One training step on clip ``k``:

1. **Spatial path** (skipped with probability ``spatial_dropout`` = 0.2 while the temporal path trains):
   one random frame ``f`` of ``x_t`` as a 1-frame video, the UNet run with its temporal layers skipped
   (:func:`gen4d.video.unet3d.skip_temporal_layers`), only clip ``k``'s spatial LoRA active; loss
   ``MSE(eps_hat[:, :, 0], y[:, :, f])``; an AdamW step on that spatial LoRA alone. The spatial LoRA learns the
   clip's appearance.
2. **Temporal path**: the whole clip, the spatial LoRA of clip ``k`` active but **frozen** (off when the spatial
   step was skipped), the temporal LoRA trainable; loss :func:`debiased_temporal_loss`; an AdamW step on the
   temporal LoRA alone. With appearance taken by the spatial LoRA, the temporal LoRA is left the motion.

The two paths share ``t``, ``eps`` and the text embedding of the step, as in MotionDirector. Each adapter has its
own optimiser and only the trainable adapter has ``requires_grad``, so neither path changes the other's LoRA.
Clips are visited in order (step ``s`` trains clip ``s mod N``), as MotionDirector's unshuffled data loader does.

Everything random draws from one ``torch.Generator`` (timestep, noise, the spatial mask, the frame, the anchor)
in a fixed order, and dropout draws from torch's global generator, seeded at the start. The trainer is a model of
the shared stage loop (:mod:`gen4d.training.loop`): ``tensors()`` are the LoRA weights, :meth:`MotionTrainer.step`
is the stage's update, and the loop checkpoints both generators, the AdamW moments and the gradient scaler, so a
resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .. import Gen4DError
from ..devices import autocast
from ..files import atomic_path
from ..guidance.vae import encode_latents
from .lora import (
    DEFAULT_DROPOUT,
    DEFAULT_RANK,
    SPATIAL,
    TEMPORAL,
    configure_adapters,
    inject_motion_lora,
    load_lora_state_dict,
    lora_adapters,
    lora_parameters,
    lora_state_dict,
)
from .unet3d import enable_gradient_checkpointing, skip_temporal_layers

STAGE = "motion"
"""The training stage's name under ``DIR/stages``."""
LATENTS_STAGE = "latents"
"""The artifact stage holding the cached clip latents (``DIR/stages/latents/clip_XXXX.safetensors``)."""


# ----------------------------------------------------------------------------------------------- settings
@dataclass
class LoraSettings:
    """The adapters (MotionDirector's ``lora_rank``, ``lora_unet_dropout``; its LoRA scale is 1)."""

    rank: int = DEFAULT_RANK
    """Rank r of every LoRA."""
    alpha: float = 0.0
    """LoRA alpha; the update is ``(alpha / r) B A x``. 0: alpha = r (scale 1, as MotionDirector)."""
    dropout: float = DEFAULT_DROPOUT
    """Dropout on the LoRA input during training."""


@dataclass
class OptimizerSettings:
    """AdamW for each adapter, constant learning rate (MotionDirector's single-video config)."""

    lr: float = 5e-4
    """Learning rate of every adapter."""
    weight_decay: float = 1e-2
    """Decoupled weight decay (1e-2 single video, 1e-4 multiple videos / images in MotionDirector's configs)."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""


@dataclass
class DualPathSettings:
    """How each step trains the two paths."""

    train_temporal: bool = True
    """Train the temporal LoRA on whole clips (False: spatial path only, e.g. appearance from images)."""
    spatial_lora: str = "per_clip"
    """per_clip: one spatial LoRA per training clip (MotionDirector's default); single: one shared by all."""
    spatial_dropout: float = 0.2
    """Probability of skipping a step's spatial path; the temporal path then runs without the spatial LoRA."""
    debias_beta: float = 1.0
    """beta of the appearance-debiased temporal loss (0: plain MSE twice)."""


@dataclass
class TrainingClip:
    """One training clip: cached latents and the text it is trained with."""

    latents: Tensor
    """``[C, F, h, w]`` VAE latents times the VAE scaling factor (F = 1 for an image)."""
    prompt: str
    """The clip's prompt."""
    source: str = ""
    """Where the clip came from (file or folder)."""
    frames: list[int] = field(default_factory=list)
    """Frame indices of the clip in its source."""


# ----------------------------------------------------------------------------------------------- losses
def debiased_temporal_loss(pred: Tensor, target: Tensor, anchor: int, beta: float = 1.0) -> Tensor:
    """MotionDirector's appearance-debiased temporal loss on ``[B, C, F, h, w]`` predictions and targets.

    ``L = MSE(eps_hat, eps) + MSE(phi(eps_hat), phi(eps))`` with
    ``phi(x)_i = sqrt(beta^2 + 1) * x_i - beta * x_anchor`` for every frame ``i`` and one anchor frame
    (``anchor``, drawn at random by the caller). Subtracting the anchor removes what all frames share (the
    appearance), so the second term weighs the motion; ``sqrt(beta^2 + 1)`` keeps ``phi(eps)`` unit-variance for
    i.i.d. noise. MSE means over all elements, computed in float32.
    """
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(f"pred and target must both be [B, C, F, h, w], got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.float(), target.float()
    scale = math.sqrt(beta * beta + 1.0)
    phi_pred = scale * pred - beta * pred[:, :, anchor : anchor + 1]
    phi_target = scale * target - beta * target[:, :, anchor : anchor + 1]
    return F.mse_loss(pred, target) + F.mse_loss(phi_pred, phi_target)


def diffusion_target(x0: Tensor, noise: Tensor, a_t: Tensor, prediction_type: str) -> Tensor:
    """Regression target: ``eps`` (epsilon models) or ``v = sqrt(a_t) eps - sqrt(1 - a_t) x0``."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return a_t.sqrt() * noise - (1 - a_t).sqrt() * x0
    raise Gen4DError(f"the noise scheduler predicts {prediction_type!r}; motion LoRA training supports epsilon and v_prediction")


# ----------------------------------------------------------------------------------------------- latent cache
def encode_clip(vae: nn.Module, frames: Tensor, generator: torch.Generator | None = None, chunk: int = 8) -> Tensor:
    """VAE latents ``[C, F, h, w]`` (times the scaling factor) of frames ``[F, 3, H, W]`` in [0, 1].

    With a generator the posterior is sampled (``mean + std * n``, as MotionDirector does); None takes its
    mean. Frames are encoded ``chunk`` at a time to bound memory.
    """
    device = next(vae.parameters()).device
    with torch.no_grad():
        z = encode_latents(vae, frames.to(device), sample=generator is not None, generator=generator, chunk=chunk)
    return z.cpu().permute(1, 0, 2, 3).contiguous()


def save_clip_latents(path: str | Path, latents: Tensor, prompt: str, meta: dict[str, Any] | None = None) -> None:
    """Write ``{"latents": [C, F, h, w]}`` with the prompt (and ``meta``, JSON-encoded) in the metadata."""
    metadata = {"prompt": prompt, **{k: json.dumps(v) for k, v in (meta or {}).items()}}
    with atomic_path(path) as tmp:
        save_file({"latents": latents.detach().float().cpu().contiguous()}, str(tmp), metadata=metadata)


def load_clip_latents(path: str | Path) -> tuple[Tensor, str, dict[str, Any]]:
    """``(latents [C, F, h, w], prompt, meta)`` of a file written by :func:`save_clip_latents`."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        latents = f.get_tensor("latents")
    prompt = metadata.pop("prompt", "")
    return latents, prompt, {k: json.loads(v) for k, v in metadata.items()}


# ----------------------------------------------------------------------------------------------- trainer
@dataclass
class StepBatch:
    """The inputs of one training step, on the trainer's device."""

    clip: int
    """Index of the clip trained on."""
    t: Tensor
    """``[1]`` timestep."""
    x_t: Tensor
    """``[1, C, F, h, w]`` noisy latents ``sqrt(a_t) x0 + sqrt(1 - a_t) eps``."""
    target: Tensor
    """``[1, C, F, h, w]`` regression target (eps, or v)."""
    embedding: Tensor
    """``[1, L, D]`` text embedding of the clip's prompt."""
    frame: int
    """Frame of the spatial path."""
    anchor: int
    """Anchor frame of the debiased loss."""
    mask_spatial: bool
    """Skip the spatial path this step."""


class MotionTrainer:
    """Holds the UNet with its adapters, the clips, the optimisers and the random state; :meth:`step` trains.

    ``unet``: a ``UNet3DConditionModel`` (frozen here; adapters are injected). ``embeddings``: text embeddings
    ``[N, L, D]``, one per clip. ``alphas_cumprod``: ``[T]`` of the training noise schedule.
    ``precision``: fp32 | fp16 | bf16 (autocast; fp16 adds a gradient scaler). Seeds torch's global generator
    (dropout draws from it) and the trainer's own generator with ``seed``.
    """

    def __init__(
        self,
        unet: nn.Module,
        clips: Sequence[TrainingClip],
        embeddings: Tensor,
        alphas_cumprod: Tensor,
        prediction_type: str = "epsilon",
        lora: LoraSettings | None = None,
        optim: OptimizerSettings | None = None,
        paths: DualPathSettings | None = None,
        seed: int = 0,
        precision: str = "fp32",
        gradient_checkpointing: bool = False,
    ):
        self.lora = lora or LoraSettings()
        self.optim = optim or OptimizerSettings()
        self.paths = paths or DualPathSettings()
        if self.paths.spatial_lora not in ("per_clip", "single"):
            raise Gen4DError(f"spatial_lora must be per_clip or single, got {self.paths.spatial_lora!r}")
        if not 0.0 <= self.paths.spatial_dropout <= 1.0:
            raise Gen4DError(f"spatial_dropout must be in [0, 1], got {self.paths.spatial_dropout}")
        if precision not in ("fp32", "fp16", "bf16"):
            raise Gen4DError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        if not clips:
            raise Gen4DError("no training clips")
        if len(embeddings) != len(clips):
            raise ValueError(f"{len(embeddings)} text embeddings for {len(clips)} clips")
        self.unet = unet
        self.device = next(unet.parameters()).device
        self.clips = list(clips)
        self.embeddings = embeddings.to(self.device)
        self.alphas_cumprod = alphas_cumprod.float().cpu()
        self.prediction_type = prediction_type
        self.precision = precision
        self.train_temporal = self.paths.train_temporal and max(c.latents.shape[1] for c in self.clips) > 1
        self.seed = seed

        unet.requires_grad_(False)
        torch.manual_seed(seed)  # LoRA initialisation and dropout
        r, alpha = self.lora.rank, (self.lora.alpha or self.lora.rank)
        n_spatial = len(self.clips) if self.paths.spatial_lora == "per_clip" else 1
        self.spatial_names = [SPATIAL] + [f"{SPATIAL}_{i}" for i in range(1, n_spatial)]
        names = self.spatial_names + ([TEMPORAL] if self.train_temporal else [])
        for name in names:
            inject_motion_lora(unet, name, rank=r, alpha=alpha, dropout=self.lora.dropout)
        unet.to(self.device)
        o = self.optim
        self.optimizers = {
            name: torch.optim.AdamW(
                lora_parameters(unet, name), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay
            )
            for name in names
        }
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.generator = torch.Generator().manual_seed(seed)
        if gradient_checkpointing:
            enable_gradient_checkpointing(unet)
        unet.train()  # MotionDirector trains in train mode: LoRA and temporal-convolution dropout are on

    # -- adapters -------------------------------------------------------------------------------------------
    def spatial_adapter(self, clip_index: int) -> str:
        """The spatial adapter trained on clip ``clip_index``."""
        return self.spatial_names[clip_index % len(self.spatial_names)]

    def _update(self, loss: Tensor, name: str) -> None:
        opt = self.optimizers[name]
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        opt.zero_grad(set_to_none=True)

    def _forward(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        with autocast(self.device, self.precision):
            return self.unet(x_t, t.to(self.device), encoder_hidden_states=emb).sample

    # -- one step -------------------------------------------------------------------------------------------
    def prepare(self, step: int, generator: torch.Generator | None = None) -> StepBatch:
        """The inputs of step ``step``, drawn from ``generator`` (default: the trainer's own). The draws are always
        the same, in the same order (t, noise, spatial mask, frame, anchor), whichever paths then run."""
        g = generator if generator is not None else self.generator
        k = step % len(self.clips)
        x0 = self.clips[k].latents[None]
        n_frames = x0.shape[2]
        t = torch.randint(0, len(self.alphas_cumprod), (1,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        u = float(torch.rand((), generator=g))
        frame = int(torch.randint(0, n_frames, (1,), generator=g))
        anchor = int(torch.randint(0, n_frames, (1,), generator=g))
        a_t = self.alphas_cumprod[t].reshape(1, 1, 1, 1, 1)
        x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
        dev = self.device
        return StepBatch(
            clip=k, t=t.to(dev), x_t=x_t.to(dev), target=diffusion_target(x0, noise, a_t, self.prediction_type).to(dev),
            embedding=self.embeddings[k : k + 1], frame=frame, anchor=anchor,
            mask_spatial=self.train_temporal and u < self.paths.spatial_dropout,
        )

    def spatial_step(self, b: StepBatch) -> float:
        """Frame ``b.frame`` as a 1-frame video, temporal layers skipped, only the clip's spatial LoRA active and
        trainable; ``MSE(eps_hat, y)``; an AdamW step on that LoRA. Returns the loss."""
        spatial = self.spatial_adapter(b.clip)
        f = b.frame
        configure_adapters(self.unet, {spatial: 1.0}, trainable=[spatial])
        with skip_temporal_layers(self.unet):
            pred = self._forward(b.x_t[:, :, f : f + 1], b.t, b.embedding)
        loss = F.mse_loss(pred[:, :, 0].float(), b.target[:, :, f].float())
        self._update(loss, spatial)
        return float(loss.detach())

    def temporal_step(self, b: StepBatch) -> float:
        """The whole clip, the clip's spatial LoRA active but frozen (inactive when ``b.mask_spatial``), the
        temporal LoRA trainable; :func:`debiased_temporal_loss`; an AdamW step on the temporal LoRA."""
        scales = {self.spatial_adapter(b.clip): 0.0 if b.mask_spatial else 1.0, TEMPORAL: 1.0}
        configure_adapters(self.unet, scales, trainable=[TEMPORAL])
        pred = self._forward(b.x_t, b.t, b.embedding)
        loss = debiased_temporal_loss(pred, b.target, b.anchor, self.paths.debias_beta)
        self._update(loss, TEMPORAL)
        return float(loss.detach())

    def step(self, step: int, generator: torch.Generator | None = None) -> dict[str, float | None]:
        """One training step (see the module docstring); returns ``{"spatial": loss or None, "temporal": ...}``."""
        b = self.prepare(step, generator)
        out: dict[str, float | None] = {"spatial": None, "temporal": None}
        if not b.mask_spatial:
            out["spatial"] = self.spatial_step(b)
        if self.train_temporal:
            out["temporal"] = self.temporal_step(b)
        self.scaler.update()  # once per step, after both optimisers (GradScaler's multi-optimiser pattern)
        return out

    def set_inference_adapters(self, spatial_scale: float = 0.0) -> None:
        """Temporal LoRA at 1 and the first spatial one at ``spatial_scale`` (MotionDirector validates with 0;
        without a temporal LoRA the spatial one acts at 1), nothing trainable."""
        if TEMPORAL in lora_adapters(self.unet):
            configure_adapters(self.unet, {TEMPORAL: 1.0, SPATIAL: spatial_scale})
        else:
            configure_adapters(self.unet, {SPATIAL: 1.0})

    # -- the stage loop's model -----------------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        """The LoRA weights of every trained adapter (``lora.<adapter>.<name>``)."""
        out: dict[str, Tensor] = {}
        for name in self.optimizers:
            out.update({f"lora.{name}.{k}": v for k, v in lora_state_dict(self.unet, name).items()})
        return out

    def load_tensors(self, tensors: dict[str, Tensor]) -> "MotionTrainer":
        """Restore what :meth:`tensors` returned; returns the trainer."""
        for name in self.optimizers:
            prefix = f"lora.{name}."
            load_lora_state_dict(self.unet, name, {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        return self

    def scaler_state(self) -> dict:
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_scaler_state(self, state: dict) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)

    @contextlib.contextmanager
    def inference(self):
        """Sampling with the adapters as the sampler uses them (temporal on, spatial off), in eval mode, without
        gradients and with the random state set aside, so a preview changes nothing in the training."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast(self.device, self.precision):
            self.unet.eval()
            try:
                self.set_inference_adapters()
                yield self.unet
            finally:
                self.unet.train()
