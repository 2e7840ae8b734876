import math

import pytest
import torch

from gen4d import Gen4DError
from gen4d.eval.lpips import LPIPS, convert_lpips_state_dicts, load_lpips, lpips


def _published_alexnet_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision ``alexnet()`` state-dict layout, derived here from the architecture independently of the module."""
    convs = [(64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3)]
    shapes = {}
    idx = 0
    for i, (cout, cin, k) in enumerate(convs):
        shapes[f"features.{idx}.weight"] = (cout, cin, k, k)
        shapes[f"features.{idx}.bias"] = (cout,)
        idx += 3 if i < 2 else 2  # conv, relu, maxpool for the first two blocks; conv, relu after
    fcs = [(4096, 9216), (4096, 4096), (1000, 4096)]
    for idx, (cout, cin) in zip((1, 4, 6), fcs):
        shapes[f"classifier.{idx}.weight"] = (cout, cin)
        shapes[f"classifier.{idx}.bias"] = (cout,)
    return shapes


def _published_lpips_shapes() -> dict[str, tuple[int, ...]]:
    return {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))}


def _random_sd(shapes, gen, nonneg=False, skip_classifier=False):
    sd = {}
    for k, s in shapes.items():
        if skip_classifier and k.startswith("classifier"):
            continue  # the FC layers are big and unused; tested for acceptance separately with tiny tensors
        t = torch.rand(s, generator=gen) if nonneg else torch.randn(s, generator=gen) * (2.0 / math.prod(s[1:])) ** 0.5
        sd[k] = t
    return sd


@pytest.fixture(scope="module")
def lpips_sds():
    gen = torch.Generator().manual_seed(1)
    alex = _random_sd(_published_alexnet_shapes(), gen, skip_classifier=True)
    heads = _random_sd(_published_lpips_shapes(), gen, nonneg=True)
    return alex, heads


@pytest.fixture(scope="module")
def lpips_model(lpips_sds):
    return LPIPS.from_weights(*lpips_sds)


def test_lpips_key_mapping_matches_published_layout(lpips_sds):
    alex, heads = lpips_sds
    # The full torchvision file also holds the classifier; it must be accepted (and dropped) without complaint.
    full = dict(alex)
    full.update({k: torch.zeros(1) for k in _published_alexnet_shapes() if k.startswith("classifier")})
    converted = convert_lpips_state_dicts(full, heads)
    model = LPIPS()
    own = model.state_dict()
    assert set(converted) == set(own)
    for k, v in converted.items():
        assert own[k].shape == v.shape, k
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # Values land where they should.
    assert torch.equal(model.trunk.features[6].weight, alex["features.6.weight"])
    assert torch.equal(model.heads[4].weight, heads["lin4.model.1.weight"])


def test_lpips_whole_lpips_model_layout(lpips_sds):
    alex, heads = lpips_sds
    slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}  # lpips' alexnet slices keep torchvision's indices
    sd = {f"net.slice{slices[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v for k, v in alex.items()}
    sd.update(heads)
    sd["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    sd["scaling_layer.scale"] = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    m = LPIPS.from_weights(None, sd)
    assert torch.equal(m.trunk.features[10].bias, alex["features.10.bias"])


def test_lpips_layout_errors(lpips_sds):
    alex, heads = lpips_sds
    bad = dict(alex)
    bad["features.2.weight"] = torch.zeros(1)  # a max-pool has no weights
    with pytest.raises(Gen4DError, match="unexpected"):
        LPIPS.from_weights(bad, heads)
    missing = {k: v for k, v in heads.items() if not k.startswith("lin3")}
    with pytest.raises(Gen4DError, match="lin3|heads.3"):
        LPIPS.from_weights(alex, missing)
    wrong = dict(heads)
    wrong["lin0.model.1.weight"] = torch.rand(1, 65, 1, 1)
    with pytest.raises(Gen4DError, match="shape"):
        LPIPS.from_weights(alex, wrong)
    neg = dict(heads)
    neg["lin2.model.1.weight"] = -neg["lin2.model.1.weight"]
    with pytest.raises(Gen4DError, match="negative"):
        LPIPS.from_weights(alex, neg)


def test_lpips_properties(lpips_model):
    x = torch.rand(2, 3, 64, 64, 3)
    y = torch.rand(2, 3, 64, 64, 3)
    d_xx = lpips_model(x, x)
    assert d_xx.shape == (2, 3)
    assert torch.allclose(d_xx, torch.zeros_like(d_xx), atol=1e-7)
    d_xy, d_yx = lpips_model(x, y), lpips(y, x, lpips_model)
    assert torch.allclose(d_xy, d_yx, rtol=1e-5, atol=1e-7)
    assert (d_xy > 1e-4).all()
    # A single image gives a 0-d result; a small perturbation is closer than an unrelated image.
    near = lpips_model(x[0, 0], (x[0, 0] + 0.02 * torch.randn(64, 64, 3)).clamp(0, 1))
    assert near.ndim == 0 and 0 < near < d_xy[0, 0]


def test_lpips_linear_in_head_weights(lpips_sds, lpips_model):
    alex, heads = lpips_sds
    doubled = LPIPS.from_weights(alex, {k: 2 * v for k, v in heads.items()})
    x, y = torch.rand(2, 48, 40, 3), torch.rand(2, 48, 40, 3)
    assert torch.allclose(doubled(x, y), 2 * lpips_model(x, y), rtol=1e-5)
    # Zeroing all but one head leaves exactly that tap's contribution: heads add up.
    parts = []
    for k in range(5):
        only = {n: (v if n.startswith(f"lin{k}") else torch.zeros_like(v)) for n, v in heads.items()}
        parts.append(LPIPS.from_weights(alex, only)(x, y))
    assert torch.allclose(sum(parts), lpips_model(x, y), rtol=1e-5)


def test_lpips_matches_direct_computation(lpips_sds, lpips_model):
    """An independent functional re-computation of the formula with F.conv2d on the raw published tensors."""
    alex, heads = lpips_sds
    F = torch.nn.functional
    x, y = torch.rand(1, 40, 40, 3), torch.rand(1, 40, 40, 3)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(img):
        h = (img.permute(0, 3, 1, 2) * 2 - 1 - shift) / scale
        out = []
        h = F.relu(F.conv2d(h, alex["features.0.weight"], alex["features.0.bias"], stride=4, padding=2)); out.append(h)
        h = F.max_pool2d(h, 3, 2)
        h = F.relu(F.conv2d(h, alex["features.3.weight"], alex["features.3.bias"], padding=2)); out.append(h)
        h = F.max_pool2d(h, 3, 2)
        for i in (6, 8, 10):
            h = F.relu(F.conv2d(h, alex[f"features.{i}.weight"], alex[f"features.{i}.bias"], padding=1)); out.append(h)
        return [t / (t.norm(dim=1, keepdim=True) + 1e-10) for t in out]

    d = sum((heads[f"lin{k}.model.1.weight"] * (a - b) ** 2).sum(1).mean() for k, (a, b) in enumerate(zip(taps(x), taps(y))))
    assert torch.allclose(lpips_model(x, y)[0], d, rtol=1e-4)


def test_load_lpips_files(tmp_path, lpips_sds):
    alex, heads = lpips_sds
    with pytest.raises(Gen4DError) as e:
        load_lpips(tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    assert "alex.pth" in str(e.value) and "http" in str(e.value)
    torch.save(heads, tmp_path / "alex.pth")
    with pytest.raises(Gen4DError, match="alexnet.pth"):
        load_lpips(tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    torch.save(alex, tmp_path / "alexnet.pth")
    m = load_lpips(tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    assert torch.equal(m.heads[1].weight, heads["lin1.model.1.weight"])
    (tmp_path / "junk.pth").write_text("<html>not found</html>")
    with pytest.raises(Gen4DError, match="junk.pth"):
        load_lpips(tmp_path / "alexnet.pth", tmp_path / "junk.pth")
