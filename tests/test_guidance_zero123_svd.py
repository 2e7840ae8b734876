"""Zero123 novel-view SDS and Stable Video Diffusion img2vid on tiny random-weight models (CPU, offline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gen4d import Gen4DError
from gen4d.guidance.base import Conditioning
from gen4d.guidance.sds import TimestepSchedule
from gen4d.guidance.svd import StableVideoDiffusion, SVDConfig
from gen4d.guidance.zero123 import CLIPCameraProjection, Zero123Config, Zero123Guidance, camera_embedding
from gen4d.testing.tiny_svd import make_tiny_svd
from gen4d.testing.tiny_zero123 import make_tiny_zero123

CONFIGS = Path(__file__).resolve().parents[1] / "bench" / "model_configs"  # the published configs


# ------------------------------------------------------------------------------------------------------- Zero123
@pytest.fixture(scope="module")
def z123_dir(tmp_path_factory):
    return make_tiny_zero123(tmp_path_factory.mktemp("tiny_zero123"), seed=0)


@pytest.fixture(scope="module")
def z123(z123_dir):
    g = Zero123Guidance(Zero123Config(model=str(z123_dir)))
    gen = torch.Generator().manual_seed(1)
    g.prepare_reference(torch.rand(1, 3, 64, 64, generator=gen), elevation_deg=10.0, azimuth_deg=20.0, radius=2.0)
    return g


def test_zero123_loads_through_from_pretrained(z123, z123_dir):
    assert isinstance(z123.clip_camera_projection, CLIPCameraProjection)
    assert z123.clip_camera_projection.config.embedding_dim == 32
    assert z123.unet.config.in_channels == 8
    assert not z123.stable  # folder name has no "stable" in it
    saved = CLIPCameraProjection.from_pretrained(z123_dir / "clip_camera_projection")
    assert torch.equal(saved.proj.weight, z123.clip_camera_projection.proj.weight)
    assert z123.reference.clip_embed.shape == (1, 1, 32)
    assert z123.reference.latent.shape == (1, 4, 32, 32)  # resolution 256, VAE factor 8


@pytest.mark.parametrize("name", ["zero123-xl-ashawkey", "stable-zero123-ashawkey", "zero123-xl-bennyguo"])
def test_projection_matches_published_config(name):
    path = CONFIGS / f"{name}__clip_camera_projection.json"
    if not path.exists():
        pytest.skip("published configs not available")
    cfg = json.loads(path.read_text())
    proj = CLIPCameraProjection.from_config(cfg)
    assert proj.proj.in_features == 772 and proj.proj.out_features == 768
    assert set(proj.state_dict()) == {"proj.weight", "proj.bias"}


def test_zero123_missing_component_is_clear_error(tmp_path):
    (tmp_path / "scheduler").mkdir()
    with pytest.raises(Gen4DError):
        Zero123Guidance(Zero123Config(model=str(tmp_path)))


def test_camera_embedding_conventions():
    # identical camera: (0, sin 0, cos 0, 0)
    e = camera_embedding(torch.tensor([10.0]), torch.tensor([20.0]), torch.tensor([2.0]), 10.0, 20.0, 2.0)
    assert torch.allclose(e, torch.tensor([[0.0, 0.0, 1.0, 0.0]]), atol=1e-7)
    # hand-built: camera 30 deg higher, 90 deg further round (+x towards +y), 0.5 further away
    e = camera_embedding(torch.tensor([40.0]), torch.tensor([110.0]), torch.tensor([2.5]), 10.0, 20.0, 2.0)
    assert torch.allclose(e, torch.tensor([[-math.radians(30.0), 1.0, 0.0, 0.5]]), atol=1e-6)
    # stable zero123: last entry is the reference polar angle, whatever the target radius
    e = camera_embedding(torch.tensor([40.0, 0.0]), torch.tensor([110.0, 20.0]), torch.tensor([9.0, 1.0]), 10.0, 20.0, 2.0, stable=True)
    assert torch.allclose(e[:, 3], torch.full((2,), math.radians(80.0)))
    assert torch.allclose(e[1], torch.tensor([math.radians(10.0), 0.0, 1.0, math.radians(80.0)]), atol=1e-6)


def test_variant_selects_pose_embedding(z123_dir):
    g = Zero123Guidance(Zero123Config(model=str(z123_dir), variant="stable-zero123"))
    g.prepare_reference(torch.rand(1, 3, 32, 32), elevation_deg=15.0)
    cam = g.camera_embedding(torch.tensor([15.0]), torch.tensor([0.0]), torch.tensor([7.0]))
    assert torch.allclose(cam, torch.tensor([[0.0, 0.0, 1.0, math.radians(75.0)]]), atol=1e-6)


def test_zero123_pose_changes_prediction(z123):
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(1, 4, 32, 32, generator=gen)
    t = torch.tensor([500])
    cams = z123.camera_embedding(torch.tensor([10.0, 10.0, 40.0]), torch.tensor([20.0, 110.0, 20.0]), torch.tensor([2.0, 2.0, 2.0]))
    el, az, r = torch.tensor([10.0, 10.0, 40.0]), torch.tensor([20.0, 110.0, 20.0]), torch.tensor([2.0, 2.0, 2.0])
    conds = [Conditioning(elevation_deg=el[i : i + 1], azimuth_deg=az[i : i + 1], radius=r[i : i + 1]) for i in range(3)]
    outs = [z123.predict_noise(x_t, t, c) for c in conds]
    (c0, u0), (c1, u1), (c2, u2) = outs
    assert (c0 - c1).abs().max() > 1e-4  # azimuth change
    assert (c0 - c2).abs().max() > 1e-4  # elevation change
    # the unconditional branch sees neither the pose nor the reference
    assert torch.allclose(u0, u1, atol=1e-5) and torch.allclose(u0, u2, atol=1e-5)
    # batched prediction equals per-sample prediction
    cb, ub = z123.predict_noise(x_t.expand(3, -1, -1, -1), t.expand(3), Conditioning(elevation_deg=el, azimuth_deg=az, radius=r))
    assert torch.equal(z123.camera_embedding(el, az, r), cams)
    assert torch.allclose(cb[1:2], c1, atol=1e-4)


def test_zero123_sds_gradient(z123):
    imgs = torch.rand(2, 3, 256, 256, requires_grad=True)
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 4, 32, 32, generator=gen)
    t = torch.tensor([300, 700])
    el, az, r = torch.tensor([10.0, 35.0]), torch.tensor([60.0, -80.0]), torch.tensor([2.0, 2.2])
    out = z123(imgs, Conditioning(elevation_deg=el, azimuth_deg=az, radius=r), step=0, t=t, noise=noise)
    loss, lat = out["loss_sds"], z123.last_info["latents"]
    loss.backward()
    assert imgs.grad is not None and imgs.grad.abs().sum() > 0
    for m in (z123.unet, z123.vae, z123.image_encoder, z123.clip_camera_projection):
        assert all(p.grad is None for p in m.parameters())

    # Recompute eps_hat by hand: U-Net on [x_t, ref latent] with the projected [clip, pose] token; zeros for uncond.
    ref = z123.reference
    with torch.no_grad():
        x_t = z123.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1) * lat + (1 - z123.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1) * noise
        pose = torch.tensor(
            [[math.radians(10.0 - e), math.sin(math.radians(a - 20.0)), math.cos(math.radians(a - 20.0)), d - 2.0] for e, a, d in zip(el.tolist(), az.tolist(), r.tolist())]
        )
        ctx = z123.clip_camera_projection(torch.cat([ref.clip_embed.expand(2, 1, -1), pose[:, None]], -1))
        cat = ref.latent.expand(2, -1, -1, -1)
        eps_c = z123.unet(torch.cat([x_t, cat], 1), t, encoder_hidden_states=ctx).sample
        eps_u = z123.unet(torch.cat([x_t, torch.zeros_like(cat)], 1), t, encoder_hidden_states=torch.zeros_like(ctx)).sample
        eps_hat = eps_u + 3.0 * (eps_c - eps_u)
        w = (1 - z123.alphas_cumprod[t]).view(-1, 1, 1, 1)
        expected = w * (eps_hat - noise)
    assert z123.config.guidance_scale == 3.0
    assert torch.allclose(z123.last_info["eps_hat"], eps_hat, atol=1e-4)
    assert torch.allclose(z123.last_info["grad_norm"], expected.norm(), atol=1e-4, rtol=1e-4)
    # the images' gradient is the VAE encoder's vector-Jacobian product with w(t) (eps_hat - eps)
    again = imgs.detach().clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad(z123.encode_images(again), again, expected)
    assert torch.allclose(imgs.grad, vjp, atol=1e-5, rtol=1e-4)


def test_zero123_timestep_annealing(z123_dir):
    sched = TimestepSchedule(min_start=0.5, max_start=0.98, min_end=0.02, max_end=0.1, anneal_start=0, anneal_end=100)
    g = Zero123Guidance(Zero123Config(model=str(z123_dir), timesteps=sched))
    assert g.sample_timesteps(0, 64).min() >= 500
    assert g.sample_timesteps(100, 64).max() <= 100


def test_zero123_needs_reference(z123_dir):
    g = Zero123Guidance(Zero123Config(model=str(z123_dir)))
    with pytest.raises(RuntimeError, match="prepare_reference"):
        g(torch.rand(1, 3, 64, 64), Conditioning(elevation_deg=torch.zeros(1), azimuth_deg=torch.zeros(1), radius=torch.ones(1)))


# ----------------------------------------------------------------------------------------------------------- SVD
@pytest.fixture(scope="module")
def svd_dir(tmp_path_factory):
    return make_tiny_svd(tmp_path_factory.mktemp("tiny_svd"), seed=0)


@pytest.fixture(scope="module")
def svd(svd_dir):
    return StableVideoDiffusion(SVDConfig(model=str(svd_dir)))


@pytest.mark.parametrize("T", [8, 14, 25])
def test_svd_generate_any_frame_count(svd, T):
    img = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    v = svd.generate_video(img, num_frames=T, height=32, width=32, steps=1, seed=1)
    assert v.shape == (T, 3, 32, 32)
    assert v.dtype == torch.float32 and v.min() >= 0 and v.max() <= 1 and torch.isfinite(v).all()


def test_svd_generate_deterministic(svd):
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kw = dict(num_frames=8, height=32, width=32, steps=2, decode_chunk_size=3)
    a = svd.generate_video(img, seed=5, **kw)
    b = svd.generate_video(img, seed=5, **kw)
    c = svd.generate_video(img, seed=6, **kw)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4


def test_svd_generate_matches_diffusers_pipeline(svd):
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    img = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0
    ours = svd.generate_video(img, num_frames=5, height=32, width=32, steps=2, seed=3, motion_bucket_id=100, fps=6)
    pipe = svd.pipeline()
    ref = pipe(
        Image.fromarray(arr), num_frames=5, height=32, width=32, num_inference_steps=2, motion_bucket_id=100, fps=6,
        generator=torch.Generator().manual_seed(3), output_type="pt",
    ).frames[0]
    assert ref.shape == ours.shape
    assert torch.allclose(ours, ref, atol=1e-4)


def test_svd_refine(svd):
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(8, 3, 32, 32, generator=gen)
    img = torch.rand(1, 3, 32, 32, generator=gen)
    out0 = svd.refine_video(frames, img, strength=0.0, steps=5)
    assert out0.shape == frames.shape
    assert torch.allclose(out0, svd.decode_latents(svd.encode_frames(frames)), atol=1e-6)
    z0 = svd.encode_frames(frames)
    dists = [(svd.refine_video(frames, img, strength=s, steps=5, seed=2, return_latents=True) - z0).norm().item() for s in (0.0, 0.2, 0.4, 0.6, 1.0)]
    assert dists[0] == 0.0
    assert all(b > a for a, b in zip(dists, dists[1:])), dists
    again = svd.refine_video(frames, img, strength=0.4, steps=5, seed=2, return_latents=True)
    assert math.isclose((again - z0).norm().item(), dists[2], rel_tol=1e-6)
    dec = svd.refine_video(frames, img, strength=0.4, steps=5, seed=2)
    assert dec.shape == frames.shape and dec.min() >= 0 and dec.max() <= 1
    with pytest.raises(ValueError):
        svd.refine_video(frames, img, strength=1.5)
