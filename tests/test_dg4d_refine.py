"""DreamGaussian4D stage III (``refine``) with tiny models: only colours move, they move towards the SVD targets,
and a resumed run reads its targets back instead of making them again."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from test_dg4d import TINY, disc, frames_dir

from gen4d.cli import main
from gen4d.export.mesh import extract_mesh
from gen4d.export.texture import textured_mesh
from gen4d.guidance.svd import StableVideoDiffusion
from gen4d.recipes.dg4d import build_config, orbit_clip_cameras, run_dg4d
from gen4d.scene import Scene4D

pytestmark = pytest.mark.usefixtures("tiny_models")

FROZEN = ("means", "quats", "log_scales", "opacity_logits")
# Zero123 SDS off and short stages I-II: these tests are about stage III.
REFINE = [
    "static.sds_weight=0", "dynamic.sds_weight=0", "static.iterations=2", "dynamic.iterations=2", "refine.iterations=4", "refine.regenerate_every=2",
    "refine.resolution=32", "driving.steps=4", "export.formats=[ply]",
]
COLOUR = torch.tensor([0.9, 0.2, 0.1])


def make_config(tmp_path, *extra):
    image = tmp_path / "image.png"
    disc(24, 24).save(image)
    frames = frames_dir(tmp_path / "frames", 6)
    overrides = [a for a in TINY if "=" in a] + REFINE + list(extra)
    return build_config("default", overrides, {"input": str(image), "driving": {"path": str(frames)}})


def constant_svd(calls: list):
    """A stand-in for SVD partial denoising: every target frame is one known colour."""

    def refine_video(self, frames, image, strength=0.5, **kwargs):
        calls.append(len(frames))
        return COLOUR.view(1, 3, 1, 1).expand(frames.shape).clone()

    return refine_video


def checkpoint(out, stage):
    return load_file(str(out / "stages" / stage / "checkpoint.safetensors"))


def test_refine_changes_only_the_colours(tmp_path):
    out = tmp_path / "run"
    metrics = run_dg4d(make_config(tmp_path), out, quiet=True)  # the real (tiny) SVD refines the renders
    assert metrics["iterations"] == 8 and set(metrics["stages"]) == {"static", "dynamic", "refine"}
    before, after = checkpoint(out, "dynamic"), checkpoint(out, "refine")
    for name in FROZEN:
        assert torch.equal(before[f"model.gaussians.{name}"], after[f"model.gaussians.{name}"]), name
    field = [k for k in before if k.startswith("model.deformation.")]
    assert field and all(torch.equal(before[k], after[k]) for k in field)
    assert not torch.equal(before["model.gaussians.sh0"], after["model.gaussians.sh0"])
    rounds = sorted((out / "stages" / "refine" / "targets").glob("round_*.safetensors"))
    assert [p.name for p in rounds] == ["round_0000.safetensors", "round_0001.safetensors"]
    targets = load_file(str(rounds[0]))["frames"]
    assert targets.dtype == torch.uint8 and targets.shape == (6, 32, 32, 3)  # one frame per driving frame


def test_colour_refinement_lowers_the_error_to_the_targets(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(StableVideoDiffusion, "refine_video", constant_svd(calls))
    out = tmp_path / "run"
    cfg = make_config(tmp_path, "refine.iterations=8", "refine.regenerate_every=8", "refine.reference_weight=0", "refine.frames=5")
    run_dg4d(cfg, out, quiet=True)
    assert calls == [5]  # one round, a 5-frame clip from 6 driving frames
    path = out / "stages" / "refine" / "targets" / "round_0000.safetensors"
    with safe_open(str(path), framework="pt") as f:
        start = float(f.metadata()["start_azimuth"])
        assert torch.equal(f.get_tensor("frames")[0, 0, 0], (COLOUR * 255 + 0.5).to(torch.uint8))
    cams = orbit_clip_cameras(start, 5, 32, cfg.camera_radius, torch.deg2rad(torch.tensor(cfg.fov_deg)).item(), cfg.refine.azimuth_step)
    errors = []
    for stage in ("dynamic", "refine"):
        tensors = {k[len("model."):]: v for k, v in checkpoint(out, stage).items() if k.startswith("model.")}
        scene = Scene4D.from_tensors(tensors, 0, cfg.deformation)
        with torch.no_grad():
            rgb = scene.render(cams, background=torch.ones(3)).rgb
        errors.append(float((rgb - COLOUR).square().mean()))
    assert errors[1] < errors[0] - 1e-4, errors


def test_resume_reads_the_targets_back(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(StableVideoDiffusion, "refine_video", constant_svd(calls))
    cfg = make_config(tmp_path, "refine.iterations=6", "refine.regenerate_every=3")
    out = tmp_path / "run"
    assert run_dg4d(cfg, out, quiet=True, stop_after_step=6) == {}  # killed after refine step 2 of round 0
    round0 = out / "stages" / "refine" / "targets" / "round_0000.safetensors"
    digest = hashlib.sha256(round0.read_bytes()).hexdigest()
    assert len(calls) == 1
    metrics = run_dg4d(cfg, out, quiet=True)
    assert metrics["iterations"] == 10
    assert len(calls) == 2  # only round 1 (from step 3) was made after resuming
    assert hashlib.sha256(round0.read_bytes()).hexdigest() == digest
    log = (out / "log.txt").read_text()
    assert "stage refine: resuming at step 2" in log and log.count("stage refine: starting") == 1
    state = json.loads((out / "stages" / "refine" / "state.json").read_text())
    assert state["complete"] and state["step"] == 6
    # the resumed run ends where an uninterrupted one does
    whole = tmp_path / "whole"
    run_dg4d(cfg, whole, quiet=True)
    assert torch.equal(checkpoint(out, "refine")["model.gaussians.sh0"], checkpoint(whole, "refine")["model.gaussians.sh0"])


@pytest.mark.parametrize("setting, message", [("refine.resolution=30", "multiple of 8"), ("refine.strength=1.5", "strength")])
def test_bad_refine_settings_exit_2_before_writing(tmp_path, capsys, setting, message):
    image = tmp_path / "image.png"
    disc(24, 24).save(image)
    out = tmp_path / "run"
    assert main(["image", str(image), "--out", str(out), *TINY, "refine.iterations=2", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_texture_mode_trains_the_mesh_texture_only_and_exports_it(tmp_path, monkeypatch):
    """DreamGaussian4D's own stage III: a UV-textured mesh from the Gaussians, its texture (and nothing else) trained
    towards the targets; the textured export is that texture on that mesh; a resumed run ends bit-identical."""
    calls: list = []
    monkeypatch.setattr(StableVideoDiffusion, "refine_video", constant_svd(calls))
    settings = ("refine.mode=texture", "refine.texture_size=64", "refine.iterations=6", "refine.regenerate_every=3",
                "refine.frames=4", "refine.reference_weight=0", "export.mesh_resolution=24", "export.formats=[textured]")
    cfg = make_config(tmp_path, *settings)
    out = tmp_path / "run"
    metrics = run_dg4d(cfg, out, quiet=True)
    before, after = checkpoint(out, "dynamic"), checkpoint(out, "refine")
    assert all(torch.equal(v, after[k]) for k, v in before.items() if k.startswith("model."))  # Gaussians, field unchanged
    tensors = {k[len("model."):]: v for k, v in after.items() if k.startswith("model.")}
    scene = Scene4D.from_tensors(tensors, 0, cfg.deformation)
    assert scene.mesh is not None and scene.mesh.logits.shape[:2] == (64, 64)
    # the trained texture renders closer to the targets' colour than the texture baked from the Gaussians
    baked = textured_mesh(extract_mesh(scene.frame_at(0.0), resolution=24, threshold=cfg.export.mesh_threshold), 64)
    assert torch.equal(baked.faces, scene.mesh.faces)  # the same atlas, rebuilt
    with safe_open(str(out / "stages" / "refine" / "targets" / "round_0001.safetensors"), framework="pt") as f:
        start = float(f.metadata()["start_azimuth"])  # the last round's clip, at t = 0 (the mesh as made)
    cams = orbit_clip_cameras(start, 1, 32, cfg.camera_radius, torch.deg2rad(torch.tensor(cfg.fov_deg)).item(), 10.0)
    with torch.no_grad():
        errs = []
        for m in (baked, scene.mesh):
            rgb, alpha = m.render(m.vertices, cams, torch.ones(3))
            errs.append(float(((rgb - COLOUR).square() * alpha).sum() / alpha.sum()))
    assert errs[1] < 0.5 * errs[0], errs
    # exports: OBJ + MTL + PNG per frame and the animated GLB, carrying the trained texture
    files = {p.rsplit("/", 1)[1] for p in metrics["exports"]["textured"]}
    assert {"frame_0000.obj", "frame_0005.obj", "material.mtl", "animated.glb"} <= files
    png = [p for p in metrics["exports"]["textured"] if p.endswith(".png")]
    assert len(png) == 1
    texture = torch.from_numpy(np.asarray(Image.open(png[0]).convert("RGB"))).float() / 255
    assert (texture - scene.mesh.texture()).abs().max() <= 0.5 / 255 + 1e-6
    # resumed in the middle of stage III: the same texture as the uninterrupted run
    resumed = tmp_path / "resumed"
    assert run_dg4d(cfg, resumed, quiet=True, stop_after_step=6) == {}
    run_dg4d(cfg, resumed, quiet=True)
    assert torch.equal(checkpoint(resumed, "refine")["model.mesh.logits"], after["model.mesh.logits"])
