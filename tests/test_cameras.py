"""Camera conventions and quaternion maths against formulas."""

import math

import pytest
import torch

from gen4d.cameras import (
    Cameras,
    frame_times,
    intrinsics_from_fov,
    look_at,
    opengl_to_opencv,
    orbit_c2w,
    orbit_cameras,
    quat_multiply,
    quat_to_rotmat,
    rotmat_to_quat,
    viewmat_from_c2w,
)


def test_look_at_is_a_right_handed_opencv_frame_looking_at_the_target():
    eye = torch.tensor([[3.0, -2.0, 1.5], [0.0, 0.0, 5.0]], dtype=torch.float64)  # second: straight down
    target = torch.tensor([[0.2, 0.1, -0.3], [0.0, 0.0, 0.0]], dtype=torch.float64)
    c2w = look_at(eye, target)
    R = c2w[:, :3, :3]
    assert torch.allclose(R.transpose(-1, -2) @ R, torch.eye(3, dtype=torch.float64).expand(2, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(2, dtype=torch.float64))
    forward = R[:, :, 2]
    expected = (target - eye) / (target - eye).norm(dim=-1, keepdim=True)
    assert torch.allclose(forward, expected, atol=1e-12)
    # Image "down" (+y) points to world -z for a level camera (world +z is up).
    assert float(R[0, 2, 1]) < 0


def test_target_projects_to_the_image_centre():
    cams = orbit_cameras([0.0, 77.0, 190.0], [10.0, 35.0, -15.0], 4.0, math.radians(40), 64, 48)
    p = torch.tensor([0.0, 0.0, 0.0, 1.0])
    for vm, K in zip(cams.viewmats, cams.Ks):
        x = vm @ p
        uv = (K @ x[:3]) / x[2]
        assert float(x[2]) == pytest.approx(4.0, rel=1e-5)
        assert torch.allclose(uv[:2], torch.tensor([32.0, 24.0]), atol=1e-4)


def test_opengl_opencv_flip_is_an_involution_and_viewmat_inverts_c2w():
    c2w = orbit_c2w(30.0, 20.0, 3.0)
    assert torch.allclose(opengl_to_opencv(opengl_to_opencv(c2w)), c2w)
    gl = opengl_to_opencv(c2w)
    assert torch.allclose(gl[:3, 2], -c2w[:3, 2])  # OpenGL cameras look along -z
    assert torch.allclose(viewmat_from_c2w(c2w) @ c2w, torch.eye(4, dtype=torch.float64), atol=1e-12)


def test_intrinsics_from_fov():
    K = intrinsics_from_fov(math.radians(90), 100, 60)
    assert float(K[0, 0]) == pytest.approx(50.0)  # tan(45 deg) = 1
    assert float(K[1, 1]) == pytest.approx(50.0)
    assert (float(K[0, 2]), float(K[1, 2])) == (50.0, 30.0)


@pytest.mark.parametrize("T", [1, 8, 14, 25])
def test_frame_times_any_count(T):
    t = frame_times(T)
    assert len(t) == T and float(t[0]) == 0.0
    if T > 1:
        assert float(t[-1]) == 1.0
        assert torch.allclose(t[1:] - t[:-1], torch.full((T - 1,), 1.0 / (T - 1), dtype=torch.float64))


def test_quaternion_round_trip_and_product():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(64, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    assert torch.allclose(rotmat_to_quat(quat_to_rotmat(q)), q, atol=1e-10)
    r = torch.randn(64, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(quat_to_rotmat(quat_multiply(q, r)), quat_to_rotmat(q) @ quat_to_rotmat(r), atol=1e-10)
    # 90 degrees about z maps x to y
    qz = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=torch.float64)
    assert torch.allclose(quat_to_rotmat(qz) @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12)


def test_camera_batches_index_and_resize():
    cams = orbit_cameras([0.0, 90.0, 180.0], 10.0, 3.0, 1.0, 40, 30, times=[0.0, 0.5, 1.0])
    sub = cams[1]
    assert len(sub) == 1 and float(sub.times[0]) == 0.5
    assert torch.allclose(Cameras.cat([cams[0], cams[2]]).times, torch.tensor([0.0, 1.0]))
    big = cams.resized(80, 60)
    assert torch.allclose(big.Ks[:, :2], cams.Ks[:, :2] * 2)
    assert torch.allclose(cams.centers.norm(dim=-1), torch.full((3,), 3.0), atol=1e-5)
