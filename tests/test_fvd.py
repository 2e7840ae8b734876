import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from gen4d import Gen4DError
from gen4d.eval.fvd import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    fvd,
    i3d_features,
    is_torchscript_file,
    load_i3d,
)
from gen4d.eval.i3d import I3DWidths, InceptionI3d, i3d_num_time_steps, same_padding
from gen4d.testing import tiny_metrics_dir

# ------------------------------------------------------------------------------------------------ FID / FVD


def test_frechet_distance_diagonal_closed_form():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    s1, s2 = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    expect = float((mu1 - mu2).square().sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum())
    got = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert got == pytest.approx(expect, rel=1e-9, abs=1e-12)
    assert frechet_distance(mu1.numpy(), np.diag(s1.numpy()), mu1.numpy(), np.diag(s1.numpy())) == pytest.approx(0, abs=1e-10)


def test_frechet_distance_full_covariance():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    b = torch.randn(5, 5, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(5, dtype=torch.float64), b @ b.T + 0.1 * torch.eye(5, dtype=torch.float64)
    mu = torch.zeros(5, dtype=torch.float64)
    assert frechet_distance(mu, s1, mu, s1) == pytest.approx(0, abs=1e-9)
    # Invariant under a common rotation; equals the closed form for commuting (co-diagonalised) covariances.
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    d1, d2 = torch.rand(5, generator=g, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64)
    rot = frechet_distance(mu, q @ torch.diag(d1) @ q.T, mu, q @ torch.diag(d2) @ q.T)
    assert rot == pytest.approx(float((d1 + d2 - 2 * (d1 * d2).sqrt()).sum()), rel=1e-8)
    # Against the eigenvalues of sigma1 sigma2 (non-symmetric product; its eigenvalues are real and >= 0).
    ev = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(float(s1.trace() + s2.trace() - 2 * ev), rel=1e-8)
    assert frechet_distance(mu, s1, mu, s2) > 0


def test_frechet_distance_from_few_features_matches_the_covariance_route():
    g = torch.Generator().manual_seed(2)
    for na, nb, d in [(4, 4, 400), (4, 7, 30), (3, 50, 10), (60, 40, 12)]:
        fa = 2 * torch.randn(na, d, generator=g, dtype=torch.float64) + 1
        fb = torch.randn(nb, d, generator=g, dtype=torch.float64) + 0.5
        expect = frechet_distance(*feature_statistics(fa), *feature_statistics(fb))
        assert frechet_distance_from_features(fa, fb) == pytest.approx(expect, rel=1e-7)
        assert frechet_distance_from_features(fa, fa) == pytest.approx(0.0, abs=1e-9 * expect)
    with pytest.raises(ValueError):
        frechet_distance_from_features(torch.zeros(1, 3), torch.zeros(4, 3))


class _TinyI3D(nn.Module):
    """Same call signature as the TorchScript I3D: ``[B, 3, T, H, W]`` in [-1, 1] -> ``[B, F]``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, kernel_size=3, stride=2)
        self.fc = nn.Linear(8, 12)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = torch.nn.functional.interpolate(x, size=(x.shape[2], 32, 32), mode="trilinear", align_corners=False)
        h = torch.relu(self.conv(x)).mean(dim=(2, 3, 4))
        out = self.fc(h)
        return out if return_features else out.softmax(-1)


@pytest.fixture(scope="module")
def i3d_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_TinyI3D()), str(path))
    return path


def test_fvd_torchscript_detector(i3d_path):
    det = load_i3d(i3d_path)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, 4, 40, 48, 3, generator=g)
    b = (a * 0.5 + 0.5 * torch.rand(6, 4, 40, 48, 3, generator=g))
    assert fvd(a, a, det, resolution=64) == pytest.approx(0, abs=1e-8)
    d = fvd(a, b, det, resolution=64)
    assert d > 1e-6
    assert fvd(a, b, str(i3d_path), resolution=64) == pytest.approx(d, rel=1e-6)  # by path
    # The statistics path agrees with frechet_distance on the features.
    fa, fb = i3d_features(a, det, resolution=64), i3d_features(b, det, resolution=64)
    assert fa.shape == (6, 12)
    # Both routes are exact; they differ by float64 rounding (eigendecompositions vs singular values).
    assert frechet_distance(*feature_statistics(fa), *feature_statistics(fb)) == pytest.approx(d, rel=1e-7)


def test_i3d_input_convention():
    seen = {}

    def detector(x, **kw):
        seen["x"], seen["kw"] = x, kw
        return x.mean(dim=(2, 3, 4))

    v = torch.zeros(2, 5, 30, 60, 3)
    v[..., 0] = 1.0
    i3d_features(v, detector)
    x = seen["x"]
    assert x.shape == (2, 3, 5, 224, 224)
    assert float(x[:, 0].min()) == 1.0 and float(x[:, 1].max()) == -1.0
    assert seen["kw"] == {"rescale": False, "resize": True, "return_features": True}
    i3d_features(v, detector, detector_kwargs={}, resolution=None)
    assert seen["x"].shape == (2, 3, 5, 30, 60) and seen["kw"] == {}


def test_fvd_missing_detector(tmp_path):
    with pytest.raises(Gen4DError, match="nothere.pt"):
        fvd(torch.rand(2, 2, 8, 8, 3), torch.rand(2, 2, 8, 8, 3), tmp_path / "nothere.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    with pytest.raises(Gen4DError, match="bad.pt"):
        load_i3d(tmp_path / "bad.pt")


# ------------------------------------------------------------------------------------------------ I3D (state dict)


def _published_i3d_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the Kinetics-400 InceptionI3d state dict (``i3d_pretrained_400.pt``), written out here from
    the architecture (pytorch-i3d's InceptionI3d: Unit3D = conv3d without bias + BatchNorm3d; logits with bias)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def unit(name, cin, cout, k):
        shapes[f"{name}.conv3d.weight"] = (cout, cin, k, k, k)
        for b in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{b}"] = (cout,)
        shapes[f"{name}.bn.num_batches_tracked"] = ()

    unit("Conv3d_1a_7x7", 3, 64, 7)
    unit("Conv3d_2b_1x1", 64, 64, 1)
    unit("Conv3d_2c_3x3", 64, 192, 3)
    blocks = [
        ("Mixed_3b", 192, [64, 96, 128, 16, 32, 32]), ("Mixed_3c", 256, [128, 128, 192, 32, 96, 64]),
        ("Mixed_4b", 128 + 192 + 96 + 64, [192, 96, 208, 16, 48, 64]), ("Mixed_4c", 192 + 208 + 48 + 64, [160, 112, 224, 24, 64, 64]),
        ("Mixed_4d", 160 + 224 + 64 + 64, [128, 128, 256, 24, 64, 64]), ("Mixed_4e", 128 + 256 + 64 + 64, [112, 144, 288, 32, 64, 64]),
        ("Mixed_4f", 112 + 288 + 64 + 64, [256, 160, 320, 32, 128, 128]), ("Mixed_5b", 256 + 320 + 128 + 128, [256, 160, 320, 32, 128, 128]),
        ("Mixed_5c", 256 + 320 + 128 + 128, [384, 192, 384, 48, 128, 128]),
    ]
    for name, cin, oc in blocks:
        unit(f"{name}.b0", cin, oc[0], 1)
        unit(f"{name}.b1a", cin, oc[1], 1)
        unit(f"{name}.b1b", oc[1], oc[2], 3)
        unit(f"{name}.b2a", cin, oc[3], 1)
        unit(f"{name}.b2b", oc[3], oc[4], 3)
        unit(f"{name}.b3b", cin, oc[5], 1)
    shapes["logits.conv3d.weight"] = (400, 384 + 384 + 128 + 128, 1, 1, 1)
    shapes["logits.conv3d.bias"] = (400,)
    return shapes


@pytest.fixture(scope="module")
def full_i3d():
    torch.manual_seed(3)
    return InceptionI3d()


def test_i3d_state_dict_matches_the_published_layout(full_i3d):
    expected = _published_i3d_shapes()
    got = {k: tuple(v.shape) for k, v in full_i3d.state_dict().items()}
    assert set(got) == set(expected)
    assert got == expected
    assert sum(v.numel() for k, v in full_i3d.state_dict().items() if not k.endswith("running_mean") and ".bn." not in k) > 12_000_000


def test_i3d_state_dict_round_trip_strict(tmp_path, full_i3d):
    sd = full_i3d.state_dict()
    torch.save(sd, tmp_path / "i3d_pretrained_400.pt")
    model = load_i3d(tmp_path / "i3d_pretrained_400.pt")
    assert isinstance(model, InceptionI3d)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    # An old-style pickle with a DataParallel prefix and without the batch-norm counters loads the same.
    tiny = InceptionI3d(widths=I3DWidths().scaled(16)).state_dict()
    old = {f"module.{k}": v for k, v in tiny.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    loaded = load_i3d(tmp_path / "old.pt").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in tiny.items() if not k.endswith("num_batches_tracked"))
    broken = dict(tiny)
    del broken["Mixed_4d.b2b.conv3d.weight"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(Gen4DError, match="Mixed_4d.b2b.conv3d.weight"):
        load_i3d(tmp_path / "broken.pt")


def test_same_padding_matches_tensorflow():
    for n in range(1, 30):
        for k in (1, 2, 3, 7):
            for s in (1, 2):
                front, back = same_padding(n, k, s)
                out = math.ceil(n / s)
                assert front + back == max((out - 1) * s + k - n, 0)  # TensorFlow's SAME rule
                assert back - front in (0, 1)
                assert (n + front + back - k) // s + 1 == out


def test_i3d_feature_shapes(full_i3d):
    # Small inputs keep this fast: the spatial mean replaces the 7x7 pool, so any size works.
    x = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    with torch.no_grad():
        assert full_i3d(x).shape == (1, 400)
        tiny = InceptionI3d(widths=I3DWidths().scaled(16))
        per_time = tiny(torch.rand(2, 3, 17, 40, 40) * 2 - 1, per_time=True)
    assert per_time.shape == (2, 400, i3d_num_time_steps(17)) == (2, 400, 3)
    assert InceptionI3d.from_state_dict(tiny.state_dict()).widths == tiny.widths


def test_fvd_with_a_state_dict_i3d():
    path = tiny_metrics_dir() / "i3d_pretrained_400.pt"  # the tiny set --models tiny uses
    det = load_i3d(path)
    assert isinstance(det, InceptionI3d) and det.widths == I3DWidths().scaled(16)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 6, 40, 48, 3, generator=g)
    b = (0.6 * a + 0.4 * torch.rand(4, 6, 40, 48, 3, generator=g)) ** 2
    assert fvd(a, a, det, resolution=32) == pytest.approx(0, abs=1e-5)
    d = fvd(a, b, det, resolution=32)
    assert d > 1e-2
    assert fvd(a, b, str(path), resolution=32) == pytest.approx(d, rel=1e-6)
    assert i3d_features(a, det, resolution=32).shape == (4, 400)


def test_state_dict_i3d_sees_stretched_frames_in_minus_one_one():
    """Consistent4D's protocol: every frame resized to the square (no crop), values in [-1, 1], the whole clip."""
    class Spy(InceptionI3d):
        def forward(self, x, per_time=False):
            self.seen = x
            return super().forward(x, per_time)

    spy = Spy(widths=I3DWidths().scaled(32))
    v = torch.zeros(1, 5, 20, 60, 3)
    v[:, :, :, :30, 0] = 1.0  # left half red
    i3d_features(v, spy, resolution=24)
    x = spy.seen
    assert x.shape == (1, 3, 5, 24, 24)
    assert float(x[0, 0, :, :, :10].min()) > 0.9 and float(x[0, 0, :, :, -10:].max()) < -0.9  # both halves kept
    assert float(x[0, 1].max()) == -1.0


def test_default_i3d_files_and_torchscript_detection(tmp_path, monkeypatch, i3d_path):
    monkeypatch.setenv("GEN4D_CACHE", str(tmp_path))
    with pytest.raises(Gen4DError, match="i3d_pretrained_400.pt.*i3d_torchscript.pt"):
        load_i3d()
    assert is_torchscript_file(i3d_path)
    (tmp_path / "metrics").mkdir()
    shutil.copy(i3d_path, tmp_path / "metrics" / "i3d_torchscript.pt")
    assert isinstance(load_i3d(), torch.jit.ScriptModule)
