"""Textured triangle meshes: a z-buffer rasterizer (numba, CPU) and texture sampling that is differentiable in the
texture (PyTorch, any device).

DreamGaussian4D refines the UV texture of its exported meshes through nvdiffrast, which pip cannot install without
a CUDA compiler. Its stage III trains the texture only (``train_geo: False``), so the renderer needs gradients
with respect to the texture alone: which triangle covers a pixel and where (visibility, no gradient) comes from
the rasterizer below; the colour is the texture sampled bilinearly at the interpolated UV (``grid_sample``), whose
gradient reaches every texel that contributes.

Conventions (those of :mod:`gen4d.cameras`): world-to-camera ``viewmats`` with OpenCV axes, intrinsics ``K`` in
pixels, pixel ``(i, j)`` covering ``[i, i + 1) x [j, j + 1)`` with its centre at ``+ 0.5``. UV coordinates have
their origin at the texture image's top-left corner, ``v`` pointing down (glTF's convention): texel row
``v * H``, column ``u * W``.

For a pixel centre ``p`` inside the projected triangle ``(a, b, c)`` the screen-space barycentrics are
``l_k = area(p, next two vertices) / area(a, b, c)``; the perspective-correct ones divide by each vertex's depth
``z_k``: ``b_k = (l_k / z_k) / sum_j (l_j / z_j)``. Attributes (UV, depth) are ``sum_k b_k attr_k``, the nearest
depth wins.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras

NEAR = 1e-3
"""Triangles with a vertex closer to the camera than this are skipped (the meshes sit in front of the camera)."""


@nb.njit(cache=True)
def _rasterize(xy, inv_z, depth, faces, height, width, face_out, bary_out, zbuf):  # pragma: no cover - compiled
    for f in range(faces.shape[0]):
        i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
        if inv_z[i0] <= 0.0 or inv_z[i1] <= 0.0 or inv_z[i2] <= 0.0:
            continue
        x0, y0 = xy[i0, 0], xy[i0, 1]
        x1, y1 = xy[i1, 0], xy[i1, 1]
        x2, y2 = xy[i2, 0], xy[i2, 1]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if abs(area) < 1e-12:
            continue
        # pixels whose centre (index + 0.5) can lie inside the triangle's bounding box
        xmin = max(0, int(math.ceil(min(x0, min(x1, x2)) - 0.5)))
        xmax = min(width - 1, int(math.floor(max(x0, max(x1, x2)) - 0.5)))
        ymin = max(0, int(math.ceil(min(y0, min(y1, y2)) - 0.5)))
        ymax = min(height - 1, int(math.floor(max(y0, max(y1, y2)) - 0.5)))
        for py in range(ymin, ymax + 1):
            cy = py + 0.5
            for px in range(xmin, xmax + 1):
                cx = px + 0.5
                l0 = ((x1 - cx) * (y2 - cy) - (x2 - cx) * (y1 - cy)) / area
                l1 = ((x2 - cx) * (y0 - cy) - (x0 - cx) * (y2 - cy)) / area
                l2 = 1.0 - l0 - l1
                if l0 < 0.0 or l1 < 0.0 or l2 < 0.0:
                    continue
                p0, p1, p2 = l0 * inv_z[i0], l1 * inv_z[i1], l2 * inv_z[i2]
                s = p0 + p1 + p2
                b0, b1, b2 = p0 / s, p1 / s, p2 / s
                d = b0 * depth[i0] + b1 * depth[i1] + b2 * depth[i2]
                if d < zbuf[py, px]:
                    zbuf[py, px] = d
                    face_out[py, px] = f
                    bary_out[py, px, 0] = b0
                    bary_out[py, px, 1] = b1
                    bary_out[py, px, 2] = b2


def rasterize_triangles(xy, inv_z, depth, faces, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest triangle per pixel. xy: ``[V, 2]`` pixel positions; inv_z: ``[V]`` 1 / depth for perspective-correct
    barycentrics (ones: affine, e.g. in UV space; a value <= 0 skips the vertex's triangles); depth: ``[V]``
    (smaller wins). Returns ``face [H, W]`` int64 (-1: empty) and ``bary [H, W, 3]`` float64."""
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    face = np.full((height, width), -1, dtype=np.int64)
    bary = np.zeros((height, width, 3), dtype=np.float64)
    zbuf = np.full((height, width), np.inf, dtype=np.float64)
    _rasterize(np.ascontiguousarray(xy, dtype=np.float64), np.ascontiguousarray(inv_z, dtype=np.float64),
               np.ascontiguousarray(depth, dtype=np.float64), faces, int(height), int(width), face, bary, zbuf)
    return face, bary


def project(vertices: Tensor, viewmat: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """``[V, 3]`` world points -> pixel positions ``[V, 2]`` and camera depths ``[V]``."""
    cam = vertices @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    uv = cam[:, :2] / z.clamp_min(NEAR)[:, None]
    return uv @ K[:2, :2].T + K[:2, 2], z


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear texture lookup. texture: ``[H, W, C]``; uv: ``[..., 2]`` in [0, 1] (origin top-left). Returns ``[..., C]``;
    differentiable in ``texture`` (and ``uv``)."""
    grid = (uv * 2.0 - 1.0).reshape(1, 1, -1, 2).to(texture.dtype)
    out = F.grid_sample(texture.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T.reshape(*uv.shape[:-1], texture.shape[-1])


class TexturedMesh(nn.Module):
    """A fixed-topology mesh with one UV atlas and a trainable texture, moved over time by the Gaussians it was made
    from (:func:`gen4d.export.mesh.skin_to_gaussians`).

    vertices: ``[V, 3]`` at the reference time (t = 0); faces: ``[Fc, 3]``; uvs: ``[V, 2]`` (module doc);
    texture: ``[H, W, 3]`` in [0, 1], kept as logits (``sigmoid(logits)``, as DreamGaussian4D keeps its albedo) so
    the trained colours stay in range.
    """

    def __init__(self, vertices: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor | None = None, logits: Tensor | None = None):
        super().__init__()
        self.register_buffer("vertices", vertices.float())
        self.register_buffer("faces", faces.long())
        self.register_buffer("uvs", uvs.float())
        if logits is None:
            logits = torch.logit(texture.float().clamp(1e-4, 1.0 - 1e-4))
        self.logits = nn.Parameter(logits.float())

    def texture(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def tensors(self) -> dict[str, Tensor]:
        return {"vertices": self.vertices, "faces": self.faces, "uvs": self.uvs, "logits": self.logits}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> "TexturedMesh":
        return cls(tensors["vertices"], tensors["faces"], tensors["uvs"], logits=tensors["logits"])

    def render(self, vertices: Tensor, cameras: Cameras, background: Tensor) -> tuple[Tensor, Tensor]:
        """Render the mesh posed at ``vertices [C, V, 3]`` (one pose per camera) or ``[V, 3]``: ``rgb [C, H, W, 3]``
        composited on ``background [3]`` and coverage ``[C, H, W, 1]`` (0 or 1). Gradients reach the texture."""
        if vertices.dim() == 2:
            vertices = vertices[None].expand(len(cameras), -1, -1)
        H, W = cameras.height, cameras.width
        faces_np = self.faces.cpu().numpy()
        texture = self.texture()
        uv_all = self.uvs
        rgbs, alphas = [], []
        for c in range(len(cameras)):
            with torch.no_grad():
                xy, z = project(vertices[c].float(), cameras.viewmats[c].float(), cameras.Ks[c].float())
                inv_z = torch.where(z > NEAR, 1.0 / z.clamp_min(NEAR), torch.zeros_like(z))
                face, bary = rasterize_triangles(xy.cpu().numpy(), inv_z.cpu().numpy(), z.cpu().numpy(), faces_np, H, W)
            covered = torch.from_numpy(face >= 0).to(texture.device)
            f = torch.from_numpy(np.maximum(face, 0)).to(texture.device)
            b = torch.from_numpy(bary).to(texture.device, texture.dtype)
            corners = self.faces[f]  # [H, W, 3]
            uv = (b[..., None] * uv_all[corners]).sum(dim=-2)
            colour = sample_texture(texture, uv)
            alpha = covered[..., None].to(texture.dtype)
            rgbs.append(alpha * colour + (1.0 - alpha) * background.to(texture))
            alphas.append(alpha)
        return torch.stack(rgbs), torch.stack(alphas)
