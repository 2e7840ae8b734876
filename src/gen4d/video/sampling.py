"""Text-to-video sampling with a UNet3D latent diffusion model (ZeroScope, ModelScope): DDIM sampling, DDIM
inversion and MotionDirector's noise prior.

Components (the diffusers ``TextToVideoSDPipeline`` layout, loaded through
:func:`gen4d.models.registry.load_pretrained`): ``unet`` (``UNet3DConditionModel``, video latents
``[B, C, F, h, w]``), ``vae`` (``AutoencoderKL``, applied frame by frame), ``text_encoder`` / ``tokenizer`` (CLIP)
and the noise schedule of ``scheduler/``, read into a ``DDIMScheduler`` (MotionDirector samples ZeroScope with
``DDIMScheduler.from_config``). The scheduler only supplies the schedule (``alphas_cumprod``, the timesteps of
``set_timesteps``, ``final_alpha_cumprod``); the update rules are written out below.

Notation
--------
* ``z_t``: the video latent at diffusion timestep ``t``, ``[B, C, F, h, w]`` with ``h = H / 8``, ``w = W / 8``,
  already multiplied by the VAE scaling factor; the forward process is ``z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps``.
* ``a_t``: ``alphas_cumprod[t]`` (the signal fraction at ``t``), ``T`` training timesteps (1000).
* ``tau_1 > tau_2 > ... > tau_N``: the ``N`` sampling timesteps of ``DDIMScheduler.set_timesteps(N)``;
  ``prev(tau) = tau - T // N`` (the rule of ``DDIMScheduler.step``), and ``a_prev(tau) = final_alpha_cumprod``
  when ``prev(tau) < 0`` (``a_0``, or 1 with ``set_alpha_to_one``).
* ``eps_theta(z, t, c)``: the U-Net's noise prediction with text embedding ``c``; ``0`` is the negative (empty)
  prompt's embedding; ``s`` the classifier-free guidance scale; ``eta`` the DDIM stochasticity.

DDIM sampling (Song et al. 2021, eq. 12 and 16), one step ``tau -> prev(tau)``
------------------------------------------------------------------------------
1. ``eps^ = eps_theta(z, tau, 0) + s (eps_theta(z, tau, c) - eps_theta(z, tau, 0))``
   (classifier-free guidance; ``s = 1`` is ``eps_theta(z, tau, c)`` in one U-Net pass);
2. ``z0^ = (z - sqrt(1 - a_tau) eps^) / sqrt(a_tau)`` (the predicted clean latent);
3. ``sigma = eta sqrt((1 - a_prev) / (1 - a_tau)) sqrt(1 - a_tau / a_prev)``;
4. ``z_prev = sqrt(a_prev) z0^ + sqrt(1 - a_prev - sigma^2) eps^ + sigma xi``, ``xi ~ N(0, I)``.

``eta = 0`` (the default) is deterministic. The loop starts from ``z_{tau_1} = eps`` (``init_noise_sigma`` is 1
for DDIM) and returns ``z0``, the latent after the step from ``tau_N``.

DDIM inversion, one step ``prev(tau) -> tau`` for ``tau = tau_N, ..., tau_1`` (deterministic, ``s = 1``)
-------------------------------------------------------------------------------------------------------
1. ``eps^ = eps_theta(z, tau, c_inv)``: the noise is predicted at the *target* timestep from the latent at the
   lower level, the usual approximation ``eps_theta(z_prev(tau), tau) ~ eps_theta(z_tau, tau)`` (MotionDirector's
   ``ddim_inversion``, diffusers' ``DDIMInverseScheduler``, null-text inversion). It makes sampling step ``tau``
   and inversion step ``tau`` use the same ``(tau, a_tau, a_prev)`` triple;
2. ``z0^ = (z - sqrt(1 - a_prev) eps^) / sqrt(a_prev)``;
3. ``z_tau = sqrt(a_tau) z0^ + sqrt(1 - a_tau) eps^``.

It is sampling with ``eta = 0`` run backwards: its only error is the change of ``eps_theta`` between two
neighbouring levels, which vanishes as ``N`` grows, so inverting with ``N`` steps and sampling back with the same
``N`` steps, the same prompt and ``s = 1`` reconstructs ``z_0``. The clean latent enters at the level
``a_prev(tau_N)``, where sampling leaves it. MotionDirector inverts with 50 steps, the empty prompt and no guidance.

Noise prior (MotionDirector, Zhao et al. 2023, inference)
---------------------------------------------------------
``z_{tau_1} = sqrt(p) z_inv + sqrt(1 - p) eps``, ``eps ~ N(0, I)``, ``p`` = ``noise_prior`` in ``[0, 1]``, with
``z_inv`` the DDIM inversion of a training clip's latent (or of a reference video): ``p = 0`` is pure noise, ``p = 1``
the inversion itself; for ``z_inv`` and ``eps`` independent with unit variance the mix keeps unit variance.
MotionDirector recommends ``p = 0`` for a motion learned from several videos and ``0.1 .. 0.5`` for one video.
``z_inv`` is at level ``tau_1`` of the inversion schedule (981 with 50 steps), sampling starts at ``tau_1`` of its
own schedule (967 with 30 steps); like MotionDirector, the difference is ignored. ``z_inv`` is computed by the base
U-Net, every LoRA off (MotionDirector inverts when it caches the training latents, before training, in
``handle_cache_latents`` of ``MotionDirector_train.py``); the LoRAs act in the sampling that starts from it.

Random numbers come from one CPU ``torch.Generator``, drawn in a fixed order (``eps`` first, then ``xi`` per step
in the diffusers layout), so with ``p = 0`` :meth:`TextToVideo.generate` reproduces ``TextToVideoSDPipeline``
called with the same components, scheduler, prompt and generator seed (``tests/test_video_sampling.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from rich.progress import track
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from .. import Gen4DError
from ..devices import DTYPES, Precision
from ..guidance.prompts import encode_prompt, encode_prompt_pair, expand_batch
from ..guidance.sds import classifier_free_guidance
from ..guidance.vae import encode_latents
from ..models.registry import load_pretrained
from .lora import active_lora_scales, lora_adapters, lora_off, set_lora_scale
from .lora_files import load_motion_lora

# MotionDirector_inference.py defaults (ZeroScope): 384 x 384, 16 frames, 30 DDIM steps, guidance 12, 8 fps.
DEFAULT_NUM_FRAMES = 16
DEFAULT_HEIGHT = 384
DEFAULT_WIDTH = 384
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 12.0
DEFAULT_FPS = 8
DEFAULT_INVERSION_STEPS = 50


# ----------------------------------------------------------------------------------------------------------------
# The maths, as pure functions of tensors


def ddim_step(eps: Tensor, z: Tensor, a_t: Tensor | float, a_prev: Tensor | float, eta: float = 0.0, xi: Tensor | None = None) -> Tensor:
    """One DDIM sampling step ``z_t -> z_prev`` (steps 2-4 of the module docstring); any shape.

    ``eps``: the (guided) noise prediction at ``t``; ``a_t`` / ``a_prev``: ``alphas_cumprod`` at ``t`` and at the
    previous level; ``xi``: standard normal noise shaped like ``z`` (needed only when ``eta > 0``).
    """
    a_t = torch.as_tensor(a_t, dtype=z.dtype, device=z.device)
    a_prev = torch.as_tensor(a_prev, dtype=z.dtype, device=z.device)
    z0 = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
    z_prev = a_prev.sqrt() * z0 + (1 - a_prev - sigma**2).sqrt() * eps
    if eta > 0:
        if xi is None:
            raise ValueError("ddim_step with eta > 0 needs the noise xi")
        z_prev = z_prev + sigma * xi
    return z_prev


def ddim_inversion_step(eps: Tensor, z: Tensor, a_prev: Tensor | float, a_t: Tensor | float) -> Tensor:
    """One deterministic DDIM inversion step ``z_prev -> z_t`` (steps 2-3 of the inversion in the module doc)."""
    a_t = torch.as_tensor(a_t, dtype=z.dtype, device=z.device)
    a_prev = torch.as_tensor(a_prev, dtype=z.dtype, device=z.device)
    z0 = (z - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
    return a_t.sqrt() * z0 + (1 - a_t).sqrt() * eps


def apply_noise_prior(inverted: Tensor, noise: Tensor, noise_prior: float) -> Tensor:
    """MotionDirector's noise prior ``sqrt(p) z_inv + sqrt(1 - p) eps`` with ``p = noise_prior`` in [0, 1].

    ``p = 0`` returns ``noise`` itself and ``p = 1`` ``inverted`` itself (no arithmetic, so no rounding).
    """
    p = float(noise_prior)
    if not 0.0 <= p <= 1.0:
        raise Gen4DError(f"noise_prior must be in [0, 1], got {noise_prior}; use 0 for plain sampling")
    if inverted.shape != noise.shape:
        raise ValueError(f"inverted latent {tuple(inverted.shape)} and noise {tuple(noise.shape)} differ in shape")
    if p == 0.0:
        return noise
    if p == 1.0:
        return inverted.to(noise)
    return p**0.5 * inverted.to(noise) + (1.0 - p) ** 0.5 * noise


def resize_latents(latents: Tensor, num_frames: int, height: int, width: int) -> Tensor:
    """Resample video latents ``[B, C, F, h, w]`` to ``[B, C, num_frames, height, width]``.

    Frames by nearest index (each output frame is one input frame: its statistics are kept); space bilinearly,
    as MotionDirector resizes an inverted latent of another size. A no-op when the shape already matches.
    """
    B, C, Fr, h, w = latents.shape
    if (Fr, h, w) == (num_frames, height, width):
        return latents
    if Fr != num_frames:
        idx = torch.linspace(0, Fr - 1, num_frames).round().long().to(latents.device)
        latents = latents.index_select(2, idx)
    if (h, w) != (height, width):
        x = latents.permute(0, 2, 1, 3, 4).flatten(0, 1)
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        latents = x.reshape(B, num_frames, C, height, width).permute(0, 2, 1, 3, 4)
    return latents.contiguous()


# ----------------------------------------------------------------------------------------------------------------
# The model


@dataclass
class VideoSample:
    """What :meth:`TextToVideo.generate` returns."""

    frames: Tensor
    """``[F, 3, H, W]`` in [0, 1] (the first video of the batch)."""
    latents: Tensor
    """Final latents ``z_0``, ``[B, C, F, h, w]`` (times the VAE scaling factor)."""
    initial_latents: Tensor
    """The latents sampling started from, ``z_{tau_1}``, ``[B, C, F, h, w]``."""
    inverted: Tensor | None
    """The DDIM inversion ``z_inv`` used by the noise prior (resized to the output), or None."""


class TextToVideo:
    """A UNet3D text-to-video model with DDIM sampling and inversion (see the module docstring).

    ``model``: registry name (``zeroscope``, ``modelscope``), Hub id or folder; ``device``: where the networks
    run; ``precision``: weights and activations of the networks (latents and the DDIM updates stay float32).
    """

    def __init__(self, model: str = "zeroscope", device: str | torch.device = "cpu", precision: Precision = "fp32", unet=None):
        """``unet``: an already loaded ``UNet3DConditionModel`` to sample with, used as it is (not moved, cast or
        frozen: e.g. the one being trained, for validation previews); None loads ``model``'s own."""

        if precision not in DTYPES:
            raise Gen4DError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
        self.model = model
        self.dtype = DTYPES[precision]
        self.device = torch.device(device)
        self.scheduler = load_pretrained(DDIMScheduler, model, subfolder="scheduler")
        self._check_schedule()
        self.vae = load_pretrained(AutoencoderKL, model, subfolder="vae", torch_dtype=self.dtype)
        self.tokenizer = load_pretrained(CLIPTokenizer, model, subfolder="tokenizer")
        self.text_encoder = load_pretrained(CLIPTextModel, model, subfolder="text_encoder", dtype=self.dtype)
        own = [self.vae, self.text_encoder]
        if unet is None:
            unet = load_pretrained(UNet3DConditionModel, model, subfolder="unet", torch_dtype=self.dtype)
            own.append(unet)
        self.unet = unet
        for m in own:
            m.eval().requires_grad_(False).to(self.device)

    def _check_schedule(self) -> None:
        c = self.scheduler.config
        if c.prediction_type != "epsilon":
            raise Gen4DError(f"{self.model}: prediction_type {c.prediction_type!r} is not supported; text-to-video sampling needs an epsilon-prediction model (ZeroScope, ModelScope)")
        if c.clip_sample or c.thresholding:
            raise Gen4DError(f"{self.model}: clip_sample / thresholding are not supported; set them to false in {self.model}/scheduler/scheduler_config.json")

    # -- sizes and schedule --------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for the SD VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def latent_shape(self, num_frames: int, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int, int]:
        """``(B, C, F, H / 8, W / 8)``; raises Gen4DError unless H and W are multiples of the VAE factor."""
        f = self.vae_scale_factor
        if height % f or width % f or height <= 0 or width <= 0:
            raise Gen4DError(f"height and width must be positive multiples of {f}, got {height} x {width}")
        if num_frames < 1:
            raise Gen4DError(f"num_frames must be at least 1, got {num_frames}")
        return (batch, self.unet.config.in_channels, num_frames, height // f, width // f)

    def timesteps(self, steps: int) -> Tensor:
        """``tau_1 > ... > tau_N`` of ``DDIMScheduler.set_timesteps(steps)`` (int64, on the CPU)."""
        if steps < 1:
            raise Gen4DError(f"the number of steps must be at least 1, got {steps}")
        self.scheduler.set_timesteps(steps)
        return self.scheduler.timesteps.clone().long().cpu()

    def alpha(self, t: int) -> Tensor:
        """``a_t = alphas_cumprod[t]``, and ``final_alpha_cumprod`` for ``t < 0`` (float32 scalar)."""
        if t < 0:
            return self.scheduler.final_alpha_cumprod.float()
        return self.scheduler.alphas_cumprod[int(t)].float()

    def previous_timestep(self, t: int, steps: int) -> int:
        """``prev(t) = t - T // N`` (may be negative: the final level)."""
        return int(t) - self.scheduler.config.num_train_timesteps // steps

    # -- text ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] = "") -> tuple[Tensor, Tensor]:
        """(cond, uncond) CLIP embeddings ``[B, L, D]`` (see :func:`gen4d.guidance.prompts.encode_prompt_pair`)."""
        return encode_prompt_pair(self.tokenizer, self.text_encoder, prompt, negative_prompt)

    @torch.no_grad()
    def encode_prompt(self, prompt: str | Sequence[str]) -> Tensor:
        """CLIP embeddings ``[B, L, D]`` of ``prompt`` alone."""
        return encode_prompt(self.tokenizer, self.text_encoder, prompt)

    # -- U-Net ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_noise(self, z: Tensor, t: int | Tensor, cond: Tensor, uncond: Tensor | None = None, guidance_scale: float = 1.0) -> Tensor:
        """Guided noise prediction ``eps^`` for ``z [B, C, F, h, w]`` (step 1 of sampling), float32.

        ``guidance_scale <= 1`` or ``uncond=None``: one pass with ``cond`` (for ``s < 1`` the CFG formula would need
        both passes; like diffusers, guidance is off at ``s <= 1``). Otherwise one batched pass ``[uncond, cond]``.
        """
        B = z.shape[0]
        t = torch.as_tensor(t, device=self.device)
        cond = expand_batch(cond, B).to(self.device, self.dtype)
        if uncond is None or guidance_scale <= 1.0:
            return self.unet(z.to(self.device, self.dtype), t, encoder_hidden_states=cond).sample.float()
        uncond = expand_batch(uncond, B).to(self.device, self.dtype)
        x = torch.cat([z, z]).to(self.device, self.dtype)
        eps = self.unet(x, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.float()
        eps_uncond, eps_cond = eps.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, guidance_scale)

    # -- sampling and inversion ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        latents: Tensor,
        cond: Tensor,
        uncond: Tensor | None,
        steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        quiet: bool = True,
    ) -> Tensor:
        """DDIM from ``z_{tau_1} = latents [B, C, F, h, w]`` to ``z_0`` (float32, on the device).

        ``generator`` (a CPU generator) draws ``xi`` when ``eta > 0``, in the layout of the diffusers pipeline
        (``[B * F, C, h, w]``, frames before channels) so that both consume the same numbers.
        """
        if eta < 0:
            raise Gen4DError(f"eta must be >= 0, got {eta}")
        z = latents.to(self.device, torch.float32)
        B, C, Fr, h, w = z.shape
        for tau in track(self.timesteps(steps).tolist(), description="text-to-video: sampling", disable=quiet):
            eps = self.predict_noise(z, tau, cond, uncond, guidance_scale)
            xi = None
            if eta > 0:
                xi = torch.randn((B * Fr, C, h, w), generator=generator).reshape(B, Fr, C, h, w).permute(0, 2, 1, 3, 4)
                xi = xi.to(self.device)
            z = ddim_step(eps, z, self.alpha(tau), self.alpha(self.previous_timestep(tau, steps)), eta, xi)
        return z

    @torch.no_grad()
    def invert(
        self,
        latents: Tensor,
        cond: Tensor | None = None,
        steps: int = DEFAULT_INVERSION_STEPS,
        fixed_point_iterations: int = 0,
        quiet: bool = True,
        return_trajectory: bool = False,
    ) -> Tensor | list[Tensor]:
        """Deterministic DDIM inversion of clean latents ``z_0 [B, C, F, h, w]`` to ``z_{tau_1}`` (float32).

        ``cond``: text embedding ``[1 or B, L, D]``; None: the empty prompt (MotionDirector's inversion). No
        guidance (``s = 1``). ``return_trajectory``: the list ``[z_0, z_{tau_N}, ..., z_{tau_1}]`` instead.

        ``fixed_point_iterations = k > 0`` refines each step by solving ``z_tau = G(eps_theta(z_tau, tau))`` (``G``:
        steps 2-3 with ``z_prev`` fixed) with ``k`` fixed-point iterations started from the plain step: the noise
        is then predicted at the level it is used at, so that the sampling step from ``z_tau`` lands back on
        ``z_prev`` up to the iteration's residual (``k`` more U-Net passes per step). 0: plain DDIM inversion, as
        MotionDirector.
        """
        if cond is None:
            cond = self.encode_prompt("")
        z = latents.to(self.device, torch.float32)
        trajectory = [z]
        for tau in track(self.timesteps(steps).flip(0).tolist(), description="text-to-video: inversion", disable=quiet):
            a_prev, a_tau = self.alpha(self.previous_timestep(tau, steps)), self.alpha(tau)
            z_tau = ddim_inversion_step(self.predict_noise(z, tau, cond), z, a_prev, a_tau)
            for _ in range(fixed_point_iterations):
                z_tau = ddim_inversion_step(self.predict_noise(z_tau, tau, cond), z, a_prev, a_tau)
            z = z_tau
            trajectory.append(z)
        return trajectory if return_trajectory else z

    # -- VAE -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, frames: Tensor, chunk: int = 1) -> Tensor:
        """Latents ``[1, C, F, h, w]`` (posterior mean times the scaling factor) of ``frames [F, 3, H, W]`` in [0, 1].

        Frames are encoded independently, ``chunk`` at a time (the result does not depend on ``chunk``).
        """
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be [F, 3, H, W], got {tuple(frames.shape)}")
        self.latent_shape(frames.shape[0], frames.shape[2], frames.shape[3])
        chunk = max(1, int(chunk))
        return encode_latents(self.vae, frames.to(self.device), chunk=chunk).permute(1, 0, 2, 3)[None]

    @torch.no_grad()
    def decode(self, latents: Tensor, chunk: int = 1) -> Tensor:
        """Frames ``[B, F, 3, H, W]`` in [0, 1] of ``latents [B, C, F, h, w]``, ``chunk`` frames per VAE call.

        ``x = clamp(D(z / scaling_factor) / 2 + 1 / 2, 0, 1)``, frame by frame: peak memory is one chunk's.
        """
        B, C, Fr, h, w = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(B * Fr, C, h, w) / self.scaling_factor
        chunk = max(1, int(chunk))
        out = []
        for i in range(0, len(flat), chunk):
            x = self.vae.decode(flat[i : i + chunk].to(self.device, self.dtype)).sample.float()
            out.append((x / 2 + 0.5).clamp(0, 1).cpu())
        frames = torch.cat(out)
        return frames.reshape(B, Fr, *frames.shape[1:])

    # -- everything ----------------------------------------------------------------------------------------
    def initial_latents(
        self,
        shape: Sequence[int],
        generator: torch.Generator,
        prior_latents: Tensor | None = None,
        noise_prior: float = 0.0,
        inversion_steps: int = DEFAULT_INVERSION_STEPS,
        inversion_fixed_point_iterations: int = 0,
        inversion_prompt: str = "",
        quiet: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """``(z_{tau_1}, z_inv)``: ``eps`` drawn from ``generator`` (always, first), mixed with the DDIM inversion of
        ``prior_latents [1, C, F', h', w']`` when ``noise_prior > 0`` (inverted at its own size with the prompt
        ``inversion_prompt``, then resized to ``shape`` by :func:`resize_latents`). ``z_inv`` is None without a
        prior.

        The inversion runs with every LoRA of the U-Net switched off (:func:`gen4d.video.lora.lora_off`), the
        adapters acting again for the sampling that follows: MotionDirector's noise prior is the
        ``inversion_noise`` that ``handle_cache_latents`` (``MotionDirector_train.py``) computes with the base model
        when it caches the training latents, before any LoRA is trained."""
        if not 0.0 <= float(noise_prior) <= 1.0:
            raise Gen4DError(f"noise_prior must be in [0, 1], got {noise_prior}; use 0 for plain sampling")
        noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
        if noise_prior == 0.0:
            return noise.to(self.device), None
        if prior_latents is None:
            raise Gen4DError(f"noise_prior={noise_prior} needs latents to invert: a MotionDirector run (motion=DIR) or a reference video (reference=VIDEO)")
        cond = self.encode_prompt(inversion_prompt)
        with lora_off(self.unet):
            inverted = self.invert(prior_latents.float(), cond, inversion_steps, inversion_fixed_point_iterations, quiet=quiet)
        B, _, Fr, h, w = shape
        inverted = resize_latents(inverted, Fr, h, w)
        if inverted.shape[0] != B:
            inverted = inverted[:1].expand(B, -1, -1, -1, -1)
        return apply_noise_prior(inverted, noise.to(self.device), noise_prior), inverted

    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        num_frames: int = DEFAULT_NUM_FRAMES,
        height: int = DEFAULT_HEIGHT,
        width: int = DEFAULT_WIDTH,
        steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        eta: float = 0.0,
        seed: int = 0,
        prior_latents: Tensor | None = None,
        noise_prior: float = 0.0,
        inversion_steps: int = DEFAULT_INVERSION_STEPS,
        inversion_fixed_point_iterations: int = 0,
        decode_chunk: int = 1,
        quiet: bool = True,
    ) -> VideoSample:
        """Prompt -> video: encode the prompts, draw (and optionally mix) the initial latents, DDIM, decode.

        One CPU generator seeded with ``seed`` draws everything (``eps``, then ``xi`` per step when ``eta > 0``).
        """
        generator = torch.Generator("cpu").manual_seed(int(seed))
        shape = self.latent_shape(num_frames, height, width)
        z_init, inverted = self.initial_latents(
            shape, generator, prior_latents, noise_prior, inversion_steps, inversion_fixed_point_iterations, quiet=quiet
        )
        cond, uncond = self.encode_prompts(prompt, negative_prompt)
        latents = self.sample(z_init, cond, uncond, steps, guidance_scale, eta, generator, quiet=quiet)
        frames = self.decode(latents, decode_chunk)[0]
        return VideoSample(frames=frames, latents=latents, initial_latents=z_init, inverted=inverted)


# ----------------------------------------------------------------------------------------------------------------
# Motion LoRA


def load_motion_adapters(
    unet,
    temporal: str | Path | None = None,
    temporal_scale: float = 1.0,
    spatial: str | Path | None = None,
    spatial_scale: float = 1.0,
) -> dict[str, float]:
    """Load MotionDirector LoRAs into ``unet``: the temporal path of the LoRA folder ``temporal`` and the spatial
    path of the LoRA folder ``spatial`` (two different trainings, or the same folder), each at its scale (0: left
    out). Returns ``{adapter: scale}`` of the active adapters.

    Sampling uses the temporal path alone by default (MotionDirector's inference); adding a spatial path from an
    appearance training is its ``MotionDirector_inference_multi.py``.
    """
    if temporal is not None and spatial is not None and Path(temporal).resolve() == Path(spatial).resolve():
        load_motion_lora(unet, temporal, spatial_scale=spatial_scale, temporal_scale=temporal_scale)
        return active_lora_scales(unet)
    if spatial is not None:
        load_motion_lora(unet, spatial, spatial_scale=spatial_scale, temporal_scale=0.0)
    if temporal is not None:
        load_motion_lora(unet, temporal, spatial_scale=0.0, temporal_scale=temporal_scale)
        # a scale of 0 deactivates an adapter the UNet already holds: switch the other folder's spatial path back on
        if spatial is not None and spatial_scale != 0 and "spatial" in lora_adapters(unet):
            set_lora_scale(unet, "spatial", spatial_scale)
    return active_lora_scales(unet)
