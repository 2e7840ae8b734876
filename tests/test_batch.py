"""gen4d batch: job lists, and batches on a local Ray (2 CPUs) of tiny reconstruct and image (DreamGaussian4D) jobs:
every run complete, a bad job reported with the CLI's line, a worker killed mid-job retried to the same result as
an uninterrupted run, a rerun that does no work, and the Consistent4D leaderboard over a batch."""

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gen4d import Gen4DError
from gen4d.batch import Job, read_jobs
from gen4d.cli import main
from gen4d.data.synthetic import write_synthetic_scene

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[batch]"')

from gen4d.batch.run import BatchOptions, run_batch  # noqa: E402

pytestmark = pytest.mark.usefixtures("restore_model_set")

RECONSTRUCT = [
    "train.iterations=24", "train.static_fraction=0.25", "train.checkpoint_every=4", "train.preview_every=12",
    "model.init_points=200", "deformation.hexplane.resolution=[8,8,8,4]", "deformation.hexplane.feature_dim=4",
    "deformation.hidden_dim=16", "export.formats=[ply]", "export.frames=3",
]
IMAGE = [
    "--models", "tiny", "size=64", "static.iterations=4", "dynamic.iterations=4", "static.views=1", "dynamic.views=1",
    "static.resolutions=[64]", "dynamic.resolutions=[64]", "init_points=300", "checkpoint_every=2", "preview_every=2",
    "export.formats=[ply]", "export.frames=2",
]


# --------------------------------------------------------------------------------------------------- job lists
def test_yaml_jobs_strings_mappings_defaults_and_names(tmp_path):
    (tmp_path / "jobs.yaml").write_text(
        'defaults: "--models tiny"\n'
        "jobs:\n"
        "  - reconstruct scenes/lego --iters 30\n"
        "  - {command: image, input: cat.png, recipe: dg4d, quiet: true, driving_video: v.mp4, overrides: {size: 64, static.resolutions: [64]}}\n"
        "  - [text, a corgi running, --seed, '3']\n"
        "  - {name: lego, command: reconstruct, input: other/lego}\n"
        "  - reconstruct scenes/lego\n"
    )
    jobs, base = read_jobs(tmp_path / "jobs.yaml", ["train.batch_size=4"])
    assert base == tmp_path.resolve()
    assert jobs == [
        Job("lego-2", ("reconstruct", "scenes/lego", "--models", "tiny", "train.batch_size=4", "--iters", "30")),
        Job("cat", ("image", "cat.png", "--models", "tiny", "train.batch_size=4", "--recipe", "dg4d", "--quiet",
                    "--driving-video", "v.mp4", "size=64", "static.resolutions=[64]")),
        Job("a-corgi-running", ("text", "a corgi running", "--models", "tiny", "train.batch_size=4", "--seed", "3")),
        Job("lego", ("reconstruct", "other/lego", "--models", "tiny", "train.batch_size=4")),
        Job("lego-3", ("reconstruct", "scenes/lego", "--models", "tiny", "train.batch_size=4")),
    ]
    assert jobs[1].command == "image"


def test_jsonl_prompts_and_folder_job_lists(tmp_path):
    (tmp_path / "jobs.jsonl").write_text('{"command": "motion train", "input": "clips", "name": "m"}\n\n"demo --iters 6"\n')
    jobs, _ = read_jobs(tmp_path / "jobs.jsonl", ["--seed", "1"])
    assert jobs == [Job("m", ("motion", "train", "clips", "--seed", "1")), Job("demo", ("demo", "--seed", "1", "--iters", "6"))]
    assert jobs[0].command == "motion train"

    (tmp_path / "prompts.txt").write_text("# animals\na corgi running\n\na corgi running\n")
    jobs, _ = read_jobs(tmp_path / "prompts.txt")
    assert [j.args for j in jobs] == [("text", "a corgi running")] * 2
    assert [j.name for j in jobs] == ["a-corgi-running", "a-corgi-running-2"]

    inputs = tmp_path / "inputs"
    (inputs / "scene").mkdir(parents=True)
    (inputs / "scene" / "transforms_train.json").write_text("{}")
    (inputs / "aurorus").mkdir()
    (inputs / "aurorus" / "0.png").write_bytes(b"")
    (inputs / "cat.png").write_bytes(b"")
    (inputs / "walk.mp4").write_bytes(b"")
    (inputs / "notes.md").write_text("")
    jobs, base = read_jobs(inputs)
    assert base == inputs.resolve()
    assert [(j.name, j.args[0], Path(j.args[1]).name) for j in jobs] == [
        ("aurorus", "video", "aurorus"), ("cat", "image", "cat.png"), ("scene", "reconstruct", "scene"), ("walk", "video", "walk.mp4"),
    ]


@pytest.mark.parametrize("content, pattern", [
    ("- reconstruct x --out y\n", "remove --out"),
    ("- batch more.yaml\n", "not a gen4d command"),
    ("- {input: x}\n", "needs a command"),
    ("- {name: a b, command: demo}\n", "must be letters"),
    ("- {name: a, command: demo}\n- {name: a, command: demo}\n", "unique"),
    ("jobs: 3\n", "expected a list"),
    ("[unclosed\n", "not valid YAML"),
    ("[]\n", "holds no jobs"),
])
def test_bad_job_lists_are_one_line_errors(tmp_path, capsys, content, pattern):
    (tmp_path / "jobs.yaml").write_text(content)
    with pytest.raises(Gen4DError, match=pattern):
        read_jobs(tmp_path / "jobs.yaml")
    assert main(["batch", str(tmp_path / "jobs.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------- on Ray
@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module; gen4d batch joins a session its caller holds."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from test_dg4d import disc, frames_dir

    root = tmp_path_factory.mktemp("inputs")
    write_synthetic_scene("bouncing_balls", root / "scene", resolution=24, train_views=4, train_times=3, test_views=2, seed=0)
    disc(24, 24).save(root / "disc.png")
    frames_dir(root / "frames", 4)
    return root


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def final_model(run: Path, stage: str = "dynamic") -> dict:
    return {k: v for k, v in load_file(str(run / "stages" / stage / "checkpoint.safetensors")).items() if k.startswith("model.")}


def test_batch_of_two_recipes_bad_job_reported_and_rerun_does_no_work(local_ray, inputs, tmp_path, capsys):
    jobs = [
        Job("rec-a", ("reconstruct", "scene", "--seed", "1", *RECONSTRUCT)),
        Job("rec-b", ("reconstruct", "scene", "--seed", "2", *RECONSTRUCT)),
        Job("img-a", ("image", "disc.png", "--driving-video", "frames", "--seed", "1", *IMAGE)),
        Job("img-b", ("image", "disc.png", "--driving-video", "frames", "--seed", "2", *IMAGE)),
        Job("bad", ("reconstruct", "no_such_scene", *RECONSTRUCT)),
    ]
    out = tmp_path / "batch"
    summary = run_batch(jobs, out, inputs, BatchOptions(max_retries=1, quiet=True))
    rows = {r["name"]: r for r in summary["jobs"]}
    assert summary["counts"] == {"done": 4, "failed": 1, "interrupted": 0, "pending": 0}

    # Every good run directory is complete: its final stage marked complete, metrics, exports.
    for name in ("rec-a", "rec-b", "img-a", "img-b"):
        run = out / name
        assert rows[name]["status"] == "done" and rows[name]["attempts"] == 1
        assert json.loads((run / "stages" / "dynamic" / "state.json").read_text())["complete"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert len(list((run / "exports" / "ply").glob("*.ply"))) == (3 if name.startswith("rec") else 2)
        assert rows[name]["seconds"] > 0 and rows[name]["peak_rss_mb"] > 100
        if name.startswith("rec"):  # the recipe reports PSNR / SSIM on its test views: the table carries them
            assert rows[name]["metrics"]["psnr"] == metrics["psnr"] and rows[name]["metrics"]["ssim"] == metrics["ssim"]
    # The two seeds are two different runs (the jobs did not share a directory or a seed).
    assert not torch.equal(final_model(out / "rec-a")["model.gaussians.means"], final_model(out / "rec-b")["model.gaussians.means"])

    # The bad job is reported with the one line the CLI prints for it, without retries.
    assert main(["reconstruct", str(inputs / "no_such_scene"), "--out", str(tmp_path / "direct"), *RECONSTRUCT]) == 2
    cli_line = capsys.readouterr().err.strip()
    assert rows["bad"]["status"] == "failed" and rows["bad"]["attempts"] == 1
    assert rows["bad"]["error"] == cli_line and cli_line.startswith("error:")
    assert json.loads((out / "batch.json").read_text()) == summary
    assert "| bad | failed |" in (out / "batch.md").read_text()

    # A rerun of the finished jobs starts no task and touches no run directory.
    before = {name: tree_digest(out / name) for name in rows if name != "bad"}
    records = {name: (out / ".batch" / f"{name}.json").read_text() for name in before}
    again = run_batch(jobs[:4], out, inputs, BatchOptions(quiet=True))
    assert again["counts"]["done"] == 4
    assert {name: tree_digest(out / name) for name in before} == before
    assert {name: (out / ".batch" / f"{name}.json").read_text() for name in before} == records
    assert (out / "batch.log").read_text().count("submitted") == 1
    assert "4 of 4 jobs already done" in capsys.readouterr().out


def test_killed_worker_is_retried_to_the_uninterrupted_result_and_a_job_killed_every_time_is_reported(local_ray, inputs, tmp_path):
    """``killed``: its worker is SIGKILLed once, in its second stage; ``doomed``: its worker is killed on every
    attempt (max_retries=1: two attempts), so it is reported while the other jobs finish."""
    args = ("reconstruct", "scene", *RECONSTRUCT, "train.iterations=80", "train.checkpoint_every=2")
    jobs = [Job("straight", args), Job("killed", args), Job("doomed", ("reconstruct", "scene", *RECONSTRUCT))]
    out = tmp_path / "batch"
    result: dict = {}
    driver = threading.Thread(target=lambda: result.update(run_batch(jobs, out, inputs, BatchOptions(max_retries=1, quiet=True))))
    driver.start()
    ckpt = out / "killed" / "stages" / "dynamic" / "checkpoint.safetensors"
    killed_at: dict[str, list[int]] = {"killed": [], "doomed": []}
    deadline = time.time() + 400
    while driver.is_alive() and time.time() < deadline:
        for name, due in (("killed", ckpt.exists() and not killed_at["killed"]), ("doomed", True)):
            state = json.loads((out / ".batch" / f"{name}.json").read_text()) if (out / ".batch" / f"{name}.json").exists() else {}
            if due and state.get("status") == "running" and state["pid"] not in killed_at[name]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state["pid"], signal.SIGKILL)
                killed_at[name].append(state["pid"])
        time.sleep(0.05)
    driver.join(timeout=60)
    assert not driver.is_alive()
    assert len(killed_at["killed"]) == 1 and len(killed_at["doomed"]) == 2

    rows = {r["name"]: r for r in result["jobs"]}
    assert rows["killed"]["status"] == "done" and rows["killed"]["attempts"] == 2
    assert rows["straight"]["status"] == "done" and rows["straight"]["attempts"] == 1
    assert rows["doomed"]["status"] == "failed" and rows["doomed"]["attempts"] == 2
    assert "worker process died" in rows["doomed"]["error"] and "\n" not in rows["doomed"]["error"]
    log = (out / "killed" / "log.txt").read_text()
    assert "stage dynamic: resuming at step" in log and log.count("stage static: starting") == 1
    a, b = final_model(out / "straight"), final_model(out / "killed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert rows["killed"]["metrics"]["psnr"] == rows["straight"]["metrics"]["psnr"]


def test_cli_batch_starts_its_own_ray_and_leaves_the_console_to_gen4d(tmp_path):
    """``gen4d batch`` as a user runs it: a local Ray of its own (beside the module's), Ray's output in batch.log,
    on the console only gen4d's lines; a failed job makes the exit status 1."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("- reconstruct no_such_scene\n")  # relative to the job file's folder
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "gen4d.cli", "batch", str(jobs), "--out", str(out), "--num-cpus", "1", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines[0] == f"failed  no_such_scene  error: scene folder {tmp_path / 'no_such_scene'} does not exist"
    assert lines[-1].startswith("0 done, 1 failed of 1")
    table = lines[1:-1]
    assert "gen4d batch:" in table[0] and all(set(line) & set("┏┃┡│└") for line in table[1:])
    assert "submitted 1 jobs" in (out / "batch.log").read_text()


def test_gpus_asked_for_on_a_cluster_without_them_is_one_line(local_ray, inputs, tmp_path, capsys):
    jobs = [Job("demo", ("demo", "--iters", "2"))]
    with pytest.raises(Gen4DError, match="cluster has 0"):
        run_batch(jobs, tmp_path / "out", inputs, BatchOptions(gpus_per_job=1, quiet=True))


def test_eval_over_a_batch_writes_one_leaderboard(tmp_path, capsys):
    """Two Consistent4D objects, a perfect run of one and a displaced run of the other, and a failed job: the table
    holds each run's own ``gen4d eval`` numbers, their mean, and the failed job's reason."""
    from test_consistent4d import FAST, RUN_SIZE, similar_scene, toy_scene, write_dataset, write_run

    from gen4d.batch.run import STATE_DIR, summarise
    from gen4d.data.consistent4d import FOVY_DEG, consistent4d_input_frames, input_alignment
    from gen4d.files import write_json

    data = tmp_path / "c4d"
    scenes = {"toy": toy_scene(offset=(0.0, 0.12, -0.1)), "rex": toy_scene(offset=(0.1, -0.05, 0.0))}
    out = tmp_path / "batch"
    jobs = []
    for name, scene in scenes.items():
        write_dataset(data, scene, name)
        al = input_alignment(consistent4d_input_frames(data, name), RUN_SIZE, 0.2, run_distance=2.5, run_fov_deg=FOVY_DEG)
        target = al.target if name == "toy" else [t + 0.15 for t in al.target]  # rex's run is displaced: worse scores
        write_run(out / f"run-{name}", similar_scene(scene, al.scale, target), data / "input" / name)
        jobs.append(Job(f"run-{name}", ("video", str(data / "input" / name))))
        write_json(out / STATE_DIR / f"run-{name}.json", {"status": "done", "args": list(jobs[-1].args), "attempts": 1})
    jobs.append(Job("run-bad", ("video", "nowhere")))
    write_json(out / STATE_DIR / "run-bad.json", {"status": "failed", "args": ["video", "nowhere"], "error": "error: x"})
    write_json(out / "batch.json", summarise(jobs, out))

    metrics = "metrics=psnr,ssim,clip"
    assert main(["eval", str(out), "--data", str(data), "--models", "tiny", "--quiet", metrics, *FAST]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    rows = {r["job"]: r for r in board["rows"]}
    for name in scenes:
        own = json.loads((out / f"run-{name}" / "eval" / "metrics.json").read_text())
        assert rows[f"run-{name}"]["object"] == name and not rows[f"run-{name}"]["error"]
        assert all(rows[f"run-{name}"][m] == own[m] for m in ("psnr", "ssim", "clip"))
    assert rows["run-toy"]["psnr"] > 30 > rows["run-rex"]["psnr"]
    assert rows["run-bad"]["error"].startswith("error: the job is failed")
    assert board["scored"] == 2
    for m in ("psnr", "ssim", "clip"):
        assert board["mean"][m] == pytest.approx((rows["run-toy"][m] + rows["run-rex"][m]) / 2)
    table = (out / "leaderboard.md").read_text().splitlines()
    assert table[0] == "| job | object | PSNR | SSIM | CLIP | error |" and table[-1].startswith("| mean (2) |")
