"""``bench/bench_deformation.py --dry-run``: every (scene, deformation type) reconstructed at tiny sizes, as subprocesses."""

import importlib.util
import json
import math
from pathlib import Path

import yaml


def test_bench_deformation_dry_run_has_a_row_per_scene_and_type(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_deformation", Path(__file__).resolve().parents[1] / "bench" / "bench_deformation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "deformation.json"
    args = ["--dry-run", "--scenes", "windmill", "chain", "--types", "hexplane", "nodes", "bases", "--schedules", "curriculum", "--cache", str(tmp_path / "cache"),
            "--keep", str(tmp_path / "runs"), "--json", str(out)]
    assert bench.main(args) == 0
    record = json.loads(out.read_text())
    assert record["settings"]["layout"] == "monocular" and record["settings"]["dry_run"]
    rows = record["rows"]
    types = ("hexplane", "nodes", "bases")
    assert [(r["scene"], r["type"]) for r in rows] == [(s, t) for s in ("windmill", "chain") for t in types]
    for r in rows:
        assert "error" not in r and math.isfinite(r["psnr"]) and 0.0 < r["ssim"] <= 1.0
        assert r["wall_seconds"] > 0 and r["training_seconds"] > 0 and r["num_gaussians"] > 0
        assert f"deformation.type={r['type']}" in r["command"] and "export.formats=[]" in r["command"]
        assert r["schedule"] == "curriculum" and set(bench.SCHEDULES["curriculum"]) <= set(r["command"])
        assert r["eval_views"] == 2 and r["iterations"] == 4
        run = tmp_path / "runs" / f"{r['scene']}-{r['type']}-curriculum"
        assert (run / "metrics.json").exists()
        train = yaml.safe_load((run / "config.yaml").read_text())["train"]
        assert (train["canonical_window"], train["time_curriculum"], train["hold_unreached"], train["pace_tolerance"]) == (0.05, 0.25, True, 0)
    # the scenes were written once, monocular: one camera per training time
    for scene in ("windmill", "chain"):
        data = Path(record["data"][scene]["folder"])
        info = json.loads((data / "synthetic.json").read_text())
        assert info["layout"] == "monocular" and info["train_times"] == 6 and info["resolution"] == 24
        train = json.loads((data / "transforms_train.json").read_text())["frames"]
        assert len(train) == 6 and len({f["time"] for f in train}) == 6
    table = capsys.readouterr().out
    assert "PSNR dB" in table and "windmill" in table and "chain" in table
    # a second run reuses the cached scenes
    assert bench.scene_data("windmill", bench.parse_args(args))[1] == 0.0
