"""Command line: every command's bad input is one `error:` line, exit status 2, and nothing written."""

from pathlib import Path

import pytest

from gen4d.cli import main

pytestmark = pytest.mark.usefixtures("restore_model_set")


CASES = {
    "motion-train-missing-video": (["motion", "train", "{tmp}/missing.mp4"], "input not found"),
    "motion-train-bad-key": (["motion", "train", "{tmp}/missing.mp4", "no_such_field=1"], "no_such_field"),
    "motion-sample-missing-lora": (["motion", "sample", "a dog", "--motion", "{tmp}/nowhere"], "motion LoRA not found"),
    "text-bad-key": (["text", "a dog", "dg4d.no_such_field=1"], "no_such_field"),
    "text-missing-lora": (["text", "a dog", "--motion", "{tmp}/nowhere"], "motion LoRA not found"),
    "eval-missing-data": (["eval", "{tmp}/run", "--data", "{tmp}/nowhere"], "not found"),
    "eval-nothing-to-score": (["eval", "--data", "{tmp}"], "run directory"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys, case):
    argv, pattern = CASES[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = tmp_path / "out"
    if argv[0] != "eval":
        argv += ["--out", str(out)]
    assert main([*argv, "--models", "tiny", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and pattern in err[0], err
    assert not out.exists()
    assert not Path(tmp_path / "run").exists()


def test_reconstruct_refuses_zero_initial_points_before_writing(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "scene"), "--out", str(tmp_path / "run"), "model.init_points=0"]) == 2
    assert "init_points must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _raise_from_kernel(cause: BaseException):
    def cmd(args):
        try:
            raise cause
        except BaseException as e:
            raise SystemError("CPUDispatcher(<function kernel>) returned a result with an exception set") from e

    return cmd


def test_ctrl_c_inside_a_compiled_kernel_is_an_interruption(monkeypatch, capsys):
    """Ctrl-C landing inside a numba kernel surfaces as a SystemError caused by KeyboardInterrupt: exit 130 as Ctrl-C
    anywhere else (the web app's stop relies on it), while any other SystemError is still raised."""
    import gen4d.cli as cli

    monkeypatch.setattr(cli, "cmd_models", _raise_from_kernel(KeyboardInterrupt()))
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip().startswith("interrupted; rerun the same command")
    monkeypatch.setattr(cli, "cmd_models", _raise_from_kernel(ValueError("a real bug")))
    with pytest.raises(SystemError):
        main(["models"])
