"""DreamGaussian4D's published recipe: timestep annealing, densification from every view after the optimiser step,
the driving video framed like the input, and a default run that needs nothing beyond the base install."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from test_dg4d import TINY, disc

from gen4d.cameras import orbit_cameras
from gen4d.cli import main
from gen4d.data import preprocess
from gen4d.distill.stage import GuidanceTerm, ReferenceViews, ScoreDistillation
from gen4d.distill.views import ViewSampling
from gen4d.eval.metrics import psnr
from gen4d.gaussians.model import GaussianModel
from gen4d.gaussians.strategy import DensifyConfig, DensifyStrategy
from gen4d.guidance.base import GuidanceConfig
from gen4d.guidance.priors import build_prior
from gen4d.guidance.sds import TimestepSchedule
from gen4d.recipes import dg4d
from gen4d.runs import RunDir
from gen4d.scene import Scene4D
from gen4d.testing.oracles import OraclePrior
from gen4d.training.loop import Stage, run_stages

pytestmark = pytest.mark.usefixtures("restore_model_set")


def test_dreamgaussian_schedule_anneals_to_the_lowest_timestep_at_the_last_step():
    s = TimestepSchedule(min_start=0.02, max_start=0.98, anneal_end=500, deterministic=True)
    t = [int(s.sample(step, 1000, 3)[0]) for step in range(500)]
    assert t[0] == 980 and t[-1] == 20 and t == sorted(t, reverse=True)  # (1 - 1/500) x 1000 = 998 -> clipped
    assert int(s.sample(249, 1000, 1)[0]) == 500  # round((1 - 250/500) 1000)
    capped = TimestepSchedule(min_start=0.02, max_start=0.5, anneal_end=200, deterministic=True)
    assert max(int(capped.sample(k, 1000, 1)[0]) for k in range(200)) == 500  # the 4D stage's t_max


def test_both_stages_draw_annealed_timesteps(tmp_path, tiny_models):
    """Every Zero123 call of a run, recorded: the static stage ends at t = 20, the dynamic one never exceeds 500."""
    drawn: list[tuple[int, int]] = []

    def recording_priors(kind, config, device):
        prior = build_prior(kind, config, device)
        forward = prior.forward

        def record(renders, cond=None, step=0, generator=None, **kw):
            out = forward(renders, cond, step, generator, **kw)
            drawn.append((step, int(prior.last_info["t"][0])))
            return out

        prior.forward = record
        return prior

    image = tmp_path / "image.png"
    disc(24, 24).save(image)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        disc(20 + 4 * i, 24).save(frames / f"{i}.png")
    cfg = dg4d.build_config("default", [a for a in TINY if "=" in a] + ["static.iterations=5", "dynamic.iterations=4"],
                            {"input": str(image), "driving": {"path": str(frames)}})
    dg4d.run_dg4d(cfg, tmp_path / "run", quiet=True, priors=recording_priors)
    static, dynamic = drawn[:5], drawn[5:]
    assert [s for s, _ in static] == list(range(5)) and static[-1][1] == 20 and static[0][1] == 800
    assert [s for s, _ in dynamic] == list(range(4)) and max(t for _, t in dynamic) <= 500 and dynamic[-1][1] == 20


def _small_scene(n=400) -> Scene4D:
    return Scene4D(GaussianModel.random_in_sphere(n, 0.6, 0, torch.Generator().manual_seed(0)))


def test_densification_counts_the_novel_views():
    scene = _small_scene()
    cams = orbit_cameras([0.0], 0.0, 2.5, math.radians(49.1), 32, 32)
    reference = ReferenceViews(cams, torch.full((1, 32, 32, 3), 0.7), torch.ones(1, 32, 32, 1), deform=False)
    prior = OraclePrior("sd", GuidanceConfig(), "bouncing_balls")
    term = GuidanceTerm("sds", prior, ViewSampling(views=4, radius=(2.5, 2.5), times="zero"), resolution=32, deform=False)
    out = ScoreDistillation([term], reference, background=torch.ones(3))(scene, 0, torch.Generator().manual_seed(0))
    strategy = DensifyStrategy(DensifyConfig(refine_start=10), 1.0)
    strategy.step_pre_backward(out.meta)
    sum(out.losses.values()).backward()
    strategy.step_post_backward(scene.gaussians, {}, 0, out.meta)
    assert isinstance(out.meta, list) and len(out.meta) == 2  # the reference render and the 4 novel views
    assert int(strategy.count.max()) == 5  # a Gaussian seen by all five views counts five times


def test_a_densifying_step_still_applies_its_update(tmp_path):
    """The strategy replaces every parameter tensor when it refines; run after the optimiser step, it keeps the
    step's update (run before it, the new tensors had no gradient and the step was lost)."""
    scene = _small_scene()
    cams = orbit_cameras([0.0, 90.0], 0.0, 2.5, math.radians(49.1), 24, 24)
    target = torch.full((2, 24, 24, 3), 0.2)

    def losses(model, step, generator):
        out = model.render(cams, background=torch.ones(3))
        return {"l2": (out.rgb - target).square().mean()}, out.meta

    before = {k: v.detach().clone() for k, v in scene.gaussians.params.items()}
    never = DensifyConfig(refine_start=0, refine_every=1, grow_grad2d=1e9, prune_opacity=1e-12, reset_opacity_every=0)
    stage = Stage("s", 2, lambda m: {k: torch.optim.Adam([p], lr=1e-2) for k, p in m.gaussians.params.items()},
                  losses=losses, strategy=DensifyStrategy(never, 1.0), checkpoint_every=0)
    model, _ = run_stages(RunDir(tmp_path), [stage], lambda: scene, None, quiet=True)
    after = model.gaussians.params
    assert len(model.gaussians) == 400  # nothing grown or pruned: only the tensors were replaced (step 1 refines)
    # Adam's first two steps move every parameter with a gradient by about 2 x lr
    moved = (after["sh0"] - before["sh0"]).abs().mean()
    assert moved > 1.5e-2, float(moved)


def test_in_image_mode_driving_frame_0_lines_up_with_the_input(tmp_path):
    """A given driving video whose frame 0 is the input (uncentred, framed differently from its later frames) is
    cropped as the input image was: frame 0 reproduces the reference view."""
    y, x = np.mgrid[:96, :96]
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):  # a disc in the top-left quarter moving right; the union box is not frame 0's box
        inside = (x - 28 - 12 * i) ** 2 + (y - 30) ** 2 <= 14**2
        rgb = np.stack([np.full_like(x, 210), (x * 2).astype(np.int64), (y * 2).astype(np.int64)], -1).astype(np.uint8)
        Image.fromarray(np.dstack([rgb, (inside * 255).astype(np.uint8)]), "RGBA").save(frames / f"frame_{i}.png")
    image = tmp_path / "image.png"
    Image.open(frames / "frame_0.png").save(image)
    cfg = dg4d.build_config("default", ["size=64"], {"input": str(image), "driving": {"path": str(frames)}})
    reference = dg4d.load_reference(cfg)
    driving = dg4d._make_driving_frames(cfg, tmp_path / "stage", reference, torch.device("cpu"), print)
    rgb = lambda t: preprocess.composite(t).permute(1, 2, 0)[None]  # noqa: E731
    assert float(psnr(rgb(driving[0]), rgb(reference))) >= 30.0
    assert float(psnr(rgb(driving[-1]), rgb(reference))) < 25.0  # later frames did move


def test_default_image_run_needs_no_rembg_and_a_rembg_setting_stops_before_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preprocess, "rembg_available", lambda: False)
    image = tmp_path / "image.png"
    disc(24, 24).save(image)
    small = [a for a in TINY if a not in ("--quiet",)] + ["driving.num_frames=4", "driving.steps=2"]
    assert main(["image", str(image), "--out", str(tmp_path / "run"), *small]) == 0  # SVD (tiny) generates the video
    out = capsys.readouterr().out
    assert "driving frames cut out with the plain-background segmenter (rembg is not installed)" in out
    assert len(list((tmp_path / "run" / "exports" / "ply").glob("*.ply"))) == 4
    assert main(["image", str(image), "--out", str(tmp_path / "run2"), *small, "driving.alpha=rembg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rembg" in err[0] and "pip install" in err[0]
    assert not (tmp_path / "run2").exists()
