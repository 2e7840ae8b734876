"""Text-to-video DDIM sampling, DDIM inversion and MotionDirector's noise prior on a tiny random UNet3D model
(gen4d.video.sampling), and the ``motion sample`` recipe."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gen4d import Gen4DError
from gen4d.data.videos import read_video
from gen4d.export.video import write_video
from gen4d.recipes import motion_sample
from gen4d.recipes.motion_sample import build_config, run_motion_sample
from gen4d.video.lora import inject_motion_lora, lora_parameters
from gen4d.video.lora_files import save_motion_lora
from gen4d.video.sampling import (
    TextToVideo,
    apply_noise_prior,
    ddim_inversion_step,
    ddim_step,
    load_motion_adapters,
    resize_latents,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def t2v(t2v_dir):
    return TextToVideo(str(t2v_dir))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------------------------- the maths
def test_ddim_step_matches_diffusers_and_inversion_inverts_it():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    z, eps, xi = (torch.randn(2, 4, 3, 4, 4, generator=g) for _ in range(3))
    t, prev = 501, 401
    a_t, a_prev = sched.alphas_cumprod[t], sched.alphas_cumprod[prev]
    for eta in (0.0, 0.7):
        ours = ddim_step(eps, z, a_t, a_prev, eta, xi)
        ref = sched.step(eps, t, z, eta=eta, variance_noise=xi).prev_sample
        assert torch.allclose(ours, ref, atol=1e-6), eta
    # with the true noise, a deterministic step stays on the trajectory z_t = sqrt(a) x0 + sqrt(1 - a) eps
    x0 = torch.randn(2, 4, 3, 4, 4, generator=g)
    z_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
    assert torch.allclose(ddim_step(eps, z_t, a_t, a_prev), a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, atol=1e-5)
    # for a fixed noise prediction, inversion undoes the sampling step exactly
    back = ddim_inversion_step(eps, ddim_step(eps, z, a_t, a_prev), a_prev, a_t)
    assert torch.allclose(back, z, atol=1e-5)


def test_noise_prior_formula():
    g = torch.Generator().manual_seed(0)
    inverted, noise = torch.randn(2, 4, 16, 32, 32, generator=g), torch.randn(2, 4, 16, 32, 32, generator=g)
    assert torch.equal(apply_noise_prior(inverted, noise, 0.0), noise)  # p = 0: pure noise
    assert torch.equal(apply_noise_prior(inverted, noise, 1.0), inverted)  # p = 1: the inversion itself
    p = 0.3
    mixed = apply_noise_prior(inverted, noise, p)
    assert torch.allclose(mixed, p**0.5 * inverted + (1 - p) ** 0.5 * noise)
    # independent unit-variance inputs: the mix keeps unit variance, its correlation with z_inv is sqrt(p)
    assert abs(float(mixed.var()) - 1.0) < 0.02
    corr = float(torch.corrcoef(torch.stack([mixed.flatten(), inverted.flatten()]))[0, 1])
    assert abs(corr - p**0.5) < 0.01
    with pytest.raises(Gen4DError, match="noise_prior"):
        apply_noise_prior(inverted, noise, 1.5)


def test_resize_latents_keeps_frames_and_resizes_space():
    z = torch.arange(2 * 4 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 4, 3, 2, 2)
    assert resize_latents(z, 3, 2, 2) is z
    longer = resize_latents(z, 5, 2, 2)
    assert longer.shape == (2, 4, 5, 2, 2)
    assert all(any(torch.equal(longer[:, :, i], z[:, :, j]) for j in range(3)) for i in range(5))  # whole frames
    assert torch.equal(longer[:, :, 0], z[:, :, 0]) and torch.equal(longer[:, :, -1], z[:, :, -1])
    bigger = resize_latents(z, 3, 4, 6)
    assert bigger.shape == (2, 4, 3, 4, 6)
    assert torch.allclose(bigger.mean(dim=(-1, -2)), z.mean(dim=(-1, -2)), atol=1e-5)  # bilinear keeps the mean


# ----------------------------------------------------------------------------------------------- the model
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_sampler_matches_the_diffusers_pipeline(t2v, eta):
    """Same components, scheduler and seed as ``TextToVideoSDPipeline``: the same latents and frames."""
    from diffusers import TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline(vae=t2v.vae, text_encoder=t2v.text_encoder, tokenizer=t2v.tokenizer, unet=t2v.unet, scheduler=t2v.scheduler)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"num_frames": 4, "height": 32, "width": 32, "guidance_scale": 12.0, "eta": eta}
    ours = t2v.generate("a corgi running", steps=5, seed=3, **kwargs)
    ref_latents = pipe("a corgi running", num_inference_steps=5, generator=torch.Generator().manual_seed(3), output_type="latent", **kwargs).frames
    ref_frames = pipe("a corgi running", num_inference_steps=5, generator=torch.Generator().manual_seed(3), output_type="pt", **kwargs).frames[0]
    # float32 throughout; the only differences are the order of a few float operations (eta > 0 also draws its
    # noise through a different code path), so 1e-5 relative to the latents' scale is plenty
    scale = float(ref_latents.abs().max())
    assert float((ours.latents - ref_latents).abs().max()) <= 1e-5 * scale
    assert ours.frames.shape == ref_frames.shape == (4, 3, 32, 32)
    assert float((ours.frames - ref_frames).abs().max()) < 1e-4


def test_seeded_sampling_is_reproducible_and_independent_of_chunking(t2v):
    kwargs = {"num_frames": 5, "height": 32, "width": 32, "steps": 3, "guidance_scale": 12.0}
    a = t2v.generate("a corgi running", seed=7, decode_chunk=1, **kwargs)
    b = t2v.generate("a corgi running", seed=7, decode_chunk=1, **kwargs)
    c = t2v.generate("a corgi running", seed=7, decode_chunk=4, **kwargs)
    d = t2v.generate("a corgi running", seed=8, **kwargs)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)
    assert torch.equal(a.latents, c.latents)
    assert torch.allclose(a.frames, c.frames, atol=1e-5)  # frames are decoded independently, any chunk size
    assert not torch.allclose(a.latents, d.latents)
    assert a.frames.shape == (5, 3, 32, 32) and float(a.frames.min()) >= 0 and float(a.frames.max()) <= 1
    # the initial noise is the pipeline's draw: randn of the latent shape from the seeded CPU generator
    assert torch.equal(a.initial_latents, torch.randn((1, 4, 5, 4, 4), generator=torch.Generator().manual_seed(7)))


def test_ddim_inversion_then_sampling_reconstructs_the_latent(t2v):
    """Invert with N steps, sample back with the same N steps, the same (empty) prompt and guidance 1.

    The latent has unit variance, as VAE latents times the scaling factor have. Plain DDIM inversion predicts the
    noise from the latent one level below the level it is used at; that error is first order in the step size:
    on this random-weight U-Net (no smoothness learned) 10 steps leave ~40 % relative error and 40 steps
    ~16 %, so we require err(40) < 0.25 and err(40) < 0.6 err(10). With 8 fixed-point iterations per step the
    inversion solves its implicit equation to a residual ~0.3^8 of the plain step's (the contraction rate seen on
    this model), so 10 steps reconstruct to better than 1e-3 relative (float32 arithmetic is ~1e-6).
    """
    z0 = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    empty = t2v.encode_prompt("")

    def round_trip(steps: int, iterations: int = 0) -> float:
        inverted = t2v.invert(z0, empty, steps, fixed_point_iterations=iterations)
        return _relative_error(t2v.sample(inverted, empty, None, steps, guidance_scale=1.0), z0)

    coarse, fine = round_trip(10), round_trip(40)
    assert fine < 0.25 and fine < 0.6 * coarse, (coarse, fine)
    assert round_trip(10, iterations=8) < 1e-3
    trajectory = t2v.invert(z0, empty, 4, return_trajectory=True)
    assert len(trajectory) == 5 and torch.equal(trajectory[0], z0)


def test_initial_latents_with_the_noise_prior(t2v):
    shape = t2v.latent_shape(num_frames=4, height=32, width=32)
    clip = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(5))  # another size: resized
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    z, inv = t2v.initial_latents(shape, torch.Generator().manual_seed(1))
    assert inv is None and torch.equal(z, eps)
    z1, inv1 = t2v.initial_latents(shape, torch.Generator().manual_seed(1), clip, 1.0, inversion_steps=3)
    assert inv1.shape == shape and torch.equal(z1, inv1)
    expected = resize_latents(t2v.invert(clip, t2v.encode_prompt(""), 3), 4, 4, 4)
    assert torch.allclose(inv1, expected, atol=1e-6)
    z_half, inv_half = t2v.initial_latents(shape, torch.Generator().manual_seed(1), clip, 0.5, inversion_steps=3)
    assert torch.allclose(z_half, 0.5**0.5 * inv_half + 0.5**0.5 * eps, atol=1e-6)  # the same eps is mixed in
    with pytest.raises(Gen4DError, match="needs latents"):
        t2v.initial_latents(shape, torch.Generator().manual_seed(1), None, 0.5)
    with pytest.raises(Gen4DError, match="multiples of 8"):
        t2v.latent_shape(4, 30, 32)


# ----------------------------------------------------------------------------------------------- motion LoRA + recipe
def _randomise(unet, adapter, seed, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(unet, adapter):
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def motion_runs(t2v_dir, tmp_path_factory):
    """Two training-run folders in the ``gen4d motion train`` layout: A (spatial + temporal LoRA, two cached
    clips) and B (an appearance LoRA: spatial only)."""
    from diffusers import UNet3DConditionModel
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("motion_runs")
    runs = {}
    for name, adapters, seed in (("A", ("spatial", "temporal"), 10), ("B", ("spatial",), 20)):
        unet = UNet3DConditionModel.from_pretrained(t2v_dir / "unet")
        for i, adapter in enumerate(adapters):
            inject_motion_lora(unet, adapter, rank=4)
            _randomise(unet, adapter, seed + i)
        save_motion_lora(unet, root / name / "lora", base_model=str(t2v_dir), num_frames=4, height=32, width=32)
        runs[name] = root / name
    g = torch.Generator().manual_seed(3)
    for i in range(2):
        (root / "A" / "stages" / "latents").mkdir(parents=True, exist_ok=True)
        save_file({"latents": torch.randn(4, 4, 4, 4, generator=g)}, str(root / "A" / "stages" / "latents" / f"clip_{i:04d}.safetensors"))
    return runs


def test_motion_adapters_temporal_only_or_from_two_trainings(t2v_dir, motion_runs):
    from safetensors.torch import load_file

    z = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    model = TextToVideo(str(t2v_dir))
    cond = model.encode_prompt("a corgi")
    plain = model.predict_noise(z, 500, cond)
    assert load_motion_adapters(model.unet, temporal=motion_runs["A"] / "lora", temporal_scale=1.0) == {"temporal": 1.0}
    temporal_only = model.predict_noise(z, 500, cond)
    assert not torch.allclose(temporal_only, plain, atol=1e-4)

    model = TextToVideo(str(t2v_dir))
    scales = load_motion_adapters(model.unet, temporal=motion_runs["A"] / "lora", temporal_scale=1.0, spatial=motion_runs["B"] / "lora", spatial_scale=0.5)
    assert scales == {"spatial": 0.5, "temporal": 1.0}
    assert not torch.allclose(model.predict_noise(z, 500, cond), temporal_only, atol=1e-4)
    # the spatial weights are B's, the temporal ones A's
    state = dict(model.unet.named_parameters())
    for run, adapter in (("B", "spatial"), ("A", "temporal")):
        key, value = next(iter(load_file(str(motion_runs[run] / "lora" / f"{adapter}.safetensors")).items()))
        name = key.replace(".weight", f".{adapter}.weight")
        assert torch.equal(state[name], value), name

    model = TextToVideo(str(t2v_dir))
    assert load_motion_adapters(model.unet, temporal=motion_runs["A"] / "lora", temporal_scale=0.0) == {}
    assert torch.allclose(model.predict_noise(z, 500, cond), plain)


def test_run_motion_sample_writes_the_video_and_resumes(t2v_dir, motion_runs, tmp_path, monkeypatch):
    small = [f"model={t2v_dir}", "num_frames=6", "height=32", "width=32", "steps=2", "inversion_steps=2", "device=cpu"]
    cfg = build_config("single-video", small, {"prompt": "a corgi running", "motion": str(motion_runs["A"]), "seed": 4})
    assert cfg.noise_prior == 0.5
    out = tmp_path / "run"
    metrics = run_motion_sample(cfg, out, quiet=True)
    assert metrics["adapters"] == {"temporal": 1.0}
    assert metrics["prior_source"].endswith(("clip_0000.safetensors", "clip_0001.safetensors"))
    video = read_video(out / "video.mp4")
    assert video.shape == (6, 32, 32, 3)
    assert read_video(out / "video.gif").shape == (6, 32, 32, 3)
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"frame_{i:04d}.png" for i in range(6)]
    assert json.loads((out / "metrics.json").read_text())["frames"] == 6
    assert "noise_prior: 0.5" in (out / "config.yaml").read_text()

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was sampled again")

    monkeypatch.setattr(motion_sample, "generate_video", fail)
    assert run_motion_sample(cfg, out, quiet=True)["prior_source"] == metrics["prior_source"]


def test_plain_text_to_video_and_bad_options(t2v_dir, tmp_path):
    small = [f"model={t2v_dir}", "num_frames=3", "height=32", "width=32", "steps=2", "device=cpu"]
    metrics = run_motion_sample(build_config("default", small, {"prompt": "a corgi"}), tmp_path / "plain", quiet=True)
    assert metrics["adapters"] == {} and metrics["prior_source"] == ""
    assert np.asarray(read_video(tmp_path / "plain" / "video.mp4")).shape[0] == 3
    bad = {
        "no prompt": ({}, [], "no prompt"),
        "prior without clips": ({"prompt": "a"}, ["noise_prior=0.3"], "needs a clip"),
        "missing motion": ({"prompt": "a", "motion": str(tmp_path / "nowhere")}, [], "not found"),
        "odd size": ({"prompt": "a"}, ["height=30"], "multiples of 8"),
    }
    for name, (base, overrides, pattern) in bad.items():
        out = tmp_path / name.replace(" ", "_")
        with pytest.raises(Gen4DError, match=pattern):
            run_motion_sample(build_config("default", small + overrides, base), out, quiet=True)
        assert not out.exists(), name


def test_noise_prior_from_a_reference_video_fixes_the_start(t2v_dir, tmp_path):
    """``reference=VIDEO`` with ``noise_prior=1``: z_T is the DDIM inversion of that clip alone, so the seed (which
    only draws epsilon; eta = 0) no longer changes the video; with ``noise_prior=0`` it does."""
    g = np.random.default_rng(0)
    clip = tmp_path / "reference.mp4"
    write_video(clip, g.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), fps=8)
    small = [f"model={t2v_dir}", "num_frames=3", "height=32", "width=32", "steps=2", "inversion_steps=3", "device=cpu"]

    def frames(p: float, seed: int) -> np.ndarray:
        out = tmp_path / f"p{p}-s{seed}"
        metrics = run_motion_sample(build_config("default", [*small, f"noise_prior={p}", f"reference={clip}"], {"prompt": "a corgi", "seed": seed}), out, quiet=True)
        assert metrics["prior_source"] == (str(clip) if p > 0 else "")
        return np.stack([np.asarray(Image.open(f)) for f in sorted((out / "frames").glob("*.png"))]).astype(np.int16)

    assert np.abs(frames(1.0, 0) - frames(1.0, 1)).max() <= 1  # rounding only
    assert np.abs(frames(0.0, 0) - frames(0.0, 1)).max() > 10
