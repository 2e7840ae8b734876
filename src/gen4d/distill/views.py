"""The camera x time sampler of score distillation: where and when the views a prior judges are rendered.

Angles follow :mod:`gen4d.cameras` (degrees; azimuth from +x towards +y, elevation above the xy plane; the input
view of image recipes is azimuth 0, elevation 0). Random numbers are drawn from the stage's generator in a fixed
order: azimuths, elevations, then radii and fields of view (only when their range is not a single value), then
clips' camera drift (only when ``frame_motion_deg`` is set), then times (only when random).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .. import Gen4DError
from ..cameras import Cameras, frame_times, intrinsics_from_fov, orbit_cameras
from ..guidance.base import Conditioning

TIME_MODES = ("zero", "shared", "per_view", "reference", "frames", "clip", "strided_clip")


@dataclass
class ViewSampling:
    """A camera x time distribution for one guidance term."""

    views: int = 4
    """Cameras per step (for ``times=clip``: clips per step, each ``frames`` frames of one camera)."""
    elevation_deg: tuple[float, float] = (-30.0, 30.0)
    """Range of elevations (uniform)."""
    azimuth_deg: tuple[float, float] = (-180.0, 180.0)
    """Range of azimuths (uniform)."""
    azimuth_layout: str = "random"
    """random: every view's azimuth drawn independently | even: the views evenly spaced over 360 degrees from one
    random start (multi-view priors: MVDream's 4 orthogonal views)."""
    radius: tuple[float, float] = (2.5, 2.5)
    """Range of camera distances from the origin."""
    fov_deg: tuple[float, float] = (49.1, 49.1)
    """Range of horizontal fields of view."""
    times: str = "shared"
    """zero: the canonical time 0 | shared: one random time for all views of the step | per_view: a random time
    per view | reference: the time of the step's reference frame (image recipes fitting a driving video) |
    frames: ``views`` random cameras at every reference frame's time (DreamGaussian4D's 4D stage; view-major) |
    clip: ``frames`` evenly spaced times over [0, 1] seen by one camera (video priors) | strided_clip: ``frames``
    times on a grid of ``time_grid`` steps with a random stride and start, mirrored with ``reverse_probability``
    (Animate124's ``sample_rand_frames: fps``, :func:`strided_clip_times`)."""
    frames: int = 16
    """Frames per clip (``times=clip``)."""
    clip_offset: bool = False
    """``times=clip``: frames at ``t0 + k / frames`` with ``t0`` uniform in ``[0, 1 / frames)`` (4D-fy's
    ``sample_rand_frames: t0``) instead of ``frames`` times evenly spaced over ``[0, 1]``."""
    time_grid: int = 256
    """``times=strided_clip``: the time grid's steps (Animate124's ``precision``)."""
    zero_start_probability: float = 0.2
    """``times=strided_clip``: probability that a clip starts at t = 0 (Animate124's ``zero_rate``)."""
    reverse_probability: float = 0.5
    """``times=strided_clip``: probability that a clip's times are mirrored, ``t -> 1 - t`` (module doc of
    :func:`strided_clip_times`)."""
    frame_motion_deg: tuple[float, float] = (0.0, 0.0)
    """Clips: the camera moves by ``k * d`` degrees of elevation and azimuth at frame ``k``, with ``d`` uniform in
    ``[-m, m]`` per clip, ``(m_elevation, m_azimuth)`` given here (Animate124's ``train_dynamic_camera``)."""
    shared_camera: bool = False
    """One elevation, radius and field of view for all views of a step (a multi-view prior's camera set: MVDream's
    4 views differ only in azimuth); False: each view draws its own."""
    clip_span: tuple[float, float] = (1.0, 1.0)
    """``times=clip``: the clip covers a random length ``L`` in this range of [0, 1] from a random start in
    ``[0, 1 - L]``, its ``frames`` times evenly spaced from start to start + L (Dream-in-4D's ``delta_time 0.2``:
    L in [0.8, 1.0]); (1, 1): the whole of [0, 1]."""
    relative_radius: bool = False
    """``radius`` is relative: the camera distance is ``r / tan(fov / 2)``, so the object fills the same part of the
    image at every field of view (threestudio's ``relative_radius``, MVDream's and Dream-in-4D's cameras)."""
    vertical_fov: bool = False
    """``fov_deg`` is the vertical field of view (threestudio's ``fovy``); False: horizontal."""

    def check(self) -> None:
        if self.views < 1 or self.frames < 1:
            raise Gen4DError(f"views and frames must be at least 1, got {self.views} and {self.frames}")
        if self.times not in TIME_MODES:
            raise Gen4DError(f"times must be one of {', '.join(TIME_MODES)}, got {self.times!r}")
        if self.azimuth_layout not in ("random", "even"):
            raise Gen4DError(f"azimuth_layout must be random or even, got {self.azimuth_layout!r}")
        lo, hi = self.clip_span
        if not 0.0 < lo <= hi <= 1.0:
            raise Gen4DError(f"clip_span must satisfy 0 < low <= high <= 1, got {self.clip_span}")
        for name in ("elevation_deg", "azimuth_deg", "radius", "fov_deg"):
            lo, hi = getattr(self, name)
            if hi < lo:
                raise Gen4DError(f"{name} range ({lo}, {hi}) is empty")
        if self.times == "strided_clip" and self.time_grid < self.frames:
            raise Gen4DError(f"time_grid ({self.time_grid}) must be at least frames ({self.frames})")


@dataclass
class ViewBatch:
    """The sampled views of one term at one step: N = views x frames cameras (clip-major for clips)."""

    cameras: Cameras
    elevation_deg: Tensor
    azimuth_deg: Tensor
    radius: Tensor
    fov_deg: Tensor
    times: Tensor
    frames: int = 1
    """Frames per clip (1 for still views): renders reshape to ``[N / frames, frames, 3, H, W]``."""
    starts_at_zero: bool = False
    """``times=strided_clip``: the clip was drawn to start at t = 0 (and plays forwards)."""

    def select(self, index: Tensor) -> "ViewBatch":
        """Views ``index`` (still views only)."""
        c = self.cameras
        i = index.cpu()
        cams = Cameras(c.viewmats[index.to(c.viewmats.device)], c.Ks[index.to(c.Ks.device)], c.width, c.height,
                       c.times[index.to(c.times.device)])
        return replace(self, cameras=cams, elevation_deg=self.elevation_deg[i], azimuth_deg=self.azimuth_deg[i],
                       radius=self.radius[i], fov_deg=self.fov_deg[i], times=cams.times)

    def to(self, device) -> "ViewBatch":
        cams = self.cameras.to(device)
        return replace(self, cameras=cams, times=cams.times)

    def conditioning(self, **fields) -> Conditioning:
        """The cameras and times as a :class:`~gen4d.guidance.base.Conditioning` (plus ``fields``)."""
        device = self.cameras.viewmats.device
        return Conditioning(
            c2w=self.cameras.c2w, elevation_deg=self.elevation_deg.to(device), azimuth_deg=self.azimuth_deg.to(device),
            radius=self.radius.to(device), fov_deg=self.fov_deg.to(device), times=self.cameras.times, **fields,
        )


def _uniform(lo: float, hi: float, n: int, generator: torch.Generator) -> Tensor:
    return lo + torch.rand(n, generator=generator) * (hi - lo)


def strided_clip_times(frames: int, grid: int, zero_start_probability: float, reverse_probability: float,
                       generator: torch.Generator) -> tuple[Tensor, bool]:
    """Animate124's clip times (``sample_rand_frames: fps``) and whether the clip starts at t = 0.

    A span of ``frames * stride`` grid steps, ``stride = floor(U{frames..grid} / frames)`` (1 .. grid // frames), starts
    at 0 with ``zero_start_probability``, else at a uniform ``start`` in ``0 .. grid - span``; frame ``k`` is at
    ``(start + k stride) / grid``. With ``reverse_probability`` the times become ``1 - t`` in reverse order: the clip
    still runs forwards in time, over the mirrored window (one drawn to start at 0 then ends at 1, and is no longer
    a zero-start clip), as Animate124's ``time = precision - time`` followed by ``time[::-1]``. Draws, in order: zero
    start, span, start (when not zero), mirroring.
    """
    zero = float(torch.rand((), generator=generator)) < zero_start_probability
    span = int(torch.randint(frames, grid + 1, (), generator=generator)) // frames * frames
    stride = span // frames
    start = 0 if zero else int(torch.randint(0, grid - span + 1, (), generator=generator))
    times = (start + torch.arange(frames, dtype=torch.float64) * stride) / grid
    if float(torch.rand((), generator=generator)) < reverse_probability:
        times, zero = (1.0 - times).flip(0), False
    return times.float(), zero


def sample_views(s: ViewSampling, generator: torch.Generator, width: int, height: int,
                 reference_time: float | None = None, reference_times: Tensor | None = None) -> ViewBatch:
    """Draw one step's views of ``s`` at ``width x height`` pixels (``reference_time`` for ``times=reference``,
    the reference frames' ``reference_times [T]`` for ``times=frames``)."""
    n = s.views
    if s.times == "frames":
        if reference_times is None:
            raise ValueError("times=frames needs the reference frames' times (a stage with reference views)")
        n = s.views * len(reference_times)
    if s.azimuth_layout == "even":
        start = _uniform(*s.azimuth_deg, 1, generator)
        az = start + torch.arange(n, dtype=torch.float32) * (360.0 / n)
    else:
        az = _uniform(*s.azimuth_deg, n, generator)
    m = 1 if s.shared_camera else n
    el = _uniform(*s.elevation_deg, m, generator).expand(n).clone()
    radius = _uniform(*s.radius, m, generator).expand(n).clone() if s.radius[1] > s.radius[0] else None
    fov = _uniform(*s.fov_deg, m, generator).expand(n).clone() if s.fov_deg[1] > s.fov_deg[0] else None
    clip = s.times in ("clip", "strided_clip")
    frames = s.frames if clip else 1
    starts_at_zero = False
    if s.times == "zero":
        times: float | Tensor = 0.0
    elif s.times == "shared":
        times = float(torch.rand((), generator=generator))
    elif s.times == "per_view":
        times = torch.rand(n, generator=generator)
    elif s.times == "frames":
        times = reference_times.float().cpu().repeat(s.views)
    elif s.times == "reference":
        if reference_time is None:
            raise ValueError("times=reference needs the step's reference frame (a stage with reference views)")
        times = float(reference_time)
    else:  # clips: every camera repeated over the clip's frames
        az, el = az.repeat_interleave(frames), el.repeat_interleave(frames)
        m_el, m_az = s.frame_motion_deg
        if m_el > 0 or m_az > 0:  # the camera drifts linearly over each clip
            k = torch.arange(frames, dtype=torch.float32).repeat(n)
            el = el + _uniform(-m_el, m_el, n, generator).repeat_interleave(frames) * k
            az = az + _uniform(-m_az, m_az, n, generator).repeat_interleave(frames) * k
        radius = None if radius is None else radius.repeat_interleave(frames)
        fov = None if fov is None else fov.repeat_interleave(frames)
        if s.times == "strided_clip":
            draws = [strided_clip_times(frames, s.time_grid, s.zero_start_probability, s.reverse_probability, generator)
                     for _ in range(n)]
            times = torch.cat([t for t, _ in draws])
            starts_at_zero = all(z for _, z in draws)
        elif s.clip_offset:
            t0 = float(torch.rand((), generator=generator)) / frames
            times = (t0 + torch.arange(frames, dtype=torch.float32) / frames).repeat(n)
        elif s.clip_span != (1.0, 1.0):
            length = _uniform(*s.clip_span, n, generator)
            start = torch.rand(n, generator=generator) * (1.0 - length)
            times = (start[:, None] + length[:, None] * frame_times(frames).float()[None]).reshape(-1)
        else:
            times = frame_times(frames).float().repeat(n)
    N = len(az)
    radius_t = torch.full((N,), float(s.radius[0])) if radius is None else radius
    fov_t = torch.full((N,), float(s.fov_deg[0])) if fov is None else fov
    if s.relative_radius:  # threestudio: distance = r / tan(fovy / 2), with the field of view as drawn
        radius_t = radius_t / torch.tan(torch.deg2rad(fov_t) / 2)
    if s.vertical_fov:  # the horizontal field of view of a width x height image with that vertical one
        fov_t = torch.rad2deg(2 * torch.atan(torch.tan(torch.deg2rad(fov_t) / 2) * width / height))
    r_arg = s.radius[0] if radius is None and not s.relative_radius else radius_t
    cams = orbit_cameras(az, el, r_arg, math.radians(float(fov_t[0])), width, height, times=times)
    if fov is not None or s.vertical_fov:
        cams = Cameras(cams.viewmats, torch.stack([intrinsics_from_fov(math.radians(float(f)), width, height).float() for f in fov_t]),
                       width, height, cams.times)
    return ViewBatch(cams, el, az, radius_t, fov_t, cams.times, frames, starts_at_zero)
