"""Stable Diffusion SDS / VSD / prompts on the tiny SD kit (CPU, random weights, loaded via from_pretrained)."""

from __future__ import annotations

import pytest
import torch

from gen4d import Gen4DError
from gen4d.guidance.base import Conditioning
from gen4d.guidance.prompts import (
    DIRECTIONS,
    PromptEncoder,
    view_direction_index,
    view_prompt,
)
from gen4d.guidance.sds import TimestepSchedule, classifier_free_guidance
from gen4d.guidance.stable_diffusion import StableDiffusionGuidance
from gen4d.guidance.vsd import VariationalScoreDistillation
from gen4d.testing import tiny_model_dir
from gen4d.testing.tiny_sd import make_tiny_sd


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("prompt_cache")


@pytest.fixture(scope="module")
def sd(kit, cache_dir):
    return StableDiffusionGuidance(model=str(kit), guidance_scale=7.5, prompt_cache=str(cache_dir))


@pytest.fixture(scope="module")
def emb(sd):
    return sd.encode_prompt("a small red car", negative_prompt="blurry")


@pytest.fixture(scope="module")
def vsd(kit, cache_dir):
    return VariationalScoreDistillation(model=str(kit), prompt_cache=str(cache_dir))


def _alpha(g, t, like):
    return g.alphas_cumprod[t].reshape(-1, 1, 1, 1).to(like)


def _unet(g, x, t, c):
    with torch.no_grad():
        return g.unet(x, t, encoder_hidden_states=c).sample


class latent_renders:
    """The prior takes SD latents as its renders inside the block."""

    def __init__(self, guidance):
        self.guidance = guidance

    def __enter__(self):
        self.guidance.config.latent_renders = True
        return self.guidance

    def __exit__(self, *exc):
        self.guidance.config.latent_renders = False


def test_tiny_kit_layout(kit, sd):
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (kit / sub).is_dir()
    assert (kit / "model_index.json").is_file()
    assert sd.resolution == 16 and sd.num_train_timesteps == 1000
    # SD 2.1 base schedule: scaled_linear betas 0.00085 .. 0.012
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(sd.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), atol=1e-6)
    assert not any(p.requires_grad for p in sd.unet.parameters())


def test_tiny_model_dir_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GEN4D_CACHE", str(tmp_path))
    d = tiny_model_dir("sd21")
    assert d == tmp_path / "tiny" / "sd21" and (d / "unet" / "config.json").exists()
    mtime = (d / "model_index.json").stat().st_mtime_ns
    assert tiny_model_dir("sd21") == d and (d / "model_index.json").stat().st_mtime_ns == mtime


def test_cfg_formula():
    u = torch.tensor([1.0, -2.0, 0.5])
    c = torch.tensor([3.0, 0.0, 0.5])
    assert torch.allclose(classifier_free_guidance(u, c, 7.5), torch.tensor([1 + 7.5 * 2, -2 + 7.5 * 2, 0.5]))
    assert torch.equal(classifier_free_guidance(u, c, 1.0), c)
    assert torch.equal(classifier_free_guidance(u, c, 0.0), u)


def test_timestep_annealing(sd):
    s = TimestepSchedule(min_start=0.02, max_start=0.98, min_end=0.02, max_end=0.5, anneal_start=100, anneal_end=1100)
    assert s.bounds(0) == pytest.approx((0.02, 0.98))
    assert s.bounds(100) == pytest.approx((0.02, 0.98))
    assert s.bounds(600) == pytest.approx((0.02, 0.74))
    assert s.bounds(1100) == pytest.approx((0.02, 0.5))
    assert s.bounds(5000) == pytest.approx((0.02, 0.5))
    assert s.integer_bounds(600, 1000) == (20, 740)
    old = sd.config.timesteps
    try:
        sd.config.timesteps = s
        t = sd.sample_timesteps(2000, 512, torch.Generator().manual_seed(0))
        assert int(t.min()) >= 20 and int(t.max()) <= 500 and int(t.max()) > 400
    finally:
        sd.config.timesteps = old


def test_sds_gradient_equals_formula(sd, emb):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=g).requires_grad_(True)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([100, 700])
    cond, uncond = emb.get(2)
    with latent_renders(sd):
        out = sd(latents, Conditioning(prompt=emb), step=0, t=t, noise=noise)
    info = sd.last_info
    assert set(out) == {"loss_sds"}
    out["loss_sds"].backward()

    a = _alpha(sd, t, latents)
    x_t = a.sqrt() * latents.detach() + (1 - a).sqrt() * noise
    eps_c = _unet(sd, x_t, t, cond)  # separate (unbatched) calls
    eps_u = _unet(sd, x_t, t, uncond)
    eps_hat = eps_u + 7.5 * (eps_c - eps_u)
    expected = (1 - a) * (eps_hat - noise)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(latents.grad, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(info["grad_norm"], expected.norm(), atol=1e-4, rtol=1e-4)
    assert torch.equal(info["t"], t)
    assert not info["grad_norm"].requires_grad


def test_no_unet_gradient_images_get_gradient(sd, emb):
    images = torch.rand(2, 3, 20, 20).requires_grad_(True)  # resized to the model's 16x16
    cond = Conditioning(prompt=emb, azimuth_deg=torch.tensor([0.0, 180.0]), elevation_deg=torch.tensor([0.0, 0.0]))
    out = sd(images, cond, step=0, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss_sds"}
    out["loss_sds"].backward()
    assert all(p.grad is None for p in sd.unet.parameters())
    assert all(p.grad is None for p in sd.vae.parameters())
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_memory_options(kit, cache_dir, sd):
    base = sd
    sliced = StableDiffusionGuidance(model=str(kit), sample_latents=False, vae_slicing=True, attention_slicing=True)
    images = torch.rand(3, 3, 16, 16)
    base.config.sample_latents = False
    try:
        torch.testing.assert_close(sliced.encode_images(images), base.encode_images(images), atol=1e-5, rtol=1e-4)
    finally:
        base.config.sample_latents = True
    x = torch.randn(2, 4, 8, 8)
    c = torch.randn(2, 77, 32)
    t = torch.tensor([10, 900])
    torch.testing.assert_close(sliced.unet_noise(x, t, c), base.unet_noise(x, t, c), atol=1e-5, rtol=1e-4)
    bf = StableDiffusionGuidance(model=str(kit), precision="bf16", prompt_cache=str(cache_dir))
    assert next(bf.unet.parameters()).dtype == torch.bfloat16
    img = torch.rand(1, 3, 16, 16).requires_grad_(True)
    out = bf(img, Conditioning(prompt=bf.encode_prompt("a small red car")), step=0, generator=torch.Generator().manual_seed(0))
    out["loss_sds"].backward()
    assert out["loss_sds"].dtype == torch.float32 and torch.isfinite(img.grad).all()


def test_prompt_cache(kit, tmp_path):
    enc = PromptEncoder(str(kit), cache_dir=tmp_path)
    e1 = enc.encode(["a cat", "a dog"])
    assert e1.shape == (2, 77, 32)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert not torch.equal(e1[0], e1[1])
    enc2 = PromptEncoder(str(kit), cache_dir=tmp_path)
    e2 = enc2.encode(["a dog", "a cat"])
    assert torch.equal(e2, e1.flip(0))
    assert enc2.hits == 2 and enc2.misses == 0 and enc2._text_encoder is None  # never loaded
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    enc.cache_path("a cat").write_bytes(b"not a safetensors file")  # corrupt entry: recomputed and rewritten
    assert torch.equal(PromptEncoder(str(kit), cache_dir=tmp_path).encode("a cat")[0], e1[0])
    assert torch.equal(PromptEncoder(str(kit), cache_dir=tmp_path).encode("a cat")[0], e1[0])
    # a different model id is a different key
    assert PromptEncoder("some/other-model", cache_dir=tmp_path).cache_key("a cat") != enc.cache_key("a cat")


@pytest.mark.parametrize(
    "az, el, direction",
    [
        (0, 0, "front"), (30, 20, "front"), (45, 0, "front"), (-45, 0, "front"), (360, 0, "front"),
        (46, 0, "side"), (90, 0, "side"), (-90, 10, "side"), (270, 0, "side"), (134, 0, "side"),
        (135, 0, "back"), (180, 0, "back"), (-170, 30, "back"), (200, 0, "back"),
        (0, 61, "overhead"), (180, 89, "overhead"), (90, 60, "side"),
    ],
)
def test_view_direction(az, el, direction):
    assert DIRECTIONS[int(view_direction_index(az, el))] == direction


def test_view_dependent_embeddings(emb, sd):
    assert view_prompt("a small red car", "back") == "a small red car, back view"
    cond, uncond = emb.get(3, azimuth_deg=torch.tensor([0.0, 180.0, 90.0]), elevation_deg=torch.tensor([0.0, 0.0, 80.0]))
    assert torch.equal(cond, emb.cond_dirs[[0, 2, 3]])
    assert torch.equal(uncond, emb.uncond.expand(3, -1, -1))
    direct = sd.prompt_encoder.encode(["a small red car, back view"])[0]
    assert torch.equal(emb.cond_dirs[2], direct)
    assert not torch.equal(emb.cond_dirs[0], emb.cond_dirs[2])
    plain, _ = emb.get(2)  # no angles: the plain prompt
    assert torch.equal(plain[1], emb.cond)


def test_vsd_lora_identity_and_gradients(vsd, emb):
    lora = vsd.lora_parameters()
    assert lora and all(p.requires_grad for p in lora)
    assert len(lora) < len(list(vsd.unet.parameters()))
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(2, 4, 8, 8, generator=g).requires_grad_(True)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([300, 800])
    cond, uncond = emb.get(2)
    a = _alpha(vsd, t, latents)
    x_t = a.sqrt() * latents.detach() + (1 - a).sqrt() * noise

    # B = 0 at init: the LoRA UNet equals the pretrained one without CFG, exactly
    with torch.no_grad():
        eps_lora = vsd.unet_noise(x_t, t, cond)
        with vsd.adapters_disabled():
            eps_pre_c = vsd.unet_noise(x_t, t, cond)
            eps_pre_u = vsd.unet_noise(x_t, t, uncond)
    assert torch.equal(eps_lora, eps_pre_c)

    vsd.config.train_lora = False
    try:
        with latent_renders(vsd):
            out = vsd(latents, Conditioning(prompt=emb), t=t, noise=noise)
    finally:
        vsd.config.train_lora = True
    assert set(out) == {"loss_vsd"}
    out["loss_vsd"].backward()
    assert all(p.grad is None for p in vsd.unet.parameters())  # LoRA included
    expected = (1 - a) * (eps_pre_u + 7.5 * (eps_pre_c - eps_pre_u) - eps_lora)
    torch.testing.assert_close(latents.grad, expected, atol=1e-5, rtol=1e-4)

    loss = vsd.lora_loss(latents, cond, generator=g)
    assert latents.grad is not None
    before = latents.grad.clone()
    loss.backward()
    assert torch.equal(latents.grad, before)  # detached latents
    assert all(p.grad is not None for p in lora)
    assert any(p.grad.abs().sum() > 0 for n, p in vsd.unet.named_parameters() if "lora_B" in n)
    assert all(p.grad is None for n, p in vsd.unet.named_parameters() if "lora_" not in n)

    # a non-zero LoRA changes the prediction, and disabling the adapter restores the pretrained one
    saved = [p.detach().clone() for p in lora]
    try:
        with torch.no_grad():
            for p in lora:
                p.add_(0.1 * torch.randn_like(p))
            assert not torch.allclose(vsd.unet_noise(x_t, t, cond), eps_pre_c)
            with vsd.adapters_disabled():
                assert torch.equal(vsd.unet_noise(x_t, t, cond), eps_pre_c)
    finally:
        with torch.no_grad():
            for p, s in zip(lora, saved):
                p.copy_(s)
                p.grad = None


def test_vsd_call_returns_both_losses(vsd, emb):
    images = torch.rand(1, 3, 16, 16).requires_grad_(True)
    cond = Conditioning(prompt=emb, azimuth_deg=torch.tensor([90.0]), elevation_deg=torch.tensor([0.0]))
    out = vsd(images, cond, step=0, generator=torch.Generator().manual_seed(3))
    assert set(out) == {"loss_vsd", "loss_lora"} and {"grad_norm", "t"} <= set(vsd.last_info)
    (out["loss_vsd"] + out["loss_lora"]).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert any(p.grad is not None for p in vsd.lora_parameters())
    for p in vsd.lora_parameters():
        p.grad = None


def test_missing_weights_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Gen4DError) as e:
        StableDiffusionGuidance(model="sd21")
    msg = str(e.value)
    assert "stabilityai/stable-diffusion-2-1-base" in msg and "hf download" in msg


def test_models_tiny_swaps_registry_names_for_tiny_models(tmp_path, monkeypatch):
    from gen4d.models import registry

    monkeypatch.setenv("GEN4D_CACHE", str(tmp_path))
    monkeypatch.setattr(registry, "_model_set", "real")
    with pytest.raises(Gen4DError, match="stabilityai/stable-diffusion-2-1-base"):
        StableDiffusionGuidance(model="sd21")
    registry.set_model_set("tiny")
    guidance = StableDiffusionGuidance(model="sd21")
    assert tuple(guidance.unet.config.block_out_channels) == (32, 64)
    assert (tmp_path / "tiny" / "sd21" / "model_index.json").exists()
    with pytest.raises(Gen4DError, match="real"):
        registry.set_model_set("huge")


def test_transformers_models_load_in_float32_whatever_dtype_their_config_names(tmp_path):
    """Published configs of SVD's image encoder and ModelScope's text encoder say float16; transformers >= 5 would
    load them in half precision, which the priors (fp32 on the CPU) cannot mix with fp32 inputs."""
    from transformers import CLIPTextModel

    from gen4d.models.registry import load_pretrained
    from gen4d.testing.components import tiny_text_encoder_config

    model = CLIPTextModel(tiny_text_encoder_config()).half()
    model.save_pretrained(tmp_path / "text_encoder")
    assert CLIPTextModel.from_pretrained(tmp_path / "text_encoder").dtype == torch.float16  # the library's own default
    loaded = load_pretrained(CLIPTextModel, str(tmp_path), subfolder="text_encoder")
    assert loaded.dtype == torch.float32
    for (name, a), (_, b) in zip(loaded.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b.float()), name
    explicit = load_pretrained(CLIPTextModel, str(tmp_path), subfolder="text_encoder", dtype=torch.bfloat16)
    assert explicit.dtype == torch.bfloat16
