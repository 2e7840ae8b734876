"""``bench/bench_motion.py --small``: MotionDirector training and sampling timed part by part, on the CPU with the
tiny text-to-video model (no timing is asserted, only that every part ran and was recorded)."""

import importlib.util
import json
from pathlib import Path


def test_bench_motion_small_run_records_every_part(tmp_path, t2v_dir, one_thread):
    spec = importlib.util.spec_from_file_location("bench_motion", Path(__file__).resolve().parents[1] / "bench" / "bench_motion.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "motion.json"
    args = ["--small", "--steps", "2", "--warmup", "1", "--sample-steps", "2", "--inversion-steps", "2", "--json", str(out)]
    assert bench.main(args) == 0
    record = json.loads(out.read_text())
    assert record["settings"]["frames"] == 4 and record["settings"]["precision"] == "fp32"
    assert all(v > 0 for v in record["loading"].values())

    caching = record["latent_caching"]
    assert caching["seconds"] > 0 and caching["first_call_seconds"] > 0
    assert caching["latents"] == [4, 4, 8, 8]  # [C, F, h, w] of 4 frames at 64x64

    training = record["training"]
    assert [r["checkpointing"] for r in training] == [True, False]
    for r in training:
        assert r["status"] == "ok" and len(r["step_seconds"]) == 2 and all(t > 0 for t in r["step_seconds"])
        for key in ("median_seconds", "mean_seconds", "spatial_seconds", "temporal_seconds", "projected_seconds",
                    "projected_with_dropout_seconds", "step_tflop", "floor_seconds"):
            assert r[key] > 0, key
        assert r["projected_steps"] == 150 and r["projected_seconds"] > r["projected_with_dropout_seconds"]
        assert r["peak_gib"] is None  # CPU: no CUDA peak
    # with checkpointing the forward pass runs again in the backward: more FLOPs per step
    assert training[0]["step_tflop"] > training[1]["step_tflop"]

    sampling = record["sampling"]
    for key in ("inversion_seconds", "sampling_seconds", "decode_seconds", "total_seconds"):
        assert sampling[key] > 0, key
    assert sampling["inversion_seconds"] + sampling["sampling_seconds"] + sampling["decode_seconds"] <= sampling["total_seconds"]
    assert sampling["frames"] == [4, 3, 64, 64]
    assert "temporal" in sampling["adapters"]  # the trained motion LoRA was loaded into the sampler
    assert record["targets"]["met"] is None and record["matmul_tflops"] > 0
    estimate = record["recipe_estimate"]  # 150 steps with a preview every 50
    assert estimate["previews"] == 3 and estimate["seconds"] > training[0]["projected_seconds"]
