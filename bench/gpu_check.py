"""Every GPU measurement gen4d still lists as not done, in one command that fits 9 minutes on one H100.

    python bench/gpu_check.py [--budget 540] [--json bench/results/gpu_check.json]     # on a CUDA machine
    python bench/gpu_check.py --dry-run                                                # the same code, tiny, on the CPU

Sections, in this order (each writes its part of the JSON as soon as it ends, so a run cut short keeps what it
measured; a section that no longer fits the budget is skipped and says so):

1. ``rasterizer``  gsplat against gen4d's PyTorch backend: forward images, alphas and the gradients of means,
   quaternions, scales, opacities and colours (max abs / relative differences), and forward + backward time of
   each at 4 x 256^2, 20k Gaussians. gsplat compiles its CUDA code on first use; that compilation starts in a
   background process at once and the priors are timed meanwhile.
2. ``priors``      one SDS step forward + backward at the published size (random weights built from
   ``bench/model_configs``, saved in the Hub layout, loaded through each prior's own code) of SD 2.1 base,
   MVDream, Stable-Zero123 and ZeroScope v2, in fp16 and bf16: seconds per step, peak GPU memory, FLOPs; and from
   them the projected hours of each 4D-fy preset (:func:`fourdfy_projection`, a lower bound).
3. ``reconstruct`` ``gen4d reconstruct --preset fast`` on a synthetic scene rendered at 400 x 400: training
   seconds and held-out PSNR; then frames per second rendering 800 x 800 views of the result.
4. ``dg4d``        ``gen4d image`` end to end at its defaults (published-size SVD + Zero123-XL): seconds and peak
   memory per stage (``bench_dg4d.py``).
5. ``motion``      MotionDirector at ZeroScope size: seconds per training step with and without gradient
   checkpointing, projected to the recipe's 150 steps, and sampling (``bench_motion.py``).
6. ``dreamin4d``   Dream-in-4D's static and dynamic stages at published sizes (MVDream + SD 2.1 on 4 views at
   256 px; ZeroScope on 24 frames with HiFA): seconds per step and peak memory of each, and the projected hours of
   each preset (``bench_dreamin4d.py``).
7. ``animate124``  Animate124's stages (textual inversion, static, dynamic, semantic) at the default preset with
   published-size SD 1.5, Zero123-XL, ModelScope and ControlNet-tile: seconds per step, peak memory per stage and
   the presets' projected minutes (``bench_animate124.py``).

``--dry-run`` runs every section with tiny models and sizes on the CPU (gen4d's numba backend stands in for
gsplat): the test suite runs it, so the GPU command is known to work before a GPU is lent.

Packages missing on a GPU machine without network: ``bench/gpu_wheels.sh`` fetches their wheels into ``.whl``;
then, there:  ``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
PYTHONPATH=/tmp/site:src python3 bench/gpu_check.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from argparse import Namespace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other bench scripts, beside this one

import bench_animate124  # noqa: E402
import bench_dg4d  # noqa: E402
import bench_dreamin4d  # noqa: E402
import bench_guidance  # noqa: E402
import bench_motion  # noqa: E402
from bench_rasterizer import random_scene  # noqa: E402

from gen4d.cameras import orbit_cameras  # noqa: E402
from gen4d.console import capture_library_output  # noqa: E402
from gen4d.data.synthetic import write_synthetic_scene  # noqa: E402
from gen4d.models import registry  # noqa: E402
from gen4d.recipes import reconstruct  # noqa: E402
from gen4d.render import gsplat_available, rasterize  # noqa: E402
from gen4d.runs import load_finished_run  # noqa: E402
from gen4d.testing import tiny_model_dir  # noqa: E402

SIZES = {
    "gpu": {"raster_gaussians": 20_000, "raster_size": 256, "raster_cameras": 4, "raster_repeats": 10,
            "recon_resolution": 400, "recon_views": 8, "recon_times": 12, "recon_iterations": 3000, "fps_size": 800,
            "prior_steps": 3, "precisions": ["fp16", "bf16"]},
    "dry": {"raster_gaussians": 500, "raster_size": 32, "raster_cameras": 2, "raster_repeats": 2,
            "recon_resolution": 24, "recon_views": 4, "recon_times": 3, "recon_iterations": 12, "fps_size": 48,
            "prior_steps": 1, "precisions": ["fp32"]},
}
PRIORS = ("sd21", "mvdream", "zero123", "zeroscope")
TINY = {"sd21": "sd21", "mvdream": "mvdream", "zero123": "stable-zero123", "zeroscope": "zeroscope"}
"""The tiny model standing in for each prior in a dry run."""
MIN_SECONDS = {"rasterizer": 20, "priors": 60, "reconstruct": 60, "dg4d": 90, "motion": 60, "dreamin4d": 60, "animate124": 120}
"""Least time a section needs on one H100 (a section that cannot get it is skipped)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


# ------------------------------------------------------------------------------------------------ 1. rasterizer
def start_gsplat_compile() -> subprocess.Popen | None:
    """Compile gsplat's CUDA kernels in a background process (they are cached on disk for this one)."""
    if not (torch.cuda.is_available() and gsplat_available()):
        return None
    code = ("import torch, gsplat; from gen4d.render import rasterize; n=64; d='cuda'; "
            "rasterize(torch.randn(n,3,device=d), torch.randn(n,4,device=d), torch.rand(n,3,device=d)*0.1, torch.rand(n,device=d), "
            "torch.rand(n,3,device=d), torch.eye(4,device=d)[None], torch.tensor([[[32.,0,16],[0,32.,16],[0,0,1]]],device=d), 32, 32, backend='gsplat')")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def rasterizer_section(size: dict, device: torch.device, compile_job) -> dict:
    """Parity of gsplat (the CPU stand-in: numba) with the PyTorch backend, forward and gradients, and timings."""
    if compile_job is not None:
        compile_job.wait()
    fast = "gsplat" if device.type == "cuda" else "numba"
    if fast == "gsplat" and not gsplat_available():
        return {"skipped": "gsplat is not installed (pip install gsplat, or carry its wheel: bench/gpu_wheels.sh)"}
    n, s, c = size["raster_gaussians"], size["raster_size"], size["raster_cameras"]
    params = random_scene(n, 0.005, 0.03, device)
    cams = orbit_cameras(torch.arange(c) * 360.0 / c, 15.0, 2.5, math.radians(50.0), s, s).to(device)
    outs = {}
    for backend in ("torch", fast):
        leaves = [p.detach().clone().requires_grad_() for p in params]
        out = rasterize(*leaves, cams.viewmats, cams.Ks, s, s, backend=backend)
        weights = torch.linspace(0.5, 1.5, out.rgb.numel(), device=device).reshape(out.rgb.shape)  # non-uniform upstream
        ((out.rgb * weights).sum() + out.alpha.sum()).backward()
        outs[backend] = {"rgb": out.rgb.detach(), "alpha": out.alpha.detach(),
                         **{name: p.grad.detach() for name, p in zip(("means", "quats", "scales", "opacities", "colors"), leaves)}}
    parity = {}
    for key in outs["torch"]:
        a, b = outs["torch"][key], outs[fast][key]
        scale = a.abs().max().clamp_min(1e-12)
        parity[key] = {"max_abs": float((a - b).abs().max()), "max_rel_to_peak": float((a - b).abs().max() / scale)}
    timings = {}
    for backend in ("torch", fast):
        leaves = [p.detach().clone().requires_grad_() for p in params]

        def step():
            out = rasterize(*leaves, cams.viewmats, cams.Ks, s, s, backend=backend)
            (out.rgb.sum() + out.alpha.sum()).backward()
            _sync(device)

        step()
        t = time.perf_counter()
        for _ in range(size["raster_repeats"]):
            step()
        timings[backend] = (time.perf_counter() - t) / size["raster_repeats"]
    return {"backend": fast, "gaussians": n, "cameras": c, "size": s, "parity": parity, "seconds_fwd_bwd": timings}


# ------------------------------------------------------------------------------------------------ 2. priors
def priors_section(size: dict, device: torch.device, dry: bool, cache: Path, deadline: float) -> dict:
    rows, skipped = [], []
    for prior in PRIORS:
        for precision in size["precisions"]:
            if time.perf_counter() > deadline:
                skipped.append(f"{prior} {precision}")
                continue
            try:
                folder = tiny_model_dir(TINY[prior]) if dry else bench_guidance.build(prior, cache)
                rows.append(bench_guidance.time_prior(prior, folder, device, precision, size["prior_steps"], small=dry))
            except Exception as e:  # noqa: BLE001 - one prior failing must not lose the others' numbers
                rows.append({"prior": prior, "precision": precision, "error": f"{type(e).__name__}: {e}"})
        if not dry and device.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows, "skipped_for_time": skipped}


def fourdfy_projection(rows: list[dict]) -> dict:
    """4D-fy's presets projected from the priors' measured steps: a static step is an MVDream step, a refine step half
    MVDream and half VSD (counted as two SD steps: the SDS U-Net and its LoRA's), a dynamic step the branches weighted
    by their probabilities (ZeroScope for the video branch). Rendering the Gaussians is left out (small next to the
    priors' U-Nets), so these are lower bounds."""
    from gen4d.recipes import fourdfy

    out = {}
    for precision in sorted({r["precision"] for r in rows if "error" not in r}):
        step = {r["prior"]: r["seconds_per_step"] for r in rows if r["precision"] == precision and "error" not in r}
        if not {"sd21", "mvdream", "zeroscope"} <= set(step):
            continue
        presets = {}
        for name in fourdfy.PRESETS:
            cfg = fourdfy.RECIPE.build_config(name, [], {"prompt": "x"})
            image = 2 * step["sd21"] if cfg.image.kind == "vsd" else step["sd21"]
            d = cfg.dynamic
            p_image = d.image_probability if cfg.image.kind != "none" else 0.0
            total = d.multi_view_probability + p_image + d.video_probability
            dynamic = (d.multi_view_probability * step["mvdream"] + p_image * image + d.video_probability * step["zeroscope"]) / total
            seconds = cfg.static.iterations * step["mvdream"] + cfg.refine.iterations * 0.5 * (step["mvdream"] + image) \
                + d.iterations * dynamic
            presets[name] = {"steps": [cfg.static.iterations, cfg.refine.iterations, d.iterations], "hours": seconds / 3600}
        out[precision] = presets
    return out


# ------------------------------------------------------------------------------------------------ 3. reconstruct
def reconstruct_section(size: dict, device: torch.device, work: Path) -> dict:
    data = work / "recon_data"
    t0 = time.perf_counter()
    write_synthetic_scene("jumping_jacks", data, resolution=size["recon_resolution"], train_views=size["recon_views"],
                          train_times=size["recon_times"], test_views=4, supersample=1)
    synth = time.perf_counter() - t0
    cfg = reconstruct.build_config("fast", [f"train.iterations={size['recon_iterations']}", "export.formats=[]"],
                                   {"data": str(data), "device": str(device)})
    metrics = reconstruct.run_reconstruct(cfg, work / "recon_run", command="gpu_check", quiet=True)
    finished = load_finished_run(work / "recon_run", device=device)
    s = size["fps_size"]
    cams = orbit_cameras(torch.linspace(0, 360, 9)[:-1], 20.0, 4.0, math.radians(40.0), s, s,
                         times=torch.linspace(0, 1, 8)).to(device)
    white = torch.ones(3, device=device)
    with torch.no_grad():
        finished.scene.render(cams[0], background=white)
        _sync(device)
        t = time.perf_counter()
        for i in range(len(cams)):
            finished.scene.render(cams[i], background=white)
        _sync(device)
    fps = len(cams) / (time.perf_counter() - t)
    return {"resolution": size["recon_resolution"], "synthesis_seconds": synth, "train_seconds": metrics["seconds"],
            "iterations": metrics["iterations"], "test_psnr": metrics["psnr"], "test_ssim": metrics["ssim"],
            "num_gaussians": metrics["num_gaussians"], "render_fps": fps, "render_size": s,
            "rasterizer": "gsplat" if device.type == "cuda" and gsplat_available() else "cpu"}


# ------------------------------------------------------------------------------------------------ 4-5. recipes
def dg4d_section(device: torch.device, dry: bool, cache: Path) -> dict:
    args = Namespace(device=str(device), small=dry, preset="default", precision="auto", refine_iterations=0 if not dry else 2,
                     zero123="zero123-xl", cache=cache, keep=False, progress=False,
                     overrides=["export.formats=[ply,mesh,glb]"])
    return bench_dg4d.run(args)


def animate124_section(device: torch.device, dry: bool, cache: Path) -> dict:
    args = bench_animate124.parser().parse_args(["--device", str(device), "--cache", str(cache), "--steps", "1" if dry else "2",
                                                 "--presets", "default"] + (["--small"] if dry else []))
    return bench_animate124.run(args)


def motion_section(device: torch.device, dry: bool, cache: Path) -> dict:
    ap = bench_motion.parser()
    args = ap.parse_args(["--device", str(device), "--cache", str(cache)] + (["--small"] if dry else []))
    return bench_motion.run(bench_motion.resolve_args(args))


def dreamin4d_section(device: torch.device, dry: bool, cache: Path) -> dict:
    args = bench_dreamin4d.parser().parse_args(["--device", str(device), "--cache", str(cache)] + (["--small"] if dry else []))
    return bench_dreamin4d.run(args)


# ------------------------------------------------------------------------------------------------ driver
def print_table(record: dict) -> None:
    print(f"\ngpu_check on {record['machine'].get('gpu', record['machine']['device'])} "
          f"({'dry run' if record['dry_run'] else 'published sizes'}), {record['seconds']:.0f} s")
    for name, part in record["sections"].items():
        if "skipped" in part or "error" in part:
            print(f"  {name:<12} {part.get('skipped') or part.get('error')}")
            continue
        if name == "rasterizer":
            worst = max(v["max_rel_to_peak"] for v in part["parity"].values())
            t = part["seconds_fwd_bwd"]
            print(f"  rasterizer   {part['backend']} vs torch: worst difference {worst:.2e} of the peak; "
                  f"fwd+bwd {t['torch'] * 1e3:.1f} ms (torch) vs {t[part['backend']] * 1e3:.1f} ms ({part['backend']})")
        elif name == "priors":
            for r in part["rows"]:
                if "error" in r:
                    print(f"  prior        {r['prior']:<10} {r['precision']:<5} {r['error']}")
                else:
                    peak = "-" if r["peak_gib"] is None or r["peak_gib"] != r["peak_gib"] else f"{r['peak_gib']:.2f} GiB"
                    print(f"  prior        {r['prior']:<10} {r['precision']:<5} {r['seconds_per_step']:.3f} s/step  {peak}  {r['step_tflop']:.2f} TFLOP")
            for precision, presets in part.get("fourdfy_projection", {}).items():
                hours = ", ".join(f"{k} {v['hours']:.2f} h" for k, v in presets.items())
                print(f"  fourdfy      {precision}: at least {hours} (priors' steps only)")
        elif name == "reconstruct":
            print(f"  reconstruct  {part['resolution']}^2: {part['train_seconds']:.0f} s, {part['iterations']} steps, PSNR "
                  f"{part['test_psnr']:.2f} dB; {part['render_size']}^2 render {part['render_fps']:.0f} FPS ({part['rasterizer']})")
        elif name == "dg4d":
            stages = ", ".join(f"{r['part']} {r['seconds']:.1f} s" for r in part["rows"] if r["seconds"])
            peak = part.get("peak_gib")
            print(f"  dg4d         {part['total_seconds']:.0f} s total ({stages}); peak {'-' if peak is None else f'{peak:.2f} GiB'}")
        elif name == "dreamin4d":
            for stage, r in part["stages"].items():
                peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
                print(f"  dreamin4d    {stage:<8} {r['seconds_per_step']:.3f} s/step  peak {peak}")
            print("  dreamin4d    projected: " + ", ".join(f"{k} {v['hours']:.2f} h" for k, v in part["projected_hours"].items()))
        elif name == "motion":
            for r in part["training"]:
                peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f} GiB"
                what = f"{r.get('projected_seconds', float('nan')):.0f} s for {r.get('projected_steps')} steps" if r["status"] == "ok" else r["status"]
                print(f"  motion       checkpointing {'on ' if r['checkpointing'] else 'off'}: {what}, peak {peak}")
            est = part.get("recipe_estimate")
            if est:
                print(f"  motion       default run with {est['previews']} previews: ~{est['seconds']:.0f} s")
        elif name == "animate124":
            for r in part["rows"]:
                peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f} GiB"
                what = r["error"] if "error" in r else f"{r['seconds_per_step']:.3f} s/step"
                print(f"  animate124   {r['preset']:<8} {r['stage']:<9} {what}  peak {peak}")
            for preset, p in part.get("projection_minutes", {}).items():
                print(f"  animate124   {preset}: about {p['minutes']:.0f} min")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny models and sizes on the CPU (checks this script)")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for everything (default: 9 minutes)")
    ap.add_argument("--sections", nargs="+", default=["rasterizer", "priors", "reconstruct", "dg4d", "motion", "dreamin4d", "animate124"])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/gen4d-published-size"), help="where published-size models are built")
    ap.add_argument("--json", type=Path, default=None, help="default: bench/results/gpu_check.json (--dry-run: gpu_check_dry.json)")
    args = ap.parse_args(argv)
    capture_library_output()  # library warnings and loading bars go to the runs' logs, not between the results
    start = time.perf_counter()
    deadline = start + args.budget
    device = torch.device("cpu" if args.dry_run else "cuda")
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; use --dry-run on a machine without one", file=sys.stderr)
        return 2
    size = SIZES["dry" if args.dry_run else "gpu"]
    json_path = args.json or Path("bench/results") / ("gpu_check_dry.json" if args.dry_run else "gpu_check.json")
    machine = {"platform": platform.platform(), "device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    record = {"machine": machine, "dry_run": args.dry_run, "budget_seconds": args.budget, "sections": {}, "seconds": 0.0}
    previous_set = registry.model_set()
    work = Path(tempfile.mkdtemp(prefix="gen4d-gpu-check-"))
    compile_job = start_gsplat_compile() if "rasterizer" in args.sections else None
    # the priors first: they fill the time gsplat's compilation takes in the background
    order = [s for s in ("priors", "rasterizer", "reconstruct", "dg4d", "motion", "dreamin4d", "animate124") if s in args.sections]
    runners = {
        "priors": lambda: priors_section(size, device, args.dry_run, args.cache, deadline - sum(MIN_SECONDS[s] for s in order[1:])),
        "rasterizer": lambda: rasterizer_section(size, device, compile_job),
        "reconstruct": lambda: reconstruct_section(size, device, work),
        "dg4d": lambda: dg4d_section(device, args.dry_run, args.cache),
        "motion": lambda: motion_section(device, args.dry_run, args.cache),
        "dreamin4d": lambda: dreamin4d_section(device, args.dry_run, args.cache),
        "animate124": lambda: animate124_section(device, args.dry_run, args.cache),
    }
    try:
        for name in order:
            left = deadline - time.perf_counter()
            if not args.dry_run and left < MIN_SECONDS[name]:
                record["sections"][name] = {"skipped": f"{left:.0f} s left of the budget, it needs about {MIN_SECONDS[name]} s"}
                continue
            t = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                part = runners[name]()
            except Exception as e:  # noqa: BLE001 - a failing section is recorded; the others still run
                part = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
            finally:
                registry.set_model_set(previous_set)  # bench_dg4d --small switches to the tiny models
            part["section_seconds"] = time.perf_counter() - t
            if name == "priors" and "rows" in part:
                part["fourdfy_projection"] = fourdfy_projection(part["rows"])
            record["sections"][name] = part
            record["seconds"] = time.perf_counter() - start
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if compile_job is not None and compile_job.poll() is None:
            compile_job.kill()
    record["seconds"] = time.perf_counter() - start
    json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print_table(record)
    print(f"wrote {json_path}")
    return 1 if any("error" in p for p in record["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
