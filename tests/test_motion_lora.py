"""MotionDirector's dual-path LoRA through PEFT on a tiny UNet3D: target layers, scales, the folder format, the
converter for the published ``.pt`` lists, and the noise prior's inversion with every LoRA off."""

import json

import pytest
import torch
from torch import nn

from gen4d import Gen4DError
from gen4d.video.lora import (
    SPATIAL,
    TEMPORAL,
    active_lora_scales,
    configure_adapters,
    disable_lora,
    inject_motion_lora,
    lora_off,
    lora_parameters,
    set_lora_scale,
    set_lora_trainable,
    spatial_lora_targets,
    temporal_lora_targets,
)
from gen4d.video.lora_convert import convert_motiondirector_checkpoint, convert_motiondirector_lora, motiondirector_order
from gen4d.video.lora_files import load_motion_lora, save_motion_lora
from gen4d.video.sampling import TextToVideo

pytestmark = pytest.mark.usefixtures("one_thread")


def _unet(t2v_dir):
    from diffusers import UNet3DConditionModel

    return UNet3DConditionModel.from_pretrained(t2v_dir / "unet").eval().requires_grad_(False)


def _inputs(frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, frames, 8, 8, generator=g), torch.tensor([500]), torch.randn(1, 5, 32, generator=g)


def _randomise(unet, adapter, seed=1, std=0.2):
    """Give ``adapter`` non-zero B matrices (fresh LoRAs start at B = 0, an exact no-op)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(unet, adapter):
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _motiondirector_traversal(unet, ancestor_class, keys):
    """MotionDirector's ``_find_modules_v2``, written out: for every module of ``ancestor_class`` in
    ``named_modules`` order, every ``nn.Linear`` inside it whose relative path contains one of ``keys``."""
    found = []
    for prefix, ancestor in unet.named_modules():
        if type(ancestor).__name__ != ancestor_class:
            continue
        for rel, m in ancestor.named_modules():
            if isinstance(m, nn.Linear) and any(k in rel for k in keys):
                found.append(f"{prefix}.{rel}")
    return found


def test_lora_lands_on_exactly_the_named_layers(t2v_dir):
    unet = _unet(t2v_dir)
    spatial = spatial_lora_targets(unet)
    temporal = temporal_lora_targets(unet)
    # independent count: MotionDirector's rule (ancestor class + substring of the path)
    md_spatial = _motiondirector_traversal(unet, "Transformer2DModel", ("attn1", "ff"))
    md_temporal = _motiondirector_traversal(unet, "TransformerTemporalModel", ("attn1", "attn2", "ff"))
    n_spatial_tf = sum(type(m).__name__ == "Transformer2DModel" for m in unet.modules())
    n_temporal_tf = sum(type(m).__name__ == "TransformerTemporalModel" for m in unet.modules())
    assert (n_spatial_tf, n_temporal_tf) == (4, 5)  # down0, up1 x2, mid; transformer_in + the same four
    assert len(spatial) == 6 * n_spatial_tf == len(md_spatial) and set(spatial) == set(md_spatial)
    assert len(temporal) == 10 * n_temporal_tf == len(md_temporal) and set(temporal) == set(md_temporal)
    assert not any("temp_attentions" in n or n.startswith("transformer_in") or "attn2" in n for n in spatial)
    assert all("temp_attentions" in n or n.startswith("transformer_in") for n in temporal)
    # the pure functions work on names alone
    assert spatial_lora_targets([n for n, _ in unet.named_modules()]) == spatial

    x, t, emb = _inputs()
    base = unet(x, t, encoder_hidden_states=emb).sample
    inject_motion_lora(unet, SPATIAL, rank=4)
    inject_motion_lora(unet, TEMPORAL, rank=4)
    from peft.tuners.lora import LoraLayer

    holders = {a: {n for n, m in unet.named_modules() if isinstance(m, LoraLayer) and a in m.lora_A} for a in (SPATIAL, TEMPORAL)}
    assert holders[SPATIAL] == set(spatial) and holders[TEMPORAL] == set(temporal)
    assert sum(isinstance(m, LoraLayer) for m in unet.modules()) == len(spatial) + len(temporal)
    # B = 0 at initialisation: the model is unchanged; A ~ N(0, 1/r^2)
    assert torch.equal(unet(x, t, encoder_hidden_states=emb).sample, base)
    a = torch.cat([p.detach().flatten() for p in lora_parameters(unet, TEMPORAL)[0::2]])
    assert abs(float(a.std()) - 1 / 4) < 0.02
    assert all(p.requires_grad for a in (SPATIAL, TEMPORAL) for p in lora_parameters(unet, a))
    assert active_lora_scales(unet) == {SPATIAL: 1.0, TEMPORAL: 1.0}


def test_scale_enable_disable_follow_the_formula(t2v_dir):
    unet = _unet(t2v_dir)
    inject_motion_lora(unet, SPATIAL, rank=4, alpha=8, dropout=0.0)
    inject_motion_lora(unet, TEMPORAL, rank=4, dropout=0.0)
    _randomise(unet, SPATIAL)
    _randomise(unet, TEMPORAL, seed=2)
    layer = unet.get_submodule(spatial_lora_targets(unet)[0])
    x = torch.randn(2, 7, layer.base_layer.in_features)
    A, B = layer.lora_A[SPATIAL].weight, layer.lora_B[SPATIAL].weight
    for scale in (1.0, 0.5, 0.0):
        set_lora_scale(unet, SPATIAL, scale)
        expected = layer.base_layer(x) + scale * (8 / 4) * (x @ A.T @ B.T)  # W x + s (alpha / r) B A x
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    assert active_lora_scales(unet) == {TEMPORAL: 1.0}
    # everything off gives the base model; temporal alone differs from it
    xv, t, emb = _inputs()
    configure_adapters(unet, {})
    base = unet(xv, t, encoder_hidden_states=emb).sample
    configure_adapters(unet, {TEMPORAL: 1.0}, trainable=[TEMPORAL])
    assert not torch.allclose(unet(xv, t, encoder_hidden_states=emb).sample, base)
    assert all(p.requires_grad for p in lora_parameters(unet, TEMPORAL))
    assert not any(p.requires_grad for p in lora_parameters(unet, SPATIAL))
    disable_lora(unet, TEMPORAL)
    assert torch.equal(unet(xv, t, encoder_hidden_states=emb).sample, base)


def test_save_load_round_trip(t2v_dir, tmp_path):
    unet = _unet(t2v_dir)
    inject_motion_lora(unet, SPATIAL, rank=4)
    inject_motion_lora(unet, TEMPORAL, rank=4)
    _randomise(unet, SPATIAL)
    _randomise(unet, TEMPORAL, seed=2)
    folder = save_motion_lora(unet, tmp_path / "lora", base_model="zeroscope", num_frames=16, height=384, width=384)
    assert sorted(p.name for p in folder.iterdir()) == ["lora_config.json", "spatial.safetensors", "temporal.safetensors"]
    config = json.loads((folder / "lora_config.json").read_text())
    assert (config["rank"], config["alpha"], config["num_frames"], config["height"]) == (4, 4.0, 16, 384)
    assert config["base_model_id"] == "cerspense/zeroscope_v2_576w"
    assert config["adapters"][TEMPORAL]["target_modules"] == temporal_lora_targets(unet)
    assert config["adapters"][SPATIAL]["target_modules"] == spatial_lora_targets(unet)

    x, t, emb = _inputs()
    full = unet(x, t, encoder_hidden_states=emb).sample
    disable_lora(unet, SPATIAL)
    temporal_only = unet(x, t, encoder_hidden_states=emb).sample

    fresh = _unet(t2v_dir)
    assert load_motion_lora(fresh, folder, spatial_scale=1.0, temporal_scale=1.0) == [SPATIAL, TEMPORAL]
    assert torch.equal(fresh(x, t, encoder_hidden_states=emb).sample, full)
    assert not any(p.requires_grad for p in fresh.parameters())
    # the sampler's default call: temporal at 1, spatial not loaded
    fresh2 = _unet(t2v_dir)
    assert load_motion_lora(fresh2, folder) == [TEMPORAL]
    assert SPATIAL not in fresh2.peft_config
    assert torch.equal(fresh2(x, t, encoder_hidden_states=emb).sample, temporal_only)
    # loading again into a UNet that holds the adapters replaces and rescales them
    assert load_motion_lora(fresh, folder, spatial_scale=0.0) == [TEMPORAL]
    assert torch.equal(fresh(x, t, encoder_hidden_states=emb).sample, temporal_only)

    with pytest.raises(Gen4DError, match="not a motion LoRA folder"):
        load_motion_lora(_unet(t2v_dir), tmp_path)
    (folder / "temporal.safetensors").unlink()  # an appearance-only folder: the temporal file is just absent
    assert load_motion_lora(_unet(t2v_dir), folder, spatial_scale=0.5) == [SPATIAL]


def test_load_into_other_architecture_is_a_clear_error(t2v_dir, tmp_path):
    from diffusers import UNet3DConditionModel

    unet = _unet(t2v_dir)
    inject_motion_lora(unet, TEMPORAL, rank=4)
    save_motion_lora(unet, tmp_path / "lora")
    torch.manual_seed(0)
    other = UNet3DConditionModel(
        sample_size=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
    )
    with pytest.raises(Gen4DError, match="do not fit this UNet"):
        load_motion_lora(other, tmp_path / "lora")


def _published_list(unet, kind, rank=3):
    """A synthetic MotionDirector list in its published order: [up_0, down_0, up_1, down_1, ...], every entry
    filled with values that identify it."""
    if kind == SPATIAL:
        names = _motiondirector_traversal(unet, "Transformer2DModel", ("attn1", "ff"))
    else:
        names = _motiondirector_traversal(unet, "TransformerTemporalModel", ("attn1", "attn2", "ff"))
    weights = []
    for i, name in enumerate(names):
        lin = unet.get_submodule(name)
        up = 1000.0 * i + torch.arange(lin.out_features * rank, dtype=torch.float32).reshape(lin.out_features, rank)
        down = -1000.0 * i - torch.arange(rank * lin.in_features, dtype=torch.float32).reshape(rank, lin.in_features)
        weights += [up, down]
    return names, weights


def test_motiondirector_converter(t2v_dir, tmp_path):
    unet = _unet(t2v_dir)
    for kind in (SPATIAL, TEMPORAL):
        names, weights = _published_list(unet, kind)
        # the explicit order (mid block last) agrees with MotionDirector's traversal
        assert motiondirector_order(spatial_lora_targets(unet) if kind == SPATIAL else temporal_lora_targets(unet)) == names
        assert names[0].startswith("down_blocks.0" if kind == SPATIAL else "transformer_in")
        assert names[-1].startswith("mid_block.")
        sd = convert_motiondirector_lora(weights, unet, kind)
        assert len(sd) == len(weights)
        for i, name in enumerate(names):
            assert torch.equal(sd[f"{name}.lora_B.weight"], weights[2 * i])  # up -> B [out, r]
            assert torch.equal(sd[f"{name}.lora_A.weight"], weights[2 * i + 1])  # down -> A [r, in]
        with pytest.raises(Gen4DError, match="tensors"):
            convert_motiondirector_lora(weights[:-2], unet, kind)
    _, w = _published_list(unet, SPATIAL)
    with pytest.raises(Gen4DError, match="does not match this UNet"):  # attn1.to_q's pair where ff.net.0.proj's goes
        convert_motiondirector_lora(w[8:10] + w[2:8] + w[0:2] + w[10:], unet, SPATIAL)
    # the published folder layout -> our folder -> PEFT layers computing cloneofsimo's  W x + up(down(x))
    ckpt = tmp_path / "checkpoint-default"
    lists = {}
    for kind in (SPATIAL, TEMPORAL):
        names, weights = _published_list(unet, kind)
        weights = [w * 1e-4 for w in weights]
        lists[kind] = (names, weights)
        (ckpt / kind / "lora").mkdir(parents=True)
        torch.save(weights, ckpt / kind / "lora" / "500_unet.pt")
    folder = convert_motiondirector_checkpoint(ckpt, unet, tmp_path / "converted")
    assert load_motion_lora(unet, folder, spatial_scale=1.0, temporal_scale=1.0) == [SPATIAL, TEMPORAL]
    for kind in (SPATIAL, TEMPORAL):
        names, weights = lists[kind]
        for i in (0, len(names) - 1):
            layer = unet.get_submodule(names[i])
            x = torch.randn(3, layer.base_layer.in_features)
            expected = layer.base_layer(x) + x @ weights[2 * i + 1].T @ weights[2 * i].T
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- noise prior
def test_lora_off_gives_the_base_model_and_restores_the_adapters(t2v_dir):
    unet = _unet(t2v_dir)
    x, t, emb = _inputs()
    base = unet(x, t, encoder_hidden_states=emb).sample
    inject_motion_lora(unet, SPATIAL, rank=4, dropout=0.0)
    inject_motion_lora(unet, TEMPORAL, rank=4, dropout=0.0)
    _randomise(unet, SPATIAL)
    _randomise(unet, TEMPORAL, seed=2)
    set_lora_scale(unet, SPATIAL, 0.5)
    set_lora_trainable(unet, SPATIAL, False)  # frozen but active
    tuned = unet(x, t, encoder_hidden_states=emb).sample
    assert not torch.allclose(tuned, base, atol=1e-4)
    with lora_off(unet):
        assert torch.equal(unet(x, t, encoder_hidden_states=emb).sample, base)
    assert torch.equal(unet(x, t, encoder_hidden_states=emb).sample, tuned)
    assert active_lora_scales(unet) == {SPATIAL: 0.5, TEMPORAL: 1.0}
    assert not any(p.requires_grad for p in lora_parameters(unet, SPATIAL))
    assert all(p.requires_grad for p in lora_parameters(unet, TEMPORAL))


def test_noise_prior_inverts_with_the_base_unet_and_samples_with_the_lora(t2v_dir):
    """MotionDirector's noise prior is the ``inversion_noise`` computed in ``handle_cache_latents``
    (``MotionDirector_train.py``) before any LoRA is trained: the inversion must not see the LoRA, sampling must."""
    plain, tuned = TextToVideo(str(t2v_dir)), TextToVideo(str(t2v_dir))
    for adapter, seed in ((SPATIAL, 1), (TEMPORAL, 2)):
        inject_motion_lora(tuned.unet, adapter, rank=4, dropout=0.0)
        _randomise(tuned.unet, adapter, seed=seed)
    tuned.unet.eval()
    shape = plain.latent_shape(num_frames=2, height=32, width=48)
    prior = torch.randn(1, 4, 2, 4, 6, generator=torch.Generator().manual_seed(4))
    scales = active_lora_scales(tuned.unet)
    grads = [p.requires_grad for p in tuned.unet.parameters()]

    _, expected = plain.initial_latents(shape, torch.Generator().manual_seed(1), prior, 1.0, inversion_steps=3)
    _, inverted = tuned.initial_latents(shape, torch.Generator().manual_seed(1), prior, 1.0, inversion_steps=3)
    assert torch.equal(inverted, expected)  # the U-Net with its LoRAs off is the base U-Net, bit for bit
    with_lora = tuned.invert(prior, tuned.encode_prompt(""), 3)  # what inverting with the LoRAs on would give
    assert float((with_lora - expected).abs().max()) > 1e-2
    assert active_lora_scales(tuned.unet) == scales == {SPATIAL: 1.0, TEMPORAL: 1.0}
    assert [p.requires_grad for p in tuned.unet.parameters()] == grads

    # the same start, then sampling with the LoRA differs from sampling without it
    kwargs = {"num_frames": 2, "height": 32, "width": 48, "steps": 2, "seed": 3, "prior_latents": prior, "noise_prior": 0.5,
              "inversion_steps": 3}
    a, b = plain.generate("a prompt", **kwargs), tuned.generate("a prompt", **kwargs)
    assert torch.equal(a.inverted, b.inverted) and torch.equal(a.initial_latents, b.initial_latents)
    assert float((a.latents - b.latents).abs().max()) > 1e-2
