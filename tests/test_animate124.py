"""Animate124 (``gen4d image --recipe animate124``) and textual inversion (``gen4d invert``) with tiny models: every
stage and export, the clip sampling rules, the first-frame anchor, the ControlNet-tile frames, the learned token
from training to the ControlNet's prompt (diffusers' format both ways), and bit-identical resumes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from gen4d.cli import main
from gen4d.data.preprocess import save_rgba_png
from gen4d.devices import resolve_device
from gen4d.distill.views import ViewSampling, sample_views, strided_clip_times
from gen4d.guidance.priors import build_prior
from gen4d.guidance.textual_inversion import read_textual_inversion
from gen4d.recipes import animate124, invert
from gen4d.recipes.animate124 import Animate124Run
from gen4d.recipes.invert import InvertConfig, TextualInversion, save_learned_embeds
from gen4d.runs import RunDir

pytestmark = pytest.mark.usefixtures("tiny_models")

SCENE = [
    "static.iterations=3", "dynamic.iterations=4", "semantic.iterations=3", "static.resolution=32", "reference.size=32",
    "video.width=32", "video.height=32", "video.frames=4", "video.time_grid=16", "semantic.fixed_size=32",
    "export.mesh_resolution=24", "export.video_size=32", "export.video_frames=3", "export.mesh_threshold=0.05",
    "checkpoint_every=2", "preview_every=0", "init_points=300",
]
TI = ["textual_inversion.iterations=3", "textual_inversion.batch_size=2", "textual_inversion.resolution=32",
      "textual_inversion.token=<panda>", "textual_inversion.init_token=panda"]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
    a = ((xx**2 + yy**2) < 0.5).float()
    path = tmp_path_factory.mktemp("input") / "panda.png"
    save_rgba_png(path, torch.stack([0.8 * a + 0.1, 0.3 * a, 0.5 * (1 - xx) / 2, a]))
    return path


def config(image, *extra: str) -> animate124.Animate124Config:
    return animate124.RECIPE.build_config("default", SCENE + TI + list(extra), {"input": str(image), "prompt": "a panda is dancing"})


# ------------------------------------------------------------------------------------------------ end to end
def test_image_to_4d_runs_every_stage_and_export(tmp_path, image):
    out = tmp_path / "run"
    assert main(["image", str(image), "--recipe", "animate124", "--prompt", "a panda is dancing", "--token", "<panda>",
                 "--init-token", "panda", "--out", str(out), "--models", "tiny", "--quiet", *SCENE, *TI[:3]]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["stages"]) == {"static", "dynamic", "semantic"} and metrics["iterations"] == 3 + 3 + 4 + 3
    assert (out / "stages" / "invert" / "state.json").exists() or (out / "stages" / "invert" / "checkpoint.safetensors").exists()
    token, vec = read_textual_inversion(out / "stages" / "invert" / "learned_embeds.safetensors")
    assert token == "<panda>" and vec.shape[0] == 1
    ex = out / "exports"
    assert len(list((ex / "ply").glob("*.ply"))) == 16 and (ex / "animated.glb").exists() and (ex / "orbit.mp4").exists()
    assert len(list((ex / "mesh").glob("*.obj"))) == 16 and len(list((ex / "textured").glob("frame_*.obj"))) == 16


def test_a_prompt_is_required(tmp_path, image, capsys):
    assert main(["image", str(image), "--recipe", "animate124", "--out", str(tmp_path / "run"), "--models", "tiny"]) == 2
    assert "needs a prompt" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_paper_preset_is_the_published_schedule():
    cfg = animate124.RECIPE.build_config("paper", [], {"prompt": "x"})
    assert (cfg.textual_inversion.iterations, cfg.textual_inversion.batch_size, cfg.textual_inversion.resolution) == (3000, 16, 512)
    assert (cfg.static.iterations, cfg.dynamic.iterations, cfg.semantic.iterations) == (10_000, 10_000, 5000)
    assert (cfg.reference.rgb_weight, cfg.reference.mask_weight, cfg.static.sd_weight, cfg.static.zero123_weight) == (1000, 100, 0.025, 1)
    assert (cfg.dynamic.zero123_weight, cfg.video.weight, cfg.semantic.weight) == (40, 1, 3)
    assert (cfg.semantic.fixed_frames, cfg.semantic.fixed_size, cfg.video.frames, cfg.video.width) == (2, 1024, 16, 128)
    assert (cfg.video.zero_start_probability, cfg.video.reverse_probability, cfg.video.time_grid) == (0.2, 0.5, 256)


# ------------------------------------------------------------------------------------------------ clip sampling
def test_strided_clip_times_follow_animate124s_rules():
    """Stride distribution (exact, chi-square), mirroring and zero-start rates (binomial, 4 sigma), grid and range."""
    F, G, n = 16, 256, 4000
    g = torch.Generator().manual_seed(0)
    strides, zero = [], 0
    for _ in range(n):
        t, z = strided_clip_times(F, G, 0.2, 0.5, g)
        d = torch.diff(t.double()) * G
        assert torch.allclose(d, d[0].expand_as(d), atol=1e-4) and 0.0 <= float(t.min()) and float(t.max()) <= 1.0
        stride = round(abs(float(d[0])))
        strides.append(stride)
        assert float(d[0]) > 0  # mirrored or not, a clip runs forwards in time
        if z:
            zero += 1
            assert float(t[0]) == 0.0
    # stride k = floor(U{F..G} / F): P(k) = #{u in [F, G] : u // F = k} / (G - F + 1)
    expected = {k: sum(1 for u in range(F, G + 1) if u // F == k) / (G - F + 1) for k in range(1, G // F + 1)}
    chi2 = sum((strides.count(k) - n * p) ** 2 / (n * p) for k, p in expected.items())
    assert set(strides) <= set(expected) and chi2 < 39.25  # 15 degrees of freedom, p = 0.001
    # with every clip drawn at t = 0, the mirrored ones end at t = 1 instead
    ends = [strided_clip_times(F, G, 1.0, 0.5, g) for _ in range(n)]
    mirrored = sum(1 for t, z in ends if not z)
    assert all((float(t[0]) == 0.0) == z and (float(t[-1]) == 1.0) == (not z) for t, z in ends)
    assert abs(mirrored - 0.5 * n) < 4 * math.sqrt(n * 0.25)
    p0 = 0.2 * 0.5  # starts at 0 and is not reversed
    assert abs(zero - p0 * n) < 4 * math.sqrt(n * p0 * (1 - p0))


def test_strided_clips_are_reproducible_and_the_camera_drifts_linearly():
    s = ViewSampling(views=1, times="strided_clip", frames=8, time_grid=64, frame_motion_deg=(0.7, 0.7), elevation_deg=(-45, 45))
    a = [sample_views(s, torch.Generator().manual_seed(5), 8, 8) for _ in range(2)]
    assert torch.equal(a[0].times, a[1].times) and torch.equal(a[0].cameras.viewmats, a[1].cameras.viewmats)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        b = sample_views(s, g, 8, 8)
        for angle in (b.elevation_deg, b.azimuth_deg):
            d = torch.diff(angle)
            assert torch.allclose(d, d[0].expand_as(d), atol=1e-4) and float(d.abs().max()) <= 0.7 + 1e-5


# ------------------------------------------------------------------------------------------------ stages
def _run(cfg, embeds=None):
    from gen4d.data.preprocess import load_image_rgba

    rgba = load_image_rgba(cfg.input, size=cfg.reference.size, border_ratio=0.0)
    return Animate124Run(cfg, resolve_device("cpu"), build_prior, rgba, None, embeds)


def test_the_first_frame_anchor_acts_exactly_on_clips_that_start_at_zero(image):
    ar = _run(config(image, "video.zero_start_probability=0.5"))
    losses = ar.clip_losses(semantic=False)
    scene = ar.init_scene().attach_deformation(ar.cfg.deformation, 0)
    g = torch.Generator().manual_seed(0)
    seen, starts_total = set(), 0
    for step in range(12):
        out = losses(scene, step, g)
        starts = losses.clip.last_views["video"].starts_at_zero
        assert bool(float(losses.clip.last_views["video"].times[0]) == 0.0) or not starts
        assert ({"rgb", "mask", "zero123"} <= set(out.losses)) == starts and "video" in out.losses
        seen.add(starts)
        starts_total += starts
    assert seen == {True, False} and losses.counter["anchored"] == starts_total


def test_semantic_term_scores_fixed_frames_of_the_clip_at_fixed_size(image):
    ar = _run(config(image, "semantic.fixed_frames=2", "semantic.fixed_size=40"))
    losses = ar.clip_losses(semantic=True)
    scene = ar.init_scene().attach_deformation(ar.cfg.deformation, 0)
    out = losses(scene, 0, torch.Generator().manual_seed(0))
    assert "video_tile" in out.losses and out.losses["video_tile"].requires_grad
    tile = ar.built["tile"]
    assert tuple(tile.last_info["control"].shape) == (2, 3, 40, 40)  # 2 frames, resized to fixed_size
    # the control image is each frame's own detached render
    assert not tile.last_info["control"].requires_grad


def test_learned_token_is_what_the_controlnet_prompt_encodes(tmp_path, image):
    vec = torch.randn(1, 32, generator=torch.Generator().manual_seed(3))
    path = save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<panda>", vec)
    ar = _run(config(image), embeds=path)
    ar.clip_losses(semantic=True)
    tile = ar.built["tile"]
    assert ar.controlnet_prompt == "a <panda> is dancing"
    ids = tile.tokenizer(ar.controlnet_prompt).input_ids
    tok = tile.tokenizer.convert_tokens_to_ids("<panda>")
    assert tok in ids
    assert torch.equal(tile.text_encoder.get_input_embeddings().weight[tok].detach(), vec[0])
    # and the prompt's embeddings are the text encoder's output with that row (not a cached encoding of another token)
    text, _ = tile.encode_prompt(ar.controlnet_prompt).get(1)
    ids = tile.tokenizer(ar.controlnet_prompt, padding="max_length", max_length=tile.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(text[0].float(), tile.text_encoder(ids)[0][0].float(), atol=1e-5)


# ------------------------------------------------------------------------------------------------ textual inversion
def _ti(image, **kw) -> TextualInversion:
    cfg = InvertConfig(input=str(image), token="<panda>", init_token="panda", resolution=32, batch_size=4, augment=False, **kw)
    ti = TextualInversion(cfg, resolve_device("cpu"))
    ti.image = invert.read_image(image)
    return ti


def test_textual_inversion_lowers_its_loss(image):
    ti = _ti(image, lr=5e-2)
    model = ti.init()
    start = model.vectors.detach().clone()

    def held_out() -> float:
        with torch.no_grad():
            return sum(float(ti.losses(model, 0, torch.Generator().manual_seed(100 + i)).losses["textual_inversion"]) for i in range(4))

    before = held_out()
    opt = torch.optim.AdamW([model.vectors], lr=5e-2, weight_decay=0.0)
    for step in range(40):
        loss = ti.losses(model, step, torch.Generator().manual_seed(100 + step % 4)).losses["textual_inversion"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out()
    assert after < 0.995 * before, (before, after)  # the same four batches (images, t, noise): only the token changed
    assert not torch.equal(model.vectors.detach(), start)


def test_augmentations_keep_range_shape_and_are_seeded(image):
    x = invert.read_image(image)
    a = invert.augment_batch(x, 6, 24, torch.Generator().manual_seed(0))
    b = invert.augment_batch(x, 6, 24, torch.Generator().manual_seed(0))
    c = invert.augment_batch(x, 6, 24, torch.Generator().manual_seed(1))
    assert a.shape == (6, 3, 24, 24) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a[0], a[1])  # each copy its own draw


def test_learned_embeds_round_trip_with_diffusers(tmp_path, image):
    """Our file loads into diffusers' pipeline; a file as diffusers' script writes it (learned_embeds.bin) loads into ours."""
    from diffusers import StableDiffusionPipeline

    from gen4d.testing import tiny_model_dir

    vec = torch.randn(1, 32, generator=torch.Generator().manual_seed(7))
    ours = save_learned_embeds(tmp_path / "ours" / "learned_embeds.safetensors", "<panda>", vec)
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir("sd15")), safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(ours))
    tok = pipe.tokenizer.convert_tokens_to_ids("<panda>")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[tok].detach(), vec[0])
    theirs = tmp_path / "theirs" / "learned_embeds.bin"
    theirs.parent.mkdir()
    torch.save({"<cat>": vec * 2}, theirs)
    ti = _ti(image)
    from gen4d.guidance.textual_inversion import load_textual_inversion

    load_textual_inversion(ti.tokenizer, ti.text_encoder, theirs)
    cat = ti.tokenizer.convert_tokens_to_ids("<cat>")
    assert torch.equal(ti.text_encoder.get_input_embeddings().weight[cat].detach(), vec[0] * 2)


def test_gen4d_invert_resumes_bit_identically(tmp_path, image):
    cfg = invert.RECIPE.build_config("default", ["iterations=5", "batch_size=2", "resolution=32", "checkpoint_every=2"],
                                     {"input": str(image), "token": "<panda>", "init_token": "panda"})
    whole = tmp_path / "whole"
    m = invert.run_invert(cfg, whole, quiet=True)
    assert m["token"] == "<panda>" and (whole / "learned_embeds.safetensors").exists()
    resumed = tmp_path / "resumed"
    assert invert.run_invert(cfg, resumed, quiet=True, stop_after_step=3) == {}
    invert.run_invert(cfg, resumed, quiet=True)
    a, b = (load_file(str(d / "learned_embeds.safetensors")) for d in (whole, resumed))
    assert torch.equal(a["<panda>"], b["<panda>"])
    start = TextualInversion(cfg, resolve_device("cpu")).init_vector
    assert not torch.equal(a["<panda>"][0], start)


def test_resume_in_the_middle_of_the_dynamic_stage_is_bit_identical(tmp_path, image):
    cfg = config(image, "video.zero_start_probability=0.5")
    whole = tmp_path / "whole"
    animate124.run_animate124(cfg, whole, quiet=True)
    resumed = tmp_path / "resumed"
    assert animate124.run_animate124(cfg, resumed, quiet=True, stop_after_step=3 + 3 + 2) == {}  # killed after dynamic step 2
    state = RunDir(resumed).stage_state("dynamic")
    assert not state["complete"] and state["step"] == 2
    animate124.run_animate124(cfg, resumed, quiet=True)
    for stage in ("dynamic", "semantic"):
        a = load_file(str(whole / "stages" / stage / "checkpoint.safetensors"))
        b = load_file(str(resumed / "stages" / stage / "checkpoint.safetensors"))
        keys = [k for k in a if k.startswith("model.")]
        assert keys and all(torch.equal(a[k], b[k]) for k in keys)
    wa, wb = (json.loads((d / "metrics.json").read_text())["anchored_steps"] for d in (whole, resumed))
    assert wa == wb
