"""MVDream prior: joint multi-view attention, camera conditioning, SDS gradients, checkpoint conversion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gen4d import Gen4DError
from gen4d.cameras import orbit_c2w
from gen4d.guidance.base import Conditioning
from gen4d.guidance.mvdream import MVDreamConfig, MVDreamGuidance, mvdream_camera
from gen4d.guidance.mvdream_checkpoint import (
    MVDREAM_SD21_UNET,
    convert_mvdream_checkpoint,
    unet_config_from_mvdream,
    unet_state_dict_to_original,
)
from gen4d.guidance.mvdream_unet import MultiViewAttnProcessor, set_multiview_attention, set_num_views
from gen4d.testing.tiny_mvdream import (
    TINY_MVDREAM_UNET,
    make_tiny_mvdream,
    tiny_mvdream_unet,
)

CONFIGS = Path(__file__).resolve().parents[1] / "bench" / "model_configs"  # the published configs


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_mvdream(tmp_path_factory.mktemp("tiny_mvdream"))


@pytest.fixture(scope="module")
def guidance(tiny_folder):
    return MVDreamGuidance.from_pretrained(MVDreamConfig(model=str(tiny_folder), resolution=64))


def _cams(n: int, start: float = 0.0) -> torch.Tensor:
    return orbit_c2w(start + torch.arange(n) * 360.0 / n, 15.0, 2.5).float()


# ------------------------------------------------------------------------------------------------- loading
def test_tiny_model_loads_through_from_pretrained(guidance):
    from diffusers import UNet2DConditionModel

    assert isinstance(guidance.unet, UNet2DConditionModel)
    assert guidance.unet.config.class_embed_type == "projection"
    procs = guidance.unet.attn_processors
    assert procs and all(isinstance(p, MultiViewAttnProcessor) == n.endswith("attn1.processor") for n, p in procs.items())
    assert guidance.num_train_timesteps == 1000


def test_mvdream_layout_folder_loads_and_matches(tmp_path, guidance):
    """A folder whose unet/ is a MultiViewUNetModel with original names (ashawkey's layout) gives the same U-Net."""
    folder = make_tiny_mvdream(tmp_path / "mv", unet_layout="mvdream")
    assert json.loads((folder / "unet" / "config.json").read_text())["_class_name"] == "MultiViewUNetModel"
    other = MVDreamGuidance.from_pretrained(MVDreamConfig(model=str(folder), resolution=64))
    ref = guidance.unet.state_dict()
    got = other.unet.state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


# ------------------------------------------------------------------------------------------------- cameras
def _mvdream_get_camera(elevation: float, azimuth: float) -> torch.Tensor:
    """MVDream's get_camera (blender_coord=True) for one view, written out from its definition."""
    e, a = math.radians(elevation), math.radians(azimuth)
    pos = torch.tensor([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)], dtype=torch.float64)
    forward = -pos / pos.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -forward, pos
    flip_yz = torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    return (flip_yz @ m).reshape(16)


@pytest.mark.parametrize("az,el", [(0.0, 15.0), (90.0, 15.0), (200.0, -10.0), (315.0, 40.0)])
def test_camera_matches_mvdream_convention(az, el):
    c2w = orbit_c2w(torch.tensor([az - 90.0]), torch.tensor([el]), 3.7)  # any radius: MVDream normalises it
    got = mvdream_camera(c2w)[0].double()
    torch.testing.assert_close(got, _mvdream_get_camera(el, az), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------- joint attention
def _first_attn1(unet):
    return unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1


def test_multiview_processor_single_view_equals_sdpa():
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = _first_attn1(tiny_mvdream_unet())
    x = torch.randn(3, 20, attn.to_q.in_features)
    torch.testing.assert_close(MultiViewAttnProcessor(1)(attn, x), AttnProcessor2_0()(attn, x))


def test_multiview_processor_is_view_permutation_equivariant_and_joint():
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = _first_attn1(tiny_mvdream_unet())
    B, V, L = 2, 4, 12
    x = torch.randn(B * V, L, attn.to_q.in_features)
    proc = MultiViewAttnProcessor(V)
    out = proc(attn, x)
    perm = torch.tensor([2, 0, 3, 1])
    idx = (torch.arange(B)[:, None] * V + perm[None]).reshape(-1)  # permute the views inside each object
    torch.testing.assert_close(proc(attn, x[idx]), out[idx], atol=1e-5, rtol=1e-5)
    # Really joint: differs from per-view attention, and changing view 0 changes view 1 of the same object only.
    assert not torch.allclose(out, AttnProcessor2_0()(attn, x), atol=1e-4)
    y = x.clone()
    y[0] += 1.0
    out_y = proc(attn, y)
    assert not torch.allclose(out_y[1], out[1], atol=1e-5)
    torch.testing.assert_close(out_y[V:], out[V:])


def test_unet_views_permute_with_inputs(guidance):
    unet = guidance.unet
    V = 4
    x = torch.randn(2 * V, 4, 8, 8)
    t = torch.full((2 * V,), 500)
    text = torch.randn(2 * V, 77, 32)
    cams = mvdream_camera(_cams(2 * V))
    perm = torch.tensor([1, 3, 0, 2])
    idx = (torch.arange(2)[:, None] * V + perm[None]).reshape(-1)
    set_num_views(unet, V)
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=text, class_labels=cams).sample
        out_p = unet(x[idx], t[idx], encoder_hidden_states=text[idx], class_labels=cams[idx]).sample
        set_num_views(unet, 1)
        out_single = unet(x, t, encoder_hidden_states=text, class_labels=cams).sample
    set_num_views(unet, V)
    torch.testing.assert_close(out_p, out[idx], atol=1e-4, rtol=1e-4)
    assert (out - out_single).abs().max() > 1e-4  # the views do talk to each other


def test_camera_conditioning_changes_prediction(guidance):
    V = 4
    x = torch.randn(V, 4, 8, 8)
    t = torch.full((V,), 300)
    prompt = guidance.encode_prompt("a red chair")
    with torch.no_grad():
        a, _ = guidance.predict_noise(x, t, Conditioning(prompt=prompt, c2w=_cams(V), num_views=V))
        b, _ = guidance.predict_noise(x, t, Conditioning(prompt=prompt, c2w=_cams(V, start=45.0), num_views=V))
    assert (a - b).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------------- SDS
def test_sds_loss_gradients_reach_images_not_unet(guidance):
    V = 4
    images = torch.rand(2 * V, 3, 48, 48, requires_grad=True)  # resized to 64 inside
    cond = Conditioning(prompt=guidance.encode_prompt("a red chair"), c2w=_cams(2 * V), num_views=V)
    losses = guidance(images, cond, step=0, generator=torch.Generator().manual_seed(0))
    t = guidance.last_info["t"]
    assert torch.equal(t[:V], t[:1].expand(V)) and torch.equal(t[V:], t[V:V + 1].expand(V))  # one t per object
    assert set(losses) == {"loss_sds"}
    loss = losses["loss_sds"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in guidance.unet.parameters())
    assert all(p.grad is None for p in guidance.vae.parameters())
    assert guidance.config.guidance_scale == 50.0 and guidance.config.weighting == "x0" and guidance.config.std_rescale == 0.5


def test_call_rejects_partial_view_groups(guidance):
    with pytest.raises(ValueError):
        guidance(torch.rand(6, 3, 64, 64), Conditioning(prompt=guidance.encode_prompt(""), c2w=_cams(6)), step=0)


# ------------------------------------------------------------------------------------------------ converter
def original_unet_keys(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the original MVDream U-Net (LDM ``openaimodel`` layout), from its config.

    Written from the architecture rules of the original code, independently of any diffusers naming:
    ``input_blocks.0`` is the input conv; each level has ``num_res_blocks`` blocks ``[ResBlock, (transformer)]``
    then (except the last level) a ``Downsample`` (``.0.op``); ``middle_block`` is ResBlock, transformer, ResBlock;
    each output level has ``num_res_blocks + 1`` blocks taking skip connections, the last ending with an
    ``Upsample`` (``.conv``) at index 1 or 2; ``out`` is GroupNorm, SiLU, conv; ``time_embed`` and
    ``camera_embed`` are Linear, SiLU, Linear.
    """
    keys: dict[str, tuple[int, ...]] = {}
    mc, mult, nrb = cfg["model_channels"], cfg["channel_mult"], cfg["num_res_blocks"]
    attn_res, ctx, ted = set(cfg["attention_resolutions"]), cfg["context_dim"], cfg["model_channels"] * 4

    def lin(p, o, i, bias=True):
        keys[p + ".weight"] = (o, i)
        if bias:
            keys[p + ".bias"] = (o,)

    def conv(p, o, i, k=3):
        keys[p + ".weight"], keys[p + ".bias"] = (o, i, k, k), (o,)

    def norm(p, c):
        keys[p + ".weight"], keys[p + ".bias"] = (c,), (c,)

    def resblock(p, i, o):
        norm(p + ".in_layers.0", i)
        conv(p + ".in_layers.2", o, i)
        lin(p + ".emb_layers.1", o, ted)
        norm(p + ".out_layers.0", o)
        conv(p + ".out_layers.3", o, o)
        if i != o:
            conv(p + ".skip_connection", o, i, 1)

    def transformer(p, c):
        norm(p + ".norm", c)
        lin(p + ".proj_in", c, c)
        for d in range(cfg.get("transformer_depth", 1)):
            b = f"{p}.transformer_blocks.{d}"
            for a, kv in (("attn1", c), ("attn2", ctx)):
                lin(f"{b}.{a}.to_q", c, c, bias=False)
                lin(f"{b}.{a}.to_k", c, kv, bias=False)
                lin(f"{b}.{a}.to_v", c, kv, bias=False)
                lin(f"{b}.{a}.to_out.0", c, c)
            lin(b + ".ff.net.0.proj", 8 * c, c)  # GEGLU: two halves of 4c
            lin(b + ".ff.net.2", c, 4 * c)
            for n in ("norm1", "norm2", "norm3"):
                norm(f"{b}.{n}", c)
        lin(p + ".proj_out", c, c)

    lin("time_embed.0", ted, mc)
    lin("time_embed.2", ted, ted)
    lin("camera_embed.0", ted, cfg["camera_dim"])
    lin("camera_embed.2", ted, ted)
    conv("input_blocks.0.0", mc, cfg["in_channels"])
    ch, ds, idx, skips = mc, 1, 1, [mc]
    for level, m in enumerate(mult):
        for _ in range(nrb):
            resblock(f"input_blocks.{idx}.0", ch, m * mc)
            ch = m * mc
            if ds in attn_res:
                transformer(f"input_blocks.{idx}.1", ch)
            skips.append(ch)
            idx += 1
        if level != len(mult) - 1:
            conv(f"input_blocks.{idx}.0.op", ch, ch)
            skips.append(ch)
            ds *= 2
            idx += 1
    resblock("middle_block.0", ch, ch)
    transformer("middle_block.1", ch)
    resblock("middle_block.2", ch, ch)
    idx = 0
    for level, m in reversed(list(enumerate(mult))):
        for i in range(nrb + 1):
            resblock(f"output_blocks.{idx}.0", ch + skips.pop(), m * mc)
            ch = m * mc
            slot = 1
            if ds in attn_res:
                transformer(f"output_blocks.{idx}.1", ch)
                slot = 2
            if level and i == nrb:
                conv(f"output_blocks.{idx}.{slot}.conv", ch, ch)
                ds //= 2
            idx += 1
    norm("out.0", ch)
    conv("out.2", cfg["out_channels"], mc)
    return {"model.diffusion_model." + k: v for k, v in keys.items()}


def test_published_unet_config_matches_sd21_plus_camera():
    mv = json.loads((CONFIGS / "mvdream-sd21__unet.json").read_text())
    assert {k: mv[k] for k in MVDREAM_SD21_UNET} == MVDREAM_SD21_UNET
    ours = unet_config_from_mvdream(mv)
    sd21 = json.loads((CONFIGS / "sd21-base__unet.json").read_text())
    for k in ("block_out_channels", "attention_head_dim", "down_block_types", "up_block_types", "cross_attention_dim",
              "layers_per_block", "use_linear_projection", "flip_sin_to_cos", "freq_shift", "norm_num_groups", "in_channels"):
        assert list(ours[k]) == list(sd21[k]) if isinstance(sd21[k], list) else ours[k] == sd21[k], k
    assert ours["class_embed_type"] == "projection" and ours["projection_class_embeddings_input_dim"] == 16


def test_converter_full_size_published_architecture():
    """Original key list (built from the published config) -> converter -> exactly the diffusers U-Net's keys."""
    from diffusers import UNet2DConditionModel

    mv = json.loads((CONFIGS / "mvdream-sd21__unet.json").read_text())
    config = unet_config_from_mvdream(mv)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}

    original = original_unet_keys(mv)
    # The inverse mapping of the diffusers model agrees with the rule-built original layout, names and shapes.
    inverse = {k: tuple(v.shape) for k, v in unet_state_dict_to_original(unet.state_dict(), dict(unet.config)).items()}
    assert inverse == original

    ckpt = {k: torch.empty(shape, device="meta") for k, shape in original.items()}
    ckpt["first_stage_model.encoder.conv_in.weight"] = torch.empty(128, 3, 3, 3, device="meta")  # ignored by the U-Net
    unet_sd, _, _ = convert_mvdream_checkpoint(ckpt, config)
    got = {k: tuple(v.shape) for k, v in unet_sd.items()}
    assert set(got) - set(expected) == set(), "unexpected keys"
    assert set(expected) - set(got) == set(), "missing keys"
    assert got == expected
    result = unet.load_state_dict(unet_sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert unet_sd["class_embedding.linear_1.weight"].shape == (1280, 16)


def test_converter_round_trip_tiny():
    from diffusers import UNet2DConditionModel

    unet = tiny_mvdream_unet(seed=3).eval()
    original = unet_state_dict_to_original(unet.state_dict(), dict(unet.config))
    assert set(original) == set(original_unet_keys(TINY_MVDREAM_UNET))
    unet_sd, vae_sd, text_sd = convert_mvdream_checkpoint(original, dict(unet.config))
    assert vae_sd is None and text_sd is None
    back = UNet2DConditionModel.from_config(unet.config).eval()
    back.load_state_dict(unet_sd, strict=True)
    for m in (unet, back):
        set_multiview_attention(m, 2)
    x = torch.randn(4, 4, 8, 8)
    t = torch.tensor([10, 10, 700, 700])
    text = torch.randn(4, 77, 32)
    cams = mvdream_camera(_cams(4))
    with torch.no_grad():
        a = unet(x, t, encoder_hidden_states=text, class_labels=cams).sample
        b = back(x, t, encoder_hidden_states=text, class_labels=cams).sample
    assert torch.equal(a, b)
    # A dropped or extra original key is reported, not silently ignored.
    bad = dict(original)
    bad["model.diffusion_model.extra_embed.weight"] = torch.zeros(1)
    with pytest.raises(Gen4DError, match="not converted"):
        convert_mvdream_checkpoint(bad, dict(unet.config))
