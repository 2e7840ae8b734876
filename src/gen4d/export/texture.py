"""UV-textured meshes from Gaussians: xatlas atlas, texture baked from the Gaussians' colours, OBJ + MTL + PNG.

A textured mesh is made once, at the reference time: the coloured iso-surface of :func:`~gen4d.export.mesh.extract_mesh`
is cut into charts and packed into one atlas by xatlas (vertices on a seam are split, so vertex ``i`` of the result
is vertex ``source[i]`` of the surface); each texel covered by a chart takes the colour of its surface point,
interpolated from the corner colours with the texel centre's barycentrics; texels outside every chart take their
nearest chart's colour (a few texels of dilation) so bilinear lookups at chart borders do not pull in the empty
background. Every exported frame shares the atlas and the texture; the vertices move with the Gaussians.

DreamGaussian4D bakes its texture by projecting Gaussian renders from 8 views onto the mesh; here the colours come
from the same density-weighted Gaussian colours as the vertex colours of the plain meshes (no renderer needed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
import xatlas
from PIL import Image
from torch import Tensor

from ..files import atomic_path
from ..render.mesh import TexturedMesh, rasterize_triangles
from .mesh import Mesh, knn

DILATION = 4
"""Texels of colour spread outward from every chart."""
MAX_FACES = 20000
"""Faces of the textured mesh: denser iso-surfaces are simplified first. xatlas's chart search grows faster than
linearly (an 82k-face sphere: 47-95 s on 2 cores, against 2.3 s for 20k faces); the texture keeps the detail."""


def unwrap(mesh: Mesh, texture_size: int, padding: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed into about ``texture_size`` texels with ``padding`` texels between charts.
    Returns ``source [V'] (vertex of mesh)``, ``faces [Fc, 3]`` (into the new vertices, same order as ``mesh.faces``)
    and ``uvs [V', 2]`` in [0, 1] (origin top-left, v down)."""
    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    source, faces, uvs = atlas[0]
    return source.astype(np.int64), faces.astype(np.int64), uvs.astype(np.float32)


def dilate(texture: Tensor, covered: Tensor, steps: int = DILATION) -> Tensor:
    """Spread colours ``[H, W, C]`` from ``covered [H, W]`` texels into their empty neighbours, ``steps`` rings (each
    new texel: the mean of its covered 3x3 neighbours)."""
    tex = (texture * covered[..., None]).permute(2, 0, 1)[None]
    mask = covered.to(texture.dtype)[None, None]
    kernel = torch.ones(1, 1, 3, 3, dtype=texture.dtype)
    for _ in range(steps):
        total = F.conv2d(tex, kernel.expand(tex.shape[1], 1, 3, 3), padding=1, groups=tex.shape[1])
        count = F.conv2d(mask, kernel, padding=1)
        grow = (mask == 0) & (count > 0)
        tex = torch.where(grow, total / count.clamp_min(1.0), tex)
        mask = torch.where(grow, torch.ones_like(mask), mask)
    return tex[0].permute(1, 2, 0)


def bake_texture(surface: Mesh, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, size: tuple[int, int],
                 colours_from: Mesh | None = None) -> Tensor:
    """``[H, W, 3]`` texture of an unwrapped ``surface`` (``vertices [V', 3]``, ``faces``, ``uvs``: :func:`unwrap`'s
    output applied), then :func:`dilate`. A texel centre inside a chart gets the colour of its surface point: its
    triangle's corner colours blended with its barycentrics, or, with ``colours_from`` (the denser mesh a simplified
    ``surface`` came from), the inverse-distance blend of that mesh's 4 nearest vertex colours."""
    H, W = size
    face, bary = rasterize_triangles(uvs * np.array([W, H]), np.ones(len(uvs)), np.zeros(len(uvs)), faces, H, W)
    covered = torch.from_numpy(face >= 0)
    corners = torch.from_numpy(faces[face[face >= 0]])  # [P, 3] vertex ids of each covered texel's triangle
    b = torch.from_numpy(bary[face >= 0])[..., None]  # [P, 3, 1]
    if colours_from is None:
        colours = (b * torch.from_numpy(surface.colors).double()[corners]).sum(dim=1)
    else:
        points = (b * torch.from_numpy(vertices).double()[corners]).sum(dim=1).float()
        dist, nearest = knn(points, torch.from_numpy(colours_from.vertices), 4)
        w = 1.0 / (dist.double() + 1e-8)
        colours = ((w / w.sum(dim=1, keepdim=True))[..., None] * torch.from_numpy(colours_from.colors).double()[nearest]).sum(dim=1)
    texture = torch.zeros(H, W, 3, dtype=torch.float64)
    texture[covered] = colours
    return dilate(texture, covered).clamp(0.0, 1.0).float()


def simplify(mesh: Mesh, max_faces: int) -> Mesh:
    """``mesh`` with at most about ``max_faces`` faces (quadric edge collapse, trimesh + fast-simplification); its vertex
    colours: the nearest original vertex's. Returned unchanged when it is small enough."""
    if len(mesh.faces) <= max_faces:
        return mesh
    small = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).simplify_quadric_decimation(face_count=max_faces)
    vertices = np.asarray(small.vertices, dtype=np.float32)
    _, nearest = knn(torch.from_numpy(vertices), torch.from_numpy(mesh.vertices), 1)
    return Mesh(vertices, np.asarray(small.faces, dtype=np.int64), mesh.colors[nearest[:, 0].numpy()])


def textured_mesh(mesh: Mesh, texture_size: int, max_faces: int = MAX_FACES) -> TexturedMesh:
    """The :class:`TexturedMesh` of a coloured surface: simplified to ``max_faces`` (:func:`simplify`), cut into an atlas
    (:func:`unwrap`), its texture baked from the full surface's colours (:func:`bake_texture`)."""
    surface = simplify(mesh, max_faces)
    source, faces, uvs = unwrap(surface, texture_size)
    vertices = surface.vertices[source]
    texture = bake_texture(Mesh(vertices, faces, surface.colors[source]), vertices, faces, uvs, (texture_size, texture_size),
                           colours_from=mesh if surface is not mesh else None)
    return TexturedMesh(torch.from_numpy(vertices), torch.from_numpy(faces), torch.from_numpy(uvs), texture)


def texture_image(tm: TexturedMesh) -> Image.Image:
    return Image.fromarray(np.round(tm.texture().detach().cpu().numpy() * 255.0).astype(np.uint8))


def save_textured_sequence(folder: Path, tm: TexturedMesh, vertices_per_frame: np.ndarray) -> list[str]:
    """``folder/frame_XXXX.obj`` per frame (trimesh's OBJ writer), all sharing one ``material.mtl`` and its PNG."""
    white, black = [255, 255, 255, 255], [0, 0, 0, 255]
    material = trimesh.visual.material.SimpleMaterial(image=texture_image(tm), diffuse=white, ambient=white, specular=black)
    faces = tm.faces.cpu().numpy()
    uv_obj = tm.uvs.cpu().numpy().copy()
    uv_obj[:, 1] = 1.0 - uv_obj[:, 1]  # OBJ's v points up
    paths = []
    for i, verts in enumerate(vertices_per_frame):
        mesh = trimesh.Trimesh(vertices=verts, faces=faces, visual=trimesh.visual.TextureVisuals(uv=uv_obj, material=material), process=False)
        body, files = trimesh.exchange.obj.export_obj(
            mesh, include_normals=False, include_color=False, include_texture=True, write_texture=False, return_texture=True,
            mtl_name="material.mtl",
        )
        if i == 0:  # the material and its texture are the same for every frame
            for name, data in files.items():
                with atomic_path(folder / name) as tmp:
                    tmp.write_bytes(data)
                paths.append(str(folder / name))
        path = folder / f"frame_{i:04d}.obj"
        with atomic_path(path) as tmp:
            tmp.write_text(body)
        paths.append(str(path))
    return paths


def load_textured_obj(path: str | os.PathLike) -> trimesh.Trimesh:
    """Read an exported frame back (with its material and texture), as viewers do."""
    return trimesh.load(str(path), process=False, force="mesh")
