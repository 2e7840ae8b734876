"""Procedurally animated 4D scenes and an analytic ray caster that renders them.

The scenes are ground truth for reconstruction tests and demos that need no downloads: each is a function of
time ``t`` in [0, 1] returning a handful of primitives (spheres, capsules, textured oriented boxes) that stay
inside a sphere of radius ~1 around the origin (world +z up, as in :mod:`gen4d.cameras`).

The renderer is deliberately independent of the Gaussian rasterizer it is used to test: it intersects camera
rays with the primitives in closed form (nearest hit wins), shades them with a view-independent diffuse model

    colour = albedo * (AMBIENT + (1 - AMBIENT) * max(0, n . LIGHT_DIR))

(a fixed world light, so a surface point has the same colour from every viewpoint), and antialiases by
supersampling each pixel on an ``s x s`` grid: ``alpha`` is the fraction of sub-rays that hit something.

:func:`write_synthetic_scene` writes a multi-view video (or, with ``layout="monocular"``, a one-camera-per-time video as
in D-NeRF's synthetic scenes) in the D-NeRF layout read by :func:`gen4d.data.dnerf.load_dnerf`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gen4d import Gen4DError
from gen4d.cameras import Cameras, frame_times, intrinsics_from_fov, opengl_to_opencv, orbit_c2w, viewmat_from_c2w

Vec3 = tuple[float, float, float]
Mat3 = tuple[Vec3, Vec3, Vec3]

#: Unit direction towards the light, in world coordinates (from the front-right and above).
LIGHT_DIR: Vec3 = tuple(float(v) for v in np.array([0.5, 0.3, 0.8]) / np.linalg.norm([0.5, 0.3, 0.8]))  # type: ignore[assignment]
#: Fraction of the albedo a surface shows when it faces away from the light.
AMBIENT: float = 0.35
#: Range of camera elevations (degrees) used by :func:`write_synthetic_scene`.
ELEVATION_RANGE_DEG: tuple[float, float] = (-10.0, 45.0)

_EPS = 1e-9  # minimum ray distance counted as a hit (rays start at the camera centre)
_IDENTITY: Mat3 = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


# --------------------------------------------------------------------------------------------------- primitives
@dataclass(frozen=True)
class Sphere:
    """A sphere; ``center`` in world units, ``albedo`` RGB in [0, 1]."""

    center: Vec3
    radius: float
    albedo: Vec3


@dataclass(frozen=True)
class Capsule:
    """All points within ``radius`` of the segment ``start``-``end`` (a cylinder with hemispherical caps)."""

    start: Vec3
    end: Vec3
    radius: float
    albedo: Vec3


@dataclass(frozen=True)
class Box:
    """An oriented box with a checkered colour per face.

    rotation: 3x3 matrix whose columns are the box's local x, y, z axes in world coordinates.
    half_size: half extents along the local axes.
    face_albedos: RGB of the faces in the order +x, -x, +y, -y, +z, -z (local axes).
    checker: number of checker cells along each edge of a face; dark cells are ``1 - checker_contrast`` as bright.
    """

    center: Vec3
    half_size: Vec3
    face_albedos: tuple[Vec3, Vec3, Vec3, Vec3, Vec3, Vec3]
    rotation: Mat3 = _IDENTITY
    checker: int = 4
    checker_contrast: float = 0.45


Primitive = Union[Sphere, Capsule, Box]


@dataclass(frozen=True)
class SyntheticScene:
    """An animated scene: ``primitives(t)`` lists what is there at normalised time ``t`` in [0, 1]."""

    name: str
    description: str
    primitives: Callable[[float], list[Primitive]] = field(repr=False)

    def at(self, t: float) -> list[Primitive]:
        return self.primitives(float(t))


# -------------------------------------------------------------------------------------------------------- scenes
def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _vec(v) -> Vec3:
    return (float(v[0]), float(v[1]), float(v[2]))


def _mat(m: np.ndarray) -> Mat3:
    return (_vec(m[0]), _vec(m[1]), _vec(m[2]))


# (radius, albedo, azimuth of its lane in degrees, bounce phase, bounces per clip, bounce height)
_BALLS = (
    (0.30, (0.86, 0.22, 0.16), 0.0, 0.0, 2.0, 0.55),
    (0.24, (0.22, 0.70, 0.32), 90.0, 0.25, 3.0, 0.70),
    (0.20, (0.20, 0.36, 0.90), 180.0, 0.5, 2.0, 0.80),
    (0.26, (0.95, 0.80, 0.22), 270.0, 0.75, 1.5, 0.60),
)
_FLOOR_Z = -0.75  # height the balls bounce off (there is no visible floor)
_LANE_RADIUS = 0.45
_DRIFT_DEG = 60.0  # the four lanes turn this much about z over the clip, so the balls also move sideways


def bouncing_balls(t: float) -> list[Primitive]:
    """Four coloured balls of different radii bouncing on parabolic arcs with different phases and rates."""
    prims: list[Primitive] = []
    for radius, albedo, lane_deg, phase, rate, height in _BALLS:
        s = (rate * t + phase) % 1.0  # progress through the current bounce
        z = _FLOOR_Z + radius + height * 4.0 * s * (1.0 - s)  # free fall: a parabola touching the floor at s = 0, 1
        az = math.radians(lane_deg + _DRIFT_DEG * t)
        prims.append(Sphere((_LANE_RADIUS * math.cos(az), _LANE_RADIUS * math.sin(az), z), radius, albedo))
    return prims


_SKIN, _SHIRT, _SLEEVE, _TROUSERS, _NOSE = (0.95, 0.76, 0.62), (0.20, 0.40, 0.85), (0.95, 0.55, 0.15), (0.25, 0.58, 0.30), (0.70, 0.12, 0.12)


def jumping_jacks(t: float) -> list[Primitive]:
    """A capsule figure doing two jumping jacks while slowly turning: arms sweep up over the head as the legs open.

    In the figure's own frame it faces +x and its limbs swing in the yz plane; the body hops while the limbs are
    out, and the whole figure turns 90 degrees about z over the clip (so no two times show the same image).
    """
    spread = 0.5 - 0.5 * math.cos(2.0 * math.pi * 2.0 * t)  # 0 = closed, 1 = open; two cycles per clip
    hop = 0.08 * math.sin(math.pi * ((2.0 * t) % 1.0))  # airborne while the limbs are open
    turn = _rot_z(math.radians(90.0 * t))

    def place(p) -> Vec3:  # figure frame -> world
        return _vec(turn @ np.asarray(p, dtype=np.float64))

    prims: list[Primitive] = [
        Capsule(place((0.0, 0.0, -0.12 + hop)), place((0.0, 0.0, 0.30 + hop)), 0.17, _SHIRT),  # torso
        Sphere(place((0.0, 0.0, 0.60 + hop)), 0.15, _SKIN),  # head
        Sphere(place((0.145, 0.0, 0.61 + hop)), 0.035, _NOSE),  # marks which way the figure faces
    ]
    leg_angle = math.radians(5.0 + 20.0 * spread)  # from straight down
    arm_angle = math.radians(12.0 + 143.0 * spread)
    for side in (-1.0, 1.0):
        hip = np.array([0.0, side * 0.09, -0.20 + hop])
        foot = hip + 0.62 * np.array([0.0, side * math.sin(leg_angle), -math.cos(leg_angle)])
        prims.append(Capsule(place(hip), place(foot), 0.075, _TROUSERS))
        shoulder = np.array([0.0, side * 0.20, 0.32 + hop])
        hand = shoulder + 0.48 * np.array([0.0, side * math.sin(arm_angle), -math.cos(arm_angle)])
        prims.append(Capsule(place(shoulder), place(hand), 0.06, _SLEEVE))
    return prims


_BOX_FACES = (
    (0.90, 0.28, 0.24),  # +x red
    (0.22, 0.78, 0.82),  # -x cyan
    (0.30, 0.78, 0.30),  # +y green
    (0.82, 0.30, 0.78),  # -y magenta
    (0.95, 0.85, 0.25),  # +z yellow
    (0.26, 0.34, 0.88),  # -z blue
)


def spinning_box(t: float) -> list[Primitive]:
    """A checkered box with differently coloured faces: three quarter turns about z, rocking and breathing."""
    spin = 2.0 * math.pi * 0.75 * t
    tilt = 0.35 * math.sin(2.0 * math.pi * t)
    rotation = _rot_z(spin) @ _rot_x(tilt)
    half_z = 0.36 * (1.0 + 0.2 * math.sin(2.0 * math.pi * t))
    return [Box((0.0, 0.0, 0.05 * math.sin(2.0 * math.pi * t)), (0.60, 0.42, half_z), _BOX_FACES, _mat(rotation))]


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


_POST, _NACELLE, _HUB = (0.62, 0.62, 0.66), (0.88, 0.86, 0.80), (0.30, 0.30, 0.34)
_BLADES = ((0.88, 0.25, 0.22), (0.95, 0.80, 0.20), (0.22, 0.40, 0.88), (0.25, 0.72, 0.35))  # one colour per blade
_ROTOR_CENTER = (0.14, 0.0, 0.20)  # the hub; the rotor turns about the world x axis through it
# Frame of a blade pointing up (columns: local x along the rotor axis = world x, local y radial = world z,
# local z tangential = world -y); the blade is a box that is thin along local x, long along local y.
_BLADE_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
WINDMILL_TURNS = 1.5
"""Full turns of the windmill's rotor over the clip (constant speed: the scene repeats every ``1 / WINDMILL_TURNS``)."""


def windmill(t: float) -> list[Primitive]:
    """A windmill whose four blades, each a different colour, turn 1.5 times about a horizontal axis.

    A grey post carries a nacelle along world x; the rotor (a hub sphere and four checkered, slightly pitched box
    blades) turns at constant speed about the x axis through the hub, 540 degrees over the clip. The blades have the
    same shape, so a quarter turn maps the silhouette onto itself, but only a full turn repeats the colours.
    """
    spin = 2.0 * math.pi * WINDMILL_TURNS * t
    hub = np.asarray(_ROTOR_CENTER)
    prims: list[Primitive] = [
        Capsule((-0.02, 0.0, -0.82), (-0.02, 0.0, 0.14), 0.055, _POST),
        Capsule((-0.16, 0.0, 0.20), (0.06, 0.0, 0.20), 0.075, _NACELLE),
        Sphere(_vec(hub + np.array([0.03, 0.0, 0.0])), 0.075, _HUB),
    ]
    root, length, half_width, half_thickness, pitch = 0.10, 0.56, 0.10, 0.022, math.radians(20.0)
    for k, albedo in enumerate(_BLADES):
        # Blade frame before the spin: local x along the rotor axis (world x), local y radial (world z),
        # local z tangential; the blade is pitched about its radial axis.
        blade = _rot_x(spin + 0.5 * math.pi * k) @ _BLADE_UP @ _rot_y(pitch)
        center = hub + blade[:, 1] * (root + 0.5 * length)
        prims.append(Box(_vec(center), (half_thickness, 0.5 * length, half_width), (albedo,) * 6, _mat(blade), checker=4, checker_contrast=0.35))
    return prims


_LEFT_LEG, _RIGHT_LEG, _LEFT_ARM, _RIGHT_ARM = (0.25, 0.58, 0.30), (0.16, 0.50, 0.62), (0.95, 0.55, 0.15), (0.88, 0.30, 0.45)
WALKER_TRAVEL = 1.0
"""Distance the walker covers along world x over the clip (about its height, 1.085 from soles to crown)."""
WALKER_STRIDES = 2.0
"""Gait cycles (two steps each) over the clip."""


def walker(t: float) -> list[Primitive]:
    """A capsule figure walking across the scene: two strides while travelling its own height along +x.

    Each leg is a thigh and a shin; the hips swing 28 degrees either side of vertical in opposite phase, each knee
    bends (up to 60 degrees) while its leg swings forward, the arms swing against the legs, and the pelvis bobs
    twice per stride. Left and right limbs have different colours; a nose marks the facing direction (+x).
    """
    phase = 2.0 * math.pi * WALKER_STRIDES * t
    x = WALKER_TRAVEL * (t - 0.5)
    pelvis = np.array([x, 0.0, -0.02 + 0.02 * math.cos(2.0 * phase)])

    def down(angle: float) -> np.ndarray:  # unit vector at `angle` from straight down, positive towards +x
        return np.array([math.sin(angle), 0.0, -math.cos(angle)])

    prims: list[Primitive] = [
        Capsule(_vec(pelvis + (0.0, 0.0, 0.04)), _vec(pelvis + (0.0, 0.0, 0.24)), 0.12, _SHIRT),  # torso
        Sphere(_vec(pelvis + (0.0, 0.0, 0.45)), 0.10, _SKIN),  # head
        Sphere(_vec(pelvis + (0.095, 0.0, 0.46)), 0.028, _NOSE),
    ]
    for side, leg_colour, arm_colour, offset in ((1.0, _LEFT_LEG, _LEFT_ARM, 0.0), (-1.0, _RIGHT_LEG, _RIGHT_ARM, math.pi)):
        leg_phase = phase + offset
        hip_angle = math.radians(28.0) * math.sin(leg_phase)
        knee_bend = math.radians(60.0) * (0.5 + 0.5 * math.cos(leg_phase)) ** 2  # most bent mid-swing
        hip = pelvis + (0.0, side * 0.07, -0.02)
        knee = hip + 0.24 * down(hip_angle)
        ankle = knee + 0.23 * down(hip_angle - knee_bend)
        prims.append(Capsule(_vec(hip), _vec(knee), 0.06, leg_colour))
        prims.append(Capsule(_vec(knee), _vec(ankle), 0.052, leg_colour))
        shoulder = pelvis + (0.0, side * 0.17, 0.25)
        hand = shoulder + 0.34 * down(-math.radians(32.0) * math.sin(leg_phase))
        prims.append(Capsule(_vec(shoulder), _vec(hand), 0.048, arm_colour))
    return prims


_CHAIN_SEGMENTS = 7
_CHAIN_LENGTH = 0.24  # of each segment
_CHAIN_COLOURS = tuple(
    tuple(float(c) for c in 0.2 + 0.7 * (0.5 + 0.5 * np.cos(2.0 * math.pi * (k / _CHAIN_SEGMENTS - np.array([0.0, 1.0, 2.0]) / 3.0))))
    for k in range(_CHAIN_SEGMENTS)
)  # a hue wheel: every segment a different colour


def chain(t: float) -> list[Primitive]:
    """A snake of seven capsules, one colour each, with a sphere head, slithering by a travelling wave.

    Segment k points along heading ``yaw(t) + 0.75 sin(2 pi (2 t - k / 5))`` and pitch
    ``0.3 cos(2 pi (2 t - k / 5))``: a wave of bends (joint angles up to ~50 degrees) runs from head to tail
    twice over the clip while the whole body turns 120 degrees about z. The joints are centred on the origin.
    """
    yaw = math.radians(120.0) * t
    joints = [np.zeros(3)]
    for k in range(_CHAIN_SEGMENTS):
        wave = 2.0 * math.pi * (2.0 * t - k / 5.0)
        heading, pitch = yaw + 0.75 * math.sin(wave), 0.3 * math.cos(wave)
        direction = np.array([math.cos(pitch) * math.cos(heading), math.cos(pitch) * math.sin(heading), math.sin(pitch)])
        joints.append(joints[-1] - _CHAIN_LENGTH * direction)  # the head leads along +direction; the tail trails
    centre = np.mean(joints, axis=0)
    joints = [j - centre for j in joints]
    prims: list[Primitive] = [Sphere(_vec(joints[0]), 0.14, (0.92, 0.92, 0.88))]
    for k in range(_CHAIN_SEGMENTS):
        radius = 0.12 - 0.007 * k  # tapering towards the tail
        prims.append(Capsule(_vec(joints[k]), _vec(joints[k + 1]), radius, _CHAIN_COLOURS[k]))
    return prims


SCENES: dict[str, SyntheticScene] = {
    s.name: s
    for s in (
        SyntheticScene("bouncing_balls", "four coloured spheres bouncing at different rates while drifting about z", bouncing_balls),
        SyntheticScene("jumping_jacks", "a capsule figure with a sphere head doing jumping jacks", jumping_jacks),
        SyntheticScene("spinning_box", "a box with checkered coloured faces spinning about z, rocking and breathing", spinning_box),
        SyntheticScene("windmill", "a windmill whose four differently coloured blades turn 1.5 times about a horizontal axis", windmill),
        SyntheticScene("walker", "a capsule figure walking its own height across the scene, legs and arms swinging", walker),
        SyntheticScene("chain", "a seven-segment colour-coded snake bending in a travelling wave while turning about z", chain),
    )
}


def get_scene(scene: str | SyntheticScene) -> SyntheticScene:
    """Look a scene up by name (or pass a :class:`SyntheticScene` through)."""
    if isinstance(scene, SyntheticScene):
        return scene
    if scene not in SCENES:
        raise Gen4DError(f"unknown synthetic scene {scene!r}; choose one of: {', '.join(SCENES)}")
    return SCENES[scene]


def bounding_radius(primitive: Primitive) -> float:
    """Distance from the world origin of the primitive's farthest point (for checking scenes stay in bounds)."""
    if isinstance(primitive, Sphere):
        return float(np.linalg.norm(primitive.center)) + primitive.radius
    if isinstance(primitive, Capsule):
        return max(float(np.linalg.norm(primitive.start)), float(np.linalg.norm(primitive.end))) + primitive.radius
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * np.array(primitive.half_size)
    world = corners @ np.array(primitive.rotation).T + np.array(primitive.center)
    return float(np.linalg.norm(world, axis=-1).max())


# -------------------------------------------------------------------------------------------------- ray casting
# Rays are stored component-major, origins and directions as [3, N] float32 tensors: elementwise work on three
# contiguous rows is several times faster on CPU than [N, 3] rows with reductions over the last axis, and float32
# resolves distances of ~5 units to ~1e-6, far below a pixel at the resolutions used here.
_DTYPE = torch.float32


def _col(v, dtype=_DTYPE) -> Tensor:
    return torch.tensor(v, dtype=dtype).reshape(3, 1)


def _bounding_sphere(prim: Primitive) -> tuple[np.ndarray, float]:
    """A sphere (centre, radius) enclosing the primitive, used to skip rays that cannot hit it."""
    if isinstance(prim, Sphere):
        return np.asarray(prim.center, dtype=np.float64), prim.radius
    if isinstance(prim, Capsule):
        a, b = np.asarray(prim.start, dtype=np.float64), np.asarray(prim.end, dtype=np.float64)
        return 0.5 * (a + b), 0.5 * float(np.linalg.norm(b - a)) + prim.radius
    return np.asarray(prim.center, dtype=np.float64), float(np.linalg.norm(prim.half_size))


def _may_hit(o: Tensor, d: Tensor, center: np.ndarray, radius: float) -> Tensor:
    """Conservative ``[N]`` mask of rays that pass within ``radius`` of ``center`` ahead of their origin."""
    oc = o - _col(center)
    b = (oc * d).sum(0)
    oc2 = (oc * oc).sum(0)
    r2 = (radius * 1.001 + 1e-4) ** 2  # margin so float rounding never culls a grazing hit
    return (oc2 - b * b <= r2) & ((b < 0) | (oc2 <= r2))


def _sphere_distance(o: Tensor, d: Tensor, center: Tensor, radius: float) -> Tensor:
    """Distance along unit rays ``d`` ``[3, N]`` to the first hit with a sphere (centre ``[3, 1]``); inf on a miss."""
    oc = o - center
    b = (oc * d).sum(0)
    # Squared distance from the centre to the ray's line via the perpendicular offset (no b^2 - c cancellation).
    perp = oc - b * d
    disc = radius * radius - (perp * perp).sum(0)
    root = disc.clamp_min(0.0).sqrt()
    near, far = -b - root, -b + root
    t = torch.where(near > _EPS, near, far)  # far only matters for a ray starting inside the sphere
    return torch.where((disc >= 0.0) & (t > _EPS), t, torch.full_like(t, math.inf))


def _capsule_distance(o: Tensor, d: Tensor, start: Tensor, end: Tensor, radius: float) -> Tensor:
    """First hit with a capsule: the nearest of its open cylinder (clipped to the segment) and its two end spheres.

    The capsule is the union of those three solids, so for a ray starting outside it the first entry into the
    union is the nearest of the three first entries.
    """
    axis = end - start
    length = float(axis.norm())
    best = torch.minimum(_sphere_distance(o, d, start, radius), _sphere_distance(o, d, end, radius))
    if length < 1e-12:
        return best
    u = axis / length
    oa = o - start
    du, ou = (d * u).sum(0), (oa * u).sum(0)
    d_perp = d - du * u  # components perpendicular to the axis, where the cylinder is a circle
    o_perp = oa - ou * u
    a = (d_perp * d_perp).sum(0)
    b = (o_perp * d_perp).sum(0)
    c = (o_perp * o_perp).sum(0) - radius * radius
    disc = b * b - a * c
    parallel = a < 1e-12  # rays along the axis can only enter through a cap, which the spheres cover
    t = (-b - disc.clamp_min(0.0).sqrt()) / torch.where(parallel, torch.ones_like(a), a)
    along = ou + t * du
    valid = ~parallel & (disc >= 0.0) & (t > _EPS) & (along >= 0.0) & (along <= length)
    return torch.minimum(best, torch.where(valid, t, torch.full_like(t, math.inf)))


def _box_local(o: Tensor, d: Tensor, box: Box) -> tuple[Tensor, Tensor, Tensor]:
    """Rays in the box frame (``R^T (o - c)``, ``R^T d``) and the half size ``[3, 1]``."""
    rotation_t = torch.tensor(box.rotation, dtype=o.dtype).T
    return rotation_t @ (o - _col(box.center, o.dtype)), rotation_t @ d, _col(box.half_size, o.dtype)


def _box_distance(o: Tensor, d: Tensor, box: Box) -> Tensor:
    """First hit with an oriented box by the slab method in the box frame; inf on a miss."""
    o_local, d_local, half = _box_local(o, d, box)
    # A ray parallel to a slab must get +-inf crossings, never 0 * inf = nan: nudge exact zeros to a signed tiny value.
    tiny = torch.where(d_local < 0, -1e-30, 1e-30).to(d_local)
    d_local = torch.where(d_local.abs() < 1e-30, tiny, d_local)
    t1, t2 = (-half - o_local) / d_local, (half - o_local) / d_local
    t_enter = torch.minimum(t1, t2).amax(0)
    t_exit = torch.maximum(t1, t2).amin(0)
    t = torch.where(t_enter > _EPS, t_enter, t_exit)
    return torch.where((t_enter <= t_exit) & (t_exit > _EPS), t, torch.full_like(t, math.inf))


def _distance(prim: Primitive, o: Tensor, d: Tensor) -> Tensor:
    if isinstance(prim, Sphere):
        return _sphere_distance(o, d, _col(prim.center, o.dtype), prim.radius)
    if isinstance(prim, Capsule):
        return _capsule_distance(o, d, _col(prim.start, o.dtype), _col(prim.end, o.dtype), prim.radius)
    if isinstance(prim, Box):
        return _box_distance(o, d, prim)
    raise TypeError(f"not a primitive: {prim!r}")


def _surface(prim: Primitive, o: Tensor, d: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Unit world normals ``[3, n]`` and albedos ``[3, n]`` at the hit points ``o + t d``."""
    dtype = o.dtype
    points = o + t * d
    if isinstance(prim, Sphere):
        normal = (points - _col(prim.center, dtype)) / prim.radius
        return normal, _col(prim.albedo, dtype).expand_as(normal)
    if isinstance(prim, Capsule):
        start, end = _col(prim.start, dtype), _col(prim.end, dtype)
        axis = end - start
        s = (((points - start) * axis).sum(0) / max(float((axis * axis).sum()), 1e-24)).clamp(0.0, 1.0)
        normal = (points - (start + s * axis)) / prim.radius  # away from the nearest point of the segment
        return normal, _col(prim.albedo, dtype).expand_as(normal)
    o_local, d_local, half = _box_local(o, d, prim)
    local = (o_local + t * d_local) / half  # in [-1, 1]^3; the hit face has |coordinate| = 1
    face_axis = local.abs().argmax(0, keepdim=True)  # [1, n]
    sign = local.gather(0, face_axis).sign()
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    normal_local = torch.zeros_like(local).scatter_(0, face_axis, sign)
    normal = torch.tensor(prim.rotation, dtype=dtype) @ normal_local
    face = (2 * face_axis + (sign < 0).long())[0]  # index into +x, -x, +y, -y, +z, -z
    # Checker cell from the two in-face coordinates; the face axis' own coordinate only adds a constant per face.
    cells = ((local + 1.0) * 0.5 * prim.checker).floor().clamp(0, prim.checker - 1).long()
    parity = (cells.sum(0) - cells.gather(0, face_axis)[0]) % 2
    albedo = torch.tensor(prim.face_albedos, dtype=dtype)[face].T * (1.0 - prim.checker_contrast * parity.to(dtype))
    return normal, albedo


def shade(albedo: Tensor, normal: Tensor) -> Tensor:
    """View-independent diffuse shading of ``[..., 3]`` albedos with unit normals ``[..., 3]``.

    ``albedo * (AMBIENT + (1 - AMBIENT) * max(0, n . LIGHT_DIR))``; no term depends on the viewing direction.
    """
    light = torch.tensor(LIGHT_DIR, dtype=normal.dtype)
    return albedo * (AMBIENT + (1.0 - AMBIENT) * (normal @ light).clamp_min(0.0))[..., None]


def _cast(primitives: list[Primitive], o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Colour ``[3, N]`` (0 on a miss) and hit mask ``[N]`` of component-major rays."""
    colour = torch.zeros_like(o)
    hit = torch.zeros(o.shape[1], dtype=torch.bool)
    if not primitives:
        return colour, hit
    # Most rays miss the whole scene: drop them against one sphere enclosing every primitive's bounding sphere.
    bounds = [_bounding_sphere(p) for p in primitives]
    centers = np.stack([c for c, _ in bounds])
    scene_center = 0.5 * (centers.min(0) + centers.max(0))
    scene_radius = max(float(np.linalg.norm(c - scene_center)) + r for c, r in bounds)
    keep = _may_hit(o, d, scene_center, scene_radius).nonzero()[:, 0]
    if keep.numel() == 0:
        return colour, hit
    sub_colour, sub_hit = _cast_candidates(primitives, bounds, o[:, keep], d[:, keep])
    colour[:, keep] = sub_colour
    hit[keep] = sub_hit
    return colour, hit


def _cast_candidates(primitives: list[Primitive], bounds: list[tuple[np.ndarray, float]], o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_cast` for rays that may hit the scene; ``bounds`` are the primitives' bounding spheres."""
    n = o.shape[1]
    best_t = torch.full((n,), math.inf, dtype=o.dtype)
    best_id = torch.full((n,), -1, dtype=torch.long)
    for k, (prim, (center, radius)) in enumerate(zip(primitives, bounds)):
        # Trace only rays that pass the primitive's bounding sphere: most rays miss any given part of the scene.
        rows = _may_hit(o, d, center, radius).nonzero()[:, 0]
        if rows.numel() == 0:
            continue
        t = _distance(prim, o[:, rows], d[:, rows])
        closer = t < best_t[rows]  # nearest hit wins
        rows = rows[closer]
        best_t[rows] = t[closer]
        best_id[rows] = k
    colour = torch.zeros_like(o)
    for k, prim in enumerate(primitives):
        rows = (best_id == k).nonzero()[:, 0]
        if rows.numel():
            normal, albedo = _surface(prim, o[:, rows], d[:, rows], best_t[rows])
            colour[:, rows] = shade(albedo.T, normal.T).T
    return colour, best_id >= 0


def cast_rays(primitives: list[Primitive], origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Shaded colour ``[N, 3]`` (0 where a ray hits nothing) and hit mask ``[N]`` of rays ``origins``, ``dirs`` ``[N, 3]``.

    Directions need not be unit length. The nearest hit along each ray wins.
    """
    o = origins.detach().to(_DTYPE).T.contiguous()
    d = dirs.detach().to(_DTYPE).T.contiguous()
    d = d * (d * d).sum(0).rsqrt()
    colour, hit = _cast(primitives, o, d)
    return colour.T, hit


def _camera_rays(viewmats: Tensor, Ks: Tensor, width: int, rows: tuple[int, int], supersample: int) -> tuple[Tensor, Tensor]:
    """Component-major sub-pixel rays ``[3, n * R * W * s * s]`` of ``n`` cameras for image rows ``rows``.

    viewmats ``[n, 4, 4]`` world-to-camera, Ks ``[n, 3, 3]``. Sub-pixel ``(i, j)`` of pixel ``(x, y)`` sits at
    ``(x + (i + 0.5) / s, y + (j + 0.5) / s)``: an s x s grid centred on the pixel centre ``(x + 0.5, y + 0.5)``.
    A ray's direction is ``R_c2w K^-1 [u, v, 1]``, normalised. Rays are ordered (camera, row, column, sub-pixel).
    """
    s = supersample
    c2w = torch.linalg.inv(viewmats.double())
    M = (c2w[:, :3, :3] @ torch.linalg.inv(Ks.double())).to(_DTYPE)  # [n, 3, 3]: pixel -> world direction
    offsets = (torch.arange(s, dtype=_DTYPE) + 0.5) / s
    ys = torch.arange(rows[0], rows[1], dtype=_DTYPE)
    xs = torch.arange(width, dtype=_DTYPE)
    v = (ys[:, None, None, None] + offsets[None, None, :, None]).expand(-1, width, s, s)
    u = (xs[None, :, None, None] + offsets[None, None, None, :]).expand(len(ys), -1, s, s)
    pix = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(u.numel(), dtype=_DTYPE)])  # [3, R*W*s*s]
    dirs = (M @ pix).permute(1, 0, 2).reshape(3, -1)  # [n, 3, P] -> [3, n*P]
    dirs = dirs * (dirs * dirs).sum(0).rsqrt()  # (torch.linalg.norm over dim 0 is several times slower)
    origins = c2w[:, :3, 3].T.to(_DTYPE)[:, :, None].expand(3, len(viewmats), pix.shape[1]).reshape(3, -1)
    return origins, dirs


def render_scene(
    scene: str | SyntheticScene, cameras: Cameras, supersample: int = 3, *, max_rays: int = 1 << 17
) -> tuple[Tensor, Tensor]:
    """Ray-cast ``scene`` for every camera at that camera's time.

    Returns ``rgb`` ``[C, H, W, 3]`` and ``alpha`` ``[C, H, W, 1]``, float32 in [0, 1]. ``rgb`` is **premultiplied**:
    the mean over a pixel's ``supersample**2`` sub-rays of the shaded colour, counting misses as 0; composite on a
    background ``b`` with ``rgb + (1 - alpha) * b``. ``alpha`` is the fraction of sub-rays that hit a primitive.
    ``max_rays`` bounds how many rays are traced at once (memory, and cache: ~1e5 is fastest on CPU).
    """
    spec = get_scene(scene)
    if isinstance(supersample, bool) or not isinstance(supersample, int) or supersample < 1:
        raise Gen4DError(f"supersample must be an integer >= 1, got {supersample!r}")
    C, H, W, s = len(cameras), cameras.height, cameras.width, supersample
    rgb = torch.zeros(C, H, W, 3, dtype=torch.float32)
    alpha = torch.zeros(C, H, W, 1, dtype=torch.float32)
    times = cameras.times.detach().cpu().double()
    viewmats, Ks = cameras.viewmats.detach().cpu(), cameras.Ks.detach().cpu()
    # The per-op tensors are small (~1e4-1e5 elements after culling), where intra-op threads cost more in
    # synchronisation than they gain, and much more on a busy machine: trace on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _render_into(spec, viewmats, Ks, times, s, max_rays, rgb, alpha)
    finally:
        torch.set_num_threads(threads)
    return rgb.clamp_(0.0, 1.0), alpha


def _render_into(
    spec: SyntheticScene, viewmats: Tensor, Ks: Tensor, times: Tensor, s: int, max_rays: int, rgb: Tensor, alpha: Tensor
) -> None:
    """Trace every camera of :func:`render_scene` and write its pixels into ``rgb`` and ``alpha`` in place."""
    H, W = rgb.shape[1], rgb.shape[2]
    rays_per_row = W * s * s
    for t in torch.unique(times).tolist():
        primitives = spec.at(t)
        indices = (times == t).nonzero()[:, 0]
        # Cameras sharing a time are traced together; a camera too big for one batch is split into row bands.
        cams_per_batch = max(1, max_rays // (H * rays_per_row))
        rows_per_batch = min(H, max(1, max_rays // rays_per_row))
        for c0 in range(0, len(indices), cams_per_batch):
            idx = indices[c0 : c0 + cams_per_batch]
            for r0 in range(0, H, rows_per_batch):
                r1 = min(H, r0 + rows_per_batch)
                o, d = _camera_rays(viewmats[idx], Ks[idx], W, (r0, r1), s)
                colour, hit = _cast(primitives, o, d)
                shape = (len(idx), r1 - r0, W, s * s)
                rgb[idx, r0:r1] = colour.T.reshape(*shape, 3).mean(-2)
                alpha[idx, r0:r1] = hit.reshape(shape).to(torch.float32).mean(-1, keepdim=True)


# ------------------------------------------------------------------------------------------------ D-NeRF writer
@dataclass(frozen=True)
class ViewPlan:
    """Where and when each frame of a split is seen: azimuths and elevations in degrees, times in [0, 1]."""

    azimuths_deg: np.ndarray
    elevations_deg: np.ndarray
    times: np.ndarray


def plan_views(train_views: int, train_times: int, test_views: int, val_views: int, seed: int = 0) -> dict[str, ViewPlan]:
    """Camera placement of a synthetic multi-view video (see :func:`write_synthetic_scene`).

    train: ``train_views`` azimuths evenly around 360 degrees (random common offset) at elevations spread over
    :data:`ELEVATION_RANGE_DEG`, each seen at all ``train_times`` evenly spaced times (time-major order).
    test / val: azimuths half-way between neighbouring training azimuths and times half-way between training
    times (``0.5`` if there is a single training time), so no (viewpoint, time) of these splits was trained on.
    """
    rng = np.random.default_rng(seed)
    step = 360.0 / train_views
    base_az = rng.uniform(0.0, step) + step * np.arange(train_views)
    base_el = rng.permutation(np.linspace(*ELEVATION_RANGE_DEG, train_views))
    times = frame_times(train_times).numpy()
    plans = {
        "train": ViewPlan(np.tile(base_az, train_times), np.tile(base_el, train_times), np.repeat(times, train_views)),
    }
    for split, count, sub_seed in (("test", test_views, 1), ("val", val_views, 2)):
        sub = np.random.default_rng([seed, sub_seed])
        gap0 = int(sub.integers(train_views))
        gaps = (gap0 + np.floor(np.arange(count) * train_views / max(count, 1)).astype(int)) % train_views
        az = (base_az[gaps] + 0.5 * step) % 360.0
        el = sub.uniform(*ELEVATION_RANGE_DEG, size=count)
        if train_times > 1:
            mids = np.resize(sub.permutation(train_times - 1), count)  # cycle through every gap between times
            t = (mids + 0.5) / (train_times - 1)
        else:
            t = np.full(count, 0.5)
        plans[split] = ViewPlan(az, el, t)
    return plans


LAYOUTS = ("multiview", "monocular")
"""Camera layouts of :func:`write_synthetic_scene`: every training camera at every training time (:func:`plan_views`),
or one camera per time as in D-NeRF's synthetic scenes (:func:`plan_monocular_views`)."""


def _random_directions(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Azimuths uniform in [0, 360) and elevations uniform in area over the band :data:`ELEVATION_RANGE_DEG`."""
    az = rng.uniform(0.0, 360.0, size=count)
    lo, hi = (math.sin(math.radians(e)) for e in ELEVATION_RANGE_DEG)
    el = np.degrees(np.arcsin(rng.uniform(lo, hi, size=count)))
    return az, el


def plan_monocular_views(train_times: int, test_views: int, val_views: int, seed: int = 0) -> dict[str, ViewPlan]:
    """Camera placement of a monocular video in the D-NeRF synthetic layout (see :func:`write_synthetic_scene`).

    train: ``train_times`` frames at evenly spaced times in time order, ONE camera per time, its azimuth and
    elevation drawn at random (seeded) over the whole band: azimuth uniform in [0, 360), elevation uniform in area
    between the bounds of :data:`ELEVATION_RANGE_DEG`.
    test / val: cameras drawn the same way (from their own seeded streams) at times half-way between neighbouring
    training times (distinct gaps while there are enough, in time order; ``0.5`` if there is a single training
    time), so no frame of these splits shares a time, let alone a (camera, time), with a training frame.
    """
    times = frame_times(train_times).numpy()
    az, el = _random_directions(np.random.default_rng([seed, 10]), train_times)
    plans = {"train": ViewPlan(az, el, times)}
    for split, count, sub_seed in (("test", test_views, 11), ("val", val_views, 12)):
        sub = np.random.default_rng([seed, sub_seed])
        if train_times > 1:
            gaps = train_times - 1
            mids = np.sort(np.resize(sub.permutation(gaps), count))  # distinct gaps, cycling once all are used
            t = (mids + 0.5) / gaps
        else:
            t = np.full(count, 0.5)
        az, el = _random_directions(sub, count)
        plans[split] = ViewPlan(az, el, t)
    return plans


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise Gen4DError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _to_rgba8(rgb_premultiplied: Tensor, alpha: Tensor) -> np.ndarray:
    """8-bit straight-alpha RGBA ``[..., H, W, 4]`` (what PNG stores) from premultiplied colour and alpha."""
    rgb = rgb_premultiplied.detach().cpu().numpy().astype(np.float64)
    a = alpha.detach().cpu().numpy().astype(np.float64)
    straight = np.divide(rgb, a, out=np.zeros_like(rgb), where=a > 0)
    rgba = np.clip(np.concatenate([straight, a], axis=-1), 0.0, 1.0)
    return np.rint(rgba * 255.0).astype(np.uint8)


def write_synthetic_scene(
    scene: str | SyntheticScene,
    out_dir: str | Path,
    *,
    resolution: int = 96,
    train_views: int = 16,
    train_times: int = 12,
    test_views: int = 8,
    fov_deg: float = 40.0,
    radius: float = 4.0,
    seed: int = 0,
    supersample: int = 3,
    layout: str = "multiview",
) -> Path:
    """Render a video of ``scene`` into ``out_dir`` in the D-NeRF layout and return ``out_dir``.

    Writes ``transforms_{train,val,test}.json`` (OpenGL camera-to-world ``transform_matrix``, ``time``,
    ``camera_angle_x`` = ``fov_deg`` in radians) and square RGBA PNGs ``{split}/r_000.png``... of
    ``resolution`` pixels. ``layout`` (one of :data:`LAYOUTS`) places the cameras:

    * ``multiview`` (default): train has ``train_views * train_times`` frames (every camera at every time), test
      ``test_views`` frames and val ``min(4, test_views)`` frames at viewpoints and times not in train (see
      :func:`plan_views`);
    * ``monocular``: D-NeRF's synthetic layout, train has ``train_times`` frames, one random camera per time
      (``train_views`` is not used), test ``test_views`` and val ``min(4, test_views)`` frames at random cameras
      and at times between training times (see :func:`plan_monocular_views`).

    Cameras orbit at distance ``radius`` looking at the origin. Deterministic for a seed. Also writes
    ``synthetic.json`` recording the arguments and the layout.
    """
    spec = get_scene(scene)
    resolution = _positive_int("resolution", resolution)
    train_views = _positive_int("train_views", train_views)
    train_times = _positive_int("train_times", train_times)
    test_views = _positive_int("test_views", test_views)
    if layout not in LAYOUTS:
        raise Gen4DError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not 0.0 < fov_deg < 180.0:
        raise Gen4DError(f"fov_deg must be in (0, 180), got {fov_deg!r}")
    if not radius > 1.2:
        raise Gen4DError(f"radius must exceed the scene's bounding radius (~1) with margin, got {radius!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fov = math.radians(fov_deg)
    K = intrinsics_from_fov(fov, resolution, resolution)
    if layout == "monocular":
        plans = plan_monocular_views(train_times, test_views, min(4, test_views), seed)
        train_views = 1
    else:
        plans = plan_views(train_views, train_times, test_views, min(4, test_views), seed)
    for split, plan in plans.items():
        c2w = orbit_c2w(torch.from_numpy(plan.azimuths_deg), torch.from_numpy(plan.elevations_deg), radius)  # [M,4,4] f64
        cameras = Cameras(viewmat_from_c2w(c2w), K.expand(len(c2w), 3, 3), resolution, resolution, torch.from_numpy(plan.times))
        rgba8 = _to_rgba8(*render_scene(spec, cameras, supersample))
        (out / split).mkdir(exist_ok=True)
        digits = max(3, len(str(len(c2w) - 1)))
        frames = []
        for i in range(len(c2w)):
            name = f"r_{i:0{digits}d}"
            Image.fromarray(rgba8[i], "RGBA").save(out / split / f"{name}.png")
            frames.append({"file_path": f"./{split}/{name}", "time": float(plan.times[i]), "transform_matrix": opengl_to_opencv(c2w[i]).tolist()})
        (out / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": fov, "frames": frames}, indent=2))
    info = {
        "scene": spec.name,
        "description": spec.description,
        "resolution": resolution,
        "train_views": train_views,
        "train_times": train_times,
        "test_views": test_views,
        "fov_deg": fov_deg,
        "radius": radius,
        "seed": seed,
        "supersample": supersample,
        "light_dir": list(LIGHT_DIR),
        "ambient": AMBIENT,
        "layout": layout,
    }
    (out / "synthetic.json").write_text(json.dumps(info, indent=2))
    return out
