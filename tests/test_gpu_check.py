"""bench/gpu_check.py: the one GPU measurement command, run at tiny sizes on the CPU (``--dry-run``)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("restore_model_set")


def test_gpu_check_dry_run_measures_every_section(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    sections = record["sections"]
    assert set(sections) == {"rasterizer", "priors", "reconstruct", "dg4d", "motion", "dreamin4d", "animate124"}
    assert not any("error" in s or "skipped" in s for s in sections.values())
    # the fast backend matches the PyTorch one, forward and every gradient
    parity = sections["rasterizer"]["parity"]
    assert set(parity) == {"rgb", "alpha", "means", "quats", "scales", "opacities", "colors"}
    assert max(p["max_rel_to_peak"] for p in parity.values()) < 1e-4
    rows = sections["priors"]["rows"]
    assert [r["prior"] for r in rows] == ["sd21", "mvdream", "zero123", "zeroscope"]
    assert all(r["seconds_per_step"] > 0 and r["step_tflop"] > 0 for r in rows)
    projection = sections["priors"]["fourdfy_projection"]["fp32"]
    assert set(projection) == {"paper", "default", "fast", "low-memory"}
    assert projection["paper"]["hours"] > projection["default"]["hours"] > projection["fast"]["hours"] > 0
    assert math.isfinite(sections["reconstruct"]["test_psnr"]) and sections["reconstruct"]["render_fps"] > 0
    assert {r["part"] for r in sections["dg4d"]["rows"]} >= {"static", "dynamic", "exports"}
    assert any(r["status"] == "ok" for r in sections["motion"]["training"])
    d4 = sections["dreamin4d"]
    assert set(d4["stages"]) == {"static", "dynamic"} and all(r["seconds_per_step"] > 0 for r in d4["stages"].values())
    assert d4["projected_hours"]["paper"]["hours"] > d4["projected_hours"]["default"]["hours"] > d4["projected_hours"]["fast"]["hours"]
    a124 = sections["animate124"]
    assert [r["stage"] for r in a124["rows"]] == ["invert", "static", "dynamic", "semantic"]
    assert all(r["seconds_per_step"] > 0 for r in a124["rows"]) and a124["projection_minutes"]["default"]["minutes"] > 0
    assert "gpu_check on cpu (dry run)" in capsys.readouterr().out
