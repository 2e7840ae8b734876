"""``gen4d demo``: weight-free runs on synthetic 4D scenes (:mod:`gen4d.data.synthetic`).

* ``--recipe reconstruct`` (default): the scene rendered from 12 cameras x 16 times, reconstructed as 4D Gaussians,
  evaluated at held-out cameras and times, exported.
* ``--recipe dg4d``: DreamGaussian4D's stages, with its schedules scaled down, distilling the scene from **oracle
  priors** (:mod:`gen4d.testing.oracles`: Zero123 whose denoiser knows the scene). The input image and the driving
  frames are the scene seen from the input camera (azimuth 0, elevation 0) at evenly spaced times; held-out views
  are at azimuths the input never shows and at times between driving frames. A held-out PSNR near the scene's is
  only reached when the recipe's cameras, times, reference views and parameter routing are right.
* ``--recipe fourdfy``: 4D-fy's stages, shortened, from the prompt alone: oracle MVDream, Stable Diffusion and
  text-to-video priors that know the scene; held-out views at azimuths, elevations and times of the scene.
* ``--recipe dreamin4d``: Dream-in-4D's text variant, shortened: oracle MVDream + Stable Diffusion (static stage, the
  scene at t = 0) and an oracle text-to-video prior with HiFA targets (dynamic stage); held-out views as 4D-fy's.
* ``--recipe animate124``: Animate124's stages, shortened, from the scene's first frame at the input camera and a
  prompt: oracle Zero123, Stable Diffusion, text-to-video and ControlNet-tile priors (no textual inversion).
"""

from __future__ import annotations

import math
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch

from . import Gen4DError
from .cameras import orbit_cameras
from .data.preprocess import save_rgba_png
from .data.synthetic import SCENES, render_scene, write_synthetic_scene
from .eval.metrics import psnr, ssim
from .export.images import save_png
from .recipes import animate124, dg4d, dreamin4d, fourdfy, reconstruct
from .runs import RunDir, load_finished_run
from .testing.oracles import OraclePriors

# The synthetic scene `gen4d demo` reconstructs (arguments of data.synthetic.write_synthetic_scene).
RECONSTRUCT_SCENE = dict(resolution=64, train_views=12, train_times=16, test_views=8)


def pick_scene(args: Namespace, default: str) -> str:
    """``--scene`` or the demo's own, checked."""
    scene = args.scene or default
    if scene not in SCENES:
        raise Gen4DError(f"unknown scene {scene!r}; choose from {', '.join(SCENES)}")
    return scene


def reconstruct_demo(args: Namespace) -> tuple[dict, str, bool]:
    scene = pick_scene(args, "jumping_jacks")
    out = Path(args.out)
    data = out / "data"
    recipe = reconstruct.RECIPE
    base = recipe.command_base("reconstruct", input=str(data), seed=args.seed, device=args.device, iters=args.iters)
    cfg = recipe.build_config(args.preset or "demo", args.overrides, base)  # validate options before writing anything
    if not (data / "transforms_train.json").exists():
        if out.exists() and any(p.name != "data" for p in out.iterdir()):
            raise Gen4DError(f"--out {out} is not empty and holds no gen4d demo; choose a new or empty folder")
        print(f"synthesising the {scene!r} scene ({RECONSTRUCT_SCENE['resolution']} px) into {data}")
        write_synthetic_scene(scene, data, **RECONSTRUCT_SCENE)
    metrics = reconstruct.run_reconstruct(cfg, out, command=" ".join(sys.argv), quiet=args.quiet)
    return metrics, reconstruct.headline(metrics), True


# ------------------------------------------------------------------------------------------------ DreamGaussian4D
DG4D_SCENE = "jumping_jacks"
DG4D_FRAMES = 25
"""Driving frames (times i / 24: SVD-XT's count)."""
DG4D_HELDOUT_AZIMUTHS = (45.0, 135.0, 225.0, 315.0)
DG4D_HELDOUT_ELEVATIONS = (0.0, 20.0)
DG4D_SETTINGS = [
    # the scene as rendered: no recentring (the oracle's world is the scene's), framed from 2.5 units, 64 px views
    "size=64", "recenter=false", "camera_radius=2.5", "init_points=2000", "init_radius=0.8",
    "static.iterations=500", "static.views=4", "static.resolutions=[64]",
    # one driving frame per step and its 4 views (DreamGaussian4D fits every frame and 4 views at each, every step:
    # 25 deformation-field evaluations and 100 views a step are too slow for two CPU cores), for more steps
    "dynamic.iterations=1500", "dynamic.frames_per_step=1", "dynamic.sds_times=reference", "dynamic.resolutions=[64]",
    "dynamic.train_gaussians=true",
    "densify.max_gaussians=5000", "checkpoint_every=250", "preview_every=0",
    "export.mesh_resolution=48", "export.video_size=96", "export.video_frames=24",
]
"""DreamGaussian4D's stages with their schedules scaled down to a 2-core machine (the rest: the recipe's defaults)."""


def write_dg4d_inputs(scene: str, folder: Path, size: int, radius: float, fov_deg: float, frames: int) -> tuple[Path, Path]:
    """The input image (time 0) and driving frames of the scene seen from the input camera, RGBA PNGs."""
    times = torch.arange(frames, dtype=torch.float32) / (frames - 1)
    cams = orbit_cameras([0.0] * frames, 0.0, radius, math.radians(fov_deg), size, size, times=times)
    rgb, alpha = render_scene(scene, cams, supersample=3)
    straight = torch.where(alpha > 0, rgb / alpha.clamp_min(1e-8), torch.zeros_like(rgb))
    rgba = torch.cat([straight, alpha], dim=-1).permute(0, 3, 1, 2)
    for i, f in enumerate(rgba):
        save_rgba_png(folder / "frames" / f"frame_{i:04d}.png", f)
    save_rgba_png(folder / "image.png", rgba[0])
    return folder / "image.png", folder / "frames"


@torch.no_grad()
def heldout_scores(out: Path, scene: str, size: int, radius: float, fov_deg: float, times: torch.Tensor, device: str,
                   azimuths=DG4D_HELDOUT_AZIMUTHS, elevations=DG4D_HELDOUT_ELEVATIONS) -> dict:
    """PSNR / SSIM of the finished run against the scene at ``azimuths`` x ``elevations`` x ``times``, on white; the
    renders (prediction beside truth) go to ``DIR/eval/test/``."""
    finished = load_finished_run(out, device=device if device != "auto" else None)
    az, el, t = torch.meshgrid(torch.tensor(azimuths), torch.tensor(elevations), times.float(), indexing="ij")
    cams = orbit_cameras(az.reshape(-1), el.reshape(-1), radius, math.radians(fov_deg), size, size, times=t.reshape(-1))
    rgb, alpha = render_scene(scene, cams, supersample=3)
    truth = rgb + (1.0 - alpha)
    white = torch.ones(3, device=finished.device)
    pred = torch.cat([finished.scene.render(cams[i : i + 8].to(finished.device), background=white).rgb.clamp(0, 1).cpu()
                      for i in range(0, len(cams), 8)])
    for i in range(len(cams)):
        name = f"az{az.reshape(-1)[i]:03.0f}_el{el.reshape(-1)[i]:02.0f}_t{t.reshape(-1)[i]:.3f}"
        save_png(out / "eval" / "test" / f"{name}.png", torch.cat([pred[i], truth[i]], dim=1))
    p, s = psnr(pred, truth), ssim(pred, truth)
    return {
        "psnr": float(p.mean()), "ssim": float(s.mean()), "psnr_per_view": [round(float(v), 3) for v in p],
        "views": {"azimuths_deg": list(azimuths), "elevations_deg": list(elevations), "radius": radius, "fov_deg": fov_deg,
                  "times": [round(float(v), 4) for v in times]},
    }


def finish_oracle_demo(out: Path, metrics: dict, heldout: dict, scene: str, t0: float) -> tuple[dict, str, bool]:
    """The held-out scores become the run's ``psnr`` / ``ssim`` in ``metrics.json``; returns the demo's result."""
    metrics.update(psnr=heldout["psnr"], ssim=heldout["ssim"], heldout=heldout, priors="oracle", scene=scene,
                   wall_seconds=time.perf_counter() - t0)
    RunDir(out).write_metrics(metrics)
    headline = (f"held-out PSNR {heldout['psnr']:.2f} dB  SSIM {heldout['ssim']:.4f} (oracle priors, {scene})  "
                f"{metrics['num_gaussians']} Gaussians  {metrics['wall_seconds']:.0f} s")
    return metrics, headline, True


def dg4d_demo(args: Namespace) -> tuple[dict, str, bool]:
    """DreamGaussian4D distilled from oracle priors on a synthetic scene (module doc)."""
    scene = pick_scene(args, DG4D_SCENE)
    t0 = time.perf_counter()
    out = Path(args.out)
    data = out / "data"
    recipe = dg4d.RECIPE
    base = recipe.command_base("image", input=str(data / "image.png"), seed=args.seed, device=args.device, iters=args.iters,
                               options={"--driving-video": str(data / "frames")})
    cfg = recipe.build_config(args.preset or "default", DG4D_SETTINGS + list(args.overrides), base)
    if not (data / "frames").is_dir():
        if out.exists() and any(p.name != "data" for p in out.iterdir()):
            raise Gen4DError(f"--out {out} is not empty and holds no gen4d demo; choose a new or empty folder")
        print(f"rendering the {scene!r} scene from the input camera ({DG4D_FRAMES} frames, {cfg.size} px) into {data}")
        write_dg4d_inputs(scene, data, cfg.size, cfg.camera_radius, cfg.fov_deg, DG4D_FRAMES)
    metrics = dg4d.run_dg4d(cfg, out, command=" ".join(sys.argv), quiet=args.quiet, priors=OraclePriors(scene))
    if not metrics:
        return metrics, "", False
    times = (torch.arange(DG4D_FRAMES - 1, dtype=torch.float32) + 0.5) / (DG4D_FRAMES - 1)  # between driving frames
    heldout = heldout_scores(out, scene, cfg.size, cfg.camera_radius, cfg.fov_deg, times, cfg.device)
    metrics.update(input_view_psnr=metrics["psnr"], input_view_ssim=metrics["ssim"])
    return finish_oracle_demo(out, metrics, heldout, scene, t0)


# ------------------------------------------------------------------------------------------------ 4D-fy
FOURDFY_SCENE = "jumping_jacks"
FOURDFY_PROMPT = "a figure doing jumping jacks"
FOURDFY_HELDOUT = dict(size=64, radius=2.75, fov_deg=40.0, times=16)
"""Held-out views: azimuths 45/135/225/315, elevations 0/20 (inside the training band), 16 times t = (i + 0.5) / 16."""
FOURDFY_SETTINGS = [
    # every render at 64 px; 4D-fy's stages with their schedules shortened for two CPU cores
    "static.iterations=1500", "static.resolutions=[64,64]", "static.resolution_milestones=[750]",
    "static.timesteps.anneal_end=1200", "dynamic.iterations=2400", "dynamic.resolution=64", "image.resolution=64",
    "video.width=64", "video.height=64", "video.frames=8", "init_points=2000", "densify.max_gaussians=5000",
    "checkpoint_every=200", "preview_every=0", "export.mesh_resolution=48", "export.video_size=96", "export.video_frames=24",
]
"""4D-fy's stages scaled down to a 2-core machine (the rest: the recipe's defaults)."""


def text_oracle_demo(args: Namespace, recipe, settings: list[str]) -> tuple[dict, str, bool]:
    """A text -> 4D recipe distilled from oracle priors that know the scene, from the prompt alone; scored at held-out
    views and times (``FOURDFY_HELDOUT``)."""
    scene = pick_scene(args, FOURDFY_SCENE)
    t0 = time.perf_counter()
    out = Path(args.out)
    base = recipe.command_base("text", input=FOURDFY_PROMPT, seed=args.seed, device=args.device, iters=args.iters)
    cfg = recipe.build_config(args.preset or "default", settings + list(args.overrides), base)
    metrics = recipe.run(cfg, out, command=" ".join(sys.argv), quiet=args.quiet, priors=OraclePriors(scene))
    if not metrics:
        return metrics, "", False
    h = FOURDFY_HELDOUT
    times = (torch.arange(h["times"], dtype=torch.float32) + 0.5) / h["times"]
    heldout = heldout_scores(out, scene, h["size"], h["radius"], h["fov_deg"], times, cfg.device)
    return finish_oracle_demo(out, metrics, heldout, scene, t0)


def fourdfy_demo(args: Namespace) -> tuple[dict, str, bool]:
    """4D-fy distilled from oracle priors (MVDream, Stable Diffusion and a video model that know the scene)."""
    return text_oracle_demo(args, fourdfy.RECIPE, FOURDFY_SETTINGS)


# ------------------------------------------------------------------------------------------------ Dream-in-4D
DREAMIN4D_SETTINGS = [
    # Dream-in-4D's two stages with their schedules shortened for two CPU cores; every render at 64 px, 8-frame clips
    "static.iterations=500", "static.resolutions=[64,64]", "static.resolution_milestones=[250]",
    "multi_view.timesteps.anneal_end=400", "dynamic.iterations=1200", "dynamic.timesteps.anneal_end=1200",
    "dynamic.width=64", "dynamic.height=48", "dynamic.frames=8", "init_points=2000", "densify.max_gaussians=5000",
    # the K-planes field's rates and the smoothness weight for this oracle's pixel-space loss (bench/RESULTS.md)
    "lr.grid=0.015", "lr.grid_final=0.015", "lr.mlp=0.0015", "lr.mlp_final=0.0015", "dynamic.smoothness_weight=1",
    "checkpoint_every=200", "preview_every=0", "export.mesh_resolution=48", "export.video_size=96", "export.video_frames=24",
]
"""Dream-in-4D's stages scaled down to a 2-core machine (the rest: the recipe's defaults)."""


def dreamin4d_demo(args: Namespace) -> tuple[dict, str, bool]:
    """Dream-in-4D (text) distilled from oracle priors (MVDream, Stable Diffusion, a video model with HiFA targets)."""
    return text_oracle_demo(args, dreamin4d.RECIPE, DREAMIN4D_SETTINGS)


# ------------------------------------------------------------------------------------------------ Animate124
ANIMATE124_SCENE = "jumping_jacks"
ANIMATE124_PROMPT = "a figure doing jumping jacks"
ANIMATE124_SIZE = 64
ANIMATE124_HELDOUT_TIMES = 16
"""Held-out views: azimuths 45/135/225/315, elevations 0/20, 16 times t = (i + 0.5) / 16, at the recipe's camera
distance and field of view (2.5, 40 degrees)."""
ANIMATE124_SETTINGS = [
    # the scene as rendered (no recentring: the oracle's world is the scene's); every render at 64 px; no textual
    # inversion (an oracle has no text encoder to learn a token for); the stages shortened for two CPU cores
    f"reference.size={ANIMATE124_SIZE}", "reference.recenter=false", "textual_inversion.iterations=0",
    "static.iterations=600", f"static.resolution={ANIMATE124_SIZE}", "dynamic.iterations=2500", "semantic.iterations=150",
    f"video.width={ANIMATE124_SIZE}", f"video.height={ANIMATE124_SIZE}", "video.frames=4", "video.time_grid=32",
    f"semantic.fixed_size={ANIMATE124_SIZE}", "init_points=2000", "densify.max_gaussians=5000", "checkpoint_every=200",
    # the field's rates fall tenfold over each clip stage (the published ones stay constant; bench/RESULTS.md)
    "lr.grid_final=0.001", "lr.mlp_final=0.0001",
    "preview_every=0", "export.mesh_resolution=48", "export.video_size=96", "export.video_frames=24",
]
"""Animate124's stages scaled down to a 2-core machine (the rest: the recipe's defaults)."""


def animate124_demo(args: Namespace) -> tuple[dict, str, bool]:
    """Animate124 distilled from oracle priors (Zero123, SD, a video model and ControlNet-tile that know the scene),
    from the scene's first frame seen from the input camera."""
    scene = pick_scene(args, ANIMATE124_SCENE)
    t0 = time.perf_counter()
    out = Path(args.out)
    data = out / "data"
    recipe = animate124.RECIPE
    base = recipe.command_base("image", input=str(data / "image.png"), seed=args.seed, device=args.device, iters=args.iters,
                               options={"--prompt": ANIMATE124_PROMPT})
    cfg = recipe.build_config(args.preset or "default", ANIMATE124_SETTINGS + list(args.overrides), base)
    if not (data / "image.png").exists():
        if out.exists() and any(p.name != "data" for p in out.iterdir()):
            raise Gen4DError(f"--out {out} is not empty and holds no gen4d demo; choose a new or empty folder")
        print(f"rendering the {scene!r} scene from the input camera ({cfg.reference.size} px) into {data}")
        write_dg4d_inputs(scene, data, cfg.reference.size, cfg.cameras.radius, cfg.cameras.fov_deg, 2)
    metrics = animate124.run_animate124(cfg, out, command=" ".join(sys.argv), quiet=args.quiet, priors=OraclePriors(scene))
    if not metrics:
        return metrics, "", False
    times = (torch.arange(ANIMATE124_HELDOUT_TIMES, dtype=torch.float32) + 0.5) / ANIMATE124_HELDOUT_TIMES
    heldout = heldout_scores(out, scene, ANIMATE124_SIZE, cfg.cameras.radius, cfg.cameras.fov_deg, times, cfg.device)
    return finish_oracle_demo(out, metrics, heldout, scene, t0)


DEMOS = {"reconstruct": reconstruct_demo, "dg4d": dg4d_demo, "fourdfy": fourdfy_demo, "dreamin4d": dreamin4d_demo,
         "animate124": animate124_demo}


def run_demo(name: str, args: Namespace) -> tuple[dict, str, bool]:
    """Run demo ``name``; returns (metrics, headline, whether test renders were written)."""
    return DEMOS[name](args)


__all__ = ["DEMOS", "run_demo"]
