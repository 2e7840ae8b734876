"""Text -> video -> 4D (``text2video4d``) with tiny models, and the dependency-free plain-background segmenter."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from gen4d import Gen4DError
from gen4d.data import preprocess
from gen4d.data.preprocess import (
    load_image_rgba,
    load_video_frames,
    resolve_segmenter,
    segment_plain_background,
)
from gen4d.data.videos import read_video
from gen4d.export.animated_glb import read_animated_glb
from gen4d.models.preflight import PackageRequirement
from gen4d.recipes import text2video4d
from gen4d.recipes.text2video4d import build_config, run_text2video4d

pytestmark = pytest.mark.usefixtures("tiny_models", "one_thread")

TINY = [
    "video.prompt=a corgi running", "video.height=32", "video.width=32", "video.steps=2", "video.decode_chunk=8",
    "segmenter=plain",
    "dg4d.size=64", "dg4d.static.iterations=2", "dg4d.dynamic.iterations=2", "dg4d.static.views=1", "dg4d.dynamic.views=1",
    "dg4d.static.resolutions=[64]", "dg4d.dynamic.resolutions=[64]", "dg4d.init_points=300", "dg4d.export.mesh_resolution=24",
    "dg4d.export.video_size=32", "dg4d.export.video_frames=3", "dg4d.export.mesh_threshold=0.05",
]


# ----------------------------------------------------------------------------------------------- segmentation
def _object_on_white(h=96, w=128, seed=0):
    """uint8 RGB: an anti-aliased red ellipse with a white spot inside (a hole the colour of the background), a
    small dark distractor square and JPEG-like noise, on white. Returns the image and the true object mask
    (coverage >= 1/2, the spot included)."""
    sub = 4  # 4 x 4 samples per pixel: partial coverage along the outline
    yy, xx = (np.mgrid[: h * sub, : w * sub] + 0.5) / sub
    inside = ((xx - 70) / 36) ** 2 + ((yy - 50) / 26) ** 2 <= 1
    coverage = inside.reshape(h, sub, w, sub).mean(axis=(1, 3))[..., None]
    img = coverage * np.array([200.0, 60.0, 40.0]) + (1 - coverage) * 255.0
    py, px = np.mgrid[:h, :w] + 0.5
    img[(px - 70) ** 2 + (py - 50) ** 2 <= 8**2] = 255.0
    img[6:12, 6:12] = (20, 20, 20)
    img += np.random.default_rng(seed).normal(0.0, 3.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), coverage[..., 0] >= 0.5


def _edge_band(mask, width):
    """Pixels within ``width`` (4-neighbour steps) of the outline of ``mask``."""
    grown, shrunk = mask.copy(), mask.copy()
    for _ in range(width):
        grown = grown | np.roll(grown, 1, 0) | np.roll(grown, -1, 0) | np.roll(grown, 1, 1) | np.roll(grown, -1, 1)
        shrunk = shrunk & np.roll(shrunk, 1, 0) & np.roll(shrunk, -1, 0) & np.roll(shrunk, 1, 1) & np.roll(shrunk, -1, 1)
    return grown & ~shrunk


def test_plain_background_segmenter_on_a_synthetic_frame():
    rgb, truth = _object_on_white()
    alpha = segment_plain_background(rgb)
    mask = alpha > 0.5
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.97, iou
    assert not mask[6:12, 6:12].any()  # the smaller component is dropped
    assert mask[45:55, 65:75].all()  # the enclosed white spot is filled
    soft = (alpha > 0.02) & (alpha < 0.98)
    assert soft.any() and soft[~_edge_band(truth, 2)].sum() == 0  # partial alpha only along the outline
    assert segment_plain_background(np.full((32, 32, 3), 255, np.uint8)).max() == 0  # nothing there


def test_plain_segmenter_in_the_video_loader(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        rgb, _ = _object_on_white(seed=i)
        Image.fromarray(np.roll(rgb, 4 * i, axis=1)).save(folder / f"frame_{i}.png")
    frames = load_video_frames(folder, size=48, remove_background=True, segmenter="plain")
    assert frames.shape == (4, 4, 48, 48)
    assert float(frames[:, 3].amin()) == 0.0 and float(frames[:, 3].amax()) == 1.0
    assert float(frames[:, 3, 24, 24 - 8 : 24 + 8].mean()) > 0.9  # the object is centred
    image = load_image_rgba(folder / "frame_0.png", size=48, remove_background=True, segmenter="plain")
    cols = torch.nonzero((image[3] > 0.5).any(dim=0)).flatten()
    width = int(cols[-1] - cols[0] + 1)  # the ellipse's longer side spans (1 - border_ratio) of the canvas
    assert abs(width - 48 * (1 - 0.2)) <= 1.5 and abs(float(cols.float().mean()) + 0.5 - 24) <= 1.0
    with pytest.raises(Gen4DError, match="segmenter"):
        load_video_frames(folder, remove_background=True, segmenter="magic")


def test_segmenter_choice(monkeypatch):
    monkeypatch.setattr(preprocess, "rembg_available", lambda: False)
    assert resolve_segmenter("auto") == "plain" and resolve_segmenter("plain") == "plain"
    # an explicit rembg is the preflight's to check: the recipe names it with its install command
    needs = text2video4d.requirements(build_config("default", ["video.prompt=a", "segmenter=rembg"]))
    assert any(isinstance(r, PackageRequirement) and r.module == "rembg" and "pip install" in r.install for r in needs)
    assert not any(isinstance(r, PackageRequirement) for r in text2video4d.requirements(build_config("default", ["video.prompt=a"])))
    monkeypatch.setattr(preprocess, "rembg_available", lambda: True)
    assert resolve_segmenter("auto") == "rembg"
    with pytest.raises(Gen4DError, match="segmenter must be"):
        resolve_segmenter("scissors")


def test_build_config_shortcuts():
    cfg = build_config("fast", ["video.prompt=a"], {"seed": 3, "device": "cpu", "iters": 9})
    assert cfg.video.seed == cfg.dg4d.seed == 3 and cfg.video.device == cfg.dg4d.device == "cpu"
    assert (cfg.dg4d.static.iterations, cfg.dg4d.dynamic.iterations) == (4, 5)
    assert cfg.dg4d.static.views == 4  # the dg4d preset, applied to the nested config
    assert cfg.video.prompt_suffix == ", on a white background" and cfg.dg4d.mode == "video"


# ----------------------------------------------------------------------------------------------- end to end
def _check_run(out, frames):
    """Every export of a finished run with ``frames`` generated frames, and the video stage's files."""
    ex = out / "exports"
    assert len(list((ex / "ply").glob("frame_*.ply"))) == frames
    assert len(list((ex / "mesh").glob("frame_*.obj"))) == frames
    assert len(list((ex / "mesh").glob("frame_*.glb"))) == frames
    assert len(read_animated_glb(ex / "animated.glb").targets) == frames - 1  # frame 0 is the base mesh
    assert read_video(ex / "orbit.mp4").shape[0] == 3
    video = out / "stages" / "video"
    assert read_video(video / "video.mp4").shape == (frames, 32, 32, 3)
    assert read_video(video / "video.gif").shape[0] == frames
    cut = sorted((video / "frames").glob("frame_*.png"))
    assert len(cut) == frames
    alpha = np.stack([np.asarray(Image.open(p))[..., 3] for p in cut])
    assert alpha.shape == (frames, 64, 64) and alpha.min() == 0 and alpha.max() == 255  # segmented
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["driving_frames"] == frames
    assert metrics["video"]["prompt"] == "a corgi running, on a white background"
    assert metrics["video"]["segmenter"] == "plain" and metrics["video"]["frames"] == frames
    config = (out / "config.yaml").read_text()
    assert f"input: {video / 'frames'}" in config and "mode: video" in config
    return metrics


def test_text_to_video_to_4d_with_16_frames_writes_every_export(tmp_path):
    out = tmp_path / "run"
    metrics = run_text2video4d(build_config("default", [*TINY, "video.num_frames=16"], {"seed": 1}), out, quiet=True)
    assert metrics["driving_frames"] == 16
    _check_run(out, 16)


def test_8_frames_resumed_after_the_video_stage_without_regenerating_it(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = build_config("default", [*TINY, "video.num_frames=8", "dg4d.checkpoint_every=1"])
    assert run_text2video4d(cfg, out, quiet=True, stop_after_step=1) == {}  # as if killed after static step 1
    frames = out / "stages" / "video" / "frames"
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in frames.iterdir()}
    assert len(digest) == 8 and json.loads((out / "stages" / "video" / "state.json").read_text())["complete"]

    def fail(*args, **kwargs):
        raise AssertionError("the video was generated again")

    monkeypatch.setattr(text2video4d, "generate_video", fail)
    metrics = run_text2video4d(cfg, out, quiet=True)
    assert metrics["driving_frames"] == 8 and len(metrics["exports"]["ply"]) == 8
    _check_run(out, 8)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in frames.iterdir()} == digest
    log = (out / "log.txt").read_text()
    assert log.count("stage video: generating") == 1 and "stage video: complete, reusing it" in log
    assert "stage static: resuming at step 1" in log


def test_bad_options_fail_before_writing(tmp_path):
    for overrides, pattern in ((["video.prompt=' '"], "no prompt"), (["segmenter=scissors"], "segmenter"), (["video.noise_prior=0.5"], "needs a clip")):
        out = tmp_path / "run"
        with pytest.raises(Gen4DError, match=pattern):
            run_text2video4d(build_config("default", [*TINY, *overrides]), out, quiet=True)
        assert not out.exists()
