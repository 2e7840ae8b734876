"""Consistent4D layout, camera conventions, input alignment and ``run_eval`` on a tiny synthetic benchmark.

The synthetic object is a small asymmetric 4D Gaussian scene (coloured markers on different sides, a random
deformation field) rendered with gen4d's renderer: at the input camera (azimuth 0) as the input video and at the
four evaluation cameras as ground truth, both through cameras built here from threestudio's formula (numpy), not
through the library's camera code.
"""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gen4d import Gen4DError
from gen4d.cameras import (
    Cameras,
    frame_times,
    opengl_to_opencv,
    orbit_c2w,
    orbit_cameras,
)
from gen4d.config import config_yaml
from gen4d.data.consistent4d import (
    EVAL_AZIMUTHS_DEG,
    FOVY_DEG,
    consistent4d_cameras,
    consistent4d_input_frames,
    find_object,
    frame_files,
    input_alignment,
    list_objects,
    read_frames,
    threestudio_c2w,
)
from gen4d.data.preprocess import load_video_frames
from gen4d.eval.metrics import psnr
from gen4d.fields.deformation import DeformationConfig
from gen4d.gaussians.model import GaussianModel
from gen4d.models import registry
from gen4d.recipes.dg4d import DG4DConfig
from gen4d.recipes.evaluate import (
    build_eval_config,
    load_metric_models,
    run_eval,
    score_renders,
)
from gen4d.runs import AssetInfo, RunDir, load_finished_run, read_asset_info, write_asset_info
from gen4d.scene import Scene4D

pytestmark = pytest.mark.usefixtures("tiny_models")

T = 6  # frames per video
GT_SIZE = 48  # ground-truth and input frame side
RUN_SIZE = 64  # the run's recentred input side
FAST = ["metric_size=0", "fvd_resolution=32", "batch_size=24"]


# --------------------------------------------------------------------------------------------------- helpers


def toy_scene(dynamic: bool = True, offset=(0.0, 0.0, 0.0)) -> Scene4D:
    """A grey body with a red marker on +y, green on -x, blue on top and yellow at (+x, -y, down)."""
    g = torch.Generator().manual_seed(0)
    body = 0.18 * torch.randn(14, 3, generator=g)
    markers = torch.tensor([[0.0, 0.38, 0.05], [-0.34, 0.0, 0.0], [0.0, 0.0, 0.36], [0.22, -0.26, -0.18]])
    points = torch.cat([body, markers]) + torch.tensor(offset)
    colors = torch.cat([torch.full((14, 3), 0.5), torch.tensor([[1.0, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.2, 1.0], [1.0, 0.9, 0.0]])])
    scene = Scene4D(GaussianModel.from_points(points, colors, sh_degree=0, init_scale=0.07, init_opacity=0.9))
    if dynamic:
        scene.attach_deformation(DeformationConfig(), seed=0)
        with torch.no_grad():  # a visible, time-dependent motion
            for p in scene.deformation.hexplane.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=g))
            head = scene.deformation.means_head[2]
            head.weight.copy_(0.08 * torch.randn(head.weight.shape, generator=g))
    return scene.eval()


def similar_scene(scene: Scene4D, scale: float, target) -> Scene4D:
    """``x -> scale x + target`` applied to the whole 4D scene (canonical Gaussians and their motion)."""
    t = {k: v.detach().clone() for k, v in scene.tensors().items()}
    target = torch.tensor(target, dtype=torch.float32)
    t["gaussians.means"] = scale * t["gaussians.means"] + target
    t["gaussians.log_scales"] = t["gaussians.log_scales"] + math.log(scale)
    if "deformation.aabb_min" in t:
        t["deformation.aabb_min"] = scale * t["deformation.aabb_min"] + target
        t["deformation.aabb_max"] = scale * t["deformation.aabb_max"] + target
        t["deformation.means_head.2.weight"] = scale * t["deformation.means_head.2.weight"]
        t["deformation.means_head.2.bias"] = scale * t["deformation.means_head.2.bias"]
    return Scene4D.from_tensors(t, 0, DeformationConfig()).eval()


def c4d_cameras(azimuth_deg: float, times, size: int = GT_SIZE, distance: float = 2.0, fovy_deg: float = FOVY_DEG) -> Cameras:
    """threestudio's orbit camera written out in numpy (OpenGL c2w -> OpenCV), one camera per time."""
    az, el = math.radians(azimuth_deg), 0.0
    eye = distance * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    fwd = -eye / np.linalg.norm(eye)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -fwd, eye
    c2w = c2w @ np.diag([1.0, -1.0, -1.0, 1.0])
    f = 0.5 * size / math.tan(math.radians(fovy_deg) / 2)
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    n = len(times)
    vm = torch.tensor(np.linalg.inv(c2w), dtype=torch.float32).expand(n, 4, 4).clone()
    return Cameras(vm, torch.tensor(K, dtype=torch.float32).expand(n, 3, 3).clone(), size, size, torch.tensor(times, dtype=torch.float32))


@torch.no_grad()
def render_rgba(scene: Scene4D, cams: Cameras) -> np.ndarray:
    """uint8 RGBA ``[C, H, W, 4]`` with straight alpha (as Consistent4D's frames)."""
    out = scene.render(cams, background=torch.zeros(3))
    a = out.alpha.clamp(0, 1)
    rgb = torch.where(a > 1e-6, out.rgb / a.clamp_min(1e-6), torch.zeros_like(out.rgb)).clamp(0, 1)
    return (torch.cat([rgb, a], -1) * 255 + 0.5).to(torch.uint8).numpy()


def write_frames(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f, "RGBA").save(folder / f"{i}.png")
    return folder


def write_dataset(root: Path, scene: Scene4D, name: str = "toy") -> Path:
    """``root/input/<name>/<i>.png`` and ``root/eval_gt/<name>/eval_<k>/<i>.png`` (Consistent4D's layout)."""
    times = frame_times(T).tolist()
    write_frames(root / "input" / name, render_rgba(scene, c4d_cameras(0.0, times)))
    for k, az in enumerate(EVAL_AZIMUTHS_DEG):
        write_frames(root / "eval_gt" / name / f"eval_{k}", render_rgba(scene, c4d_cameras(az, times)))
    return root


def write_run(run_dir: Path, scene: Scene4D, input_dir: Path, n_frames: int = T) -> Path:
    """A finished video->4D run directory as ``gen4d video`` leaves it (config, final checkpoint, driving frames)."""
    cfg = DG4DConfig(input=str(input_dir), mode="video", size=RUN_SIZE, camera_radius=2.5)
    run = RunDir(run_dir)
    run.prepare(config_yaml(cfg), "gen4d video (test)")
    run.save_checkpoint("static", {f"model.{k}": v for k, v in scene.tensors().items() if k.startswith("gaussians.")}, {"stage": "static", "complete": True})
    run.save_checkpoint("dynamic", {f"model.{k}": v for k, v in scene.tensors().items()}, {"stage": "dynamic", "complete": True})
    write_asset_info(run, AssetInfo(final_stage="dynamic", frames=n_frames, radius=cfg.camera_radius, deformation=dataclasses.asdict(scene.deformation.config)))
    frames = run.stage_dir("driving") / "frames"
    frames.mkdir(parents=True)
    for i in range(n_frames):
        Image.new("RGBA", (4, 4)).save(frames / f"frame_{i:04d}.png")
    run.write_metrics({"seconds": 1.0, "num_gaussians": len(scene.gaussians)})
    return run_dir


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    """A Consistent4D-layout dataset and the run a perfect reconstruction of its object would be."""
    root = tmp_path_factory.mktemp("c4d")
    scene = toy_scene(offset=(0.0, 0.12, -0.1))  # off-centre: the run's recentring matters
    write_dataset(root, scene)
    frames = consistent4d_input_frames(root, "toy")
    al = input_alignment(frames, RUN_SIZE, 0.2, run_distance=2.5, run_fov_deg=FOVY_DEG)
    run = write_run(tmp_path_factory.mktemp("runs") / "run", similar_scene(scene, al.scale, al.target), root / "input" / "toy")
    return root, run, scene, al


# --------------------------------------------------------------------------------------------------- conventions


def test_worked_example_threestudio_to_gen4d():
    c2w = threestudio_c2w(15.0, 0.0, 2.0)
    c, s = math.cos(math.radians(15)), math.sin(math.radians(15))
    expected = torch.tensor([[-s, 0.0, c, 2 * c], [c, 0.0, s, 2 * s], [0.0, 1.0, 0.0, 0.0], [0, 0, 0, 1.0]], dtype=torch.float64)
    assert torch.allclose(c2w, expected, atol=1e-12)
    assert torch.allclose(c2w[:3, 3], torch.tensor([1.931852, 0.517638, 0.0], dtype=torch.float64), atol=1e-6)
    # Same azimuth, elevation and distance; OpenGL -> OpenCV axes.
    for az, el in [(-75.0, 0.0), (15.0, 0.0), (105.0, 0.0), (195.0, 0.0), (33.0, 20.0)]:
        assert torch.allclose(opengl_to_opencv(threestudio_c2w(az, el, 2.0)), orbit_c2w(az, el, 2.0), atol=1e-12)
    # The input camera (azimuth 0): image right is world +y, image down is world -z.
    cam0 = orbit_c2w(0.0, 0.0, 2.0)
    assert torch.allclose(cam0[:3, 0], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(cam0[:3, 1], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64), atol=1e-12)
    # The library's cameras: eye at distance 2 and the given azimuth, vertical fov 49.1 on a non-square image.
    cams = consistent4d_cameras(width=60, height=40, times=[0.0, 1.0])
    assert [len(c) for c in cams] == [2, 2, 2, 2]
    eye = cams[1].centers[0].double()
    assert torch.allclose(eye, torch.tensor([2 * c, 2 * s, 0.0], dtype=torch.float64), atol=1e-5)
    assert cams[0].Ks[0, 1, 1] == pytest.approx(20.0 / math.tan(math.radians(FOVY_DEG / 2)), rel=1e-6)
    assert cams[0].Ks[0, 0, 0] == pytest.approx(float(cams[0].Ks[0, 1, 1]), rel=1e-6)


def test_eval_cameras_match_consistent4d_renders_of_an_asymmetric_scene():
    scene = toy_scene(dynamic=False)
    times = [0.0]
    ours = consistent4d_cameras(EVAL_AZIMUTHS_DEG, width=GT_SIZE, height=GT_SIZE, times=times)
    mirrored = consistent4d_cameras([-a for a in EVAL_AZIMUTHS_DEG], width=GT_SIZE, height=GT_SIZE, times=times)
    white = torch.ones(3)
    with torch.no_grad():
        for az, cam, mirror in zip(EVAL_AZIMUTHS_DEG, ours, mirrored):
            gt = scene.render(c4d_cameras(az, times), background=white).rgb
            assert float(psnr(scene.render(cam, background=white).rgb, gt)) > 60
            # The scene is not mirror-symmetric: the other azimuth sign would be caught.
            assert float(psnr(scene.render(mirror, background=white).rgb, gt)) < 30


def test_alignment_reproduces_the_recentred_input(tmp_path):
    """The aligned scene seen by the run's input camera is what gen4d video's preprocessing made of the input."""
    scene = toy_scene(dynamic=False, offset=(0.0, 0.25, 0.15))  # right of and above the centre, small in frame
    folder = write_frames(tmp_path / "input", render_rgba(scene, c4d_cameras(0.0, [0.0, 1.0], size=96)))
    recentred = load_video_frames(folder, size=RUN_SIZE, border_ratio=0.2)[0]  # [4, S, S]
    al = input_alignment(frame_files(folder), RUN_SIZE, 0.2, run_distance=2.5, run_fov_deg=FOVY_DEG)
    assert al.zoom > 1.2 and al.shift[0] < 0 and al.shift[1] > 0  # enlarged, moved left and down onto the centre
    cam = orbit_cameras([0.0], [0.0], 2.5, math.radians(FOVY_DEG), RUN_SIZE, RUN_SIZE)

    def iou(s: Scene4D) -> float:
        with torch.no_grad():
            a = s.render(cam, background=torch.ones(3)).alpha[0, ..., 0] > 0.5
        b = recentred[3] > 0.5
        return float((a & b).sum() / (a | b).sum())

    assert iou(similar_scene(scene, al.scale, al.target)) > 0.9
    assert iou(similar_scene(scene, al.scale, (0.0, 0.0, 0.0))) < 0.6  # without the shift it would not line up
    assert iou(scene) < 0.6


# --------------------------------------------------------------------------------------------------- layout


def test_layout_lookup_from_root_object_gt_and_input_folders(benchmark):
    root = benchmark[0]
    assert list_objects(root) == ["toy"]
    obj = find_object(root, "toy")
    assert obj.views() == ["eval_0", "eval_1", "eval_2", "eval_3"]
    assert [p.name for p in obj.input_frames()] == [f"{i}.png" for i in range(T)]
    assert find_object(root / "eval_gt" / "toy").input_dir == root / "input" / "toy"
    assert find_object(root / "input" / "toy").gt_dir == root / "eval_gt" / "toy"
    # The input folder is what `gen4d video` takes: load_video_frames reads it as it is.
    assert load_video_frames(obj.input_dir, size=32).shape == (T, 4, 32, 32)
    gt = read_frames(obj.view_frames("eval_2"))
    assert gt.shape == (T, GT_SIZE, GT_SIZE, 3) and float(gt.min()) >= 0 and float(gt.max()) == 1.0
    with pytest.raises(Gen4DError, match="no Consistent4D object 'cat'.*toy"):
        find_object(root, "cat")


def test_frame_numbering_must_have_no_gaps(tmp_path):
    folder = write_frames(tmp_path / "v", np.zeros((12, 8, 8, 4), np.uint8))
    assert [p.name for p in frame_files(folder)] == [f"{i}.png" for i in range(12)]  # 2 before 10
    (folder / "7.png").unlink()
    with pytest.raises(Gen4DError, match="7.png is missing"):
        frame_files(folder)


# --------------------------------------------------------------------------------------------------- evaluation


def test_run_eval_scores_a_perfect_run_and_writes_everything(benchmark):
    root, run, _, al = benchmark
    cfg = build_eval_config([f"data={root}", "object=toy", *FAST])
    result = run_eval(cfg, run)
    for m in ("psnr", "ssim", "lpips", "clip", "fvd"):
        assert m in result and math.isfinite(result[m]), m
    # The run is the ground-truth scene moved into the run's world: its renders at the aligned cameras match.
    assert result["psnr"] > 38 and result["ssim"] > 0.97
    assert result["lpips"] < 0.01 and result["clip"] > 0.99
    assert result["frames"] == T and result["views"] == ["eval_0", "eval_1", "eval_2", "eval_3"]
    assert result["alignment"]["scale"] == pytest.approx(al.scale)
    for k in range(4):
        assert len(list((run / "eval" / "consistent4d" / f"eval_{k}").glob("*.png"))) == T
    details = json.loads((run / "eval" / "metrics.json").read_text())
    assert details["psnr"] == pytest.approx(result["psnr"]) and set(details["per_view"]) == set(result["views"])
    top = json.loads((run / "metrics.json").read_text())
    assert top["psnr"] == pytest.approx(result["psnr"]) and top["num_gaussians"] > 0 and "seconds" in top
    assert top["consistent4d"]["fvd"] == pytest.approx(result["fvd"])


def test_renders_against_themselves_and_a_perturbed_ground_truth(benchmark, tmp_path):
    root, run, _, _ = benchmark
    renders = run / "eval" / "consistent4d"
    if not renders.exists():
        run_eval(build_eval_config([f"data={root}", "object=toy", *FAST, "metrics=psnr"]), run)
    cfg = build_eval_config(FAST)
    models = load_metric_models(cfg, ["lpips", "clip", "fvd"], torch.device("cpu"))
    same = score_renders(renders, renders, cfg, models)
    assert same["psnr"] == 100.0 and same["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert same["lpips"] == pytest.approx(0.0, abs=1e-6) and same["clip"] == pytest.approx(1.0, abs=1e-5)
    assert abs(same["fvd"]) < 1e-4
    # A ground truth whose frames are shifted by two pixels scores worse on every metric.
    shifted = tmp_path / "shifted"
    for view in renders.iterdir():
        for f in view.glob("*.png"):
            img = np.roll(np.asarray(Image.open(f).convert("RGB")), 2, axis=1)
            (shifted / view.name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(shifted / view.name / f.name)
    worse = score_renders(renders, shifted, cfg, models)
    assert worse["psnr"] < 35 and worse["ssim"] < same["ssim"] - 0.01
    assert worse["lpips"] > 1e-4 and worse["clip"] < same["clip"] and worse["fvd"] > 10 * abs(same["fvd"])
    # Several objects: Consistent4D's gt/ and pred/ folders, averaged over the objects.
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    shutil.copytree(renders, pred / "a")
    shutil.copytree(renders, pred / "b")
    shutil.copytree(renders, gt / "a")
    shutil.copytree(shifted, gt / "b")
    both = score_renders(pred, gt, build_eval_config([*FAST, "metrics=psnr,ssim"]), models)
    assert set(both["objects"]) == {"a", "b"}
    assert both["psnr"] == pytest.approx((100.0 + worse["psnr"]) / 2)
    assert "lpips" not in both and "fvd" not in both


def test_bad_inputs_raise_one_line_errors(benchmark, tmp_path):
    root, run, scene, _ = benchmark
    cases = []
    # No ground truth for the object.
    no_gt = tmp_path / "no_gt"
    shutil.copytree(root / "input", no_gt / "input")
    cases.append(([f"data={no_gt}", "object=toy"], run, "no ground truth"))
    # Views with different frame counts.
    uneven = tmp_path / "uneven"
    shutil.copytree(root, uneven)
    (uneven / "eval_gt" / "toy" / "eval_3" / f"{T - 1}.png").unlink()
    cases.append(([f"data={uneven}", "object=toy"], run, "different frame counts"))
    # A run fitted to another number of frames.
    other = write_run(tmp_path / "other_run", scene, root / "input" / "toy", n_frames=T + 2)
    cases.append(([f"data={root}", "object=toy"], other, f"fitted to {T + 2} frames"))
    # Not a run; an unknown metric.
    cases.append(([f"data={root}", "object=toy"], tmp_path / "nothing", "not a gen4d run"))
    cases.append(([f"data={root}", "object=toy", "metrics=psnr,fid"], run, "unknown metric"))
    for overrides, run_dir, pattern in cases:
        with pytest.raises(Gen4DError, match=pattern) as e:
            run_eval(build_eval_config([*overrides, *FAST]), run_dir)
        assert "\n" not in str(e.value)
    # Renders missing a view, or with a different frame count.
    renders = tmp_path / "renders"
    shutil.copytree(root / "eval_gt" / "toy", renders)
    shutil.rmtree(renders / "eval_1")
    with pytest.raises(Gen4DError, match="no eval_1 folder"):
        score_renders(renders, root / "eval_gt" / "toy", build_eval_config([*FAST, "metrics=psnr"]))
    shutil.copytree(root / "eval_gt" / "toy" / "eval_1", renders / "eval_1")
    (renders / "eval_1" / "0.png").unlink()
    with pytest.raises(Gen4DError, match="0.png is missing"):
        score_renders(renders, root / "eval_gt" / "toy", build_eval_config([*FAST, "metrics=psnr"]))


def test_missing_metric_weights_name_the_file_to_download(benchmark, tmp_path, monkeypatch):
    root, run, _, _ = benchmark
    registry.set_model_set("real")
    monkeypatch.setenv("GEN4D_CACHE", str(tmp_path / "empty-cache"))
    for metric, pattern in (("lpips", "alex.pth.*https://"), ("fvd", "i3d_pretrained_400.pt.*https://"), ("clip", "openai/clip-vit-base-patch32.*download")):
        with pytest.raises(Gen4DError, match=pattern) as e:
            run_eval(build_eval_config([f"data={root}", "object=toy", f"metrics={metric}", *FAST]), run)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "empty-cache").exists()


def test_load_finished_run_loads_the_final_stage_the_run_names(tmp_path, benchmark):
    _, run, _, _ = benchmark
    finished = load_finished_run(run, device="cpu")
    assert finished.asset.final_stage == "dynamic" and finished.scene.deformation is not None
    assert finished.config["camera_radius"] == 2.5
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ckpt = RunDir(copy).load_checkpoint("dynamic")
    RunDir(copy).save_checkpoint("refine", ckpt[0], {"stage": "refine", "complete": False})
    asset = read_asset_info(RunDir(copy))
    write_asset_info(RunDir(copy), dataclasses.replace(asset, final_stage="refine"))
    with pytest.raises(Gen4DError, match="not finished its refine stage"):
        load_finished_run(copy, device="cpu")
