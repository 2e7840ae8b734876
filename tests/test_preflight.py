"""Preflight (every missing model named at once, before any work), ``gen4d models``, and a console that shows only
gen4d's own output."""

from __future__ import annotations

import pytest
from test_dg4d import TINY, disc, frames_dir

from gen4d import Gen4DError
from gen4d.cli import main
from gen4d.models.preflight import ModelRequirement, PackageRequirement, check_requirements

pytestmark = pytest.mark.usefixtures("restore_model_set")


def test_offline_image_command_names_every_missing_model_at_once_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    image = tmp_path / "image.png"
    disc(24, 24).save(image)
    out = tmp_path / "run"
    assert main(["image", str(image), "--out", str(out), "--models", "real", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for repo in ("ashawkey/zero123-xl-diffusers", "stabilityai/stable-video-diffusion-img2vid"):
        assert f"hf download {repo}" in err[0]
    assert not out.exists()


def test_a_bad_input_is_reported_before_the_missing_models(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "not_an_image.png").write_text("text")
    assert main(["image", str(tmp_path / "not_an_image.png"), "--out", str(tmp_path / "run"), "--models", "real"]) == 2
    assert "not an image" in capsys.readouterr().err


def test_requirements_report_missing_packages_with_their_install_command():
    with pytest.raises(Gen4DError) as e:
        check_requirements([PackageRequirement("surely_not_installed_pkg", "pip install surely-not-installed"),
                            PackageRequirement("torch", "pip install torch")], "gen4d test")
    msg = str(e.value)
    assert "1 missing" in msg and "pip install surely-not-installed" in msg and "torch" not in msg.split(":", 1)[1]
    check_requirements([], "nothing")  # nothing needed: no error


def test_a_local_model_folder_counts_as_cached(tmp_path):
    check_requirements([ModelRequirement(str(tmp_path))], "gen4d test")
    with pytest.raises(Gen4DError, match="does not exist"):
        check_requirements([ModelRequirement(str(tmp_path / "missing"))], "gen4d test")


def test_models_command_lists_each_recipe_and_what_is_cached(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["models", "--recipe", "dg4d"]) == 0
    out = capsys.readouterr().out
    assert "dg4d (gen4d image)" in out and "dg4d (gen4d video)" in out
    image_part = out.split("dg4d (gen4d video)")[0]
    assert "missing" in image_part and "stable-video-diffusion" in image_part and "zero123-xl" in image_part
    assert "stable-video-diffusion" not in out.split("dg4d (gen4d video)")[1]  # video mode generates no video
    assert main(["models", "--recipe", "dg4d", "--models", "tiny"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    models = [r for r in rows if r[1] in ("zero123-xl", "svd")]
    assert len(models) == 3 and all(r[0] == "cached" for r in models)  # the tiny model set needs no download


def test_a_tiny_run_prints_only_gen4d_lines(tmp_path, capfd):
    image = tmp_path / "image.png"
    disc(24, 24).save(image)
    out = tmp_path / "run"
    assert main(["image", str(image), "--out", str(out), "--driving-video", str(frames_dir(tmp_path / "frames", 3)), *TINY]) == 0
    captured = capfd.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert lines[0].startswith("done") and all(line.startswith("  ") for line in lines[1:]), lines
