"""The shared parts every recipe is built from: the prior interface and its distillation step, the score-distillation
stage (combination rules, parameter routing), the stage loop's artifact stages, oracle priors, the import layering."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gen4d import Gen4DError
from gen4d.cameras import orbit_c2w, orbit_cameras
from gen4d.data.synthetic import render_scene
from gen4d.distill.stage import GuidanceTerm, ScoreDistillation
from gen4d.distill.views import ViewSampling, sample_views
from gen4d.fields.deformation import DeformationConfig
from gen4d.fields.hexplane import HexPlaneConfig
from gen4d.gaussians.model import GaussianModel
from gen4d.guidance.base import Conditioning, DiffusionGuidance, GuidanceConfig
from gen4d.guidance.sds import TimestepSchedule
from gen4d.runs import RunDir
from gen4d.scene import Scene4D
from gen4d.testing.oracles import OraclePrior, sd_alphas_cumprod
from gen4d.training.loop import ArtifactStage, Stage, run_artifact, run_stages

SRC = Path(__file__).resolve().parents[1] / "src" / "gen4d"


class ToyPrior(DiffusionGuidance):
    """A prior written for the test: pixel space, a noise prediction linear in ``x_t``; nothing else."""

    def __init__(self, weighting="sds", scale=3.0, group=1):
        super().__init__(GuidanceConfig(guidance_scale=scale, weighting=weighting), sd_alphas_cumprod())
        self.group = group
        self.grad_enabled_in_prediction = None

    def encode_renders(self, renders, cond, generator):
        return 2.0 * renders - 1.0

    def timestep_group(self, cond, x):
        return self.group

    def predict_noise(self, x_t, t, cond):
        self.grad_enabled_in_prediction = torch.is_grad_enabled()
        return 0.3 * x_t + 0.1, -0.2 * x_t


def _expected_residual(prior, renders, t, eps):
    a = prior.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x = 2.0 * renders - 1.0
    x_t = a.sqrt() * x + (1 - a).sqrt() * eps
    eps_c, eps_u = 0.3 * x_t + 0.1, -0.2 * x_t
    eps_hat = eps_u + prior.config.guidance_scale * (eps_c - eps_u)
    return a, x, x_t, eps_hat


@pytest.mark.parametrize("weighting", ["sds", "uniform", "x0"])
def test_base_class_gives_the_distillation_gradient_of_a_prior_that_only_encodes_and_predicts(weighting):
    prior = ToyPrior(weighting)
    g = torch.Generator().manual_seed(0)
    renders = torch.rand(3, 3, 5, 5, generator=g).requires_grad_(True)
    eps = torch.randn(3, 3, 5, 5, generator=g)
    t = torch.tensor([30, 500, 960])
    losses = prior(renders, Conditioning(), step=0, t=t, noise=eps)
    assert set(losses) == {"loss_sds"}
    losses["loss_sds"].backward()
    a, x, x_t, eps_hat = _expected_residual(prior, renders.detach(), t, eps)
    if weighting == "sds":
        grad_x = (1 - a) * (eps_hat - eps)  # w(t) (eps_hat - eps), w = 1 - alpha_bar
    elif weighting == "uniform":
        grad_x = eps_hat - eps
    else:  # regress x onto the denoised estimate: gradient x - x0_hat
        grad_x = x - (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
    assert grad_x.abs().max() > 1e-3
    torch.testing.assert_close(renders.grad, 2.0 * grad_x, rtol=1e-5, atol=1e-6)  # x = 2 r - 1
    assert prior.grad_enabled_in_prediction is False  # no backward through the denoiser
    torch.testing.assert_close(prior.last_info["grad_norm"], grad_x.norm(), rtol=1e-5, atol=1e-6)


def test_drawn_timesteps_follow_the_schedule_and_are_shared_within_a_group():
    prior = ToyPrior(group=2)
    prior.config.timesteps = TimestepSchedule(0.02, 0.98, 0.02, 0.5, anneal_start=0, anneal_end=100)
    out = prior(torch.rand(8, 3, 4, 4), Conditioning(), step=100, generator=torch.Generator().manual_seed(1))
    t = prior.last_info["t"]
    assert torch.equal(t[0::2], t[1::2]) and int(t.max()) <= 500 and int(t.min()) >= 20
    assert torch.isfinite(out["loss_sds"])
    with pytest.raises(ValueError, match="groups of 2"):
        prior(torch.rand(3, 3, 4, 4), Conditioning())


# ------------------------------------------------------------------------------------------------ the stage
def _scene(n=300, seed=0) -> Scene4D:
    g = torch.Generator().manual_seed(seed)
    scene = Scene4D(GaussianModel.random_in_sphere(n, 0.6, 0, g))
    return scene.attach_deformation(scene_deformation_config(), seed)


def scene_deformation_config():
    return DeformationConfig(hexplane=HexPlaneConfig(feature_dim=4, resolution=(8, 8, 8, 4), multires=(1,)), hidden_dim=16)


def _terms(p_static: float, p_dynamic: float) -> list[GuidanceTerm]:
    views = ViewSampling(views=2, radius=(2.5, 2.5), times="per_view")
    return [
        GuidanceTerm("image", ToyPrior(), views, groups=("static",), probability=p_static, resolution=16),
        GuidanceTerm("video", ToyPrior(), views, groups=("dynamic",), probability=p_dynamic, resolution=16),
    ]


def test_one_branch_rule_draws_terms_with_their_probabilities():
    probs = [0.5, 0.3, 0.2]
    views = ViewSampling(views=1)
    terms = [GuidanceTerm(f"t{i}", ToyPrior(), views, probability=p) for i, p in enumerate(probs)]
    rule = ScoreDistillation(terms, rule="one")
    g = torch.Generator().manual_seed(123)
    n = 3000
    counts = {t.name: 0 for t in terms}
    for _ in range(n):
        (chosen,) = rule.choose(g)
        counts[chosen.name] += 1
    chi2 = sum((counts[f"t{i}"] - n * p) ** 2 / (n * p) for i, p in enumerate(probs))
    assert chi2 < 13.82, counts  # chi-square, 2 degrees of freedom, p = 0.001
    assert ScoreDistillation(terms, rule="sum").choose(g) == terms


@pytest.mark.parametrize("branch, frozen", [("image", "dynamic"), ("video", "static")])
def test_a_branch_routed_to_one_parameter_group_leaves_the_other_bit_identical(tmp_path, branch, frozen):
    scene = _scene()
    terms = _terms(1.0 if branch == "image" else 0.0, 1.0 if branch == "video" else 0.0)
    losses = ScoreDistillation(terms, rule="one", background=torch.ones(3))
    before = {k: [p.detach().clone() for p in v] for k, v in scene.parameter_groups().items()}

    def optimizers(model):
        return {"all": torch.optim.Adam([p for ps in model.parameter_groups().values() for p in ps], lr=1e-2)}

    stage = Stage("distil", 3, optimizers, losses=losses, checkpoint_every=0, seed=5)
    model, _ = run_stages(RunDir(tmp_path), [stage], lambda: scene, None, quiet=True)
    after = model.parameter_groups()
    assert losses.history == {"image": 3 if branch == "image" else 0, "video": 3 if branch == "video" else 0}
    assert all(torch.equal(a, b) for a, b in zip(before[frozen], after[frozen]))
    trained = "static" if frozen == "dynamic" else "dynamic"
    assert any(not torch.equal(a, b) for a, b in zip(before[trained], after[trained]))


def test_sampler_draws_clips_of_one_camera_and_even_multiview_azimuths():
    g = torch.Generator().manual_seed(0)
    clip = sample_views(ViewSampling(views=2, times="clip", frames=4), g, 8, 8)
    assert len(clip.cameras) == 8 and clip.frames == 4
    assert torch.equal(clip.times[:4], torch.tensor([0, 1 / 3, 2 / 3, 1.0])) and torch.equal(clip.azimuth_deg[:4], clip.azimuth_deg[:1].expand(4))
    even = sample_views(ViewSampling(views=4, azimuth_layout="even"), g, 8, 8)
    gaps = torch.remainder(even.azimuth_deg.diff(), 360.0)
    assert torch.allclose(gaps, torch.full((3,), 90.0))


# ------------------------------------------------------------------------------------------------ the stage loop
def test_an_artifact_stage_is_made_once_and_read_back(tmp_path):
    calls = []

    def make(folder: Path) -> dict:
        calls.append(1)
        (folder / "clip.txt").parent.mkdir(parents=True, exist_ok=True)
        (folder / "clip.txt").write_text("frames")
        return {"frames": 3}

    run = RunDir(tmp_path)
    assert run_artifact(run, ArtifactStage("video", make)) == {"frames": 3}
    assert run_artifact(run, ArtifactStage("video", make)) == {"frames": 3} and len(calls) == 1
    assert run.stage_complete("video")

    def interrupted(folder: Path) -> dict:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_artifact(run, ArtifactStage("other", interrupted))
    assert not run.stage_complete("other")  # recorded only once made


# ------------------------------------------------------------------------------------------------ oracle priors
def test_oracles_read_the_camera_their_published_prior_reads():
    """The Zero123 oracle rebuilds the camera from Zero123's relative pose and the reference camera, the MVDream
    oracle from MVDream's camera embedding: both see exactly the view that was rendered."""
    el, az, r = torch.tensor([20.0, -10.0]), torch.tensor([70.0, 200.0]), torch.tensor([2.5, 2.8])
    fov = torch.tensor([49.1, 49.1])
    times = torch.tensor([0.25, 0.75])
    cams = orbit_cameras(az, el, r, math.radians(49.1), 24, 24, times=times)
    rgb, alpha = render_scene("bouncing_balls", cams, supersample=2)
    truth = (rgb + 1 - alpha).permute(0, 3, 1, 2)

    zero123 = OraclePrior("zero123", GuidanceConfig(), "bouncing_balls")
    ref = zero123.prepare_reference(torch.zeros(3, 8, 8), elevation_deg=5.0, azimuth_deg=30.0, radius=2.0)
    got = zero123.clean_images(Conditioning(elevation_deg=el, azimuth_deg=az, radius=r, fov_deg=fov, times=times, reference=ref), 2, 24, 24)
    torch.testing.assert_close(got, truth, atol=2e-3, rtol=0)

    mvdream = OraclePrior("mvdream", GuidanceConfig(), "bouncing_balls")
    c2w = orbit_c2w(az, el, r).float()
    got = mvdream.clean_images(Conditioning(c2w=c2w, radius=r, fov_deg=fov, times=times), 2, 24, 24)
    torch.testing.assert_close(got, truth, atol=2e-3, rtol=0)
    # a camera off by the azimuth sign sees another image
    wrong = zero123.clean_images(Conditioning(elevation_deg=el, azimuth_deg=-az, radius=r, fov_deg=fov, times=times, reference=ref), 2, 24, 24)
    assert (wrong - truth).abs().mean() > 0.02


def test_oracle_gradient_points_at_the_scene():
    prior = OraclePrior("sd", GuidanceConfig(guidance_scale=50.0), "spinning_box")
    c2w = orbit_c2w(torch.tensor([30.0]), 10.0, 2.5).float()
    cond = Conditioning(c2w=c2w, fov_deg=torch.tensor([49.1]), times=torch.tensor([0.4]))
    truth = prior.clean_images(cond, 1, 16, 16)
    renders = torch.rand(1, 3, 16, 16).requires_grad_(True)
    prior(renders, cond, generator=torch.Generator().manual_seed(0))["loss_sds"].backward()
    # gradient descent moves every pixel towards the scene: grad = c (render - truth) with c > 0
    ratio = renders.grad / (renders.detach() - truth)
    mask = (renders.detach() - truth).abs() > 1e-2
    assert (ratio[mask] > 0).all() and torch.allclose(ratio[mask], ratio[mask].mean(), rtol=1e-3)


# ------------------------------------------------------------------------------------------------ layering
def _imports(path: Path) -> set[str]:
    """Absolute names of the gen4d modules ``path`` imports."""
    module = "gen4d." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("gen4d"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                full = ".".join(base + ([node.module] if node.module else []))
            else:
                full = node.module or ""
            if full.startswith("gen4d"):
                names.add(full)
                names.update(f"{full}.{a.name}" for a in node.names)
    return names


def test_imports_point_one_way():
    top = {"cli", "demo", "batch"}  # gen4d batch runs command lines: it sits beside the CLI
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        where = rel[0] if len(rel) > 1 else Path(rel[0]).stem
        imported = _imports(path)
        if where not in top:
            assert not any(n == "gen4d.cli" or n.startswith("gen4d.cli.") for n in imported), path
        if where not in top | {"recipes", "app", "viewer"}:  # the web app and the viewer sit above the recipes (DESIGN.md)
            assert not any(n == "gen4d.recipes" or n.startswith("gen4d.recipes.") for n in imported), path
        if where not in top | {"testing"}:
            assert not any(n.startswith("gen4d.testing") for n in imported), path


def test_importing_the_priors_loads_nothing_from_testing():
    code = "import sys, gen4d.guidance, gen4d.guidance.priors; print(sorted(m for m in sys.modules if m.startswith('gen4d.testing')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_rendering_cameras_that_share_a_time_has_a_deterministic_gradient():
    """Several cameras at one time share the deformed Gaussians; their gradients must add up in a fixed order (an
    accumulating index_put, advanced indexing's backward, does not on the CPU), or resumed runs drift."""
    scene = _scene(n=6000)
    cams = orbit_cameras(torch.tensor([0.0, 90.0, 180.0, 270.0, 45.0]), 10.0, 2.5, math.radians(50.0), 16, 16,
                         times=torch.tensor([0.3, 0.3, 0.3, 0.3, 0.7]))
    grads = []
    for _ in range(6):
        scene.zero_grad(set_to_none=True)
        out = scene.render(cams, background=torch.ones(3))
        (out.rgb * torch.linspace(0, 1, out.rgb.numel()).reshape(out.rgb.shape)).sum().backward()
        grads.append([p.grad.clone() for p in scene.parameter_groups()["dynamic"] if p.grad is not None])
    assert grads[0] and all(all(torch.equal(a, b) for a, b in zip(grads[0], g)) for g in grads[1:])


def test_a_diverging_stage_stops_with_one_line_and_keeps_its_last_checkpoint(tmp_path):
    scene = _scene()

    def optimizers(model):
        return {"all": torch.optim.Adam([p for ps in model.parameter_groups().values() for p in ps], lr=1e-2)}

    def losses(model, step, generator):  # finite for 4 steps, then NaN
        value = sum(p.square().sum() for ps in model.parameter_groups().values() for p in ps)
        return {"fit": value * (float("nan") if step >= 4 else 1.0)}, None

    run = RunDir(tmp_path)
    stage = Stage("distil", 8, optimizers, losses=losses, checkpoint_every=2, seed=5)
    with pytest.raises(Gen4DError, match=r"'distil' diverged at step 5: loss fit is not finite") as err:
        run_stages(run, [stage], lambda: scene, None, quiet=True)
    assert "\n" not in str(err.value)
    tensors, state = run.load_checkpoint("distil")
    assert state["step"] == 4 and not state.get("complete")
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_a_node_field_adds_its_arap_term_at_the_times_the_step_rendered():
    g = torch.Generator().manual_seed(0)
    scene = Scene4D(GaussianModel.random_in_sphere(300, 0.6, 0, g))
    cfg = DeformationConfig(type="nodes")
    cfg.nodes.count, cfg.nodes.arap_weight = 16, 0.5
    scene.attach_deformation(cfg, 0)
    with torch.no_grad():  # a non-rigid motion, so the term is not zero
        for p in scene.deformation.mlp.parameters():
            p.normal_(0.0, 0.3, generator=g)
    losses = ScoreDistillation([_terms(1.0, 0.0)[1]], background=torch.ones(3))
    out = losses(scene, 0, torch.Generator().manual_seed(1))
    times = losses.last_views["video"].times
    assert float(out.losses["arap"].detach()) > 0
    torch.testing.assert_close(out.losses["arap"], 0.5 * scene.deformation.arap_loss(times))
    hexplane = ScoreDistillation([_terms(1.0, 0.0)[1]], background=torch.ones(3))(_scene(), 0, torch.Generator().manual_seed(1))
    assert "arap" not in hexplane.losses
