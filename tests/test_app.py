"""``gen4d app`` without a browser: its handlers run a ``--models tiny`` job end to end (progress, result files), stop
and resume it; hostile upload names stay inside the runs folder; bad uploads give one message, not a traceback; the
page has a tab per command with every recipe of the registry."""

import dataclasses
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_dg4d import disc

from gen4d import Gen4DError
from gen4d.app.handlers import open_job, resume_job, start_job
from gen4d.app.jobs import JobRunner, UploadLimits, check_upload, extract_archive, safe_filename
from gen4d.data.videos import read_video
from gen4d.export.animated_glb import read_animated_glb
from gen4d.export.ply import load_inria_ply
from gen4d.recipes import RECIPES, recipes_for

pytestmark = pytest.mark.usefixtures("restore_model_set")

APP_SETTINGS = """size=64 static.iterations=4 dynamic.iterations=4 static.views=1 dynamic.views=1
static.resolutions=[64] dynamic.resolutions=[64] init_points=300 checkpoint_every=2 preview_every=2
driving.alpha=reference driving.height=64 driving.width=64 driving.steps=2 driving.num_frames=4
export.mesh_resolution=24 export.video_size=32 export.video_frames=3 export.mesh_threshold=0.05 export.formats=[ply,glb,mp4]"""
"""A tiny image -> 4D job (tiny SVD makes 4 driving frames), as typed into the page's settings box."""


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "uploads" / "disc.png"
    path.parent.mkdir()
    disc(24, 24).save(path)
    return path


def files_outside(root: Path, runs: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if runs not in p.parents and p != runs}


@pytest.mark.parametrize("name", ["../../evil.png", "/etc/evil.png", "..\\..\\evil.png", "a/../../../evil.png", "..png", "~/.bashrc.png",
                                  "e\x00vil.png", "x" * 300 + ".png"])
def test_hostile_upload_name_stays_inside_the_runs_folder(tmp_path, image, name):
    runs = tmp_path / "runs"
    runner = JobRunner(runs, "tiny")
    before = files_outside(tmp_path, runs)
    job = runner.new_job("image", "dg4d", str(image), input_name=name)
    copied = Path(job.argv[1])
    assert copied.parent == job.folder / "input" and copied.is_file() and copied.read_bytes() == image.read_bytes()
    assert copied.suffix == ".png" and len(copied.name) <= 100 and copied.resolve().is_relative_to(runs.resolve())
    assert files_outside(tmp_path, runs) == before  # nothing written anywhere else
    assert Path(job.argv[job.argv.index("--out") + 1]).is_relative_to(runs.resolve())


def test_safe_filename_keeps_ordinary_names_and_never_makes_a_path():
    assert safe_filename("my photo (1).PNG") == "my_photo_1_.PNG"
    assert safe_filename("clip.mp4") == "clip.mp4"
    for hostile in ["..", ".", "/", "../", "..\\", "", "...."]:
        assert safe_filename(hostile) == "upload"
    assert "/" not in safe_filename("a/b\\c") and safe_filename("a/b\\c") == "c"


def test_an_archive_with_paths_outside_its_folder_is_refused(tmp_path):
    archive = tmp_path / "scene.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("scene/transforms_train.json", "{}")
        z.writestr("../../escaped.txt", "x")
    with pytest.raises(Gen4DError, match="outside its folder"):
        extract_archive(archive, tmp_path / "job" / "data")
    assert not (tmp_path / "escaped.txt").exists() and not list(tmp_path.rglob("escaped.txt"))


def _gif(path: Path, frames: int) -> Path:
    ims = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(frames)]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=100)
    return path


@pytest.mark.parametrize("case, command, pattern", [
    ("text_as_png", "image", "not a readable image"),
    ("wrong_type", "image", r"is not an image; the app takes \.png"),
    ("no_upload", "image", "upload an image first"),
    ("empty_file", "image", "is empty"),
    ("one_frame_video", "video", "has 1 frames; the app takes 2 to 300"),
    ("broken_video", "video", "not a readable video"),
    ("empty_prompt", "text", "write a prompt first"),
    ("bad_setting", "image", "settings must be key=value"),
    ("unknown_field", "image", "nosuchfield"),
])
def test_bad_upload_gives_one_message_not_a_traceback(tmp_path, image, case, command, pattern):
    runs = tmp_path / "runs"
    runner = JobRunner(runs, "tiny")
    uploads = tmp_path / "uploads"
    source, settings = str(image), ""
    if case == "text_as_png":
        (uploads / "photo.png").write_text("not an image")
        source = str(uploads / "photo.png")
    elif case == "wrong_type":
        (uploads / "notes.txt").write_text("hello")
        source = str(uploads / "notes.txt")
    elif case == "no_upload":
        source = None
    elif case == "empty_file":
        (uploads / "empty.png").write_bytes(b"")
        source = str(uploads / "empty.png")
    elif case == "one_frame_video":
        source = str(_gif(uploads / "still.gif", 1))
    elif case == "broken_video":
        (uploads / "clip.mp4").write_bytes(b"\x00" * 100)
        source = str(uploads / "clip.mp4")
    elif case == "empty_prompt":
        source = "   "
    elif case == "bad_setting":
        settings = "static.iterations 4"
    elif case == "unknown_field":
        settings = "nosuchfield=1"
    recipe = recipes_for(command)[0].name
    views = list(start_job(runner, command, recipe, None, source, settings=settings))
    assert len(views) == 1
    status = views[0].status
    assert status.startswith("**error:** ") and "\n" not in status and "Traceback" not in status
    assert re.search(pattern, status), status
    assert not [p for p in runs.iterdir() if p.name != "app-log.txt"]  # no job folder left behind


def test_image_limits(tmp_path, image):
    with pytest.raises(Gen4DError, match="is 48x48 pixels; the app takes at most 32 per side"):
        check_upload(image, "image", limits=UploadLimits(image_pixels=32))
    with pytest.raises(Gen4DError, match="the app takes at most 0 MB"):
        check_upload(image, "image", limits=UploadLimits(image_megabytes=1e-4))
    assert check_upload(_gif(tmp_path / "clip.gif", 3), "video") == tmp_path / "clip.gif"


@pytest.mark.slow
def test_tiny_image_job_end_to_end_then_stopped_and_resumed(tmp_path, image):
    runner = JobRunner(tmp_path / "runs", "tiny")
    views = list(start_job(runner, "image", "dg4d", "default", str(image), settings=APP_SETTINGS))
    statuses = [v.status for v in views]
    assert any("stage **driving**" in s for s in statuses)
    assert any(re.search(r"stage \*\*static\*\*: step \d / 4", s) for s in statuses)
    assert any("stage **dynamic**" in s for s in statuses)
    final = views[-1]
    assert ": done" in final.status and "300 Gaussians  4 frames" in final.status
    assert read_video(final.video).shape[0] == 3  # export.video_frames
    assert len(read_animated_glb(final.model).targets) == 3  # 4 frames: the base mesh + 3 morph targets
    assert len(load_inria_ply(final.splats)) == 300
    assert all(Path(p).is_file() for p in final.downloads)
    names = {Path(p).name for p in final.downloads}
    assert {"player.html", "animated.glb", "orbit.mp4", "metrics.json", "exports.zip"} <= names
    with zipfile.ZipFile(next(p for p in final.downloads if p.endswith("exports.zip"))) as z:
        assert "animated.glb" in z.namelist() and "ply/frame_0003.ply" in z.namelist()
    assert final.preview is not None and Path(final.preview).is_file()

    # a longer job, stopped in its dynamic stage from the page, then resumed from the Runs tab
    settings = APP_SETTINGS.replace("dynamic.iterations=4", "dynamic.iterations=12")
    stopped = []
    for view in start_job(runner, "image", "dg4d", "default", str(image), settings=settings):
        stopped.append(view)
        if re.search(r"stage \*\*dynamic\*\*: step ([3-9]|1[01]) ", view.status):  # step 3 begun: step 2's checkpoint written
            runner.stop()
    assert "interrupted; resume it from the Runs tab" in stopped[-1].status
    job = runner.jobs()[0]
    assert "has not finished" in open_job(runner, job.name).status
    resumed = list(resume_job(runner, job.name))
    assert ": done" in resumed[-1].status and "resumed" in resumed[-1].status
    log = (job.run_dir / "log.txt").read_text()
    assert "stage dynamic: resuming at step" in log and log.count("stage static: starting") == 1
    assert open_job(runner, job.name).model == resumed[-1].model


def test_page_has_a_tab_per_command_with_every_recipe_and_preset(tmp_path, monkeypatch):
    gr = pytest.importorskip("gradio")
    from gen4d.app.ui import build_app

    # a recipe registered later appears without any change to the app
    extra = dataclasses.replace(RECIPES["dg4d"], name="added-later", presets={"default": [], "quick": []})
    monkeypatch.setitem(RECIPES, "added-later", extra)
    demo = build_app(JobRunner(tmp_path / "runs", "tiny"))
    blocks = list(demo.blocks.values())
    tabs = [b.label for b in blocks if isinstance(b, gr.Tab)]
    assert tabs[:6] == ["Image → 4D", "Video → 4D", "Text → 4D", "Multi-view video → 4D", "MotionDirector: train",
                        "MotionDirector: sample"] and tabs[-1] == "Runs"
    recipe_menus = [b for b in blocks if isinstance(b, gr.Dropdown) and b.label == "recipe"]
    choices = [[c[1] if isinstance(c, (tuple, list)) else c for c in m.choices] for m in recipe_menus]
    assert choices[0][0] == "dg4d" and choices[0][-1] == "added-later"  # the registry's image recipes, the new one last
    commands = ["image", "video", "text", "reconstruct", "motion train", "motion sample"]
    assert choices == [[r.name for r in recipes_for(c)] for c in commands]
    preset_menus = [b for b in blocks if isinstance(b, gr.Dropdown) and b.label == "preset"]
    first = [c[1] if isinstance(c, (tuple, list)) else c for c in preset_menus[0].choices]
    assert first == list(RECIPES["dg4d"].presets)


def test_a_job_argv_is_the_command_line(tmp_path, image):
    runner = JobRunner(tmp_path / "runs", "tiny")
    job = runner.new_job("image", "dg4d", str(image), preset="fast", iters=20, seed=3, overrides=["size=64"])
    argv = job.argv
    assert argv[0] == "image" and argv[argv.index("--recipe") + 1] == "dg4d" and argv[argv.index("--preset") + 1] == "fast"
    assert argv[argv.index("--models") + 1] == "tiny" and argv[argv.index("--iters") + 1] == "20"
    assert argv[argv.index("--seed") + 1] == "3" and argv[-1] == "size=64"


def test_a_zipped_dnerf_scene_becomes_the_reconstruct_input(tmp_path):
    from gen4d.data.synthetic import write_synthetic_scene

    scene = tmp_path / "scene"
    write_synthetic_scene("bouncing_balls", scene, resolution=16, train_views=2, train_times=2, test_views=1, seed=0)
    archive = shutil.make_archive(str(tmp_path / "upload" / "my scene"), "zip", tmp_path, "scene")
    runner = JobRunner(tmp_path / "runs", "tiny")
    job = runner.new_job("reconstruct", "reconstruct", archive)
    data = Path(job.argv[1])
    assert data.is_relative_to(job.folder / "input") and (data / "transforms_train.json").is_file()
    assert sorted(p.name for p in (data / "train").glob("*.png")) == sorted(p.name for p in (scene / "train").glob("*.png"))


def test_app_on_a_taken_port_says_so_in_one_line(tmp_path, capsys):
    pytest.importorskip("gradio")
    import socket

    from gen4d.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["app", "--port", str(port), "--runs", str(tmp_path / "runs"), "--models", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot serve on 127.0.0.1:{port}: the port is taken") and "\n" not in err


def test_newest_preview_skips_files_being_written(tmp_path):
    from gen4d.app.jobs import newest_preview

    folder = tmp_path / "stages" / "dynamic" / "preview"
    folder.mkdir(parents=True)
    assert newest_preview(tmp_path) is None
    for i, name in enumerate(["step_000002.png", "step_000004.png", ".step_000006.x1y2.tmp.png"]):
        (folder / name).write_bytes(b"png")
        os.utime(folder / name, ns=(10**9 * (i + 1), 10**9 * (i + 1)))
    assert newest_preview(tmp_path) == str(folder / "step_000004.png")  # the newer hidden temporary file is skipped
