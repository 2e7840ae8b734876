"""End-to-end reconstruction on a tiny synthetic scene: outputs, resume determinism, kill + rerun, bad input."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from gen4d.cli import main
from gen4d.data.dnerf import load_dnerf
from gen4d.data.synthetic import write_synthetic_scene
from gen4d.data.videos import read_video
from gen4d.eval.metrics import psnr
from gen4d.recipes.reconstruct import TrainingData, WindowPace, build_config, curriculum_width, run_reconstruct, time_window

TINY = [
    "train.iterations=24", "train.static_fraction=0.25", "train.checkpoint_every=4", "train.preview_every=12",
    "train.batch_size=2", "densify.refine_start=2", "densify.refine_every=3", "densify.max_gaussians=400",
    "model.init_points=200", "deformation.hexplane.resolution=[8,8,8,4]", "deformation.hexplane.feature_dim=4",
    "deformation.hidden_dim=16", "export.mesh_resolution=24", "export.video_size=32", "export.video_frames=4",
    "export.frames=3", "export.mesh_threshold=0.05",
]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene")
    write_synthetic_scene("bouncing_balls", path, resolution=24, train_views=4, train_times=3, test_views=2, seed=0)
    return path


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def final_params(run: Path) -> dict:
    tensors = load_file(str(run / "stages" / "dynamic" / "checkpoint.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def test_cli_reconstruct_writes_metrics_eval_views_and_exports(scene_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["reconstruct", str(scene_dir), "--out", str(out), "--quiet", *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "ssim", "seconds", "num_gaussians", "iterations"):
        assert key in metrics
    assert metrics["iterations"] == 24
    state = json.loads((out / "stages" / "dynamic" / "state.json").read_text())
    assert metrics["num_gaussians"] == state["num_gaussians"]

    # Every test view is written under its file_path basename; recomputing PSNR from the PNGs agrees.
    test = load_dnerf(scene_dir, "test")
    rendered = torch.stack([torch.from_numpy(np.array(Image.open(out / "eval" / "test" / f"{n}.png"))).float() / 255 for n in test.names])
    assert rendered.shape == test.images.shape
    assert abs(float(psnr(rendered, test.images).mean()) - metrics["psnr"]) < 0.3

    exports = out / "exports"
    assert len(list((exports / "ply").glob("*.ply"))) == 3
    assert len(list((exports / "mesh").glob("*.obj"))) == 3
    assert (exports / "animated.glb").stat().st_size > 0
    assert read_video(exports / "orbit.mp4").shape[0] == 4
    assert len(list((out / "stages" / "dynamic" / "preview").glob("*.png"))) >= 1
    assert (out / "config.yaml").exists() and (out / "log.txt").exists()

    # Rerunning the finished command changes no parameter; `gen4d export` re-exports one format.
    before = final_params(out)
    assert main(["reconstruct", str(scene_dir), "--out", str(out), "--quiet", *TINY]) == 0
    after = final_params(out)
    assert all(torch.equal(before[k], after[k]) for k in before)
    (exports / "ply" / "frame_0000.ply").unlink()
    assert main(["export", str(out), "--format", "ply", "--quiet"]) == 0
    assert (exports / "ply" / "frame_0000.ply").exists()


def test_resume_after_interruption_gives_identical_parameters(scene_dir, tmp_path):
    cfg = build_config("default", TINY + ["export.formats=[ply]"], {"data": str(scene_dir)})
    run_reconstruct(cfg, tmp_path / "straight", quiet=True)
    # Interrupted inside the dynamic stage (step 10 = 6 static + 4 dynamic), then resumed by a rerun.
    assert run_reconstruct(cfg, tmp_path / "resumed", quiet=True, stop_after_step=10) == {}
    state = json.loads((tmp_path / "resumed" / "stages" / "dynamic" / "state.json").read_text())
    assert state["step"] == 4 and not state["complete"]
    run_reconstruct(cfg, tmp_path / "resumed", quiet=True)
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = (tmp_path / "resumed" / "log.txt").read_text()
    assert "resuming at step 4" in log


def test_window_pace_from_the_data_waits_for_the_edges_and_resumes_identically(tmp_path):
    data = tmp_path / "mono"
    write_synthetic_scene("bouncing_balls", data, resolution=16, train_times=16, test_views=2, seed=0, layout="monocular")
    over = TINY + ["export.formats=[]", "train.iterations=40", "train.static_fraction=0.1", "train.canonical_window=0.2",
                   "train.time_curriculum=0.25", "train.slowest_curriculum=0.8", "train.pace_tolerance=1.0", "train.edge_band=0.15"]
    cfg = build_config("default", over, {"data": str(data)})
    run_reconstruct(cfg, tmp_path / "straight", quiet=True)
    assert run_reconstruct(cfg, tmp_path / "resumed", quiet=True, stop_after_step=16) == {}
    state = json.loads((tmp_path / "resumed" / "stages" / "dynamic" / "state.json").read_text())
    pace = state["extra"]
    assert state["step"] == 12 and pace["edge_error"] > 0 and pace["inner_error"] > 0
    # newly reached frames fit worse than those inside: the window waited, behind the fixed pace's width
    assert pace["width"] < curriculum_width(12, 36, 0.2, 0.25) and pace["width"] >= curriculum_width(11, 36, 0.2, 0.8)
    run_reconstruct(cfg, tmp_path / "resumed", quiet=True)
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the step that reached the whole clip is logged once, the same in both runs
    reached = [[line.split(" ", 2)[2] for line in (tmp_path / run / "log.txt").read_text().splitlines() if "whole clip" in line]
               for run in ("straight", "resumed")]
    assert len(reached[0]) == 1 and reached[0] == reached[1]


def test_sigkill_mid_stage_then_rerun_finishes_with_the_same_result(scene_dir, tmp_path):
    args = TINY + ["train.iterations=80", "train.checkpoint_every=2", "export.formats=[ply]"]
    cmd = [sys.executable, "-m", "gen4d.cli", "reconstruct", str(scene_dir), "--quiet"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    straight = tmp_path / "straight"
    subprocess.run(cmd + ["--out", str(straight), *args], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "stages" / "dynamic" / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "metrics.json").exists()

    done = subprocess.run(cmd + ["--out", str(killed), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((killed / "metrics.json").read_text())
    assert np.isfinite(metrics["psnr"])
    a, b = final_params(straight), final_params(killed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_random_background_training_evaluates_on_white(scene_dir, tmp_path):
    train = load_dnerf(scene_dir, "train")
    data = TrainingData(train, torch.device("cpu"), keep_alpha=True)
    # Recompositing the premultiplied colour on white gives back the images the loader composited on white.
    assert torch.allclose(data.premultiplied + (1 - data.alphas), train.images, atol=1e-6)
    out = tmp_path / "run"
    assert main(["reconstruct", str(scene_dir), "--out", str(out), "--quiet", *TINY, "background=random", "export.formats=[ply]"]) == 0
    corner = np.array(Image.open(out / "eval" / "test" / "r_000.png"))[0, 0]
    assert (corner >= 250).all()  # nothing there: the white evaluation background


def test_time_window_and_curriculum_widths():
    assert time_window(0.5, 1.0) is None and time_window(0.0, 1.0) is None
    assert time_window(0.5, 0.2) == pytest.approx((0.4, 0.6))
    assert time_window(0.25, 0.4) == pytest.approx((0.15, 0.55))  # widens in proportion to each end's distance
    assert time_window(0.0, 0.3) == pytest.approx((0.0, 0.3))
    # linear from the canonical window's width at step 0 to the whole clip at `share` of the stage, then constant
    assert [curriculum_width(s, 100, 0.2, 0.5) for s in (0, 25, 50, 80)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    assert curriculum_width(0, 100, 0.2, 0.0) == 1.0


def _pace_widths(pace: WindowPace, steps: int, edge_error) -> list[float]:
    """Widths over ``steps`` steps, each step observing one image near the edge with error ``edge_error(step)`` and
    one inside with error 1."""
    widths = []
    for step in range(steps):
        widths.append(pace.at(step))
        pace.observe(torch.tensor([edge_error(step), 1.0]), torch.tensor([True, False]))
    return widths


def test_window_pace_follows_the_fit_of_the_newly_reached_frames_between_two_paces():
    fixed = [curriculum_width(s, 100, 0.2, 0.25) for s in range(100)]
    slowest = [curriculum_width(s, 100, 0.2, 0.5) for s in range(100)]
    assert _pace_widths(WindowPace(100, 0.2, 0.25), 100, lambda s: 9.0) == fixed  # no tolerance: the fixed pace
    assert _pace_widths(WindowPace(100, 0.2, 0.25, 1.5, 0.5), 100, lambda s: 1.2) == pytest.approx(fixed)  # fitted
    assert _pace_widths(WindowPace(100, 0.2, 0.25, 1.5, 0.5), 100, lambda s: 3.0) == pytest.approx(slowest)  # never fitted
    # the edge fits badly between steps 10 and 30: the window waits there (its running mean falls back within the
    # tolerance a few steps after the errors do), then goes on at the fixed pace's rate
    widths = _pace_widths(WindowPace(100, 0.2, 0.25, 1.5, 0.5, momentum=0.5), 100, lambda s: 3.0 if 10 <= s < 30 else 1.0)
    step = fixed[1] - fixed[0]
    assert widths[:11] == pytest.approx(fixed[:11])
    assert widths[11] == widths[10] and widths[30] == pytest.approx(max(widths[10], slowest[30]))
    assert widths[40] - widths[35] == pytest.approx(5 * step) and widths[-1] == 1.0
    assert all(b >= a for a, b in zip(widths, widths[1:])) and all(w >= s - 1e-12 for w, s in zip(widths, slowest))
    # its state carries a run across a checkpoint: resumed at step 20, the widths are the uninterrupted run's
    first = WindowPace(100, 0.2, 0.25, 1.5, 0.5)
    errors = lambda s: 3.0 if s % 7 < 3 else 1.0  # noqa: E731
    straight = _pace_widths(WindowPace(100, 0.2, 0.25, 1.5, 0.5), 60, errors)
    head = _pace_widths(first, 20, errors)
    second = WindowPace(100, 0.2, 0.25, 1.5, 0.5)
    second.load(json.loads(json.dumps(first.state())))
    tail = []
    for s in range(20, 60):
        tail.append(second.at(s))
        second.observe(torch.tensor([errors(s), 1.0]), torch.tensor([True, False]))
    assert head + tail == straight


def test_sampler_keeps_to_the_time_window_and_is_unchanged_without_one(tmp_path):
    write_synthetic_scene("bouncing_balls", tmp_path, resolution=8, train_times=20, test_views=1, seed=0, layout="monocular")
    train = load_dnerf(tmp_path, "train")
    data = TrainingData(train, torch.device("cpu"))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    seen = torch.cat([data.sample(2, g1, (0.3, 0.5)) for _ in range(200)])
    times = train.times[seen]
    assert ((times >= 0.3) & (times <= 0.5)).all()
    assert len(torch.unique(times)) == int(((train.times >= 0.3) & (train.times <= 0.5)).sum())  # every one reached
    # a window between two frames: the nearest frame's images
    nearest = train.times[(train.times - 0.501).abs().argmin()]
    assert (train.times[torch.cat([data.sample(2, g1, (0.501, 0.502)) for _ in range(20)])] == nearest).all()
    # no window: the same draws as a sampler that has never heard of windows (index arithmetic of the whole set)
    draws = [data.sample(2, g2) for _ in range(50)]
    g3 = torch.Generator().manual_seed(0)
    for d in draws:
        first = int(torch.randint(len(train.times), (1,), generator=g3))
        assert int(d[0]) == first
        torch.testing.assert_close(d[1:], torch.randint(len(train.times), (1,), generator=g3))



def test_edge_band_holds_the_times_last_reached_and_edge_share_draws_from_it(tmp_path):
    write_synthetic_scene("bouncing_balls", tmp_path, resolution=8, train_times=21, test_views=1, seed=0, layout="monocular")
    train = load_dnerf(tmp_path, "train")
    data = TrainingData(train, torch.device("cpu"))
    t = train.times
    band = data.edge_band((0.3, 0.7), 0.06)
    assert set(t[band].tolist()) == set(t[((t >= 0.3) & (t <= 0.36)) | ((t >= 0.64) & (t <= 0.7))].tolist())
    assert set(t[data.edge_band((0.0, 0.4), 0.06)].tolist()) == set(t[(t >= 0.34) & (t <= 0.4)].tolist())  # 0 reaches nothing new
    assert data.edge_band(None, 0.06) is None and data.edge_band((0.3, 0.7), 0.0) is None
    g = torch.Generator().manual_seed(0)
    firsts = torch.stack([data.sample(2, g, (0.3, 0.7), band, 1.0)[0] for _ in range(100)])
    assert torch.isin(firsts, band).all()
    seconds = torch.cat([data.sample(2, g, (0.3, 0.7), band, 1.0)[1:] for _ in range(100)])
    assert (~torch.isin(seconds, band)).any() and ((t[seconds] >= 0.3) & (t[seconds] <= 0.7)).all()  # the rest: the window
    half = torch.stack([data.sample(2, g, (0.3, 0.7), band, 0.5)[0] for _ in range(400)])
    share = float(torch.isin(half, band).float().mean())
    in_band = len(band) / int(((t >= 0.3) & (t <= 0.7)).sum())
    assert abs(share - (0.5 + 0.5 * in_band)) < 0.08
    # edge_share 0 draws exactly what a sampler without a band draws
    ga, gb = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(20):
        assert torch.equal(data.sample(2, ga, (0.3, 0.7), band, 0.0), data.sample(2, gb, (0.3, 0.7)))


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("option, pattern", [("train.slowest_curriculum=1.5", "slowest_curriculum must lie in"),
                                             ("train.pace_tolerance=-1", "pace_tolerance must be 0")])
def test_bad_schedule_options_one_line_exit_2_nothing_written(scene_dir, tmp_path, capsys, option, pattern):
    out = tmp_path / "run"
    assert main(["reconstruct", str(scene_dir), "--out", str(out), "--quiet", *TINY, option]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(pattern, err) and len(err.splitlines()) == 1
    assert not out.exists()


def _write_frames(root: Path, frames_train, size=(8, 8), sizes=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "train").mkdir(exist_ok=True)
    for i, _ in enumerate(frames_train):
        s = sizes[i] if sizes else size
        Image.fromarray(np.zeros((s[1], s[0], 4), np.uint8)).save(root / "train" / f"r_{i:03d}.png")
    doc = {"camera_angle_x": 0.7, "frames": frames_train}
    (root / "transforms_train.json").write_text(json.dumps(doc))
    (root / "transforms_test.json").write_text(json.dumps(doc))


def _frame(i, time_=0.0):
    f = {"file_path": f"./train/r_{i:03d}", "transform_matrix": np.eye(4).tolist()}
    if time_ is not None:
        f["time"] = time_
    return f


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing", "does not exist|not found"),
        ("malformed", "JSON|json"),
        ("sizes", "size"),
        ("no_time", "time"),
        ("empty", "no frames|empty"),
    ],
)
def test_bad_input_one_line_exit_2_and_existing_run_untouched(tmp_path, capsys, case, pattern, scene_dir):
    data = tmp_path / "data"
    if case == "malformed":
        _write_frames(data, [_frame(0)])
        (data / "transforms_train.json").write_text('{"camera_angle_x": 0.7, "frames": [')
    elif case == "sizes":
        _write_frames(data, [_frame(0), _frame(1, 1.0)], sizes=[(8, 8), (10, 8)])
    elif case == "no_time":
        _write_frames(data, [_frame(0), _frame(1, None)])
    elif case == "empty":
        _write_frames(data, [])
    # An existing run directory with content: a bad command must leave every byte as it was.
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("data: somewhere\n")
    (out / "metrics.json").write_text('{"psnr": 30}\n')
    before = tree_digest(out)
    code = main(["reconstruct", str(data), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    import re

    assert re.search(pattern, err), err
    assert tree_digest(out) == before


def test_changed_options_on_an_existing_run_are_refused(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reconstruct", str(scene_dir), "--out", str(out), "--quiet", *TINY, "export.formats=[ply]"]) == 0
    before = tree_digest(out)
    assert main(["reconstruct", str(scene_dir), "--out", str(out), "--quiet", *TINY, "export.formats=[ply]", "loss.ssim_weight=0.5"]) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "loss.ssim_weight: 0.0 -> 0.5" in err
    assert tree_digest(out) == before


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--iters", "6", "--quiet", "export.frames=2", "export.mesh_resolution=24",
                 "export.video_frames=3", "export.video_size=32", "export.mesh_threshold=0.05"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "metrics.json" in printed and "animated.glb" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 6 and (out / "data" / "transforms_train.json").exists()
