"""Dream-in-4D (``gen4d text|image --recipe dreamin4d``, ``gen4d subject train``) with tiny models: the three
variants end to end with every export, the ``sd_view`` rule, both subject-LoRA layouts, DreamBooth training, HiFA's
target, the displacement render and its smoothness, the frozen static model, and a bit-identical resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from safetensors.torch import load_file, save_file

from gen4d import Gen4DError
from gen4d.cli import main
from gen4d.devices import resolve_device
from gen4d.distill.stage import ScoreDistillation
from gen4d.distill.views import ViewSampling, sample_views
from gen4d.fields.deformation import Deformation
from gen4d.gaussians.model import GaussianModel
from gen4d.guidance.base import Conditioning
from gen4d.guidance.priors import build_prior
from gen4d.guidance.sds import ddim_step
from gen4d.guidance.stable_diffusion import StableDiffusionGuidance
from gen4d.guidance.subject_lora import find_lora_file, to_peft_state_dict
from gen4d.recipes import dreamin4d, subject
from gen4d.scene import Scene4D
from gen4d.testing import tiny_model_dir
from gen4d.testing.oracles import sd_alphas_cumprod
from gen4d.training.loop import backward

pytestmark = pytest.mark.usefixtures("tiny_models")

TINY = [
    "static.iterations=3", "image.iterations=3", "dynamic.iterations=3", "static.resolutions=[32,32]",
    "static.resolution_milestones=[2]", "image.resolutions=[32,32,32]", "image.size=32", "dynamic.width=32",
    "dynamic.height=24", "dynamic.frames=4", "export.mesh_resolution=24", "export.video_size=32", "export.video_frames=3",
    "export.mesh_threshold=0.05", "checkpoint_every=2", "preview_every=0", "init_points=300", "export.frames=4",
]
SUBJECT_TINY = ["steps=3", "num_class_images=2", "class_steps=2", "resolution=16", "checkpoint_every=2"]


def config(*extra: str, prompt: str = "a dog running") -> dreamin4d.DreamIn4DConfig:
    return dreamin4d.RECIPE.build_config("default", TINY + list(extra), {"prompt": prompt})


def write_image(path, size=40):
    a = np.full((size, size, 4), 0, np.uint8)
    a[8:32, 12:28] = (200, 80, 40, 255)
    Image.fromarray(a).save(path)
    return path


def exports_complete(out, frames=4):
    ex = out / "exports"
    return (len(list((ex / "ply").glob("*.ply"))) == frames and (ex / "animated.glb").exists() and (ex / "orbit.mp4").exists()
            and len(list((ex / "mesh").glob("*.obj"))) == frames and len(list((ex / "textured").glob("frame_*.obj"))) == frames)


@pytest.fixture(scope="module")
def subject_run(tmp_path_factory):
    """A tiny ``gen4d subject train`` run (its LoRA is used by several tests)."""
    from gen4d.models import registry

    registry.set_model_set("tiny")
    root = tmp_path_factory.mktemp("subject")
    images = root / "images"
    images.mkdir()
    for i in range(2):
        write_image(images / f"{i}.png")
    out = root / "run"
    assert main(["subject", "train", str(images), "--token", "sks", "--class", "dog", "--out", str(out), "--models", "tiny",
                 "--quiet", *SUBJECT_TINY]) == 0
    registry.set_model_set("real")
    return out


# ------------------------------------------------------------------------------------------------ end to end
def test_text_variant_runs_both_stages_and_every_export(tmp_path):
    out = tmp_path / "run"
    assert main(["text", "a dog running", "--recipe", "dreamin4d", "--out", str(out), "--models", "tiny", "--quiet", *TINY]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["variant"] == "text" and set(m["stages"]) == {"static", "dynamic"} and m["iterations"] == 6
    assert exports_complete(out)


def test_image_variant_runs_both_stages_and_every_export(tmp_path):
    out = tmp_path / "run"
    image = write_image(tmp_path / "corgi.png")
    assert main(["image", str(image), "--recipe", "dreamin4d", "--prompt", "a corgi running", "--out", str(out), "--models", "tiny",
                 "--quiet", *TINY]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["variant"] == "image" and m["iterations"] == 6 and (out / "input.png").exists()
    assert exports_complete(out)


def test_subject_variant_runs_with_the_trained_lora(tmp_path, subject_run):
    out = tmp_path / "run"
    assert main(["text", "a sks dog running", "--recipe", "dreamin4d", "--subject", str(subject_run), "--out", str(out),
                 "--models", "tiny", "--quiet", *TINY]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["variant"] == "subject" and exports_complete(out)


def test_image_variant_needs_a_prompt_and_nothing_is_written(tmp_path, capsys):
    image = write_image(tmp_path / "x.png")
    assert main(["image", str(image), "--recipe", "dreamin4d", "--out", str(tmp_path / "run"), "--models", "tiny"]) == 2
    assert "needs a prompt" in capsys.readouterr().err and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ sd_view
class Counting(torch.nn.Module):
    """Wraps a prior and records the azimuths of every batch it judged."""

    def __init__(self, prior):
        super().__init__()
        self.prior, self.seen = prior, []
        self.loss_name = prior.loss_name

    def forward(self, images, cond, step, generator, schedule=None):
        self.seen.append(cond.azimuth_deg.tolist())
        return self.prior(images, cond, step, generator, schedule=schedule)


def _text_terms(sd_view: float, azimuth_start: float):
    run = dreamin4d.DreamIn4DRun(config(f"sd.sd_view={sd_view}"), resolve_device("cpu"), build_prior)
    mv, sd = run.text_terms()
    mv.views.azimuth_deg = (azimuth_start, azimuth_start)  # views at azimuth_start + 0, 90, 180, 270
    sd.prior = Counting(sd.prior)
    return run, mv, sd


def test_sd_view_keeps_back_views_from_stable_diffusion():
    run, mv, sd = _text_terms(145.0, 10.0)
    losses = ScoreDistillation([mv, sd], background=torch.ones(3))
    scene = run.init_scene()
    step = losses(scene, 0, torch.Generator().manual_seed(0))
    seen = sd.prior.seen[-1]
    assert sorted(round(a) for a in seen) == [10, 100, 280]  # 190 (the back) left out; 280 = -80 degrees
    assert "sd" in step.losses
    # no view within the limit (views at 50, 140, 230, 320 = -40 degrees, limit 30): no SD call, no SD loss
    sd.azimuth_limit = 30.0
    mv.views.azimuth_deg = (50.0, 50.0)
    calls = len(sd.prior.seen)
    step = losses(scene, 0, torch.Generator().manual_seed(0))
    assert "sd" not in step.losses and "multi_view" in step.losses
    assert len(sd.prior.seen) == calls and losses.history == {"multi_view": 2, "sd": 1}


def test_sd_view_180_judges_every_view():
    run, mv, sd = _text_terms(180.0, 10.0)
    ScoreDistillation([mv, sd], background=torch.ones(3))(run.init_scene(), 0, torch.Generator().manual_seed(0))
    assert len(sd.prior.seen[-1]) == 4


def test_sd_and_mvdream_judge_the_same_render():
    """SD shares MVDream's views (Dream-in-4D passes MVDream's batch to SD): the same cameras, one render."""
    run, mv, sd = _text_terms(180.0, 0.0)
    mv.prior = Counting(mv.prior)
    ScoreDistillation([mv, sd], background=torch.ones(3))(run.init_scene(), 0, torch.Generator().manual_seed(0))
    assert mv.prior.seen[-1] == sd.prior.seen[-1]


# ------------------------------------------------------------------------------------------------ subject LoRA
def _random_lora(unet, rank=2, seed=0):
    """Random up/down weights for every attention projection, in the attention-processor layout."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if name.endswith(("attn1", "attn2")):
            for proj, key in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out.0", "to_out")):
                lin = module.get_submodule(proj)
                state[f"{name}.processor.{key}_lora.down.weight"] = torch.randn(rank, lin.in_features, generator=g) * 0.3
                state[f"{name}.processor.{key}_lora.up.weight"] = torch.randn(lin.out_features, rank, generator=g) * 0.3
    return state


def _prediction(sd: StableDiffusionGuidance):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 8, 8, generator=g)
    emb = torch.randn(1, 77, sd.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return sd.unet_noise(x, torch.tensor([500]), emb)


def test_both_lora_layouts_load_and_give_the_same_prediction(tmp_path):
    kit = tiny_model_dir("sd21")
    base = _prediction(StableDiffusionGuidance(model=str(kit)))
    old = _random_lora(StableDiffusionGuidance(model=str(kit)).unet)
    (tmp_path / "old").mkdir()
    torch.save(old, tmp_path / "old" / "pytorch_lora_weights.bin")
    # the same weights in diffusers' current layout: unet.<module>.<proj>.lora.down/up.weight
    new = {}
    for k, v in old.items():
        module, rest = k.split(".processor.")
        proj, which = rest.split("_lora.")
        proj = "to_out.0" if proj == "to_out" else proj
        new[f"unet.{module}.{proj}.lora.{which}"] = v
    (tmp_path / "new" / "checkpoint-300").mkdir(parents=True)
    save_file(new, str(tmp_path / "new" / "checkpoint-300" / "pytorch_lora_weights.safetensors"))
    assert find_lora_file(tmp_path / "new").name == "pytorch_lora_weights.safetensors"
    a = _prediction(StableDiffusionGuidance(model=str(kit), lora=str(tmp_path / "old")))
    b = _prediction(StableDiffusionGuidance(model=str(kit), lora=str(tmp_path / "new")))
    assert (a - base).abs().max() > 1e-3  # the LoRA changes the noise prediction
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # and it is the update up @ down at scale 1 on one projection, as both writers meant it
    sd = StableDiffusionGuidance(model=str(kit), lora=str(tmp_path / "old"))
    name = next(k.split(".processor.")[0] for k in old)
    q = sd.unet.get_submodule(name).to_q
    x = torch.randn(3, q.in_features)
    expected = x @ q.base_layer.weight.T + x @ (old[f"{name}.processor.to_q_lora.up.weight"] @ old[f"{name}.processor.to_q_lora.down.weight"]).T
    torch.testing.assert_close(q(x), expected, rtol=1e-5, atol=1e-5)


def test_lora_converter_refuses_text_encoder_and_unknown_keys():
    with pytest.raises(Gen4DError, match="text encoder"):
        to_peft_state_dict({"text_encoder.x.lora.down.weight": torch.zeros(1)})
    with pytest.raises(Gen4DError, match="neither"):
        to_peft_state_dict({"foo.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------------------------ subject train
def test_subject_train_writes_a_lora_that_loads_back(subject_run):
    m = json.loads((subject_run / "metrics.json").read_text())
    assert m["class_images"] == 2 and len(list((subject_run / "stages" / "class_images").glob("*.png"))) == 2
    lora = load_file(str(subject_run / "lora" / "pytorch_lora_weights.safetensors"))
    assert lora and all(k.startswith("unet.") and ".lora." in k for k in lora)
    kit = tiny_model_dir("sd21")
    base = _prediction(StableDiffusionGuidance(model=str(kit)))
    loaded = _prediction(StableDiffusionGuidance(model=str(kit), lora=str(subject_run)))
    assert (loaded - base).abs().max() > 0  # trained weights, not the zero-initialised up matrices of a fresh LoRA


def test_subject_training_lowers_its_loss(tmp_path):
    """On a fixed set of (image crop, timestep, noise) draws the loss falls after training on one image."""
    write_image(tmp_path / "a.png")
    cfg = subject.RECIPE.build_config("default", ["prior_preservation=false", "resolution=16", "lr=3e-3", "batch_size=2",
                                                  "rank=8", "device=cpu"], {"input": str(tmp_path / "a.png")})
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    kit = str(tiny_model_dir("sd21"))
    unet = UNet2DConditionModel.from_pretrained(kit, subfolder="unet").requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(kit, subfolder="vae").requires_grad_(False)
    emb = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    trainer = subject.DreamBoothTrainer(cfg, unet, vae, DDPMScheduler.from_pretrained(kit, subfolder="scheduler"),
                                        [subject.load_square(tmp_path / "a.png", 16)], [], emb, torch.device("cpu"))

    def held_out_loss():
        saved = trainer.optimizers["lora"].step
        trainer.optimizers["lora"].step = lambda: None  # evaluate only
        try:
            return np.mean([trainer.step(0, torch.Generator().manual_seed(100 + i))["loss"] for i in range(8)])
        finally:
            trainer.optimizers["lora"].step = saved

    before = held_out_loss()
    g = torch.Generator().manual_seed(0)
    for step in range(80):
        trainer.step(step, g)
    assert held_out_loss() < 0.9 * before


# ------------------------------------------------------------------------------------------------ dynamic stage
def test_hifa_step_is_diffusers_ddim_with_eta_1():
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
                          clip_sample=False, steps_offset=1)
    sched.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 4, 3, 5, 5, generator=g) for _ in range(3))
    a = sched.alphas_cumprod
    for t in (700, 250):
        prev = t - 1000 // 4
        ref = sched.step(eps, t, x, eta=1.0, variance_noise=z).prev_sample
        ours = ddim_step(x, eps, a[t].expand(2), a[prev].expand(2), z)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_hifa_one_step_targets_the_denoised_sample():
    """With one HiFA step from t the target is the DDIM step to alpha_bar_0: sqrt(a0) x0 + ... ~ x0."""
    from gen4d.guidance.base import GuidanceConfig
    from gen4d.testing.oracles import OraclePrior

    prior = OraclePrior("sd", GuidanceConfig(weighting="hifa", hifa_steps=1, guidance_scale=1.0), "bouncing_balls")
    from gen4d.cameras import orbit_cameras

    cams = orbit_cameras([30.0], [10.0], 2.75, math.radians(40), 16, 16, times=0.3)
    cond = Conditioning(c2w=cams.c2w, fov_deg=torch.tensor([40.0]), times=cams.times, elevation_deg=torch.tensor([10.0]),
                        azimuth_deg=torch.tensor([30.0]), radius=torch.tensor([2.75]))
    img = torch.rand(1, 3, 16, 16, requires_grad=True)
    prior(img, cond, 0, torch.Generator().manual_seed(0), t=400)
    x0 = 2.0 * prior.clean_images(cond, 1, 16, 16) - 1.0  # the oracle's pixel-space "latent"
    target = prior.last_info["target"]
    a0 = sd_alphas_cumprod()[0]
    residual = target - a0.sqrt() * x0  # what is left is the step's fresh noise, std sqrt(1 - a0) ~ 0.03
    assert float(residual.std()) < 0.05 and abs(float(residual.mean())) < 0.01
    assert (target - x0).abs().mean() < (prior.last_info["x_t"] - x0).abs().mean() / 5


def test_displacement_render_is_alpha_weighted_displacement():
    g = torch.Generator().manual_seed(0)
    scene = Scene4D(GaussianModel.random_in_sphere(200, 0.5, 0, g))
    scene.attach_deformation(dreamin4d.DreamIn4DConfig().deformation, 0)
    from gen4d.cameras import orbit_cameras

    cams = orbit_cameras([0.0, 90.0], [10.0, 10.0], 2.5, math.radians(45), 24, 20, times=[0.2, 0.7])
    assert scene.render_displacement(cams).abs().max() == 0  # a fresh field is the identity
    param = torch.nn.Parameter(torch.tensor([0.05, -0.02, 0.03]))

    class Translate(torch.nn.Module):
        def forward(self, means, t, quats=None):
            n = len(means)
            return Deformation(param.expand(n, 3), torch.zeros(n, 4), torch.zeros(n, 3), None)

    scene.deformation = Translate()
    d = scene.render_displacement(cams)
    alpha = scene.render(cams).alpha
    shift = param.detach()
    torch.testing.assert_close(d, alpha * shift, rtol=1e-4, atol=1e-5)
    loss = dreamin4d.displacement_smoothness(1.0)
    views = sample_views(ViewSampling(views=1, times="clip", frames=3), g, 16, 16)
    x = scene.render_displacement(views.cameras).reshape(1, 3, 16, 16, 3)
    expected = sum((a - b).square().mean(0).sum() for a, b in (
        (x[:, 1:], x[:, :-1]), (x[:, :, 1:], x[:, :, :-1]), (x[:, :, :, 1:], x[:, :, :, :-1])))
    assert float(expected.detach()) > 0  # the displacement is constant, but alpha is not
    value = loss(scene, views)["smoothness"]
    torch.testing.assert_close(value, expected.detach())
    # the gradient reaches the displacement values only: with the coverage alpha held fixed the loss is
    # |shift|^2 sum (alpha differences)^2, so its gradient is 2 loss shift / |shift|^2
    (grad,) = torch.autograd.grad(value, param)
    torch.testing.assert_close(grad, 2 * value.detach() * shift / shift.square().sum(), rtol=1e-4, atol=1e-7)


def test_dynamic_stage_cannot_change_the_static_model():
    run = dreamin4d.DreamIn4DRun(config(), resolve_device("cpu"), build_prior)
    stage = run.dynamic_stage()
    scene = stage.prepare(run.init_scene())
    before = {k: v.detach().clone() for k, v in scene.gaussians.params.items()}
    field_before = [p.detach().clone() for p in scene.deformation.parameters()]
    opts = stage.make_optimizers(scene)
    assert set(opts) == {"deformation"}
    g = torch.Generator().manual_seed(0)
    for step in range(2):
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        out = stage.losses(scene, step, g)
        assert set(out.losses) == {"video", "video_sds_color", "video_smoothness"}
        backward(out)
        for o in opts.values():
            o.step()
    assert all(torch.equal(before[k], v) for k, v in scene.gaussians.params.items())
    assert any(not torch.equal(a, b) for a, b in zip(field_before, scene.deformation.parameters()))
    with torch.no_grad():  # a displacement field: the Gaussians move, their shapes stay
        frame = scene.frame_at(0.6)
    assert torch.equal(frame.scales, scene.gaussians.params["log_scales"].exp())
    assert torch.equal(frame.quats, scene.gaussians.params["quats"])


def test_video_clips_follow_the_published_cameras_and_time_spans():
    cfg = config()
    d = cfg.dynamic
    v = ViewSampling(views=1, azimuth_deg=d.azimuth_deg, elevation_deg=d.elevation_deg, radius=d.radius, fov_deg=d.fov_deg,
                     relative_radius=True, vertical_fov=True, times="clip", frames=24, clip_span=d.clip_span)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        b = sample_views(v, g, 144, 80)
        t = b.times
        assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
        assert 0.8 - 1e-5 <= float(t[-1] - t[0]) <= 1.0 + 1e-5
        assert torch.allclose(torch.diff(t), torch.diff(t)[:1].expand(23), atol=1e-5)  # evenly spaced
        # vertical fov as drawn: the horizontal one of a 144 x 80 image, and the distance r / tan(fovy / 2)
        fov_x = math.radians(float(b.fov_deg[0]))
        fov_y = 2 * math.atan(math.tan(fov_x / 2) * 80 / 144)
        assert 15 - 1e-3 <= math.degrees(fov_y) <= 60 + 1e-3
        r = float(b.radius[0]) * math.tan(fov_y / 2)
        assert 0.8 - 1e-4 <= r <= 1.0 + 1e-4
        eye = b.cameras.c2w[0, :3, 3]
        assert float(eye.norm()) == pytest.approx(float(b.radius[0]), rel=1e-4)
        assert len(set(b.azimuth_deg.tolist())) == 1  # one camera per clip (delta_percentage 0)


def test_resume_in_the_middle_of_the_dynamic_stage_is_bit_identical(tmp_path):
    cfg = config("dynamic.iterations=5")
    whole = tmp_path / "whole"
    dreamin4d.run_dreamin4d(cfg, whole, quiet=True)
    resumed = tmp_path / "resumed"
    assert dreamin4d.run_dreamin4d(cfg, resumed, quiet=True, stop_after_step=3 + 2) == {}  # killed after dynamic step 2
    state = json.loads((resumed / "stages" / "dynamic" / "state.json").read_text())
    assert not state["complete"] and state["step"] == 2
    dreamin4d.run_dreamin4d(cfg, resumed, quiet=True)
    a = load_file(str(whole / "stages" / "dynamic" / "checkpoint.safetensors"))
    b = load_file(str(resumed / "stages" / "dynamic" / "checkpoint.safetensors"))
    keys = [k for k in a if k.startswith("model.")]
    assert any("deformation" in k for k in keys) and all(torch.equal(a[k], b[k]) for k in keys)


def test_paper_preset_is_the_published_schedule():
    cfg = dreamin4d.RECIPE.build_config("paper", [], {"prompt": "x"})
    assert (cfg.static.iterations, cfg.image.iterations, cfg.dynamic.iterations) == (10_000, 2000, 10_000)
    assert (cfg.multi_view.weight, cfg.sd.weight, cfg.multi_view.guidance_scale, cfg.sd.guidance_scale) == (2.0, 1.0, 50.0, 100.0)
    d = cfg.dynamic
    assert (d.width, d.height, d.frames, d.hifa_steps, d.color_weight, d.smoothness_weight) == (144, 80, 24, 1, 0.1, 1000.0)
    assert dreamin4d.mv_prompt("A sks dog is running") == "A dog is running"


# ------------------------------------------------------------------------------------------------ DeepFloyd IF
def test_deepfloyd_if_loads_and_distils_in_pixel_space(tmp_path):
    """IF stage I through its own loading code (tiny model of the same classes): T5 prompts (distinct prompts give
    distinct embeddings), the noise in the first 3 of the U-Net's 6 channels, a gradient on the renders."""
    from gen4d.guidance.deepfloyd import DeepFloydIFGuidance

    prior = DeepFloydIFGuidance(model="deepfloyd-if", prompt_cache=str(tmp_path))
    a, b = prior.encode_prompt("a corgi"), prior.encode_prompt("a cat")
    assert a.cond.shape == (77, prior.unet.config.encoder_hid_dim) and (a.cond - b.cond).abs().max() > 0
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([300, 300])
    cond = Conditioning(prompt=a)
    with torch.no_grad():
        eps_c, eps_u = prior.predict_noise(x_t, t, cond)
        full = prior.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=torch.cat(a.get(2))).sample
    assert full.shape[1] == 6
    torch.testing.assert_close(torch.cat([eps_c, eps_u]), full[:, :3])
    img = torch.rand(2, 3, 24, 24, requires_grad=True)
    prior(img, cond, 0, torch.Generator().manual_seed(1))["loss_sds"].backward()
    assert img.grad.abs().sum() > 0


def test_image_variant_with_deepfloyd_if_shares_zero123s_views():
    cfg = config("image.text_prior=if", prompt="a corgi running")
    cfg.mode, cfg.input = "image", ""
    g = torch.Generator().manual_seed(0)
    ref = torch.zeros(4, 32, 32)
    ref[:, 8:24, 8:24] = 1.0
    run = dreamin4d.DreamIn4DRun(cfg, resolve_device("cpu"), build_prior, reference=ref)
    losses = run.image_losses()
    assert [t.name for t in losses.terms] == ["zero123", "if"] and losses.terms[1].share_views == "zero123"
    step = losses(run.init_scene(), 0, g)
    assert {"rgb", "mask", "zero123", "if"} <= set(step.losses)
