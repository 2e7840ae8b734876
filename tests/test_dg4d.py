"""DreamGaussian4D recipe end to end with tiny models: exports, any frame count, stage resume, bad input."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gen4d.cameras import frame_times, orbit_cameras
from gen4d.cli import main
from gen4d.data.videos import read_video
from gen4d.export.animated_glb import read_animated_glb
from gen4d.export.ply import load_inria_ply, save_inria_ply
from gen4d.gaussians.frame import GaussianFrame
from gen4d.models import registry
from gen4d.recipes.dg4d import build_config, run_dg4d
from gen4d.runs import load_finished_run

pytestmark = pytest.mark.usefixtures("restore_model_set")

TINY = [
    "--models", "tiny", "--quiet", "size=64", "static.iterations=4", "dynamic.iterations=4", "static.views=1", "dynamic.views=1",
    "static.resolutions=[64]", "dynamic.resolutions=[64]", "init_points=300", "checkpoint_every=2", "preview_every=2",
    "export.mesh_resolution=24", "export.video_size=32", "export.video_frames=3", "export.mesh_threshold=0.05",
]


def disc(cx: float, cy: float, size: int = 48, r: int = 10, alpha: bool = True) -> Image.Image:
    y, x = np.mgrid[:size, :size]
    inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, (x * 5).astype(np.uint8), 80
    a = (inside * 255).astype(np.uint8) if alpha else np.zeros((size, size), np.uint8)
    return Image.fromarray(np.dstack([rgb, a]), "RGBA")


def frames_dir(root: Path, count: int, alpha: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        disc(16 + 16 * i / max(count - 1, 1), 24, alpha=alpha).save(root / f"frame_{i}.png")
    return root


def test_image_to_4d_with_a_driving_video_writes_every_export(tmp_path):
    image = tmp_path / "image.png"
    disc(24, 24).save(image)
    out = tmp_path / "run"
    assert main(["image", str(image), "--out", str(out), "--driving-video", str(frames_dir(tmp_path / "frames", 8)), *TINY]) == 0
    ex = out / "exports"
    assert len(list((ex / "ply").glob("*.ply"))) == 8
    assert len(list((ex / "mesh").glob("*.obj"))) == 8
    glb = read_animated_glb(ex / "animated.glb")
    assert len(glb.targets) == 7  # frame 0 is the base mesh, one morph target per other frame
    assert read_video(ex / "orbit.mp4").shape[0] == 3
    textured = read_animated_glb(ex / "textured" / "animated.glb")  # the UV-textured mesh sequence, same frames
    assert len(textured.targets) == 7 and len(list((ex / "textured").glob("frame_*.obj"))) == 8
    assert (ex / "textured" / "material.mtl").exists() and len(list((ex / "textured").glob("*.png"))) == 1
    assert len(list((out / "stages" / "driving" / "frames").glob("*.png"))) == 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["driving_frames"] == 8 and metrics["iterations"] == 8
    # `gen4d export` on this run rebuilds the same asset from the checkpoint: byte-identical animated GLB and PLYs
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in [ex / "animated.glb", *sorted((ex / "ply").glob("*.ply"))]}
    (ex / "animated.glb").unlink()
    assert main(["export", str(out), "--format", "glb", "ply", "--quiet"]) == 0
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in [ex / "animated.glb", *sorted((ex / "ply").glob("*.ply"))]}
    assert after == before


@pytest.mark.parametrize("T", [14, 25])
def test_any_driving_frame_count(tmp_path, T):
    image = tmp_path / "image.png"
    disc(24, 24).save(image)
    out = tmp_path / "run"
    code = main(["image", str(image), "--out", str(out), "--driving-video", str(frames_dir(tmp_path / "frames", T)), *TINY, "export.formats=[ply]"])
    assert code == 0
    assert len(list((out / "exports" / "ply").glob("*.ply"))) == T


def test_driving_video_generated_by_svd_and_video_mode(tmp_path):
    image = tmp_path / "image.png"
    disc(24, 24).save(image)
    out = tmp_path / "svd"
    args = ["driving.alpha=reference", "driving.height=64", "driving.width=64", "driving.steps=2", "driving.num_frames=5", "export.formats=[ply]"]
    assert main(["image", str(image), "--out", str(out), *TINY, *args]) == 0
    assert (out / "stages" / "driving" / "generated.mp4").exists()
    assert len(list((out / "exports" / "ply").glob("*.ply"))) == 5
    out = tmp_path / "video"
    assert main(["video", str(frames_dir(tmp_path / "frames", 8)), "--out", str(out), *TINY, "export.formats=[ply]"]) == 0
    assert len(list((out / "exports" / "ply").glob("*.ply"))) == 8


def test_rerun_after_an_interruption_does_not_redo_the_static_stage(tmp_path):
    image = tmp_path / "image.png"
    disc(24, 24).save(image)
    registry.set_model_set("tiny")
    overrides = [a for a in TINY if "=" in a] + ["export.formats=[ply]"]
    cfg = build_config("default", overrides, {"input": str(image), "driving": {"path": str(frames_dir(tmp_path / "frames", 8))}})
    out = tmp_path / "run"
    assert run_dg4d(cfg, out, quiet=True, stop_after_step=6) == {}  # stopped at dynamic step 2 of 4
    static_ckpt = out / "stages" / "static" / "checkpoint.safetensors"
    digest = hashlib.sha256(static_ckpt.read_bytes()).hexdigest()
    assert json.loads((out / "stages" / "static" / "state.json").read_text())["complete"]
    metrics = run_dg4d(cfg, out, quiet=True)
    assert metrics["iterations"] == 8
    assert hashlib.sha256(static_ckpt.read_bytes()).hexdigest() == digest
    log = (out / "log.txt").read_text()
    assert log.count("stage static: starting") == 1 and "stage dynamic: resuming at step 2" in log


@pytest.mark.parametrize("case, pattern", [("not_image", "not an image"), ("one_frame", "at least 2 frames"), ("no_foreground", "foreground")])
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, case, pattern):
    if case == "not_image":
        path = tmp_path / "image.png"
        path.write_text("this is text")
        cmd = ["image", str(path)]
    elif case == "one_frame":
        cmd = ["video", str(frames_dir(tmp_path / "frames", 1))]
    else:
        cmd = ["video", str(frames_dir(tmp_path / "frames", 4, alpha=False))]
    out = tmp_path / "run"
    assert main([*cmd, "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert pattern in err, err
    assert not out.exists()


def test_static_gaussians_from_a_ply_and_a_frozen_dynamic_stage(tmp_path):
    """The pluggable static slot: start from given Gaussians, skip the static stage, train only the field."""
    import torch
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    n = 200
    frame = GaussianFrame(
        0.3 * torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g), 0.02 + 0.05 * torch.rand(n, 3, generator=g),
        0.2 + 0.6 * torch.rand(n, generator=g), torch.randn(n, 1, 3, generator=g),
    )
    ply = tmp_path / "static.ply"
    save_inria_ply(ply, frame)
    image = tmp_path / "image.png"
    disc(24, 24).save(image)
    out = tmp_path / "run"
    args = [*TINY, "export.formats=[ply]", f"static_ply={ply}", "static.iterations=0", "dynamic.train_gaussians=false"]
    assert main(["image", str(image), "--out", str(out), "--driving-video", str(frames_dir(tmp_path / "frames", 6)), *args]) == 0
    assert not (out / "stages" / "static").exists()
    final = load_file(str(out / "stages" / "dynamic" / "checkpoint.safetensors"))
    loaded = load_inria_ply(ply)
    assert torch.allclose(final["model.gaussians.means"], loaded.means)
    assert torch.allclose(final["model.gaussians.sh0"], loaded.sh[:, :1])
    # the field did train: some deformation parameter moved away from its zero initialisation
    heads = [v for k, v in final.items() if k.startswith("model.deformation.") and "head.2.weight" in k]
    assert heads and any(float(h.abs().max()) > 0 for h in heads)


def test_bench_script_small_run_writes_every_part(tmp_path):
    """``bench/bench_dg4d.py --small``: the whole recipe metered part by part, on the CPU with tiny models."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_dg4d", Path(__file__).resolve().parents[1] / "bench" / "bench_dg4d.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "dg4d.json"
    assert bench.main(["--small", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = {r["part"]: r for r in record["rows"]}
    assert list(rows) == ["zero123 setup", "driving", "static", "dynamic", "refine", "exports", "other"]
    assert all(rows[p]["seconds"] > 0 for p in rows)
    assert sum(r["seconds"] for r in rows.values()) == pytest.approx(record["total_seconds"])
    assert record["total_without_refine_seconds"] == pytest.approx(record["total_seconds"] - rows["refine"]["seconds"])
    assert record["peak_gib"] is None and record["driving_frames"] == 4  # CPU: no CUDA peak; SVD made 4 frames


def _centroid_x(alpha: np.ndarray) -> float:
    w = alpha / alpha.sum()
    return float((w * np.arange(alpha.shape[1])[None, :]).sum())


def test_dynamic_stage_follows_the_driving_video(tmp_path):
    """Without score distillation, the asset must reproduce its input: a disc sliding right by a third of the frame.
    The rendered alpha's centroid at the input camera follows the driving frames' (the static stage alone would leave
    it where frame 0 has it), and metrics.json reports the input-view fit."""
    import torch

    out = tmp_path / "run"
    args = [
        "--models", "tiny", "--quiet", "size=32", "static.sds_weight=0", "dynamic.sds_weight=0", "static.iterations=100", "dynamic.iterations=150",
        "init_points=500", "export.formats=[ply]", "checkpoint_every=1000", "preview_every=1000",
    ]
    assert main(["video", str(frames_dir(tmp_path / "frames", 8)), "--out", str(out), *args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["psnr"] > 22.0 and len(metrics["psnr_per_frame"]) == 8
    targets = [np.asarray(Image.open(p), dtype=np.float64)[..., 3] / 255 for p in sorted((out / "stages/driving/frames").glob("*.png"))]
    finished = load_finished_run(out, device="cpu")
    radius = finished.config["camera_radius"]
    cams = orbit_cameras([0.0] * 8, 0.0, radius, np.radians(49.1), 32, 32, times=frame_times(8).float())
    with torch.no_grad():
        alpha = finished.scene.render(cams).alpha[..., 0].numpy()
    target_x = np.array([_centroid_x(a) for a in targets])
    render_x = np.array([_centroid_x(a) for a in alpha])
    assert target_x[-1] - target_x[0] > 6.0  # the input moves
    np.testing.assert_allclose(render_x, target_x, atol=1.0)
