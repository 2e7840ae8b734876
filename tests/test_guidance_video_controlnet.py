"""Text-to-video SDS (UNet3D, partial-gradient VAE encode) and ControlNet-tile SDS with textual inversion, on tiny
random models written in the diffusers layout."""

import pytest
import torch
import torch.nn.functional as F

from gen4d import Gen4DError
from gen4d.guidance.base import Conditioning
from gen4d.guidance.controlnet_tile import ControlNetTileConfig, ControlNetTileGuidance
from gen4d.guidance.prompts import encode_prompt
from gen4d.guidance.textual_inversion import expand_textual_inversion_prompt, load_textual_inversion
from gen4d.guidance.vae import encode_latents
from gen4d.guidance.video_sds import VideoSDSConfig, VideoSDSGuidance
from gen4d.testing.tiny_controlnet import make_tiny_sd15_controlnet


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return make_tiny_sd15_controlnet(tmp_path_factory.mktemp("tiny_sd15"))


@pytest.fixture(scope="module")
def video_guidance(t2v_dir):
    # renders of 32 x 16 are upsampled to 64 x 32 (the 288 x 160 -> 576 x 320 of 4D-fy, scaled down)
    return VideoSDSGuidance(VideoSDSConfig(model=str(t2v_dir), model_width=64, model_height=32))


@pytest.fixture(scope="module")
def cn_guidance(sd_dir):
    return ControlNetTileGuidance(ControlNetTileConfig(model=str(sd_dir), controlnet=str(sd_dir / "controlnet"), resolution=32))


def _video_grad(g, video, emb, indices, grad_frames=0, seed=0):
    g.config.grad_frame_indices = indices
    g.config.grad_frames = grad_frames
    v = video.clone().requires_grad_(True)
    t = torch.tensor([500])
    noise = torch.randn((1, 4, video.shape[1], 4, 8), generator=torch.Generator().manual_seed(1))
    out = g(v, Conditioning(prompt=emb), step=0, generator=torch.Generator().manual_seed(seed), t=t, noise=noise)
    out["loss_sds_video"].backward()
    return out["loss_sds_video"].detach(), v.grad


def test_video_partial_vae_encode_matches_full(video_guidance):
    g = video_guidance
    emb = g.encode_prompt("a corgi running")
    video = torch.rand(1, 4, 3, 16, 32)
    loss_full, grad_full = _video_grad(g, video, emb, None)
    assert g.last_info["grad_frames"] == [0, 1, 2, 3]
    assert g.last_info["vae_input_size"] == (32, 64)  # upsampled to the model resolution before encoding
    assert g.last_info["latents"].shape == (1, 4, 4, 4, 8)  # B, C, T, H/8, W/8
    loss_part, grad_part = _video_grad(g, video, emb, (1, 3))
    assert g.last_info["grad_frames"] == [1, 3]
    assert torch.allclose(loss_full, loss_part)
    assert (grad_full.abs().flatten(2).sum(-1) > 0).all()
    assert torch.allclose(grad_part[:, [1, 3]], grad_full[:, [1, 3]], rtol=1e-4, atol=1e-7)
    assert (grad_part[:, [0, 2]] == 0).all()
    # random subset of grad_frames frames per call
    _, grad_rand = _video_grad(g, video, emb, None, grad_frames=2, seed=3)
    assert int((grad_rand.abs().flatten(2).sum(-1) > 0).sum()) == 2
    assert len(g.last_info["grad_frames"]) == 2
    # no gradient ever reaches the frozen networks
    for m in (g.unet, g.vae, g.text_encoder):
        assert all(p.grad is None and not p.requires_grad for p in m.parameters())
    g.config.grad_frames, g.config.grad_frame_indices = 0, None


def test_video_upsampling_applied(video_guidance):
    g = video_guidance
    emb = g.encode_prompt("a corgi running")
    video = torch.rand(1, 3, 3, 16, 32)
    post = torch.randn((1, 3, 4, 4, 8), generator=torch.Generator().manual_seed(2))
    lat = g.encode_video(video, [0, 1, 2], post)
    up = F.interpolate(video.flatten(0, 1), size=(32, 64), mode="bilinear", align_corners=False)
    ref = encode_latents(g.vae, up, noise=post.flatten(0, 1)).reshape(1, 3, 4, 4, 8).transpose(1, 2)
    assert torch.allclose(lat, ref, atol=1e-6)
    # a nearest-neighbour upsampling would give other latents: the bilinear resize is what is applied
    near = F.interpolate(video.flatten(0, 1), size=(32, 64), mode="nearest")
    ref_near = encode_latents(g.vae, near, noise=post.flatten(0, 1)).reshape(1, 3, 4, 4, 8).transpose(1, 2)
    assert not torch.allclose(lat, ref_near, atol=1e-6)
    out = g(video, Conditioning(prompt=emb), step=0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss_sds_video"])


def test_video_sds_gradient_is_weighted_residual(video_guidance, monkeypatch):
    g = video_guidance
    emb = g.encode_prompt("a corgi running")
    cond, uncond = emb.get(1)
    leaf = torch.randn(1, 4, 3, 4, 8, requires_grad=True)
    monkeypatch.setattr(g, "encode_video", lambda *a, **k: leaf)
    t = torch.tensor([700])
    noise = torch.randn(1, 4, 3, 4, 8)
    out = g(torch.rand(1, 3, 3, 16, 32), Conditioning(prompt=emb), step=0, t=t, noise=noise)
    out["loss_sds_video"].backward()
    a = g.alphas_cumprod[700]
    x_t = a.sqrt() * leaf.detach() + (1 - a).sqrt() * noise
    with torch.no_grad():
        eps_c = g.unet(x_t, t, encoder_hidden_states=cond).sample
        eps_u = g.unet(x_t, t, encoder_hidden_states=uncond).sample
    eps_hat = eps_u + g.config.guidance_scale * (eps_c - eps_u)
    expected = (1 - a) * (eps_hat - noise)
    assert expected.abs().max() > 0
    assert torch.allclose(leaf.grad, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))
    assert all(p.grad is None for p in g.unet.parameters())


def _tiny_text(sd_dir):
    from transformers import CLIPTextModel, CLIPTokenizer

    return CLIPTokenizer.from_pretrained(sd_dir / "tokenizer"), CLIPTextModel.from_pretrained(sd_dir / "text_encoder")


def test_textual_inversion_token(sd_dir, tmp_path):
    tok, enc = _tiny_text(sd_dir)
    n0, rows0 = len(tok), enc.get_input_embeddings().weight.shape[0]
    vec = torch.randn(32, generator=torch.Generator().manual_seed(5))
    path = tmp_path / "learned_embeds.bin"
    torch.save({"<my-dog>": vec}, path)
    before = encode_prompt(tok, enc, "a photo of <my-dog>")

    assert load_textual_inversion(tok, enc, path) == ["<my-dog>"]
    assert "<my-dog>" in tok.get_added_vocab() and len(tok) == n0 + 1
    tid = tok.convert_tokens_to_ids("<my-dog>")
    assert enc.get_input_embeddings().weight.shape[0] == rows0 + 1
    assert torch.equal(enc.get_input_embeddings().weight[tid], vec)
    ids = tok("a photo of <my-dog>").input_ids
    assert tid in ids and tid not in tok("a photo of").input_ids
    with_tok = encode_prompt(tok, enc, "a photo of <my-dog>")
    assert not torch.allclose(with_tok, encode_prompt(tok, enc, "a photo of"))
    assert not torch.allclose(with_tok, before)  # the token replaces its characters
    # the learned vector itself is what the encoder reads: loading another vector changes the encoding
    assert load_textual_inversion(tok, enc, {"<my-dog>": vec * -3}) == ["<my-dog>"]
    assert len(tok) == n0 + 1
    assert not torch.allclose(encode_prompt(tok, enc, "a photo of <my-dog>"), with_tok)


def test_textual_inversion_formats_and_errors(sd_dir, tmp_path):
    from safetensors.torch import save_file

    tok, enc = _tiny_text(sd_dir)
    vecs = torch.randn(2, 32)
    save_file({"emb_params": vecs}, str(tmp_path / "emb.safetensors"))
    with pytest.raises(Gen4DError, match="token"):
        load_textual_inversion(tok, enc, tmp_path / "emb.safetensors")
    tokens = load_textual_inversion(tok, enc, tmp_path / "emb.safetensors", token="<style>")
    assert tokens == ["<style>", "<style>_1"]
    ids = tok.convert_tokens_to_ids(tokens)
    assert torch.equal(enc.get_input_embeddings().weight[ids], vecs)
    assert expand_textual_inversion_prompt("in <style>", "<style>", 2) == "in <style> <style>_1"
    with pytest.raises(Gen4DError, match="dimension"):
        load_textual_inversion(tok, enc, {"<bad>": torch.randn(16)})
    with pytest.raises(Gen4DError, match="vocabulary"):
        load_textual_inversion(tok, enc, {"a</w>": torch.randn(32)})
    with pytest.raises(Gen4DError, match="does not exist"):
        load_textual_inversion(tok, enc, tmp_path / "missing.bin")


def test_controlnet_changes_prediction(cn_guidance):
    g = cn_guidance
    cond, _ = g.encode_prompt("a photo of a dog").get(1)
    x_t = torch.randn(1, 4, 4, 4)
    t = torch.tensor([400])
    control = g.control_image(torch.rand(1, 3, 24, 24))
    assert control.shape == (1, 3, 32, 32)
    plain = g.unet_noise(x_t, t, cond)
    off = g.unet_noise(x_t, t, cond, control, conditioning_scale=0.0)
    on = g.unet_noise(x_t, t, cond, control, conditioning_scale=1.0)
    assert torch.allclose(off, plain, atol=1e-6)
    assert (on - plain).abs().max() > 1e-4
    other = g.unet_noise(x_t, t, cond, g.control_image(torch.rand(1, 3, 24, 24)), conditioning_scale=1.0)
    assert (other - on).abs().max() > 1e-5


def test_controlnet_sds_call(cn_guidance, sd_dir, tmp_path):
    g = cn_guidance
    torch.save({"<obj>": torch.randn(32)}, tmp_path / "learned_embeds.bin")
    assert g.load_textual_inversion(tmp_path / "learned_embeds.bin") == ["<obj>"]
    emb = g.encode_prompt("a photo of <obj>")
    images = torch.rand(2, 3, 24, 24, requires_grad=True)
    out = g(images, Conditioning(prompt=emb), step=10, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss_sds"}
    out["loss_sds"].backward()
    assert images.grad.abs().sum() > 0
    assert g.last_info["control"].shape == (2, 3, 32, 32) and not g.last_info["control"].requires_grad
    for m in (g.unet, g.controlnet, g.vae, g.text_encoder):
        assert all(p.grad is None and not p.requires_grad for p in m.parameters())
    # blurred control image (tile model input): still at model resolution, smoother than the render
    g.config.control_downscale = 4
    blurred = g.control_image(images)
    g.config.control_downscale = 1
    assert blurred.shape == (2, 3, 32, 32)
    assert blurred.diff(dim=-1).abs().mean() < g.control_image(images).diff(dim=-1).abs().mean()
