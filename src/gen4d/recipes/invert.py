"""``gen4d invert IMAGE --token "<panda>" --init-token panda --out DIR``: textual inversion on Stable Diffusion 1.5.

Textual inversion (Gal et al. 2022) learns the embedding of one new token so that Stable Diffusion, prompted with
template sentences containing it ("a photo of a <panda>"), denoises the given image: the usual noise-prediction loss
``|| eps_theta(x_t, t, text(<panda>)) - eps ||^2`` (or v for v-prediction models), minimised over the token's
embedding vector alone, every network frozen. The vector starts at the embedding of ``init_token``.

Settings of Animate124's run of diffusers' ``textual_inversion.py`` (the seed's command): object templates, 512 px,
batch 16, 3,000 steps, constant learning rate 1e-4 (AdamW, betas 0.9 / 0.999, weight decay 1e-2), the script's
"heavy" augmentations (``--use_augmentations``: a small rotation and zoom, colour jitter, occasional greyscale and
blur, horizontal flips; written here in PyTorch on the whole batch, no torchvision).

The embedding trains in the one stage loop (:mod:`gen4d.training.loop`: checkpointed, resumable bit for bit) and is
saved as ``learned_embeds.safetensors`` in diffusers' format (``{token: tensor [1, D]}``), which diffusers'
``load_textual_inversion`` and :func:`gen4d.guidance.textual_inversion.load_textual_inversion` both read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from .. import Gen4DError
from ..data.frames import read_image_file
from ..data.preprocess import composite
from ..devices import resolve_device, resolve_precision
from ..files import atomic_path
from ..guidance.base import DTYPES
from ..guidance.textual_inversion import read_textual_inversion
from ..models.preflight import ModelRequirement, Requirement
from ..models.registry import load_pretrained
from ..runs import RunDir
from ..training.loop import Stage, StepLosses, run_stages
from .recipe import Option, Recipe

EMBEDS_FILE = "learned_embeds.safetensors"

OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}", "a photo of a clean {}",
    "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}", "a photo of the cool {}",
    "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}", "a photo of the {}",
    "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}", "a rendition of the {}",
    "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}",
    "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}",
)
"""The textual-inversion paper's object templates (``learnable_property object``)."""
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dark painting in the style of {}",
    "a picture in the style of {}", "a cool painting in the style of {}", "a close-up painting in the style of {}",
    "a bright painting in the style of {}", "a good painting in the style of {}", "a rendition in the style of {}",
    "a nice painting in the style of {}", "a small painting in the style of {}", "a weird painting in the style of {}",
    "a large painting in the style of {}",
)
"""The style templates (``learnable_property style``)."""


@dataclass
class InvertConfig:
    """Everything ``gen4d invert`` does; every field can be set as ``key=value``."""

    input: str = ""
    """The image (RGBA is composited on white; RGB is used as is, background included, as Animate124 does)."""
    token: str = "<object>"
    """The new token (``placeholder_token``); must not be a word of the tokenizer's vocabulary."""
    init_token: str = "object"
    """The word whose embedding the new one starts from (``initializer_token``; a word of several tokens: their mean)."""
    model: str = "sd15"
    """Stable Diffusion weights (registry name, Hub id or folder); Animate124: runwayml/stable-diffusion-v1-5."""
    learnable_property: str = "object"
    """object | style: which templates the prompts are drawn from."""
    resolution: int = 512
    batch_size: int = 16
    iterations: int = 3000
    lr: float = 1e-4
    """Constant learning rate (``lr_scheduler constant``, no warm-up, not scaled by the batch size)."""
    weight_decay: float = 1e-2
    augment: bool = True
    """The heavy augmentations (``--use_augmentations``); False: resize and random horizontal flip only."""
    gradient_checkpointing: bool = True
    """Recompute the U-Net's activations in the backward pass (less memory, about a third more time)."""
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    """The frozen U-Net and VAE: auto (fp16 on CUDA, as Animate124's ``mixed_precision fp16``; fp32 on the CPU) |
    fp32 | fp16 | bf16. The text encoder, through which the gradient reaches the token, stays fp32."""
    checkpoint_every: int = 250


PRESETS: dict[str, list[str]] = {
    "paper": [],
    "default": [],
    # a quick token: a quarter of the images seen (500 steps of 8), at a higher constant rate
    "fast": ["iterations=500", "batch_size=8", "lr=5e-4"],
    "low-memory": ["batch_size=4", "gradient_checkpointing=true"],
}


def check(cfg: InvertConfig) -> None:
    read_image_file(Path(cfg.input))
    if not cfg.token.strip() or " " in cfg.token.strip():
        raise Gen4DError(f"--token must be one word such as \"<panda>\", got {cfg.token!r}")
    if not cfg.init_token.strip():
        raise Gen4DError("--init-token must name a word to start from, e.g. --init-token panda")
    if cfg.learnable_property not in ("object", "style"):
        raise Gen4DError(f"learnable_property must be object or style, got {cfg.learnable_property!r}")
    for name in ("resolution", "batch_size", "iterations"):
        if getattr(cfg, name) < 1:
            raise Gen4DError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def requirements(cfg: InvertConfig) -> list[Requirement]:
    return [ModelRequirement(cfg.model, "textual inversion (Stable Diffusion 1.5)")]


def read_image(path: str | Path) -> Tensor:
    """``[3, H, W]`` in [0, 1]: RGBA composited on white, RGB as is."""
    rgba, _ = read_image_file(Path(path))
    return composite(torch.from_numpy(rgba.astype(np.float32) / 255.0).permute(2, 0, 1))


# ------------------------------------------------------------------------------------------------ augmentations
def _blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Gaussian blur (kernel 5) with one sigma per image of ``x [B, 3, H, W]``."""
    k = torch.arange(5, dtype=x.dtype, device=x.device) - 2
    w = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None] ** 2))
    w = w / w.sum(1, keepdim=True)  # [B, 5]
    B, C, H, W = x.shape
    y = x.reshape(1, B * C, H, W)
    wx = w.repeat_interleave(C, 0)[:, None, None, :]
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), wx, groups=B * C)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), wx.transpose(2, 3), groups=B * C)
    return y.reshape(B, C, H, W)


def augment_batch(image: Tensor, batch: int, size: int, generator: torch.Generator, heavy: bool = True) -> Tensor:
    """``batch`` augmented copies ``[B, 3, size, size]`` in [0, 1] of ``image [3, H, W]``.

    heavy (``--use_augmentations``): with p = 0.75 a rotation of up to 10 degrees (white fill) zoomed in by 6/5 so
    that little fill shows; a zoom by a factor in [0.85, 1.15]^(1/2) about a random centre; with p = 0.75 colour
    jitter of +-0.04 in brightness, contrast and saturation; greyscale with p = 0.1; a Gaussian blur (sigma 0.1 .. 2)
    with p = 0.1; a horizontal flip with p = 0.5. Otherwise a resize and the flip. Draws come from ``generator``.
    """
    x = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x.expand(batch, -1, -1, -1)

    def u(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(batch, generator=generator)

    def coin(p: float) -> Tensor:
        return torch.rand(batch, generator=generator) < p

    flip = torch.where(coin(0.5), -1.0, 1.0)
    if heavy:
        rotate = coin(0.75)
        angle = torch.where(rotate, u(-10.0, 10.0), torch.zeros(batch)) * math.pi / 180
        zoom = torch.where(rotate, torch.full((batch,), 5 / 6), torch.ones(batch)) / u(0.85, 1.15).sqrt()
        shift = torch.stack([u(-1, 1), u(-1, 1)], 1) * (1 - zoom.clamp(max=1))[:, None]
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, [batch, 3, size, size], align_corners=False)
        x = F.grid_sample(x - 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1.0  # white fill
        jitter = coin(0.75)[:, None, None, None]
        b, c, s = (u(0.96, 1.04)[:, None, None, None] for _ in range(3))
        grey = (x * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
        jittered = (x * b - grey.mean((2, 3), keepdim=True)) * c + grey.mean((2, 3), keepdim=True)
        jittered = grey * (1 - s) + jittered * s
        x = torch.where(jitter, jittered, x).clamp(0, 1)
        grey = (x * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True).expand_as(x)
        x = torch.where(coin(0.1)[:, None, None, None], grey, x)
        blur, sigma = coin(0.1), u(0.1, 2.0)
        x = torch.where(blur[:, None, None, None], _blur(x, sigma), x)
    else:
        x = torch.where(flip[:, None, None, None] < 0, x.flip(-1), x)
    return x.clamp(0, 1)


# ------------------------------------------------------------------------------------------------ the model
class TokenEmbedding:
    """The trained vector(s) ``[N, D]`` of the new token (the stage's model: :class:`~gen4d.training.loop.Trainable`)."""

    def __init__(self, vectors: Tensor):
        self.vectors = torch.nn.Parameter(vectors.detach().float().clone())

    def tensors(self) -> dict[str, Tensor]:
        return {"embedding": self.vectors}

    def summary(self) -> dict:
        return {"norm": float(self.vectors.detach().norm())}


class TextualInversion:
    """Stable Diffusion's frozen networks and the new token (module doc); ``losses`` is the stage's loss function."""

    def __init__(self, cfg: InvertConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        dtype = DTYPES[resolve_precision(cfg.precision, device)]
        self.tokenizer = load_pretrained(CLIPTokenizer, cfg.model, subfolder="tokenizer")
        self.text_encoder = load_pretrained(CLIPTextModel, cfg.model, subfolder="text_encoder").to(device)
        self.unet = load_pretrained(UNet2DConditionModel, cfg.model, subfolder="unet", torch_dtype=dtype).to(device)
        self.vae = load_pretrained(AutoencoderKL, cfg.model, subfolder="vae", torch_dtype=dtype).to(device)
        self.scheduler = load_pretrained(DDPMScheduler, cfg.model, subfolder="scheduler")
        for m in (self.text_encoder, self.unet, self.vae):
            m.requires_grad_(False)
            m.eval()
        if cfg.gradient_checkpointing and device.type == "cuda":
            self.unet.enable_gradient_checkpointing()
            self.unet.train()  # diffusers checkpoints only in training mode; the U-Net has no dropout or batch norm
        init_ids = self.tokenizer.encode(cfg.init_token, add_special_tokens=False)
        if not init_ids:
            raise Gen4DError(f"--init-token {cfg.init_token!r} has no tokens; choose a word such as panda")
        if cfg.token in self.tokenizer.get_vocab():
            raise Gen4DError(f"--token {cfg.token!r} is already a word of the tokenizer; choose a new one such as \"<{cfg.token}>\"")
        self.tokenizer.add_tokens([cfg.token])
        self.token_id = self.tokenizer.convert_tokens_to_ids(cfg.token)
        self.text_encoder.resize_token_embeddings(len(self.tokenizer))
        table = self.text_encoder.get_input_embeddings()
        # diffusers' script wants a one-token word; a word of several tokens starts from their mean here
        self.init_vector = table.weight[init_ids].detach().mean(0).clone()
        self.model: TokenEmbedding | None = None
        # the token's rows of the embedding output are replaced by the trained vector (differentiably)
        table.register_forward_hook(self._substitute)
        self.templates = OBJECT_TEMPLATES if cfg.learnable_property == "object" else STYLE_TEMPLATES
        self.alphas = self.scheduler.alphas_cumprod.to(device)

    def _substitute(self, module, args, output: Tensor) -> Tensor:
        if self.model is None:
            return output
        ids = args[0]
        vec = self.model.vectors[0].to(output)
        return torch.where((ids == self.token_id)[..., None], vec, output)

    def init(self) -> TokenEmbedding:
        self.model = TokenEmbedding(self.init_vector[None])
        return self.model

    def load(self, tensors: dict[str, Tensor]) -> TokenEmbedding:
        self.model = TokenEmbedding(tensors["embedding"].to(self.device))
        return self.model

    def encode_text(self, prompts: list[str]) -> Tensor:
        ids = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def losses(self, model: TokenEmbedding, step: int, generator: torch.Generator) -> StepLosses:
        cfg = self.cfg
        B = cfg.batch_size
        images = augment_batch(self.image, B, cfg.resolution, generator, cfg.augment).to(self.device)
        picks = torch.randint(0, len(self.templates), (B,), generator=generator).tolist()
        text = self.encode_text([self.templates[i].format(cfg.token) for i in picks])
        vae_dtype = next(self.vae.parameters()).dtype
        with torch.no_grad():
            posterior = self.vae.encode((2 * images - 1).to(vae_dtype)).latent_dist
            latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(self.device, vae_dtype)
            latents = latents.float() * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (B,), generator=generator).to(self.device)
        a = self.alphas[t].float()[:, None, None, None]
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        unet_dtype = next(self.unet.parameters()).dtype
        pred = self.unet(noisy.to(unet_dtype), t, encoder_hidden_states=text.to(unet_dtype)).sample.float()
        if self.scheduler.config.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * latents
        else:
            target = noise
        return StepLosses({"textual_inversion": F.mse_loss(pred, target)})

    def stage(self, image: Tensor, name: str = "invert") -> Stage:
        cfg = self.cfg
        self.image = image

        def optimizers(model: TokenEmbedding):
            return {"embedding": torch.optim.AdamW([model.vectors], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                                   weight_decay=cfg.weight_decay)}

        return Stage(name=name, iterations=cfg.iterations, seed=cfg.seed * 1000 + 7, make_optimizers=optimizers,
                     losses=self.losses, checkpoint_every=cfg.checkpoint_every, record=True)


def save_learned_embeds(path: str | Path, token: str, vectors: Tensor) -> Path:
    """``{token: vectors [N, D]}`` as safetensors (diffusers' ``learned_embeds.safetensors``), written atomically."""
    path = Path(path)
    tensors = {token: vectors.detach().float().cpu().reshape(-1, vectors.shape[-1]).contiguous()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return path


def learn_token(cfg: InvertConfig, run: RunDir, device: torch.device, stage_name: str = "invert", quiet: bool = False,
                stop_after_step: int | None = None) -> Path | None:
    """Train (or resume, or reuse) the token in ``run``'s stage ``stage_name``; returns the embeddings file written
    there, or None when stopped early (tests)."""
    path = run.stage_dir(stage_name) / EMBEDS_FILE
    state = run.stage_state(stage_name)
    if state is not None and state.get("complete") and path.exists():
        run.log(f"stage {stage_name}: complete, reusing {path.name}")
        return path
    ti = TextualInversion(cfg, device)
    image = read_image(cfg.input)
    model, _ = run_stages(run, [ti.stage(image, stage_name)], ti.init, ti.load, quiet=quiet, stop_after_step=stop_after_step)
    if not run.stage_complete(stage_name):
        return None
    save_learned_embeds(path, cfg.token, model.vectors)
    return path


def run_invert(cfg: InvertConfig, out: str | Path, command: str = "gen4d invert", quiet: bool = False,
               stop_after_step: int | None = None) -> dict:
    """Image -> ``DIR/learned_embeds.safetensors`` (module doc)."""
    check(cfg)
    device = resolve_device(cfg.device)
    run = RunDir(out)
    run.prepare(cfg, command)
    path = learn_token(cfg, run, device, quiet=quiet, stop_after_step=stop_after_step)
    if path is None:
        return {}
    final = run.root / EMBEDS_FILE
    token, vectors = read_textual_inversion(path)
    save_learned_embeds(final, token, vectors)
    state = run.stage_state("invert") or {}
    losses = state.get("history", {}).get("loss", [])
    metrics = {
        "token": cfg.token,
        "init_token": cfg.init_token,
        "iterations": cfg.iterations,
        "seconds": state.get("seconds", 0.0),
        "embedding_norm": float(vectors.norm()),
        "exports": {"embeddings": [str(final)]},
        "device": str(device),
    }
    if losses:
        metrics["loss_first_100"] = float(np.mean(losses[:100]))
        metrics["loss_last_100"] = float(np.mean(losses[-100:]))
    run.write_metrics(metrics)
    return metrics


RECIPE = Recipe(
    name="invert",
    commands=("invert",),
    description="textual inversion: a new token's embedding for Stable Diffusion 1.5 learned from one image",
    config=InvertConfig,
    presets=PRESETS,
    run=run_invert,
    input_key="input",
    options=(Option("--token", "token", 'the new token, e.g. "<panda>"'),
             Option("--init-token", "init_token", "the word it starts from, e.g. panda")),
    iters=lambda n: {"iterations": n},
    check=check,
    requirements=requirements,
    headline=lambda m: f"token {m['token']}  {m['iterations']} steps  {m['seconds']:.0f} s",
    outputs=lambda out: [("embeddings", str(Path(out) / EMBEDS_FILE))],
)
