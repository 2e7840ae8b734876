"""UV-textured meshes: the triangle rasterizer against ray-plane intersections, texture baking, OBJ/MTL/PNG and the
textured animated GLB read back by independent readers, and texture training through the renderer."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from test_export import require_validator

from gen4d.cameras import orbit_cameras
from gen4d.export.animated_glb import write_animated_glb
from gen4d.export.mesh import Mesh
from gen4d.export.texture import bake_texture, save_textured_sequence, textured_mesh, unwrap
from gen4d.export.validate import validate_gltf
from gen4d.gaussians.model import GaussianModel
from gen4d.render.mesh import TexturedMesh, project, rasterize_triangles, sample_texture
from gen4d.scene import Scene4D


def _sphere(subdivisions: int = 3) -> Mesh:
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.6)
    v = s.vertices.astype(np.float32)
    colours = (0.5 + 0.4 * v / 0.6).astype(np.float32)  # colour linear in position
    return Mesh(v, s.faces.astype(np.int64), colours)


def test_rasterizer_matches_ray_plane_intersections():
    """A tilted quad seen in perspective: covered pixels and perspective-correct UVs against the analytic hit of
    each pixel centre's ray with the quad's plane."""
    corners = np.array([[-0.5, -0.4, 0.3], [0.5, -0.4, -0.3], [0.5, 0.4, -0.3], [-0.5, 0.4, 0.3]], np.float32)
    uvs = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    cam = orbit_cameras(torch.tensor([20.0]), 10.0, 2.5, math.radians(45.0), 48, 40)
    xy, z = project(torch.from_numpy(corners), cam.viewmats[0], cam.Ks[0])
    face, bary = rasterize_triangles(xy.numpy(), 1.0 / z.numpy(), z.numpy(), faces, 40, 48)
    assert (face >= 0).sum() > 300
    # analytic: ray through the pixel centre, intersected with the quad's plane, expressed in the quad's (u, v)
    K, V = cam.Ks[0].double().numpy(), cam.viewmats[0].double().numpy()
    c = corners.astype(np.float64) @ V[:3, :3].T + V[:3, 3]  # camera-space corners
    o, eu, ev = c[0], c[1] - c[0], c[3] - c[0]
    n = np.cross(eu, ev)
    ys, xs = np.mgrid[0:40, 0:48] + 0.5
    rays = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs)], -1)
    hit = rays * ((o @ n) / (rays @ n))[..., None]
    rel = hit - o
    u_true = rel @ eu / (eu @ eu)
    v_true = rel @ ev / (ev @ ev)
    inside = (u_true > 0.02) & (u_true < 0.98) & (v_true > 0.02) & (v_true < 0.98)
    outside = (u_true < -0.02) | (u_true > 1.02) | (v_true < -0.02) | (v_true > 1.02)
    assert (face[inside] >= 0).all() and (face[outside] < 0).all()
    uv = (bary[..., None] * uvs[faces[np.maximum(face, 0)]]).sum(-2)
    assert np.abs(uv[inside] - np.stack([u_true, v_true], -1)[inside]).max() < 1e-6
    depth_true = hit[..., 2]
    depth = (bary * z.numpy()[faces[np.maximum(face, 0)]]).sum(-1)
    assert np.abs(depth[inside] - depth_true[inside]).max() < 1e-5


def test_nearest_surface_wins():
    """Two parallel triangles: the nearer one covers the pixels they share, whatever their order."""
    tri = torch.tensor([[-0.5, -0.5, 2.5], [0.5, -0.5, 2.5], [0.0, 0.5, 2.5]])  # camera space, facing the camera
    cam = orbit_cameras(torch.tensor([30.0]), 10.0, 2.5, math.radians(40.0), 32, 32)
    c2w = cam.c2w[0]
    verts = torch.cat([tri + torch.tensor([0.0, 0.0, 0.2]), tri - torch.tensor([0.0, 0.0, 0.2])]) @ c2w[:3, :3].T + c2w[:3, 3]
    xy, z = project(verts, cam.viewmats[0], cam.Ks[0])
    for faces in (np.array([[0, 1, 2], [3, 4, 5]]), np.array([[3, 4, 5], [0, 1, 2]])):
        face, _ = rasterize_triangles(xy.numpy(), 1.0 / z.numpy(), z.numpy(), faces, 32, 32)
        near = int(np.argmin([z.numpy()[f].mean() for f in faces]))
        covered = face[face >= 0]
        assert covered.size > 50 and (covered == near).mean() > 0.95


def test_baked_texture_reproduces_vertex_colours_and_survives_obj(tmp_path):
    mesh = _sphere()
    source, faces, uvs = unwrap(mesh, 256)
    assert np.array_equal(np.sort(np.unique(source)), np.arange(len(mesh.vertices)))  # every vertex kept (seams split)
    assert np.allclose(mesh.vertices[source][faces], mesh.vertices[mesh.faces], atol=1e-6)  # same triangles
    texture = bake_texture(Mesh(mesh.vertices[source], faces, mesh.colors[source]), mesh.vertices[source], faces, uvs, (256, 256))
    at_vertices = sample_texture(texture, torch.from_numpy(uvs))
    assert (at_vertices - torch.from_numpy(mesh.colors[source])).abs().max() < 0.02
    # written as OBJ + MTL + PNG and read back by trimesh (its own UV convention: OBJ's v up)
    tm = TexturedMesh(torch.from_numpy(mesh.vertices[source]), torch.from_numpy(faces), torch.from_numpy(uvs), texture)
    paths = save_textured_sequence(tmp_path, tm, np.stack([tm.vertices.numpy(), tm.vertices.numpy() + 0.1]))
    assert {p.rsplit("/", 1)[1] for p in paths} >= {"material.mtl", "frame_0000.obj", "frame_0001.obj"}
    back = trimesh.load(str(tmp_path / "frame_0001.obj"), process=False, force="mesh")
    assert np.allclose(back.vertices, tm.vertices.numpy() + 0.1, atol=1e-6)
    colours = back.visual.to_color().vertex_colors[:, :3] / 255.0
    assert np.abs(colours - mesh.colors[source]).max() < 0.03


def test_simplified_mesh_keeps_the_colour_field():
    """A dense surface is simplified before unwrapping; its texture still holds the dense surface's colours (linear in
    position here) at every texel of the simplified surface."""
    mesh = _sphere(5)  # 20480 faces
    tm = textured_mesh(mesh, 128, max_faces=2000)
    assert len(tm.faces) <= 2000
    face, bary = rasterize_triangles(tm.uvs.numpy() * 128, np.ones(len(tm.uvs)), np.zeros(len(tm.uvs)), tm.faces.numpy(), 128, 128)
    inside = face >= 0
    points = (bary[inside][..., None] * tm.vertices.numpy()[tm.faces.numpy()[face[inside]]]).sum(1)
    texels = tm.texture().detach().numpy()[inside]
    assert np.abs(texels - (0.5 + 0.4 * points / 0.6)).mean() < 0.01


def test_textured_render_matches_vertex_colour_field_and_trains_a_texture():
    """The render of a baked sphere shows the colour of the surface point under each pixel (colour linear in
    position); a texture started flat and trained through the renderer against renders of the baked one reaches
    them at a view it never saw."""
    mesh = _sphere(4)
    tm = textured_mesh(mesh, 48)
    cams = orbit_cameras(torch.arange(0.0, 360.0, 60.0), 15.0, 2.5, math.radians(40.0), 40, 40)
    with torch.no_grad():
        rgb, alpha = tm.render(tm.vertices, cams, torch.ones(3))
    assert set(alpha.unique().tolist()) <= {0.0, 1.0} and alpha.mean() > 0.2
    # colour at each covered pixel vs the colour formula at the ray's hit on the sphere (radius ~0.6, polyhedral)
    K, V = cams.Ks[0].double(), cams.viewmats[0].double()
    ys, xs = torch.meshgrid(torch.arange(40) + 0.5, torch.arange(40) + 0.5, indexing="ij")
    d_cam = torch.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], torch.ones_like(xs)], -1).double()
    R, t = V[:3, :3], V[:3, 3]
    origin = -R.T @ t
    d = torch.nn.functional.normalize(d_cam @ R, dim=-1)  # world directions
    b = (d * origin).sum(-1)
    disc = b * b - (origin @ origin - 0.6**2)
    hit = origin + d * (-b - disc.clamp_min(0).sqrt())[..., None]
    interior = (disc > 0.02) & (alpha[0, ..., 0] > 0)
    expected = 0.5 + 0.4 * hit / 0.6
    assert (rgb[0][interior].double() - expected[interior]).abs().mean() < 0.02

    target = rgb.detach()
    student = TexturedMesh(tm.vertices, tm.faces, tm.uvs, torch.full_like(tm.texture(), 0.5))
    opt = torch.optim.Adam([student.logits], lr=0.2)  # DreamGaussian4D's texture_lr
    for _ in range(40):
        opt.zero_grad()
        out, _ = student.render(student.vertices, cams, torch.ones(3))
        (out - target).square().mean().backward()
        opt.step()
    held = orbit_cameras(torch.tensor([30.0]), 0.0, 2.5, math.radians(40.0), 40, 40)
    with torch.no_grad():
        want, _ = tm.render(tm.vertices, held, torch.ones(3))
        got, _ = student.render(student.vertices, held, torch.ones(3))
        flat, _ = TexturedMesh(tm.vertices, tm.faces, tm.uvs, torch.full_like(tm.texture(), 0.5)).render(tm.vertices, held, torch.ones(3))
    err, err0 = (got - want).square().mean(), (flat - want).square().mean()
    assert err < 0.1 * err0


def test_textured_animated_glb_reads_back_and_validates(tmp_path):
    pygltflib = pytest.importorskip("pygltflib")
    tm = textured_mesh(_sphere(2), 64)
    verts = np.stack([tm.vertices.numpy() * s for s in (1.0, 1.1, 1.2)])
    png = io.BytesIO()
    Image.fromarray((tm.texture().detach().numpy() * 255).round().astype(np.uint8)).save(png, format="PNG")
    path = tmp_path / "anim.glb"
    write_animated_glb(path, verts, tm.faces.numpy(), None, fps=10, uvs=tm.uvs.numpy(), texture_png=png.getvalue())
    gltf = pygltflib.GLTF2().load_binary(str(path))
    blob = gltf.binary_blob()
    prim = gltf.meshes[0].primitives[0]
    acc = gltf.accessors[prim.attributes.TEXCOORD_0]
    view = gltf.bufferViews[acc.bufferView]
    uv = np.frombuffer(blob[view.byteOffset: view.byteOffset + view.byteLength], "<f4").reshape(-1, 2)
    assert np.array_equal(uv, tm.uvs.numpy()) and prim.attributes.COLOR_0 is None
    img_view = gltf.bufferViews[gltf.images[0].bufferView]
    img = Image.open(io.BytesIO(blob[img_view.byteOffset: img_view.byteOffset + img_view.byteLength]))
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(png.getvalue()))))
    assert gltf.materials[0].pbrMetallicRoughness.baseColorTexture.index == 0
    with pytest.raises(ValueError):
        write_animated_glb(path, verts, tm.faces.numpy(), None, fps=10)
    require_validator()
    report = validate_gltf(path)
    assert report["issues"]["numErrors"] == 0, json.dumps(report["issues"]["messages"], indent=1)


def test_scene_checkpoint_keeps_its_textured_mesh():
    g = torch.Generator().manual_seed(0)
    scene = Scene4D(GaussianModel.random_in_sphere(50, 0.5, 0, g))
    scene.mesh = textured_mesh(_sphere(1), 32)
    with torch.no_grad():
        scene.mesh.logits.add_(0.3)
    back = Scene4D.from_tensors(scene.tensors(), 0, None)
    assert back.mesh is not None
    assert all(torch.equal(a, b) for a, b in zip(scene.mesh.tensors().values(), back.mesh.tensors().values()))
