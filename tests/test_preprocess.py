"""Image / video preprocessing for the image→4D and video→4D recipes (gen4d.data.preprocess)."""

from __future__ import annotations

import builtins
import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image

from gen4d import Gen4DError
from gen4d.data.preprocess import (
    composite,
    load_image_rgba,
    load_video_frames,
    natural_sort_key,
    save_rgba_png,
)
from gen4d.export.video import write_video

COLOUR = (200, 40, 90)


def _disc_rgba(h: int, w: int, cx: float, cy: float, r: float, colour=COLOUR) -> np.ndarray:
    """uint8 RGBA [h, w, 4]: an opaque disc of ``colour`` on a transparent (black) background."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    img = np.zeros((h, w, 4), np.uint8)
    img[inside] = (*colour, 255)
    return img


def _alpha_box(alpha: torch.Tensor, thr: float = 0.5) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (pixel edges) of ``alpha > thr``."""
    mask = (alpha > thr).numpy()
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert rows.size and cols.size, "empty alpha"
    return int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)


def _no_rembg(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "rembg" or name.startswith("rembg."):
            raise ImportError("No module named 'rembg'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


# ------------------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("size,border", [(64, 0.2), (96, 0.1), (50, 0.3)])
def test_image_recentred_and_scaled(tmp_path, size, border):
    path = tmp_path / "disc.png"
    Image.fromarray(_disc_rgba(30, 40, cx=30.0, cy=9.0, r=7.0)).save(path)  # 40 wide, 30 high, off-centre
    out = load_image_rgba(path, size=size, border_ratio=border)
    assert out.shape == (4, size, size) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    x0, y0, x1, y1 = _alpha_box(out[3])
    assert abs(max(x1 - x0, y1 - y0) - size * (1 - border)) <= 1.0
    assert abs((x0 + x1) / 2 - size / 2) <= 1.0
    assert abs((y0 + y1) / 2 - size / 2) <= 1.0
    # colour under the disc is kept (interior pixels, away from the antialiased edge)
    c = size // 2
    patch = out[:3, c - 2 : c + 3, c - 2 : c + 3]
    expected = torch.tensor(COLOUR, dtype=torch.float32).reshape(3, 1, 1) / 255.0
    assert float((patch - expected).abs().max()) <= 2.0 / 255.0
    assert float(out[3, c, c]) > 0.999
    # corners are transparent, with RGB 0 (straight alpha, nothing to show)
    assert float(out[:, 0, 0].abs().max()) == 0.0


def test_image_soft_alpha_and_webp(tmp_path):
    img = _disc_rgba(48, 48, cx=20.0, cy=28.0, r=10.0)
    img[..., 3] = (img[..., 3].astype(np.float32) * 0.8).astype(np.uint8)  # semi-transparent, still > 0.5
    path = tmp_path / "disc.webp"
    Image.fromarray(img).save(path, lossless=True)
    out = load_image_rgba(path, size=64, border_ratio=0.2)
    x0, y0, x1, y1 = _alpha_box(out[3], thr=0.4)  # half coverage of an alpha-0.8 edge
    assert abs(max(x1 - x0, y1 - y0) - 64 * 0.8) <= 1.0
    assert abs(float(out[3, 32, 32]) - 0.8) < 0.01


def test_image_recenter_false_keeps_layout(tmp_path):
    path = tmp_path / "disc.png"
    Image.fromarray(_disc_rgba(40, 40, cx=10.0, cy=10.0, r=5.0)).save(path)
    out = load_image_rgba(path, size=40, recenter=False)
    x0, y0, x1, y1 = _alpha_box(out[3])
    assert (x0, y0, x1, y1) == (5, 5, 15, 15)


def test_opaque_image_needs_rembg(tmp_path, monkeypatch):
    _no_rembg(monkeypatch)
    rgb = np.full((30, 40, 3), 255, np.uint8)
    rgb[10:20, 5:15] = (10, 20, 30)
    for name in ("photo.jpg", "photo.png"):
        path = tmp_path / name
        Image.fromarray(rgb).save(path)
        with pytest.raises(Gen4DError, match="rembg") as info:
            load_image_rgba(path)
        assert "\n" not in str(info.value) and name in str(info.value)
    # an RGBA PNG whose alpha is all opaque is treated like an RGB image
    path = tmp_path / "opaque_rgba.png"
    Image.fromarray(np.concatenate([rgb, np.full((30, 40, 1), 255, np.uint8)], -1)).save(path)
    with pytest.raises(Gen4DError, match="rembg"):
        load_image_rgba(path)
    with pytest.raises(Gen4DError, match="rembg"):
        load_image_rgba(path, remove_background=True)


def test_remove_background_false_is_opaque(tmp_path, monkeypatch):
    _no_rembg(monkeypatch)
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[..., 0] = np.arange(40, dtype=np.uint8)[None] * 6
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    out = load_image_rgba(path, size=32, remove_background=False)
    assert out.shape == (4, 32, 32)
    assert bool((out[3] == 1.0).all())
    # an RGBA input still uses its alpha when background removal is off
    path2 = tmp_path / "disc.png"
    Image.fromarray(_disc_rgba(30, 40, 30.0, 9.0, 7.0)).save(path2)
    out2 = load_image_rgba(path2, size=32, remove_background=False)
    assert float(out2[3, 0, 0]) == 0.0 and float(out2[3, 16, 16]) > 0.99


def test_image_errors(tmp_path):
    with pytest.raises(Gen4DError, match="not found"):
        load_image_rgba(tmp_path / "missing.png")
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    with pytest.raises(Gen4DError, match="not an image") as info:
        load_image_rgba(bad)
    assert str(bad) in str(info.value)
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((20, 20, 4), np.uint8)).save(empty)
    with pytest.raises(Gen4DError, match="no foreground"):
        load_image_rgba(empty)
    faint = tmp_path / "faint.png"
    img = np.zeros((20, 20, 4), np.uint8)
    img[5:10, 5:10] = (255, 0, 0, 60)  # alpha below the threshold only
    Image.fromarray(img).save(faint)
    with pytest.raises(Gen4DError, match="no foreground"):
        load_image_rgba(faint)
    ok = tmp_path / "ok.png"
    Image.fromarray(_disc_rgba(20, 20, 10, 10, 5)).save(ok)
    with pytest.raises(Gen4DError, match="border_ratio"):
        load_image_rgba(ok, border_ratio=1.0)
    with pytest.raises(Gen4DError, match="remove_background"):
        load_image_rgba(ok, remove_background="yes")


# ------------------------------------------------------------------------------------------------ videos


def _moving_disc_video(t: int, h: int = 48, w: int = 64, r: float = 6.0) -> np.ndarray:
    """uint8 RGB [t, h, w, 3]: a dark disc moving left to right on white, kept inside the centre square."""
    frames = np.full((t, h, w, 3), 255, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    for i in range(t):
        cx = 18.0 + 28.0 * i / (t - 1)
        inside = (xx - cx) ** 2 + (yy - h / 2) ** 2 <= r * r
        frames[i][inside] = (20, 20, 160)
    return frames


def _disc_stats(mask: np.ndarray) -> tuple[float, float, float]:
    """radius (from the area), centre x, centre y of a boolean mask."""
    ys, xs = np.nonzero(mask)
    return math.sqrt(mask.sum() / math.pi), float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize("t", [8, 14, 25])
def test_video_mp4_frames_scale_and_motion(tmp_path, t):
    path = tmp_path / "clip.mp4"
    write_video(path, _moving_disc_video(t), fps=12)
    out = load_video_frames(path, size=48, remove_background=False)
    assert out.shape == (t, 4, 48, 48) and out.dtype == torch.float32
    assert bool((out[:, 3] == 1.0).all())
    stats = [_disc_stats((out[i, 0] < 0.5).numpy()) for i in range(t)]
    radii = [s[0] for s in stats]
    assert max(radii) - min(radii) < 0.5  # one scale for all frames
    assert abs(np.mean(radii) - 6.0) < 0.6  # the 48-px centre square maps 1:1 onto size 48
    xs = [s[1] for s in stats]
    assert xs[-1] - xs[0] > 20.0 and all(b > a for a, b in pairwise(xs))  # motion kept, in order


def test_video_stride_and_max_frames(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, _moving_disc_video(14), fps=12)
    assert load_video_frames(path, size=16, remove_background=False, stride=3).shape[0] == 5
    assert load_video_frames(path, size=16, remove_background=False, max_frames=4).shape[0] == 4
    assert load_video_frames(path, size=16, remove_background=False, stride=2, max_frames=3).shape[0] == 3


def _write_frame_folder(folder, t: int, names=None) -> list[tuple[float, float]]:
    """RGBA PNG frames of a disc moving diagonally; returns the true disc centres."""
    folder.mkdir()
    centres = []
    for i in range(t):
        cx, cy = 12.0 + 20.0 * i / (t - 1), 30.0 - 14.0 * i / (t - 1)
        name = names[i] if names else f"frame_{i}.png"
        Image.fromarray(_disc_rgba(40, 50, cx, cy, 6.0)).save(folder / name)
        centres.append((cx, cy))
    return centres


@pytest.mark.parametrize("t", [8, 14, 25])
def test_video_frame_folder(tmp_path, monkeypatch, t):
    _no_rembg(monkeypatch)  # RGBA frames never need rembg
    _write_frame_folder(tmp_path / "frames", t)
    size, border = 64, 0.2
    out = load_video_frames(tmp_path / "frames", size=size, border_ratio=border)
    assert out.shape == (t, 4, size, size)
    stats = [_disc_stats((out[i, 3] > 0.5).numpy()) for i in range(t)]
    radii = [s[0] for s in stats]
    assert max(radii) - min(radii) < 0.5
    # the union of the boxes (not each disc) fills size * (1 - border)
    union = (out[:, 3] > 0.5).any(0)
    x0, y0, x1, y1 = _alpha_box(union.float())
    assert abs(max(x1 - x0, y1 - y0) - size * (1 - border)) <= 1.0
    assert abs((x0 + x1) / 2 - size / 2) <= 1.0 and abs((y0 + y1) / 2 - size / 2) <= 1.0
    # natural order (frame_2 before frame_10): the disc moves monotonically right and up
    xs, ys = [s[1] for s in stats], [s[2] for s in stats]
    assert all(b > a for a, b in pairwise(xs)) and all(b < a for a, b in pairwise(ys))
    assert xs[-1] - xs[0] > 10.0


def test_natural_sort():
    names = ["frame_10.png", "frame_2.png", "frame_1.png", "Frame_3.png", "frame_21.png"]
    assert sorted(names, key=natural_sort_key) == [
        "frame_1.png",
        "frame_2.png",
        "Frame_3.png",
        "frame_10.png",
        "frame_21.png",
    ]


def test_video_folder_sorted_naturally(tmp_path):
    # 12 frames named 0..11 without zero padding: a plain string sort would put 10 and 11 after 1.
    _write_frame_folder(tmp_path / "f", 12, names=[f"img{i}.png" for i in range(12)])
    (tmp_path / "f" / "notes.txt").write_text("ignored")
    out = load_video_frames(tmp_path / "f", size=32)
    xs = [_disc_stats((out[i, 3] > 0.5).numpy())[1] for i in range(12)]
    assert all(b > a for a, b in pairwise(xs))


def test_video_errors(tmp_path):
    with pytest.raises(Gen4DError, match="not found"):
        load_video_frames(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(Gen4DError, match="no images"):
        load_video_frames(tmp_path / "empty")
    # a 1-frame video
    one = tmp_path / "one.mp4"
    write_video(one, _moving_disc_video(2)[:1], fps=12)
    with pytest.raises(Gen4DError, match="at least 2 frames"):
        load_video_frames(one, remove_background=False)
    # a 1-frame folder
    (tmp_path / "single").mkdir()
    Image.fromarray(_disc_rgba(20, 20, 10, 10, 5)).save(tmp_path / "single" / "a.png")
    with pytest.raises(Gen4DError, match="at least 2 frames"):
        load_video_frames(tmp_path / "single")
    # frames of different sizes
    (tmp_path / "sizes").mkdir()
    Image.fromarray(_disc_rgba(20, 20, 10, 10, 5)).save(tmp_path / "sizes" / "a1.png")
    Image.fromarray(_disc_rgba(20, 24, 10, 10, 5)).save(tmp_path / "sizes" / "a2.png")
    with pytest.raises(Gen4DError, match="different sizes"):
        load_video_frames(tmp_path / "sizes")
    # no foreground in any frame
    (tmp_path / "blank").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((16, 16, 4), np.uint8)).save(tmp_path / "blank" / f"f{i}.png")
    with pytest.raises(Gen4DError, match="no foreground"):
        load_video_frames(tmp_path / "blank")


def test_video_without_alpha_needs_rembg(tmp_path, monkeypatch):
    _no_rembg(monkeypatch)
    path = tmp_path / "clip.mp4"
    write_video(path, _moving_disc_video(4), fps=12)
    with pytest.raises(Gen4DError, match="rembg"):
        load_video_frames(path)


# ------------------------------------------------------------------------------------------------ helpers


def test_composite_and_save_roundtrip(tmp_path):
    rgba = torch.zeros(4, 8, 8)
    rgba[0] = 1.0
    rgba[3, :, :4] = 1.0
    rgba[3, :, 4:] = 0.5
    rgb = composite(rgba)
    assert rgb.shape == (3, 8, 8)
    assert torch.allclose(rgb[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(rgb[:, 0, 7], torch.tensor([1.0, 0.5, 0.5]))
    black = composite(rgba[None], background=(0.0, 0.0, 0.0))
    assert black.shape == (1, 3, 8, 8) and torch.allclose(black[0, :, 0, 7], torch.tensor([0.5, 0.0, 0.0]))

    path = tmp_path / "sub" / "out.png"
    save_rgba_png(path, rgba)
    back = np.asarray(Image.open(path))
    assert back.shape == (8, 8, 4) and back[0, 0].tolist() == [255, 0, 0, 255] and back[0, 7, 3] == 128
    assert [p.name for p in path.parent.iterdir()] == ["out.png"]  # no temporary left behind
    # a saved RGBA PNG loads back through the image loader
    img = np.zeros((32, 32, 4), np.float32)
    img[8:24, 8:24] = (0.2, 0.4, 0.6, 1.0)
    save_rgba_png(tmp_path / "sq.png", torch.from_numpy(img).permute(2, 0, 1))
    out = load_image_rgba(tmp_path / "sq.png", size=32, border_ratio=0.5)
    x0, y0, x1, y1 = _alpha_box(out[3])
    assert (x0, y0, x1, y1) == (8, 8, 24, 24)


def test_rembg_path_with_a_stand_in(tmp_path, monkeypatch):
    """The rembg branch: only rembg's alpha is used, colours come from the input, one session is reused."""
    import sys
    import types

    import gen4d.data.preprocess as pre

    calls = {"session": 0, "remove": 0}

    def new_session(*args, **kwargs):
        calls["session"] += 1
        return object()

    def remove(img, session=None):
        calls["remove"] += 1
        rgb = np.asarray(img)
        alpha = np.where(rgb.sum(-1) < 600, 255, 0).astype(np.uint8)  # "foreground" = not white
        return Image.fromarray(np.concatenate([np.zeros_like(rgb), alpha[..., None]], -1))

    monkeypatch.setitem(sys.modules, "rembg", types.SimpleNamespace(new_session=new_session, remove=remove))
    monkeypatch.setattr(pre, "_REMBG_SESSION", None)
    rgb = np.full((30, 40, 3), 255, np.uint8)
    rgb[4:14, 26:36] = COLOUR
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=100)
    out = load_image_rgba(tmp_path / "photo.jpg", size=40, border_ratio=0.25)
    x0, y0, x1, y1 = _alpha_box(out[3])
    assert abs((x1 - x0) - 30) <= 1 and abs((x0 + x1) / 2 - 20) <= 1 and abs((y0 + y1) / 2 - 20) <= 1
    expected = torch.tensor(COLOUR, dtype=torch.float32) / 255.0
    assert float((out[:3, 20, 20] - expected).abs().max()) < 6 / 255  # JPEG, so a little slack

    path = tmp_path / "clip.mp4"
    write_video(path, _moving_disc_video(5), fps=12)
    frames = load_video_frames(path, size=32)
    assert frames.shape == (5, 4, 32, 32) and calls["remove"] == 6 and calls["session"] == 1
    assert float(frames[:, 3, 0, 0].max()) == 0.0  # background cut away


def test_hidden_colour_does_not_bleed_into_edges(tmp_path):
    img = _disc_rgba(40, 40, 20.0, 20.0, 9.0, colour=(255, 0, 0))
    img[img[..., 3] == 0] = (0, 255, 0, 0)  # green hidden under fully transparent pixels
    Image.fromarray(img).save(tmp_path / "disc.png")
    for size in (24, 90):  # shrinking and enlarging
        out = load_image_rgba(tmp_path / "disc.png", size=size)
        visible = out[3] > 0.02
        assert int(visible.sum()) > 0
        assert float(out[1][visible].max()) < 0.02 and float(out[0][visible].min()) > 0.98
