"""Cameras: pure math, written down once.

Conventions used everywhere in gen4d
------------------------------------
* **World frame**: right-handed, **+z is up** (the Blender / D-NeRF convention).
* **Camera frame**: OpenCV axes: +x right, +y down, +z forward (the camera looks along +z).
* ``c2w``: camera-to-world 4x4 matrix in OpenCV axes. D-NeRF / Blender ``transform_matrix`` is OpenGL
  (camera looks along -z, +y up); :func:`opengl_to_opencv` converts between the two (the same flip both ways).
* ``viewmat``: **world-to-camera** 4x4 matrix (the inverse of ``c2w``), as gsplat expects.
* ``K``: 3x3 pinhole intrinsics in pixels; pixel centres are at integer + 0.5 (pixel ``(0, 0)`` covers
  ``[0, 1) x [0, 1)``), so a principal point at ``(W / 2, H / 2)`` is the image centre.
* **Quaternions** are ``wxyz`` and need not be normalised where a function says so.
* **Time** ``t`` is in ``[0, 1]``: frame ``i`` of ``T`` frames has ``t = i / (T - 1)`` (``t = 0`` if ``T == 1``).
* Shapes use the letters C (cameras) and N (Gaussians).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """Flip the camera's y and z axes: OpenGL c2w ``[..., 4, 4]`` -> OpenCV c2w (and back; it is an involution)."""
    return c2w @ _GL_TO_CV.to(c2w)


def normalize(v: Tensor, eps: float = 1e-12) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """Camera-to-world matrices (OpenCV axes) for cameras at ``eye`` looking at ``target``.

    eye, target: ``[..., 3]``; up: ``[3]`` world up (default +z). Returns ``[..., 4, 4]``.
    """
    eye, target = torch.broadcast_tensors(eye, target)
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device)
    forward = normalize(target - eye)  # camera +z
    right = torch.linalg.cross(forward, up.expand_as(forward))  # camera +x
    # Looking straight up or down: pick any perpendicular axis instead of a zero vector.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-8
    alt = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(forward))
    right = normalize(torch.where(degenerate, alt, right))
    down = torch.linalg.cross(forward, right)  # camera +y points down
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = down
    c2w[..., :3, 2] = forward
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1.0
    return c2w


def orbit_eye(azimuth_deg: Tensor | float, elevation_deg: Tensor | float, radius: Tensor | float) -> Tensor:
    """Position on a sphere around the origin: azimuth from +x towards +y, elevation above the xy plane."""
    az = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float64))
    el = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float64))
    r = torch.as_tensor(radius, dtype=torch.float64)
    az, el, r = torch.broadcast_tensors(az, el, r)
    return torch.stack([r * el.cos() * az.cos(), r * el.cos() * az.sin(), r * el.sin()], dim=-1)


def orbit_c2w(azimuth_deg, elevation_deg, radius, target=(0.0, 0.0, 0.0)) -> Tensor:
    """OpenCV camera-to-world ``[..., 4, 4]`` (float64) of orbit cameras looking at ``target``."""
    tgt = torch.as_tensor(target, dtype=torch.float64)
    eye = orbit_eye(azimuth_deg, elevation_deg, radius) + tgt
    return look_at(eye, tgt.expand_as(eye))


def viewmat_from_c2w(c2w: Tensor) -> Tensor:
    """World-to-camera from camera-to-world (rigid inverse, exact for rotations)."""
    R = c2w[..., :3, :3]
    t = c2w[..., :3, 3:]
    out = torch.zeros_like(c2w)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1.0
    return out


def focal_from_fov(fov_rad: float, size: int) -> float:
    """Focal length in pixels for a field of view spanning ``size`` pixels."""
    return 0.5 * size / math.tan(0.5 * fov_rad)


def intrinsics_from_fov(fov_x_rad: float, width: int, height: int, fov_y_rad: float | None = None) -> Tensor:
    """Pinhole ``K`` (float64). Square pixels unless ``fov_y_rad`` is given; principal point at the centre."""
    fx = focal_from_fov(fov_x_rad, width)
    fy = fx if fov_y_rad is None else focal_from_fov(fov_y_rad, height)
    return torch.tensor([[fx, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def frame_times(num_frames: int) -> Tensor:
    """Normalised times of ``num_frames`` evenly spaced frames: ``i / (T - 1)``; any T >= 1 (no fixed 14)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_frames == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------- quaternions
def quat_normalize(q: Tensor) -> Tensor:
    return normalize(q)


def quat_to_rotmat(q: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` from (not necessarily unit) quaternions ``[..., 4]`` in wxyz order."""
    w, x, y, z = normalize(q).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Unit wxyz quaternions ``[..., 4]`` with w >= 0 from rotation matrices ``[..., 3, 3]``."""
    m = R
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack(
        [
            torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
        ],
        dim=-2,
    )  # [..., 4, 4]: each row is 4*q_i*q scaled; pick the best-conditioned row
    diag = torch.stack([1 + trace, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], 1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(cands, -2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = normalize(q)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a * b`` of wxyz quaternions (rotation by b, then by a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


# ------------------------------------------------------------------------------------------------ camera batches
@dataclass
class Cameras:
    """A batch of C pinhole cameras, each seeing the scene at its own time.

    viewmats: ``[C, 4, 4]`` world-to-camera (OpenCV axes). Ks: ``[C, 3, 3]`` intrinsics in pixels.
    times: ``[C]`` normalised times in [0, 1]. width, height: image size in pixels (shared by the batch).
    """

    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int
    times: Tensor

    def __post_init__(self) -> None:
        if self.viewmats.dim() == 2:
            self.viewmats = self.viewmats[None]
        if self.Ks.dim() == 2:
            self.Ks = self.Ks[None].expand(self.viewmats.shape[0], 3, 3)
        self.times = torch.as_tensor(self.times, dtype=self.viewmats.dtype, device=self.viewmats.device).reshape(-1)
        if self.times.numel() == 1 and len(self.viewmats) > 1:
            self.times = self.times.expand(len(self.viewmats))

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Cameras(self.viewmats[idx], self.Ks[idx], self.width, self.height, self.times[idx])

    def to(self, device=None, dtype=None) -> "Cameras":
        return Cameras(
            self.viewmats.to(device=device, dtype=dtype),
            self.Ks.to(device=device, dtype=dtype),
            self.width,
            self.height,
            self.times.to(device=device, dtype=dtype),
        )

    @property
    def c2w(self) -> Tensor:
        return torch.linalg.inv(self.viewmats)

    @property
    def centers(self) -> Tensor:
        """Camera centres in world coordinates ``[C, 3]``."""
        R = self.viewmats[:, :3, :3]
        t = self.viewmats[:, :3, 3]
        return -(R.transpose(-1, -2) @ t[..., None])[..., 0]

    @staticmethod
    def cat(items: "list[Cameras]") -> "Cameras":
        first = items[0]
        return Cameras(
            torch.cat([c.viewmats for c in items]),
            torch.cat([c.Ks for c in items]),
            first.width,
            first.height,
            torch.cat([c.times for c in items]),
        )

    def resized(self, width: int, height: int) -> "Cameras":
        """The same cameras imaging the same field of view at another resolution."""
        sx, sy = width / self.width, height / self.height
        Ks = self.Ks.clone()
        Ks[:, 0] *= sx
        Ks[:, 1] *= sy
        return Cameras(self.viewmats, Ks, width, height, self.times)


def orbit_cameras(
    azimuths_deg,
    elevations_deg,
    radius: float,
    fov_x_rad: float,
    width: int,
    height: int,
    times=0.0,
    target=(0.0, 0.0, 0.0),
) -> Cameras:
    """A batch of orbit cameras (float32) looking at ``target``; arguments broadcast against each other."""
    c2w = orbit_c2w(torch.as_tensor(azimuths_deg, dtype=torch.float64), torch.as_tensor(elevations_deg, dtype=torch.float64), radius, target)
    c2w = c2w.reshape(-1, 4, 4)
    K = intrinsics_from_fov(fov_x_rad, width, height)
    return Cameras(viewmat_from_c2w(c2w).float(), K.float().expand(len(c2w), 3, 3).clone(), width, height, torch.as_tensor(times, dtype=torch.float32).expand(len(c2w)).clone())
