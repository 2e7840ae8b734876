"""D-NeRF reader and synthetic 4D scenes: hand-made fixtures, hand-computed geometry, round trips, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gen4d import Gen4DError
from gen4d.cameras import opengl_to_opencv, orbit_c2w, orbit_cameras
from gen4d.data.dnerf import load_dnerf, read_dnerf_scene
from gen4d.data.synthetic import (
    AMBIENT,
    ELEVATION_RANGE_DEG,
    LIGHT_DIR,
    SCENES,
    WINDMILL_TURNS,
    Box,
    Capsule,
    Sphere,
    SyntheticScene,
    bounding_radius,
    cast_rays,
    plan_monocular_views,
    plan_views,
    render_scene,
    write_synthetic_scene,
)

ANGLE_X = 0.8  # camera_angle_x of the hand-written fixture, radians


# ------------------------------------------------------------------------------------------- hand-written fixture
def _fixture_pixels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame 0: 4x4 RGBA with a known alpha pattern and distinct colours under transparent pixels.
    Frame 1: 4x4 RGB (no alpha channel). Test frame: 4x4 RGBA, fully opaque grey."""
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, size=(4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = np.array([[255, 255, 0, 0], [255, 128, 0, 0], [255, 255, 255, 255], [0, 0, 0, 0]], dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    test = np.full((4, 4, 4), 200, dtype=np.uint8)
    test[..., 3] = 255
    return rgba, rgb, test


def _c2w_gl(az: float, el: float, radius: float = 3.0) -> list[list[float]]:
    return opengl_to_opencv(orbit_c2w(az, el, radius)).tolist()


def _write_fixture(root: Path) -> Path:
    rgba, rgb, test = _fixture_pixels()
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    Image.fromarray(rgba, "RGBA").save(root / "train" / "r_000.png")
    Image.fromarray(rgb, "RGB").save(root / "train" / "r_001.png")
    Image.fromarray(test, "RGBA").save(root / "test" / "r_000.png")
    train = {
        "camera_angle_x": ANGLE_X,
        "frames": [
            {"file_path": "./train/r_000", "time": 0.0, "transform_matrix": _c2w_gl(30.0, 20.0)},
            {"file_path": "./train/r_001.png", "time": 1.0, "transform_matrix": _c2w_gl(120.0, -5.0)},
        ],
    }
    test_meta = {"camera_angle_x": ANGLE_X, "frames": [{"file_path": "./test/r_000", "time": 0.5, "transform_matrix": _c2w_gl(75.0, 10.0)}]}
    (root / "transforms_train.json").write_text(json.dumps(train))
    (root / "transforms_test.json").write_text(json.dumps(test_meta))
    return root


@pytest.fixture
def fixture_dir(tmp_path: Path) -> Path:
    return _write_fixture(tmp_path / "scene")


def _premultiplied(rgba_u8: np.ndarray) -> np.ndarray:
    x = rgba_u8.astype(np.float64) / 255.0
    return np.concatenate([x[..., :3] * x[..., 3:], x[..., 3:]], axis=-1)


def test_fixture_composites_on_white_black_and_colour(fixture_dir: Path):
    rgba, rgb, _ = _fixture_pixels()
    prem = _premultiplied(rgba)
    for background, bg in (("white", (1.0, 1.0, 1.0)), ("black", (0.0, 0.0, 0.0)), ((0.2, 0.4, 0.6), (0.2, 0.4, 0.6))):
        video = load_dnerf(fixture_dir, "train", background=background)
        expected = prem[..., :3] + (1.0 - prem[..., 3:]) * np.array(bg)
        np.testing.assert_allclose(video.images[0].numpy(), expected, atol=1e-6)
        # No alpha channel: opaque, colours untouched whatever the background.
        np.testing.assert_allclose(video.images[1].numpy(), rgb / 255.0, atol=1e-6)
        assert video.background == bg
    video = load_dnerf(fixture_dir, "train")
    np.testing.assert_allclose(video.alphas[0, ..., 0].numpy(), rgba[..., 3] / 255.0, atol=1e-7)
    assert torch.all(video.alphas[1] == 1.0)
    # Fully transparent pixels are exactly the background.
    assert torch.all(video.images[0][video.alphas[0, ..., 0] == 0] == 1.0)
    assert video.names == ["r_000", "r_001"]  # with and without ".png" in file_path
    assert video.times.tolist() == [0.0, 1.0]
    assert video.images.dtype == torch.float32 and video.images.shape == (2, 4, 4, 3)


def test_fixture_cameras(fixture_dir: Path):
    video = load_dnerf(fixture_dir, "train")
    f = 0.5 * 4 / math.tan(0.5 * ANGLE_X)
    expected_K = torch.tensor([[f, 0.0, 2.0], [0.0, f, 2.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(video.cameras.Ks, expected_K.expand(2, 3, 3), atol=1e-5, rtol=0)
    assert (video.cameras.width, video.cameras.height) == (4, 4)
    # The JSON holds OpenGL c2w; the loaded viewmat must be the inverse of its OpenCV version.
    meta = json.loads((fixture_dir / "transforms_train.json").read_text())
    for i, frame in enumerate(meta["frames"]):
        c2w_cv = opengl_to_opencv(torch.tensor(frame["transform_matrix"], dtype=torch.float64))
        torch.testing.assert_close(torch.linalg.inv(video.cameras.viewmats[i].double()), c2w_cv, atol=1e-5, rtol=0)
    # Orbit cameras look at the origin: it projects to the image centre.
    origin = torch.tensor([0.0, 0.0, 0.0, 1.0])
    for i in range(2):
        p = video.cameras.Ks[i] @ (video.cameras.viewmats[i] @ origin)[:3]
        torch.testing.assert_close(p[:2] / p[2], torch.tensor([2.0, 2.0]), atol=1e-4, rtol=0)


def test_fixture_downscale_averages_premultiplied_colour(fixture_dir: Path):
    rgba, _, _ = _fixture_pixels()
    prem = _premultiplied(rgba)
    for background, bg in (("white", 1.0), ("black", 0.0)):
        video = load_dnerf(fixture_dir, "train", downscale=2, background=background)
        assert video.images.shape == (2, 2, 2, 3) and (video.cameras.width, video.cameras.height) == (2, 2)
        blocks = prem.reshape(2, 2, 2, 2, 4).mean(axis=(1, 3))
        expected = blocks[..., :3] + (1.0 - blocks[..., 3:]) * bg
        np.testing.assert_allclose(video.images[0].numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(video.alphas[0, ..., 0].numpy(), blocks[..., 3], atol=1e-6)
    # Averaging straight colour instead would let colour hidden under alpha = 0 bleed into edge pixels: the
    # fixture is built so that this mistake is visible.
    straight = rgba.astype(np.float64) / 255.0
    naive_premultiplied = straight[..., :3].reshape(2, 2, 2, 2, 3).mean(axis=(1, 3)) * blocks[..., 3:]
    assert np.abs(naive_premultiplied - blocks[..., :3]).max() > 0.05
    full = load_dnerf(fixture_dir, "train")
    half = load_dnerf(fixture_dir, "train", downscale=2)
    torch.testing.assert_close(half.cameras.Ks[:, :2], full.cameras.Ks[:, :2] / 2)
    torch.testing.assert_close(half.cameras.viewmats, full.cameras.viewmats)


def test_fixture_downscale_not_dividing_the_size_covers_the_whole_image(fixture_dir: Path):
    # 4 // 3 = 1 pixel that must average all 16 input pixels (same field of view, K scaled by 1/4).
    rgba, _, _ = _fixture_pixels()
    video = load_dnerf(fixture_dir, "train", downscale=3)
    assert video.images.shape == (2, 1, 1, 3)
    np.testing.assert_allclose(float(video.alphas[0, 0, 0, 0]), rgba[..., 3].mean() / 255.0, atol=1e-6)
    full = load_dnerf(fixture_dir, "train")
    torch.testing.assert_close(video.cameras.Ks[:, :2], full.cameras.Ks[:, :2] / 4)


def test_read_scene_returns_all_splits(fixture_dir: Path):
    scene = read_dnerf_scene(fixture_dir)
    assert set(scene) == {"train", "test"}
    shutil.copy(fixture_dir / "transforms_test.json", fixture_dir / "transforms_val.json")
    scene = read_dnerf_scene(fixture_dir, background="black")
    assert set(scene) == {"train", "test", "val"}
    assert scene["val"].times.tolist() == [0.5]
    np.testing.assert_allclose(scene["test"].images.numpy(), 200 / 255.0, atol=1e-6)


# --------------------------------------------------------------------------------------------------- bad input
def _edit_json(root: Path, split: str, edit) -> None:
    path = root / f"transforms_{split}.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _set_frame(i: int, key: str, value):
    def edit(meta):
        meta["frames"][i][key] = value

    return edit


def _del_frame(i: int, key: str):
    def edit(meta):
        del meta["frames"][i][key]

    return edit


def _del_key(key: str):
    return lambda meta: meta.pop(key)


_BAD_JSON_CASES = {
    "no_angle": ("train", _del_key("camera_angle_x"), r"transforms_train\.json has no 'camera_angle_x'"),
    "angle_not_number": ("train", lambda m: m.update(camera_angle_x="wide"), r"'camera_angle_x' in \S*transforms_train\.json"),
    "no_frames": ("train", _del_key("frames"), r"transforms_train\.json has no 'frames'"),
    "frames_not_list": ("train", lambda m: m.update(frames={"a": 1}), r"'frames' in \S*transforms_train\.json must be a list"),
    "empty_train": ("train", lambda m: m.update(frames=[]), r"transforms_train\.json has no frames"),
    "empty_test": ("test", lambda m: m.update(frames=[]), r"transforms_test\.json has no frames"),
    "no_file_path": ("train", _del_frame(1, "file_path"), r"frame 1 of \S*transforms_train\.json has no 'file_path'"),
    "no_matrix": ("train", _del_frame(1, "transform_matrix"), r"frame 1 of \S*transforms_train\.json has no 'transform_matrix'"),
    "matrix_3x4": (
        "train",
        _set_frame(0, "transform_matrix", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]),
        r"'transform_matrix' of frame 0 of \S*transforms_train\.json is not a 4x4 matrix \(shape \(3, 4\)\)",
    ),
    "matrix_ragged": (
        "train",
        _set_frame(0, "transform_matrix", [[1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
        r"frame 0 of \S*transforms_train\.json is not a 4x4 matrix",
    ),
    "matrix_nan": (
        "train",
        _set_frame(0, "transform_matrix", [[float("nan"), 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
        r"frame 0 of \S*transforms_train\.json has non-finite",
    ),
    "matrix_strings": ("test", _set_frame(0, "transform_matrix", "identity"), r"frame 0 of \S*transforms_test\.json is not a 4x4 matrix"),
    "no_time": ("train", _del_frame(1, "time"), r"frame 1 of transforms_train\.json has no 'time'; every frame of a 4D scene needs one"),
    "time_above_1": ("train", _set_frame(0, "time", 1.5), r"'time' of frame 0 of \S*transforms_train\.json must be a number in \[0, 1\], got 1\.5"),
    "time_negative": ("test", _set_frame(0, "time", -0.1), r"'time' of frame 0 of \S*transforms_test\.json"),
    "time_string": ("train", _set_frame(1, "time", "0.5"), r"'time' of frame 1 of \S*transforms_train\.json"),
    "time_bool": ("train", _set_frame(1, "time", True), r"'time' of frame 1 of \S*transforms_train\.json"),
    "missing_image": ("train", _set_frame(1, "file_path", "./train/r_009"), r"image \S*r_009\.png of frame 1 of \S*transforms_train\.json is missing"),
}


@pytest.mark.parametrize("case", sorted(_BAD_JSON_CASES))
def test_bad_json_content_raises_one_line(fixture_dir: Path, case: str):
    split, edit, pattern = _BAD_JSON_CASES[case]
    _edit_json(fixture_dir, split, edit)
    with pytest.raises(Gen4DError, match=pattern) as err:
        read_dnerf_scene(fixture_dir)
    assert "\n" not in str(err.value)


def test_missing_folder_and_files(tmp_path: Path, fixture_dir: Path):
    with pytest.raises(Gen4DError, match=r"scene folder \S*nowhere does not exist"):
        read_dnerf_scene(tmp_path / "nowhere")
    with pytest.raises(Gen4DError, match=r"is not a folder"):
        load_dnerf(fixture_dir / "transforms_train.json")
    with pytest.raises(Gen4DError, match=r"transforms_val\.json not found"):
        load_dnerf(fixture_dir, "val")
    (fixture_dir / "transforms_test.json").unlink()
    with pytest.raises(Gen4DError, match=r"^transforms_test\.json not found in \S*scene"):
        read_dnerf_scene(fixture_dir)
    (fixture_dir / "transforms_train.json").unlink()
    with pytest.raises(Gen4DError, match=r"^transforms_train\.json and transforms_test\.json not found"):
        read_dnerf_scene(fixture_dir)


def test_malformed_json_names_the_position(fixture_dir: Path):
    (fixture_dir / "transforms_test.json").write_text('{"camera_angle_x": 0.8,\n "frames": [\n')
    with pytest.raises(Gen4DError, match=r"transforms_test\.json is not valid JSON: .* at line 3 column 1") as err:
        read_dnerf_scene(fixture_dir)
    assert "\n" not in str(err.value)
    (fixture_dir / "transforms_test.json").write_text("[1, 2]")
    with pytest.raises(Gen4DError, match=r"transforms_test\.json must hold a JSON object"):
        read_dnerf_scene(fixture_dir)


def test_unreadable_images(fixture_dir: Path):
    (fixture_dir / "train" / "r_001.png").write_bytes(b"this is not a png")
    with pytest.raises(Gen4DError, match=r"r_001\.png \(frame 1 of \S*transforms_train\.json\) is not an image") as err:
        load_dnerf(fixture_dir)
    assert "\n" not in str(err.value)
    png = (fixture_dir / "train" / "r_000.png").read_bytes()
    (fixture_dir / "train" / "r_001.png").write_bytes(png[: len(png) // 2])  # truncated
    with pytest.raises(Gen4DError, match=r"r_001\.png \(frame 1 of \S*transforms_train\.json\) is not an image"):
        load_dnerf(fixture_dir)


def test_images_of_different_sizes(fixture_dir: Path):
    Image.new("RGBA", (5, 4)).save(fixture_dir / "train" / "r_001.png")
    with pytest.raises(Gen4DError, match=r"images of different sizes in \S*transforms_train\.json: \S*r_000\.png is 4x4 but \S*r_001\.png is 5x4"):
        load_dnerf(fixture_dir)


def test_an_error_in_val_fails_the_whole_scene(fixture_dir: Path):
    frame_without_time = {"file_path": "./test/r_000", "transform_matrix": _c2w_gl(0, 0)}
    (fixture_dir / "transforms_val.json").write_text(json.dumps({"camera_angle_x": ANGLE_X, "frames": [frame_without_time]}))
    with pytest.raises(Gen4DError, match=r"frame 0 of transforms_val\.json has no 'time'"):
        read_dnerf_scene(fixture_dir)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"downscale": 0}, "downscale must be an integer >= 1"),
        ({"downscale": 1.5}, "downscale must be an integer"),
        ({"downscale": 8}, r"downscale 8 is larger than the 4x4 image"),
        ({"background": "green"}, "background must be"),
        ({"background": (1, 2, 3)}, "background must be"),
        ({"background": (0.5, 0.5)}, "background must be"),
    ],
)
def test_bad_options(fixture_dir: Path, kwargs, pattern):
    with pytest.raises(Gen4DError, match=pattern):
        load_dnerf(fixture_dir, **kwargs)


# ------------------------------------------------------------------------------------- ray caster vs. geometry
def _scene_of(*prims) -> SyntheticScene:
    return SyntheticScene("test", "fixed primitives", lambda t: list(prims))


def _shade_by_hand(albedo, normal) -> np.ndarray:
    return np.asarray(albedo) * (AMBIENT + (1.0 - AMBIENT) * max(0.0, float(np.dot(normal, LIGHT_DIR))))


FOV = math.radians(40.0)
RES = 63  # odd: pixel 31 is centred on the principal point (31.5, 31.5)
FOCAL = 0.5 * RES / math.tan(0.5 * FOV)
C = RES // 2


def _camera_on_x(distance: float):
    return orbit_cameras(0.0, 0.0, distance, FOV, RES, RES)  # eye (d, 0, 0), looking at the origin along -x


def test_sphere_silhouette_and_centre_colour():
    r, d, albedo = 0.6, 3.0, (0.8, 0.5, 0.2)
    scene = _scene_of(Sphere((0.0, 0.0, 0.0), r, albedo))
    rgb, alpha = render_scene(scene, _camera_on_x(d), supersample=4)
    expected_radius = FOCAL * r / math.sqrt(d * d - r * r)  # tangent cone: tan = r / sqrt(d^2 - r^2)
    assert abs(float(alpha[0, C, :, 0].sum()) / 2 - expected_radius) < 1.0
    assert abs(float(alpha[0, :, C, 0].sum()) / 2 - expected_radius) < 1.0
    assert abs(float(alpha.sum()) / (math.pi * expected_radius**2) - 1.0) < 0.02
    edge = alpha[(alpha > 0) & (alpha < 1)]
    assert edge.numel() > 20  # antialiased silhouette
    rgb1, alpha1 = render_scene(scene, _camera_on_x(d), supersample=1)
    assert float(alpha1[0, C, C, 0]) == 1.0 and float(alpha1[0, 0, 0, 0]) == 0.0
    np.testing.assert_allclose(rgb1[0, C, C].numpy(), _shade_by_hand(albedo, (1.0, 0.0, 0.0)), atol=1e-5)
    assert torch.all(rgb1[0, 0, 0] == 0.0)  # premultiplied: nothing where nothing was hit


def test_shading_is_view_independent():
    r = 0.6
    scene = [Sphere((0.1, -0.2, 0.05), r, (0.3, 0.6, 0.9))]
    normal = np.array([0.6, 0.3, 0.5]) / np.linalg.norm([0.6, 0.3, 0.5])
    point = np.array([0.1, -0.2, 0.05]) + r * normal
    eyes = np.array([[4.0, 0.5, 1.0], [2.5, 3.0, 0.2], [3.0, -0.5, 3.0]])
    colour, hit = cast_rays(scene, torch.tensor(eyes), torch.tensor(point - eyes))
    assert hit.all()
    expected = _shade_by_hand((0.3, 0.6, 0.9), normal)
    np.testing.assert_allclose(colour.numpy(), np.tile(expected, (3, 1)), atol=1e-5)


def test_capsule_silhouette_and_normals():
    r, h, d, albedo = 0.2, 0.6, 3.0, (0.2, 0.7, 0.4)
    scene = _scene_of(Capsule((0.0, 0.0, -h), (0.0, 0.0, h), r, albedo))
    _, alpha = render_scene(scene, _camera_on_x(d), supersample=4)
    half_width = FOCAL * r / math.sqrt(d * d - r * r)
    beta, a = math.atan2(h, d), math.asin(r / math.hypot(d, h))  # the end sphere's centre direction and angular radius
    half_height = FOCAL * math.tan(beta + a)
    assert abs(float(alpha[0, C, :, 0].sum()) / 2 - half_width) < 1.0
    assert abs(float(alpha[0, :, C, 0].sum()) / 2 - half_height) < 1.0
    rgb1, _ = render_scene(scene, _camera_on_x(d), supersample=1)
    # Down the centre column every cylinder hit is on the line x = r, y = 0: normal +x, one colour.
    expected = _shade_by_hand(albedo, (1.0, 0.0, 0.0))
    for row in (C - 10, C, C + 10):
        np.testing.assert_allclose(rgb1[0, row, C].numpy(), expected, atol=1e-5)


def _rot_z_90() -> tuple:
    return ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0))


FACES = ((0.9, 0.1, 0.1), (0.1, 0.9, 0.1), (0.1, 0.1, 0.9), (0.9, 0.9, 0.1), (0.1, 0.9, 0.9), (0.9, 0.1, 0.9))


def test_box_silhouette_faces_and_checker():
    h, d, contrast = 0.5, 3.0, 0.45
    box = Box((0.0, 0.0, 0.0), (h, h, h), FACES, checker=3, checker_contrast=contrast)
    _, alpha = render_scene(_scene_of(box), _camera_on_x(d), supersample=4)
    # Seen along -x the cube's outline is its front face x = h (the side faces are back-facing).
    half_width = FOCAL * h / (d - h)
    assert abs(float(alpha[0, C, :, 0].sum()) / 2 - half_width) < 1.0
    assert abs(float(alpha[0, :, C, 0].sum()) / 2 - half_width) < 1.0
    rgb1, _ = render_scene(_scene_of(box), _camera_on_x(d), supersample=1)
    lit = _shade_by_hand(FACES[0], (1.0, 0.0, 0.0))
    np.testing.assert_allclose(rgb1[0, C, C].numpy(), lit, atol=1e-5)  # middle cell of a 3x3 checker: bright
    cell_px = FOCAL * (2 * h / 3) / (d - h)
    offset = int(round(cell_px))  # one cell to the side: dark
    np.testing.assert_allclose(rgb1[0, C, C + offset].numpy(), lit * (1 - contrast), atol=1e-5)
    np.testing.assert_allclose(rgb1[0, C + offset, C + offset].numpy(), lit, atol=1e-5)  # diagonal cell: bright
    # Rotated 90 degrees about z, local -y faces the camera on +x.
    turned = Box((0.0, 0.0, 0.0), (h, h, h), FACES, rotation=_rot_z_90(), checker=3, checker_contrast=contrast)
    rgb2, _ = render_scene(_scene_of(turned), _camera_on_x(d), supersample=1)
    np.testing.assert_allclose(rgb2[0, C, C].numpy(), _shade_by_hand(FACES[3], (1.0, 0.0, 0.0)), atol=1e-5)


def test_nearest_hit_wins_regardless_of_order():
    box = Box((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), FACES, checker=3)
    ball = Sphere((0.8, 0.0, 0.0), 0.15, (0.2, 0.3, 0.4))  # between the camera and the box's front face
    cams = _camera_on_x(3.0)
    rgb_a, alpha_a = render_scene(_scene_of(box, ball), cams, supersample=1)
    rgb_b, alpha_b = render_scene(_scene_of(ball, box), cams, supersample=1)
    assert torch.equal(rgb_a, rgb_b) and torch.equal(alpha_a, alpha_b)
    np.testing.assert_allclose(rgb_a[0, C, C].numpy(), _shade_by_hand((0.2, 0.3, 0.4), (1.0, 0.0, 0.0)), atol=1e-5)


@pytest.mark.parametrize("name", sorted(SCENES))
def test_scenes_move_and_stay_in_bounds(name: str):
    scene = SCENES[name]
    for t in np.linspace(0.0, 1.0, 41):
        assert max(bounding_radius(p) for p in scene.at(t)) < 1.0
    cams = orbit_cameras(torch.tensor([30.0, 30.0]), 15.0, 4.0, FOV, 32, 32, times=torch.tensor([0.0, 0.5]))
    rgb, alpha = render_scene(name, cams, supersample=2)
    assert 0.02 < float(alpha.mean()) < 0.5  # in view, not filling it
    assert float((rgb[0] - rgb[1]).abs().mean()) > 0.005 or float((alpha[0] - alpha[1]).abs().mean()) > 0.005


def test_unknown_scene():
    with pytest.raises(Gen4DError, match="unknown synthetic scene 'teapot'; choose one of: bouncing_balls"):
        render_scene("teapot", _camera_on_x(3.0))


# -------------------------------------------------------------------------------------- writer -> reader round trip
@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "jumping_jacks"
    return write_synthetic_scene("jumping_jacks", out, resolution=24, train_views=3, train_times=2, test_views=2, seed=3)


def test_written_scene_reads_back(tiny_scene: Path):
    scene = read_dnerf_scene(tiny_scene)
    assert set(scene) == {"train", "test", "val"}
    train = scene["train"]
    assert len(train) == 6 and len(scene["test"]) == 2 and len(scene["val"]) == 2
    assert train.images.shape == (6, 24, 24, 3) and train.alphas.shape == (6, 24, 24, 1)
    assert train.names == [f"r_{i:03d}" for i in range(6)]
    assert train.times.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # every camera at every time
    assert scene["test"].times.tolist() == [0.5, 0.5]  # half-way between the training times
    assert float(train.alphas.min()) == 0.0 and float(train.alphas.max()) == 1.0
    assert torch.all(train.images[train.alphas[..., 0] == 0] == 1.0)  # white background exactly


def test_written_cameras_round_trip(tiny_scene: Path):
    for split in ("train", "test", "val"):
        video = load_dnerf(tiny_scene, split)
        meta = json.loads((tiny_scene / f"transforms_{split}.json").read_text())
        assert meta["camera_angle_x"] == pytest.approx(math.radians(40.0))
        for i, frame in enumerate(meta["frames"]):
            c2w = opengl_to_opencv(torch.tensor(frame["transform_matrix"], dtype=torch.float64))
            torch.testing.assert_close(torch.linalg.inv(video.cameras.viewmats[i].double()), c2w, atol=1e-5, rtol=0)
            assert float(c2w[:3, 3].norm()) == pytest.approx(4.0)
            p = video.cameras.Ks[i] @ video.cameras.viewmats[i, :3, 3]  # the world origin
            torch.testing.assert_close(p[:2] / p[2], torch.tensor([12.0, 12.0]), atol=1e-4, rtol=0)
            assert frame["time"] == pytest.approx(float(video.times[i]))


def test_written_images_match_the_renderer(tiny_scene: Path):
    video = load_dnerf(tiny_scene, "test")
    rgb, alpha = render_scene("jumping_jacks", video.cameras, supersample=3)
    # 8-bit straight-alpha PNGs: half a level of rounding in colour and in alpha.
    torch.testing.assert_close(video.alphas, alpha, atol=0.5 / 255 + 1e-6, rtol=0)
    torch.testing.assert_close(video.images, rgb + (1 - alpha), atol=1.0 / 255 + 1e-6, rtol=0)
    black = load_dnerf(tiny_scene, "test", background="black")
    torch.testing.assert_close(black.images, video.premultiplied(), atol=1e-6, rtol=0)


def _azimuths_deg(video) -> np.ndarray:
    centres = video.cameras.centers.double().numpy()
    return np.degrees(np.arctan2(centres[:, 1], centres[:, 0])) % 360.0


def _angle_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a[:, None] - b[None, :] + 180.0) % 360.0 - 180.0)


def test_test_views_are_new_viewpoints_and_times(tiny_scene: Path):
    scene = read_dnerf_scene(tiny_scene)
    train_az, train_t = _azimuths_deg(scene["train"]), scene["train"].times.numpy()
    for split in ("test", "val"):
        az, t = _azimuths_deg(scene[split]), scene[split].times.numpy()
        assert _angle_gap(az, train_az).min() > 10.0
        assert np.abs(t[:, None] - train_t[None, :]).min() > 0.1


def test_view_plan_for_default_sizes():
    plans = plan_views(16, 12, 8, 4, seed=0)
    train, test = plans["train"], plans["test"]
    assert len(train.times) == 16 * 12
    train_az = np.unique(np.round(train.azimuths_deg, 6))
    assert len(train_az) == 16 and np.allclose(np.diff(np.sort(train_az)), 22.5)
    assert ELEVATION_RANGE_DEG[0] <= train.elevations_deg.min() and train.elevations_deg.max() <= ELEVATION_RANGE_DEG[1]
    assert train.elevations_deg.std() > 10.0
    times = np.unique(train.times)
    np.testing.assert_allclose(times, np.linspace(0, 1, 12))
    gaps = _angle_gap(test.azimuths_deg, train_az)
    np.testing.assert_allclose(gaps.min(axis=1), 11.25, atol=1e-6)  # half-way between training azimuths
    assert np.abs(test.times[:, None] - times[None, :]).min(axis=1) == pytest.approx(np.full(8, 0.5 / 11))
    assert len(np.unique(test.times)) == 8 and len(np.unique(np.round(test.azimuths_deg, 6))) == 8
    val = plans["val"]
    assert len(val.times) == 4 and not np.allclose(val.elevations_deg, test.elevations_deg[:4])


def test_writer_is_deterministic(tiny_scene: Path, tmp_path: Path):
    again = write_synthetic_scene("jumping_jacks", tmp_path / "again", resolution=24, train_views=3, train_times=2, test_views=2, seed=3)
    for name in ("transforms_train.json", "transforms_test.json", "transforms_val.json", "train/r_004.png", "test/r_001.png"):
        assert (again / name).read_bytes() == (tiny_scene / name).read_bytes()
    other = write_synthetic_scene("jumping_jacks", tmp_path / "other", resolution=24, train_views=3, train_times=2, test_views=2, seed=4)
    assert (other / "transforms_train.json").read_text() != (tiny_scene / "transforms_train.json").read_text()


# ----------------------------------------------------------------------------------- scenes with large motion
NEW_SCENES = ("windmill", "walker", "chain")


def _anchor(p) -> np.ndarray:
    """A point that moves with the primitive: a sphere's or box's centre, a capsule's midpoint."""
    if isinstance(p, Capsule):
        return 0.5 * (np.asarray(p.start) + np.asarray(p.end))
    return np.asarray(p.center)


def _direction(c: Capsule) -> np.ndarray:
    d = np.asarray(c.end) - np.asarray(c.start)
    return d / np.linalg.norm(d)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip(a @ b, -1.0, 1.0))))


@pytest.mark.parametrize("name", NEW_SCENES)
def test_new_scenes_are_smooth_deterministic_and_in_bounds(name: str):
    scene = SCENES[name]
    times = np.linspace(0.0, 1.0, 401)
    assert max(bounding_radius(p) for t in times for p in scene.at(t)) < 1.0
    assert scene.at(0.3) == scene.at(0.3)
    dt = 1e-3
    for t in times[:-1]:
        now, later = scene.at(t), scene.at(t + dt)
        assert len(now) == len(later)
        step = max(float(np.linalg.norm(_anchor(a) - _anchor(b))) for a, b in zip(now, later))
        assert step < 0.01  # no primitive jumps: under 10 units per clip at the fastest point
    cams = orbit_cameras(torch.tensor([45.0]), 20.0, 4.0, FOV, 48, 48, times=torch.tensor([0.5]))
    assert float(render_scene(name, cams, supersample=1)[1].mean()) > 0.02


def test_windmill_repeats_after_a_full_turn_and_its_blades_differ_in_colour():
    period = 1.0 / WINDMILL_TURNS  # one full turn of the rotor
    assert period <= 1.0  # at least one full turn over the clip
    t0 = 0.1
    times = torch.tensor([t0, t0 + period, t0 + period / 4, t0 + period / 2, t0 + period / 8], dtype=torch.float64)
    for az, el in ((30.0, 10.0), (200.0, 35.0)):
        cams = orbit_cameras(torch.full((5,), az), torch.full((5,), el), 4.0, FOV, 40, 40, times=times)
        rgb, alpha = render_scene("windmill", cams, supersample=2)
        torch.testing.assert_close(rgb[1], rgb[0], atol=1e-5, rtol=0)  # a full turn later: the same image
        torch.testing.assert_close(alpha[1], alpha[0], atol=0, rtol=0)
        for i in (2, 3):  # a quarter and a half turn: the same silhouette (four equal blades), other colours
            torch.testing.assert_close(alpha[i], alpha[0], atol=0, rtol=0)
            assert float((rgb[i] - rgb[0]).abs().max()) > 0.2
        assert float((alpha[4] - alpha[0]).abs().mean()) > 0.005  # an eighth of a turn: the blades are elsewhere


def test_walker_travels_its_own_height_while_its_legs_bend():
    scene = SCENES["walker"]

    def centroid(t: float) -> np.ndarray:
        return np.mean([_anchor(p) for p in scene.at(t)], axis=0)

    def height(t: float) -> float:
        tops, bottoms = [], []
        for p in scene.at(t):
            zs = [p.start[2], p.end[2]] if isinstance(p, Capsule) else [p.center[2]]
            tops.append(max(zs) + p.radius)
            bottoms.append(min(zs) - p.radius)
        return max(tops) - min(bottoms)

    travel = centroid(1.0) - centroid(0.0)
    assert np.linalg.norm(travel) >= 0.9 * height(0.0) > 0.8
    xs = [centroid(t)[0] for t in np.linspace(0.0, 1.0, 21)]
    assert np.all(np.diff(xs) > 0)  # always forwards
    # the limbs: per side a thigh, a shin and an arm after torso, head and nose
    knees, hips = [], []
    for t in np.linspace(0.0, 1.0, 101):
        prims = scene.at(t)
        left_thigh, left_shin, right_thigh = prims[3], prims[4], prims[6]
        assert np.allclose(left_thigh.end, left_shin.start)  # jointed at the knee
        knees.append(_angle_deg(_direction(left_thigh), _direction(left_shin)))
        down = np.array([0.0, 0.0, -1.0])
        hips.append((_angle_deg(_direction(left_thigh), down), _angle_deg(_direction(right_thigh), down)))
    assert max(knees) - min(knees) > 40.0
    assert max(h for h, _ in hips) > 20.0 and max(h for _, h in hips) > 20.0


def test_chain_joint_angles_are_a_travelling_wave():
    scene = SCENES["chain"]

    def joint_angles(t: float) -> np.ndarray:
        segments = [p for p in scene.at(t) if isinstance(p, Capsule)]
        for a, b in zip(segments, segments[1:]):
            assert np.allclose(a.end, b.start)  # connected
        return np.array([_angle_deg(_direction(a), _direction(b)) for a, b in zip(segments, segments[1:])])

    segments = [p for p in scene.at(0.0) if isinstance(p, Capsule)]
    assert 6 <= len(segments) <= 8 and len({p.albedo for p in segments}) == len(segments)  # colour-coded
    angles = np.stack([joint_angles(t) for t in np.linspace(0.0, 1.0, 51)])
    assert angles.max() > 30.0 and (angles.max(0) - angles.min(0)).min() > 15.0  # every joint bends, and unbends
    # A wave travelling from head to tail: joint k + 1 at t + 0.1 bends as joint k at t.
    for t in (0.0, 0.23, 0.61):
        np.testing.assert_allclose(joint_angles(t + 0.1)[1:], joint_angles(t)[:-1], atol=1e-6)
    assert np.abs(joint_angles(0.23)[1:] - joint_angles(0.23)[:-1]).max() > 5.0  # not the same bend everywhere


# ---------------------------------------------------------------------------------------- monocular layout
def test_monocular_plan_has_one_camera_per_time():
    plans = plan_monocular_views(100, 20, 4, seed=0)
    train = plans["train"]
    assert len(train.times) == 100 and len(np.unique(train.times)) == 100
    np.testing.assert_allclose(train.times, np.linspace(0.0, 1.0, 100))
    assert len(np.unique(np.round(train.azimuths_deg, 6))) == 100  # a new camera every frame
    assert train.azimuths_deg.min() >= 0.0 and train.azimuths_deg.max() < 360.0
    assert np.ptp(train.azimuths_deg) > 300.0 and np.ptp(train.elevations_deg) > 35.0  # spread over the band
    assert ELEVATION_RANGE_DEG[0] <= train.elevations_deg.min() and train.elevations_deg.max() <= ELEVATION_RANGE_DEG[1]
    for split, count in (("test", 20), ("val", 4)):
        plan = plans[split]
        assert len(plan.times) == count and np.all(np.diff(plan.times) > 0)  # distinct, in time order
        gaps = np.abs(plan.times[:, None] - train.times[None, :]).min(axis=1)
        np.testing.assert_allclose(gaps, 0.5 / 99, atol=1e-12)  # half-way between training times
    assert not np.allclose(plans["test"].azimuths_deg[:4], plans["val"].azimuths_deg)
    again = plan_monocular_views(100, 20, 4, seed=0)
    assert all(np.array_equal(getattr(again[s], f), getattr(plans[s], f)) for s in plans for f in ("azimuths_deg", "elevations_deg", "times"))
    other = plan_monocular_views(100, 20, 4, seed=1)
    assert not np.allclose(other["train"].azimuths_deg, train.azimuths_deg)
    # more test views than gaps between training times: every gap is used before any repeats
    many = plan_monocular_views(4, 7, 4, seed=2)["test"].times
    assert set(np.round(many * 3 - 0.5).astype(int)) == {0, 1, 2} and len(many) == 7
    assert plan_monocular_views(1, 3, 3)["test"].times.tolist() == [0.5, 0.5, 0.5]


def test_written_monocular_scene(tmp_path: Path):
    out = write_synthetic_scene("windmill", tmp_path / "mono", resolution=16, train_times=8, test_views=3, supersample=1, layout="monocular")
    info = json.loads((out / "synthetic.json").read_text())
    assert info["layout"] == "monocular" and info["train_views"] == 1 and info["train_times"] == 8
    scene = read_dnerf_scene(out)
    train, test, val = scene["train"], scene["test"], scene["val"]
    assert (len(train), len(test), len(val)) == (8, 3, 3)
    assert train.times.tolist() == pytest.approx(np.linspace(0.0, 1.0, 8).tolist())  # exactly one frame per time
    assert len(torch.unique(train.times)) == 8
    centres = train.cameras.centers.double()
    assert torch.cdist(centres, centres).add(torch.eye(8) * 10).min() > 0.05  # every frame from its own camera
    for split in (test, val):
        for cam, t in zip(split.cameras.centers.double(), split.times.tolist()):
            same_time = torch.isclose(train.times.double(), torch.tensor(t, dtype=torch.float64), atol=1e-6)
            assert not same_time.any()  # never a training time, so never a training (camera, time)
            same_camera = (centres - cam).norm(dim=-1) < 1e-4
            assert not (same_time & same_camera).any()
    rgb, alpha = render_scene("windmill", test.cameras, supersample=1)
    torch.testing.assert_close(test.images, rgb + (1 - alpha), atol=1.0 / 255 + 1e-6, rtol=0)


def test_default_layout_is_multiview(tiny_scene: Path, tmp_path: Path):
    assert json.loads((tiny_scene / "synthetic.json").read_text())["layout"] == "multiview"
    again = write_synthetic_scene("jumping_jacks", tmp_path / "mv", resolution=24, train_views=3, train_times=2, test_views=2, seed=3, layout="multiview")
    for name in ("transforms_train.json", "transforms_test.json", "transforms_val.json", "train/r_005.png", "test/r_001.png"):
        assert (again / name).read_bytes() == (tiny_scene / name).read_bytes()
    with pytest.raises(Gen4DError, match="layout must be one of multiview, monocular"):
        write_synthetic_scene("jumping_jacks", tmp_path / "bad", layout="stereo")
