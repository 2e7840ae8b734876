"""Exports: INRIA PLY, meshes from Gaussians, animated GLB (morph targets), videos."""

from __future__ import annotations

import json
import math
import shutil
import struct

import numpy as np
import pytest
import torch
import trimesh
from plyfile import PlyData

from gen4d import Gen4DError
from gen4d.cameras import quat_to_rotmat
from gen4d.data.videos import read_video
from gen4d.export.animated_glb import read_animated_glb, write_animated_glb
from gen4d.export.mesh import Mesh, density_grid, extract_mesh, knn, save_glb, save_obj, skin_to_gaussians
from gen4d.export.ply import inria_property_names, load_inria_ply, save_inria_ply
from gen4d.export.validate import tools_dir, validate_gltf, validator_installed
from gen4d.export.video import write_gif, write_video
from gen4d.gaussians.frame import GaussianFrame
from gen4d.sh import rgb_to_sh0


def random_frame(n: int, degree: int) -> GaussianFrame:
    k = (degree + 1) ** 2
    return GaussianFrame(
        means=torch.randn(n, 3),
        quats=torch.randn(n, 4),
        scales=torch.rand(n, 3) * 0.1 + 0.01,
        opacities=torch.rand(n) * 0.98 + 0.01,
        sh=torch.randn(n, k, 3),
    )


def single_gaussian(mean, scales, opacity, rgb, quat=(1.0, 0.0, 0.0, 0.0)) -> GaussianFrame:
    return GaussianFrame(
        means=torch.tensor([mean], dtype=torch.float32),
        quats=torch.tensor([quat], dtype=torch.float32),
        scales=torch.tensor([scales], dtype=torch.float32),
        opacities=torch.tensor([opacity], dtype=torch.float32),
        sh=rgb_to_sh0(torch.tensor([rgb], dtype=torch.float32))[:, None, :],
    )


def require_validator() -> None:
    """Skip only when Node.js is absent; with Node but without the npm package, fail loudly."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: cannot run the Khronos glTF validator")
    if not validator_installed():
        pytest.fail(f"the glTF validator is not installed in {tools_dir()}: run `npm install --prefix tools`")


# ----------------------------------------------------------------------------------------------------------- PLY
@pytest.mark.parametrize("degree", [0, 3])
def test_inria_ply_round_trip(tmp_path, degree):
    frame = random_frame(50, degree)
    path = tmp_path / "sub" / "g.ply"
    save_inria_ply(path, frame)
    assert not [p for p in path.parent.iterdir() if p.name != "g.ply"], "temporary file left behind"

    back = load_inria_ply(path)
    for name, a, b in zip(["means", "quats", "scales", "opacities", "sh"], frame.tensors(), back.tensors()):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    assert back.sh_degree == degree

    ply = PlyData.read(str(path))
    assert not ply.text and ply.byte_order == "<"
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    k = (degree + 1) ** 2
    expected = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * (k - 1))]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    assert names == expected == inria_property_names(k)
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in names)
    raw = vertex.data
    assert np.allclose(raw["opacity"], torch.logit(frame.opacities.double()).numpy(), atol=1e-4)
    assert np.allclose(raw["scale_1"], torch.log(frame.scales[:, 1]).numpy(), atol=1e-5)
    assert np.allclose(raw["rot_0"], frame.quats[:, 0].numpy())  # w first
    if degree > 0:
        # Channel-major f_rest: index c * (K - 1) + (k - 1).
        c, j = 2, 5
        assert np.allclose(raw[f"f_rest_{c * (k - 1) + (j - 1)}"], frame.sh[:, j, c].numpy())


def test_load_ply_rejects_non_gaussian_file(tmp_path):
    path = tmp_path / "mesh.ply"
    trimesh.creation.box().export(path)
    with pytest.raises(Gen4DError, match="missing vertex properties"):
        load_inria_ply(path)
    with pytest.raises(Gen4DError, match="not found"):
        load_inria_ply(tmp_path / "absent.ply")


# ---------------------------------------------------------------------------------------------------------- mesh
def test_density_grid_matches_direct_formula():
    q = torch.nn.functional.normalize(torch.tensor([0.9, 0.3, -0.2, 0.4]), dim=0)
    frame = single_gaussian([0.1, -0.05, 0.2], [0.3, 0.12, 0.05], 0.7, [0.5, 0.5, 0.5], quat=q.tolist())
    R = 33
    bmin, bmax = torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([1.0, 1.0, 1.0])
    grid = density_grid(frame, R, bmin, bmax)
    assert grid.shape == (R, R, R)

    rot = quat_to_rotmat(q.double())
    cov = rot @ torch.diag(torch.tensor([0.3, 0.12, 0.05], dtype=torch.float64) ** 2) @ rot.T
    prec = torch.linalg.inv(cov)
    step = (bmax - bmin).double() / (R - 1)
    mu = frame.means[0].double()
    checked = 0
    for idx in [(17, 16, 19), (18, 16, 19), (20, 14, 19), (15, 15, 19), (16, 16, 20), (19, 17, 18)]:
        p = bmin.double() + torch.tensor(idx, dtype=torch.float64) * step
        d = p - mu
        maha = float(d @ prec @ d)
        if maha > 9:  # only points inside the 3-sigma ellipsoid are guaranteed to be inside the truncation box
            continue
        expected = 0.7 * math.exp(-0.5 * maha)
        assert float(grid[idx]) == pytest.approx(expected, rel=1e-4, abs=1e-6), idx
        checked += 1
    assert checked >= 4
    # Far outside the truncation box nothing is accumulated.
    assert float(grid[0, 0, 0]) == 0.0
    # The grid holds one Gaussian: its total mass matches the analytic integral o * (2 pi)^1.5 * sx sy sz.
    mass = float(grid.double().sum()) * float(step.prod())
    assert mass == pytest.approx(0.7 * (2 * math.pi) ** 1.5 * 0.3 * 0.12 * 0.05, rel=0.05)


def test_extract_mesh_single_gaussian_sphere(tmp_path):
    sigma, opacity, threshold = 0.3, 0.9, 0.2
    rgb = [0.8, 0.3, 0.1]
    center = np.array([0.2, -0.1, 0.5], dtype=np.float32)
    frame = single_gaussian(center.tolist(), [sigma] * 3, opacity, rgb)
    mesh = extract_mesh(frame, resolution=48, threshold=threshold)

    assert mesh.vertices.dtype == np.float32 and mesh.vertices.shape[1] == 3
    assert mesh.faces.shape[1] == 3 and mesh.colors.shape == mesh.vertices.shape
    radius = sigma * math.sqrt(2 * math.log(opacity / threshold))
    # Default bounds: a cube of half side 3 sigma around the single mean; 48 points per axis.
    voxel = 2 * 3 * sigma / 47
    r = np.linalg.norm(mesh.vertices - center, axis=1)
    assert np.all(np.abs(r - radius) < voxel), (r.min(), r.max(), radius)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight
    assert mesh.signed_volume() > 0  # outward orientation
    assert mesh.signed_volume() == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.05)
    assert np.allclose(mesh.colors, np.array(rgb, dtype=np.float32), atol=1e-4)

    obj = tmp_path / "m.obj"
    save_obj(obj, mesh)
    back = trimesh.load(obj, process=False, force="mesh")
    assert len(back.vertices) == len(mesh.vertices) and len(back.faces) == len(mesh.faces)
    assert np.allclose(back.visual.vertex_colors[:, :3] / 255.0, rgb, atol=1 / 255)

    glb = tmp_path / "m.glb"
    save_glb(glb, mesh)
    back = trimesh.load(glb, process=False, force="mesh")
    assert len(back.vertices) == len(mesh.vertices)
    if shutil.which("node") is not None and validator_installed():
        issues = validate_gltf(glb)["issues"]
        assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]


def test_extract_mesh_flips_to_outward_and_caps_at_bounds():
    # A Gaussian cut by explicit bounds still yields a closed, outward mesh (capped by the zero border).
    frame = single_gaussian([0.0, 0.0, 0.0], [0.5, 0.5, 0.5], 0.95, [0.2, 0.4, 0.6])
    mesh = extract_mesh(frame, resolution=24, threshold=0.1, bounds=([0.0, -1.0, -1.0], [1.0, 1.0, 1.0]))
    assert trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).is_watertight
    assert mesh.signed_volume() > 0
    assert mesh.vertices[:, 0].min() >= -1e-6


def test_extract_mesh_empty_raises():
    faint = single_gaussian([0.0, 0.0, 0.0], [0.1, 0.1, 0.1], 0.05, [1.0, 1.0, 1.0])
    with pytest.raises(Gen4DError, match="threshold"):
        extract_mesh(faint, resolution=16, threshold=0.5)
    empty = GaussianFrame(torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 1, 3))
    with pytest.raises(Gen4DError):
        extract_mesh(empty)


def test_density_grid_many_gaussians_is_fast_and_consistent():
    import time

    frame = random_frame(20000, 0)
    frame.means = frame.means / frame.means.norm(dim=1, keepdim=True) * 0.5
    frame.scales = torch.rand(20000, 3) * 0.03 + 0.005
    bmin, bmax = torch.full((3,), -0.7), torch.full((3,), 0.7)
    start = time.perf_counter()
    grid = density_grid(frame, 64, bmin, bmax)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"density_grid took {elapsed:.1f} s"
    # Spot-check a few grid points against the brute-force sum over all Gaussians (inside 3 sigma).
    rot = quat_to_rotmat(frame.quats)
    prec = rot @ torch.diag_embed(1 / frame.scales**2) @ rot.transpose(1, 2)
    step = (bmax - bmin) / 63
    for idx in [(32, 32, 9), (9, 32, 32), (32, 55, 32), (20, 20, 52)]:
        d = bmin + torch.tensor(idx) * step - frame.means
        maha = torch.einsum("ni,nij,nj->n", d, prec, d)
        std = (rot**2 @ (frame.scales**2)[:, :, None])[..., 0].sqrt()
        inside = (d.abs() <= 3 * std).all(dim=1)  # the truncation box
        expected = float((frame.opacities * torch.exp(-0.5 * maha) * inside).sum())
        assert float(grid[idx]) == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_knn_matches_brute_force():
    points = torch.randn(3000, 3)
    query = torch.cat([torch.randn(3000, 3), torch.randn(20, 3) * 10])  # some far outliers
    d, i = knn(query, points, 5)
    d_ref, _ = (query[:, None] - points[None]).norm(dim=-1).topk(5, dim=1, largest=False)
    assert torch.allclose(d, d_ref, atol=1e-5)
    assert torch.allclose((query[:, None] - points[i]).norm(dim=-1), d_ref, atol=1e-5)


def test_skin_rigid_translation_moves_vertices_exactly():
    means = torch.randn(500, 3)
    verts = torch.randn(300, 3) * 0.8
    shifts = torch.tensor([[0.0, 0.0, 0.0], [0.5, -1.0, 2.0], [-3.0, 0.25, 0.0]])
    frames = means[None] + shifts[:, None, :]
    out = skin_to_gaussians(verts, means, frames, k=8)
    assert out.shape == (3, 300, 3)
    assert torch.allclose(out, verts[None] + shifts[:, None, :], atol=1e-5)


def test_skin_follows_local_motion():
    # Two clusters; only the right one moves: vertices near it follow, vertices near the left one stay.
    left = torch.randn(200, 3) * 0.1 + torch.tensor([-2.0, 0, 0])
    right = torch.randn(200, 3) * 0.1 + torch.tensor([2.0, 0, 0])
    means = torch.cat([left, right])
    moved = means.clone()
    moved[200:] += torch.tensor([0.0, 0.0, 1.0])
    verts = torch.tensor([[-2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    out = skin_to_gaussians(verts, means, moved[None], k=4)[0]
    assert torch.allclose(out[0], verts[0], atol=1e-6)
    assert torch.allclose(out[1], verts[1] + torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)


# -------------------------------------------------------------------------------------------------- animated GLB
def _animated_sequence(num_frames: int = 5):
    sphere = trimesh.creation.icosphere(subdivisions=2)
    base = sphere.vertices.astype(np.float32)
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    # Stretch along z and translate over time: every frame differs from the base.
    verts = base[None] * np.array([1.0, 1.0, 1.0], np.float32) + t * 0.1 * base[None] * np.array([0, 0, 1], np.float32)
    verts = verts + t * np.array([0.2, 0.0, -0.1], np.float32)
    colors = (sphere.vertices - sphere.vertices.min(0)) / np.ptp(sphere.vertices, axis=0)
    return verts.astype(np.float32), np.asarray(sphere.faces), colors.astype(np.float32)


def _pygltf_accessor(gltf, blob: bytes, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    ncomp = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc.type]
    dtype = {5126: np.float32, 5123: np.uint16, 5125: np.uint32}[acc.componentType]
    assert view.byteStride in (None, 0)  # tightly packed
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    assert start % 4 == 0
    arr = np.frombuffer(blob, dtype=dtype, count=acc.count * ncomp, offset=start)
    return arr.reshape(acc.count, ncomp) if ncomp > 1 else arr


def test_animated_glb_round_trip_and_validator(tmp_path):
    pygltflib = pytest.importorskip("pygltflib")
    verts, faces, colors = _animated_sequence(5)
    fps = 12.0
    path = tmp_path / "anim.glb"
    write_animated_glb(path, verts, faces, colors, fps=fps)

    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<III", data)
    assert (magic, version, length) == (0x46546C67, 2, len(data)) and len(data) % 4 == 0

    anim = read_animated_glb(path)
    assert anim.targets.shape == (4,) + verts.shape[1:]
    assert np.allclose(anim.base, verts[0])
    for k in range(1, 5):
        assert np.allclose(anim.base + anim.targets[k - 1], verts[k], atol=1e-6)
    assert np.allclose(anim.times, np.arange(5) / fps)
    expected_w = np.zeros((5, 4), np.float32)
    expected_w[np.arange(1, 5), np.arange(4)] = 1.0
    assert np.array_equal(anim.weights, expected_w)

    # Independent reader.
    gltf = pygltflib.GLTF2().load_binary(str(path))
    blob = gltf.binary_blob()
    prim = gltf.meshes[0].primitives[0]
    assert prim.mode == 4 and len(prim.targets) == 4
    base = _pygltf_accessor(gltf, blob, prim.attributes.POSITION)
    for k in range(1, 5):
        disp = _pygltf_accessor(gltf, blob, prim.targets[k - 1]["POSITION"])
        assert np.allclose(base + disp, verts[k], atol=1e-6)
    assert np.array_equal(_pygltf_accessor(gltf, blob, prim.indices).reshape(-1, 3), faces)
    assert np.allclose(_pygltf_accessor(gltf, blob, prim.attributes.COLOR_0), colors)
    normals = _pygltf_accessor(gltf, blob, prim.attributes.NORMAL)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    # On a sphere centred at the origin the outward normal points away from the centre.
    assert (np.einsum("ij,ij->i", normals, base) > 0).all()
    pos_acc = gltf.accessors[prim.attributes.POSITION]
    assert np.allclose(pos_acc.min, base.min(0)) and np.allclose(pos_acc.max, base.max(0))
    sampler = gltf.animations[0].samplers[0]
    channel = gltf.animations[0].channels[0]
    assert sampler.interpolation == "LINEAR" and channel.target.path == "weights" and channel.target.node == 0
    assert np.allclose(_pygltf_accessor(gltf, blob, sampler.input), np.arange(5) / fps)
    assert np.array_equal(_pygltf_accessor(gltf, blob, sampler.output).reshape(5, 4), expected_w)
    assert all(v.byteOffset % 4 == 0 for v in gltf.bufferViews)

    # glTF is y-up: a reader that applies the node's transform (trimesh) sees gen4d's +z as +y and its +y as -z.
    placed = trimesh.load(path, force="scene").to_geometry().vertices  # (x, y, z) -> (x, z, -y)
    assert np.allclose(placed, verts[0][:, [0, 2, 1]] * [1, 1, -1], atol=1e-6)
    assert np.allclose(anim.rotation, [-np.sqrt(0.5), 0, 0, np.sqrt(0.5)])

    require_validator()
    report = validate_gltf(path)
    assert report is not None
    issues = report["issues"]
    assert issues["numErrors"] == 0, json.dumps(issues["messages"], indent=1)
    assert issues["numWarnings"] == 0, json.dumps(issues["messages"], indent=1)


def test_validator_reports_broken_file(tmp_path):
    # The validator check must be able to fail: corrupt the POSITION accessor's max.
    verts, faces, colors = _animated_sequence(2)
    path = tmp_path / "anim.glb"
    write_animated_glb(path, verts, faces, colors, fps=10)
    require_validator()
    data = bytearray(path.read_bytes())
    json_len = struct.unpack_from("<I", data, 12)[0]
    gltf = json.loads(data[20 : 20 + json_len])
    gltf["accessors"][0]["max"] = [9.0, 9.0, 9.0]
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (json_len - len(text))
    assert len(text) == json_len
    data[20 : 20 + json_len] = text
    broken = tmp_path / "broken.glb"
    broken.write_bytes(bytes(data))
    report = validate_gltf(broken)
    assert report["issues"]["numErrors"] > 0
    assert any(m["code"] == "ACCESSOR_MAX_MISMATCH" for m in report["issues"]["messages"])


def test_animated_glb_single_frame_is_static(tmp_path):
    verts, faces, colors = _animated_sequence(1)
    path = tmp_path / "static.glb"
    write_animated_glb(path, verts, faces, colors, normals=False)
    anim = read_animated_glb(path)
    assert anim.targets.shape[0] == 0 and anim.times.shape == (0,)
    assert np.allclose(anim.base, verts[0])


def test_mesh_pipeline_to_animated_glb(tmp_path):
    # Gaussians -> mesh -> skinned frames -> one GLB, as the exporter chain uses it.
    frame = single_gaussian([0.0, 0.0, 0.0], [0.2, 0.3, 0.25], 0.9, [0.1, 0.7, 0.3])
    mesh = extract_mesh(frame, resolution=20, threshold=0.3)
    means_frames = frame.means[None] + torch.tensor([[[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.1]], [[0.0, 0.0, 0.2]]])
    verts = skin_to_gaussians(mesh.vertices, frame.means, means_frames, k=1).numpy()
    path = tmp_path / "seq.glb"
    write_animated_glb(path, verts, mesh.faces, mesh.colors, fps=24)
    anim = read_animated_glb(path)
    assert np.allclose(anim.targets[:, :, 2], np.array([0.1, 0.2], np.float32)[:, None], atol=1e-6)
    if shutil.which("node") is not None and validator_installed():
        assert validate_gltf(path)["issues"]["numErrors"] == 0


def test_mesh_dataclass_to_trimesh():
    mesh = Mesh(np.eye(3, dtype=np.float32), np.array([[0, 1, 2]]), np.full((3, 3), 0.5, np.float32))
    tm = mesh.to_trimesh()
    assert len(tm.vertices) == 3 and tuple(tm.visual.vertex_colors[0]) == (128, 128, 128, 255)


# --------------------------------------------------------------------------------------------------------- video
COLOURS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [128, 128, 128], [20, 200, 120]], dtype=np.uint8
)


def test_video_round_trip(tmp_path):
    frames = np.broadcast_to(COLOURS[:, None, None, :], (6, 32, 32, 3)).copy()
    path = tmp_path / "v.mp4"
    write_video(path, frames, fps=24)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    back = read_video(path)
    assert back.dtype == np.uint8 and back.shape == (6, 32, 32, 3)
    diff = np.abs(back.astype(int) - frames.astype(int))
    assert diff.max() <= 8, diff.reshape(6, -1).max(axis=1)


def test_video_odd_size_is_padded(tmp_path):
    frames = np.broadcast_to(COLOURS[:3, None, None, :], (3, 31, 33, 3)).copy()
    path = tmp_path / "odd.mp4"
    write_video(path, frames, fps=10)
    back = read_video(path)
    assert back.shape == (3, 32, 34, 3)
    assert np.abs(back[:, :31, :33].astype(int) - frames.astype(int)).max() <= 8


def test_gif_round_trip(tmp_path):
    frames = np.broadcast_to(COLOURS[:4, None, None, :], (4, 16, 20, 3)).copy()
    path = tmp_path / "a.gif"
    write_gif(path, frames, fps=10)
    back = read_video(path)
    assert back.shape == (4, 16, 20, 3)
    assert np.abs(back.astype(int) - frames.astype(int)).max() <= 8


def test_read_video_errors(tmp_path):
    with pytest.raises(Gen4DError, match="not found"):
        read_video(tmp_path / "none.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(Gen4DError):
        read_video(bad)
    with pytest.raises(ValueError):
        write_video(tmp_path / "f.mp4", np.zeros((2, 8, 8, 3), np.float32))
