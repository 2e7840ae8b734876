import pytest
import torch

from gen4d import Gen4DError
from gen4d.eval.clip_score import clip_similarity
from gen4d.testing.tokenizer import tiny_vocab, write_tiny_clip_tokenizer


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    vocab = tiny_vocab()
    folder = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    text = {
        "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
        "max_position_embeddings": 32, "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    write_tiny_clip_tokenizer(folder)
    return str(folder)


def _pattern_images(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="nearest").permute(0, 2, 3, 1)


def test_clip_similarity_images(tiny_clip_dir):
    a = _pattern_images(3, 48, 64, seed=1)  # non-square and not the model's size: resize + crop path
    b = _pattern_images(3, 48, 64, seed=2)
    same = clip_similarity(a, a, tiny_clip_dir, reduction="none")
    assert same.shape == (3,)
    assert torch.allclose(same, torch.ones(3), atol=1e-5)
    diff = clip_similarity(a, b, tiny_clip_dir, reduction="none")
    assert (diff >= -1).all() and (diff <= 1).all() and (diff < 1 - 1e-4).all()
    mean = clip_similarity(a, b, tiny_clip_dir)
    assert mean.ndim == 0 and torch.isclose(mean, diff.mean())
    # One reference broadcasts over frames; image 0 against itself is still 1.
    one = clip_similarity(a, a[:1], tiny_clip_dir, reduction="none")
    assert abs(float(one[0]) - 1) < 1e-5 and (one[1:] < 1 - 1e-4).all()
    # M references, M != N: mean over all pairs.
    allpairs = clip_similarity(a[:2], b, tiny_clip_dir, reduction="none")
    per = torch.stack([clip_similarity(a[:2], b[j : j + 1], tiny_clip_dir, reduction="none") for j in range(3)], -1)
    assert torch.allclose(allpairs, per.mean(-1), atol=1e-6)


def test_clip_similarity_texts(tiny_clip_dir):
    a = _pattern_images(2, 32, 32, seed=3)
    s = clip_similarity(a, "a photo of the cat", tiny_clip_dir, reduction="none")
    assert s.shape == (2,) and (s.abs() <= 1).all()
    s2 = clip_similarity(a, ["a photo of the cat", "a dog"], tiny_clip_dir, reduction="none")
    assert torch.isclose(s2[0], s[0], atol=1e-6) and not torch.isclose(s2[1], s[1], atol=1e-6)


def test_clip_missing_model(tmp_path):
    with pytest.raises(Gen4DError):
        clip_similarity(torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32, 3), str(tmp_path / "nope"))
