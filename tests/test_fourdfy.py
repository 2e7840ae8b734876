"""4D-fy (``gen4d text --recipe fourdfy``) with tiny models: every stage and export, the hybrid branch frequencies,
who each branch may update, the learning-rate split, and a bit-identical resume in the middle of the dynamic stage
(VSD's LoRA included)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from gen4d.cli import main
from gen4d.devices import resolve_device
from gen4d.guidance.priors import build_prior
from gen4d.recipes import fourdfy
from gen4d.recipes.fourdfy import FourDfyRun
from gen4d.training.loop import backward

pytestmark = pytest.mark.usefixtures("tiny_models")

TINY = [
    "static.iterations=4", "dynamic.iterations=6", "static.resolutions=[32,32]", "static.resolution_milestones=[2]",
    "dynamic.resolution=32", "image.resolution=32", "video.width=32", "video.height=32", "video.frames=4",
    "export.mesh_resolution=24", "export.video_size=32", "export.video_frames=3", "export.mesh_threshold=0.05",
    "checkpoint_every=2", "preview_every=0", "init_points=300",
]


def config(*extra: str) -> fourdfy.FourDfyConfig:
    return fourdfy.RECIPE.build_config("default", TINY + list(extra), {"prompt": "a panda dancing"})


def test_text_to_4d_runs_every_stage_and_export(tmp_path):
    out = tmp_path / "run"
    assert main(["text", "a panda dancing", "--recipe", "fourdfy", "--out", str(out), "--models", "tiny", "--quiet",
                 *TINY, "refine.iterations=2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["stages"]) == {"static", "refine", "dynamic"} and metrics["iterations"] == 12
    assert sum(metrics["branches"]["dynamic"].values()) == 6  # one branch per step
    ex = out / "exports"
    assert len(list((ex / "ply").glob("*.ply"))) == 16 and (ex / "animated.glb").exists() and (ex / "orbit.mp4").exists()
    assert len(list((ex / "mesh").glob("*.obj"))) == 16 and len(list((ex / "textured").glob("frame_*.obj"))) == 16


def _dynamic(cfg):
    fr = FourDfyRun(cfg, resolve_device("cpu"), build_prior)
    stage = fr.dynamic_stage()
    scene = stage.prepare(fr.init_scene())
    return fr, stage, scene


def test_branch_frequencies_follow_the_configured_probabilities():
    cfg = config("dynamic.multi_view_probability=0.5", "dynamic.image_probability=0.3", "dynamic.video_probability=0.2")
    _, stage, _ = _dynamic(cfg)
    g = torch.Generator().manual_seed(0)
    n = 3000
    counts = {"multi_view": 0, "image": 0, "video": 0}
    for _ in range(n):
        (term,) = stage.losses.choose(g)
        counts[term.name] += 1
    expected = {"multi_view": 0.5, "image": 0.3, "video": 0.2}
    chi2 = sum((counts[k] - n * p) ** 2 / (n * p) for k, p in expected.items())
    assert chi2 < 13.82, counts  # chi-square, 2 degrees of freedom, p = 0.001


@pytest.mark.parametrize("branch", ["multi_view", "image", "video"])
def test_each_branch_updates_only_its_parameters(branch):
    """Multi-view and image branches reach the canonical Gaussians only (the field gets no gradient at all); the
    video branch reaches the field and the Gaussians."""
    _, stage, scene = _dynamic(config("image.kind=sd"))
    (term,) = [t for t in stage.losses.terms if t.name == branch]
    step = stage.losses.__class__([term], rule="one", background=torch.ones(3))(scene, 0, torch.Generator().manual_seed(1))
    backward(step)
    field = scene.parameter_groups()["dynamic"]
    gaussians = scene.parameter_groups()["static"]
    field_grad = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in field)
    gaussian_grad = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in gaussians)
    assert gaussian_grad
    assert field_grad == (branch == "video")


def test_dynamic_stage_learning_rates_split_static_and_dynamic():
    cfg = config()
    fr, stage, scene = _dynamic(cfg)
    opts = stage.make_optimizers(scene)
    static = fr.static_stage().make_optimizers(fr.init_scene())
    for name in ("sh0", "shN", "opacity_logits", "log_scales", "quats"):
        assert opts[name].param_groups[0]["lr"] == pytest.approx(cfg.dynamic.static_lr_scale * static[name].param_groups[0]["lr"])
    assert stage.learning_rates(0)["means"] == pytest.approx(cfg.dynamic.static_lr_scale * cfg.lr.means)
    assert stage.learning_rates(0)["deformation"][0] == pytest.approx(cfg.lr.grid)
    assert "lora" in opts  # VSD's LoRA trains in the image branch


def test_resume_in_the_middle_of_the_dynamic_stage_is_bit_identical(tmp_path):
    cfg = config("dynamic.multi_view_probability=0.3", "dynamic.image_probability=0.4", "dynamic.video_probability=0.3")
    whole = tmp_path / "whole"
    fourdfy.run_fourdfy(cfg, whole, quiet=True)
    resumed = tmp_path / "resumed"
    assert fourdfy.run_fourdfy(cfg, resumed, quiet=True, stop_after_step=4 + 3) == {}  # killed after dynamic step 3
    state = json.loads((resumed / "stages" / "dynamic" / "state.json").read_text())
    assert not state["complete"] and state["step"] == 3
    fourdfy.run_fourdfy(cfg, resumed, quiet=True)
    a = load_file(str(whole / "stages" / "dynamic" / "checkpoint.safetensors"))
    b = load_file(str(resumed / "stages" / "dynamic" / "checkpoint.safetensors"))
    assert any(k.startswith("extra.lora.") for k in a)  # VSD's LoRA is part of the checkpoint
    keys = [k for k in a if k.startswith(("model.", "extra."))]
    assert keys and all(torch.equal(a[k], b[k]) for k in keys)


def test_a_prompt_is_required(tmp_path, capsys):
    assert main(["text", "  ", "--recipe", "fourdfy", "--out", str(tmp_path / "run"), "--models", "tiny"]) == 2
    assert "needs a prompt" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_paper_preset_is_the_published_schedule():
    cfg = fourdfy.RECIPE.build_config("paper", [], {"prompt": "x"})
    assert (cfg.static.iterations, cfg.refine.iterations, cfg.dynamic.iterations) == (10_000, 25_000, 100_000)
    d = dataclasses.asdict(cfg.dynamic)
    assert (d["multi_view_probability"], d["image_probability"], d["video_probability"]) == (0.5, 0.25, 0.25)
    assert cfg.video.weight == 0.1 and (cfg.video.width, cfg.video.height, cfg.video.frames) == (288, 160, 16)


def test_multi_view_sets_share_one_camera_and_clips_start_at_a_random_offset():
    from gen4d.distill.views import ViewSampling, sample_views

    g = torch.Generator().manual_seed(3)
    mv = ViewSampling(views=4, azimuth_layout="even", shared_camera=True, elevation_deg=(0, 30), radius=(2.5, 3.0), fov_deg=(15, 60))
    for _ in range(5):
        b = sample_views(mv, g, 16, 16)
        assert len(set(b.elevation_deg.tolist())) == len(set(b.radius.tolist())) == len(set(b.fov_deg.tolist())) == 1
        steps = torch.diff(b.azimuth_deg)
        assert torch.allclose(steps, torch.full_like(steps, 90.0))
    clip = ViewSampling(views=1, times="clip", frames=16, clip_offset=True)
    starts = []
    for _ in range(20):
        t = sample_views(clip, g, 8, 8).times
        assert torch.allclose(torch.diff(t), torch.full((15,), 1 / 16)) and 0 <= float(t[0]) < 1 / 16
        starts.append(float(t[0]))
    assert len(set(starts)) == 20  # a new offset every clip


def test_vsd_lora_carries_from_the_refine_stage_into_the_dynamic_one_across_a_restart(tmp_path):
    """Killed when the refine stage has just finished: the dynamic stage of the resumed run starts from the LoRA the
    refine stage trained, as the uninterrupted run does."""
    cfg = config("refine.iterations=2", "dynamic.image_probability=0.5", "dynamic.video_probability=0.25",
                 "dynamic.multi_view_probability=0.25")
    whole = tmp_path / "whole"
    fourdfy.run_fourdfy(cfg, whole, quiet=True)
    resumed = tmp_path / "resumed"
    assert fourdfy.run_fourdfy(cfg, resumed, quiet=True, stop_after_step=7) == {}  # one step into the dynamic stage
    assert json.loads((resumed / "stages" / "refine" / "state.json").read_text())["complete"]
    shutil.rmtree(resumed / "stages" / "dynamic")  # as if killed before its first checkpoint
    fourdfy.run_fourdfy(cfg, resumed, quiet=True)
    a = load_file(str(whole / "stages" / "dynamic" / "checkpoint.safetensors"))
    b = load_file(str(resumed / "stages" / "dynamic" / "checkpoint.safetensors"))
    keys = [k for k in a if k.startswith(("model.", "extra."))]
    assert any(k.startswith("extra.lora.") for k in keys) and all(torch.equal(a[k], b[k]) for k in keys)


def test_vsd_lora_start_depends_on_the_seed_only():
    """Two runs' VSD LoRAs start equal whatever the global random stream did before (model loading draws from it),
    within peft's Kaiming-uniform bound for A and at zero for B."""
    cfg = config()
    starts = []
    for draws in (0, 1000):
        torch.rand(draws)
        fr = FourDfyRun(cfg, resolve_device("cpu"), build_prior)
        named = [(n, p.detach().clone()) for n, p in fr.branches.image.unet.named_parameters() if "lora_" in n]
        starts.append(named)
    assert starts[0] and all(torch.equal(a, b) for (_, a), (_, b) in zip(*starts))
    for name, p in starts[0]:
        if "lora_B" in name:
            assert not p.any()
        else:
            assert p.abs().max() <= 1 / p[0].numel() ** 0.5 and p.abs().max() > 0.5 / p[0].numel() ** 0.5
