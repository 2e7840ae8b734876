"""The Consistent4D video-to-4D benchmark (Jiang et al., ICLR 2024): layout, input frames, ground-truth views and
their cameras in gen4d's conventions.

Layout
------
Consistent4D publishes two archives (links in github.com/yanqinJiang/Consistent4D, README):

* input videos only: ``<root>/in-the-wild/<object>/`` and ``<root>/synthetic/<object>/``, each a folder of RGBA
  frames ``0.png, 1.png, ...`` (the README's "Data preparation": frames named ``{id}.png``, RGBA, 2 s of video
  sampled to 32 frames);
* the test set: seven animated objects (``aurorus, crocodile, guppie, monster, pistol, skull, trump``) with
  ground-truth novel views ``<root>/eval_gt/<object>/eval_<k>/<i>.png``, ``k = 0..3``, ``i = 0..31``, RGBA
  (DreamGaussian4D's ``scripts/add_bg_to_gt.py`` reads exactly these paths; the evaluation scripts expect
  ``gt/<object>/eval_<k>/<i>.png`` and ``pred/<object>/eval_<k>/<i>.png``). The evaluation composites the RGBA
  ground truth on **white** first (README: "first transform rgba gt images to images with white background").

Which folder holds a test object's input video is not fixed by those sources, so :func:`find_object` accepts
the object's frame folder under any of :data:`INPUT_DIRS` (or directly under the root), and the ground truth
under any of :data:`GT_DIRS`. Frames are numbered ``0 .. T-1``; any ``T`` is accepted (others evaluate on 30).

Cameras (the test set's ``readme.txt``, quoted by the authors in Consistent4D issue #12; issue #10)
-----------------------------------------------------------------------------------------------------------
"The input data [is captured] with a static camera set at an azimuth angle of 0 deg. For evaluation, we generate
four distinct views at azimuth angles of -75, 15, 105 and 195 deg, respectively (no modifications to elevation,
radius and other camera parameters)": ``eval_0 .. eval_3`` are azimuths :data:`EVAL_AZIMUTHS_DEG`, elevation 0,
and the training camera of ``configs/consistent4d.yaml``: distance 2.0, vertical field of view 49.1 deg, looking
at the origin.

Azimuth and elevation follow threestudio, on which Consistent4D is built (``threestudio/data/uncond_t.py``): the
camera sits at ``r (cos el cos az, cos el sin az, sin el)`` in a z-up world, azimuth measured from +x towards +y,
looking at the origin with up +z; its camera-to-world has columns ``(right, up, -forward)`` = OpenGL axes.
gen4d's :func:`gen4d.cameras.orbit_eye` is the same formula in the same z-up world, and its ``c2w`` uses OpenCV
axes (right, down, forward), so: **same azimuth, same elevation, same distance; ``c2w_gen4d =
opengl_to_opencv(c2w_threestudio)``**. The intrinsics come from the vertical field of view:
``fy = fx = H / (2 tan(fovy / 2))``, principal point at the image centre.

Worked example (``eval_1``: azimuth 15 deg, elevation 0, distance 2)::

    eye     = (2 cos 15, 2 sin 15, 0)          = (1.931852, 0.517638, 0)
    forward = -eye / |eye|                     = (-0.965926, -0.258819, 0)
    right   = forward x (0, 0, 1)              = (-0.258819, 0.965926, 0)
    up      = right x forward                  = (0, 0, 1)
    threestudio c2w[:3, :3] = [right | up | -forward];  gen4d c2w[:3, :3] = [right | -up | forward]

At azimuth 0 (the input camera) the image's right is world +y and its down is world -z.

Input framing
-------------
``gen4d video`` recentres its input (:func:`gen4d.data.preprocess.load_video_frames`: one square source region
for all frames, scaled so the union of the foreground boxes spans ``1 - border_ratio`` of the canvas), while
the ground truth keeps Consistent4D's framing. :func:`input_alignment` turns that 2D crop into the similarity
``x_run = s x_c4d + target`` between Consistent4D's world and the run's, and :func:`aligned_eval_cameras` moves
the evaluation cameras with it, so that a run's renders line up with the ground truth.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .. import Gen4DError
from ..cameras import Cameras, orbit_cameras
from .frames import IMAGE_SUFFIXES, natural_sort_key, read_image_file
from .preprocess import _foreground_box, _recentre_region, _square_region, _union

__all__ = [
    "CAMERA_DISTANCE",
    "EVAL_AZIMUTHS_DEG",
    "EVAL_ELEVATION_DEG",
    "FOVY_DEG",
    "GT_DIRS",
    "INPUT_AZIMUTH_DEG",
    "INPUT_DIRS",
    "NUM_FRAMES",
    "TEST_OBJECTS",
    "Consistent4DObject",
    "InputAlignment",
    "aligned_eval_cameras",
    "consistent4d_cameras",
    "consistent4d_input_frames",
    "find_object",
    "frame_files",
    "input_alignment",
    "list_objects",
    "read_frames",
    "threestudio_c2w",
]

#: The seven animated test objects (Consistent4D README, test_dataset_uid.txt; DreamGaussian4D add_bg_to_gt.py).
TEST_OBJECTS = ("aurorus", "crocodile", "guppie", "monster", "pistol", "skull", "trump")
#: Frames per video in the test set.
NUM_FRAMES = 32
#: Azimuths of ``eval_0 .. eval_3`` in degrees (threestudio convention: from +x towards +y, z up).
EVAL_AZIMUTHS_DEG = (-75.0, 15.0, 105.0, 195.0)
#: Elevation of every evaluation camera and of the input camera, in degrees.
EVAL_ELEVATION_DEG = 0.0
#: Azimuth of the input video's camera, in degrees.
INPUT_AZIMUTH_DEG = 0.0
#: Camera distance from the origin (``configs/consistent4d.yaml``: ``default_camera_distance``).
CAMERA_DISTANCE = 2.0
#: Vertical field of view in degrees (``default_fovy_deg``; Zero123's rendering setting).
FOVY_DEG = 49.1
#: Folders that may hold ground truth ``<dir>/<object>/eval_<k>/``, in the order they are tried.
GT_DIRS = ("eval_gt", "gt", "eval_gt_rgb")
#: Folders that may hold input frames ``<dir>/<object>/<i>.png``, in the order they are tried (then ``<root>``).
INPUT_DIRS = ("input", "inputs", "eval_input", "synthetic", "in-the-wild")

_VIEW = re.compile(r"^eval_(\d+)$")


# --------------------------------------------------------------------------------------------------------------
# Layout


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """Image files of a frame folder in frame order.

    Consistent4D names frames ``0.png .. {T-1}.png``: when every stem is an integer the files are ordered by it and
    must be exactly ``0 .. T-1`` (a gap would shift every later frame's time). Other names sort naturally.
    Raises :class:`Gen4DError` for a missing folder, no images or a gap in the numbering.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise Gen4DError(f"frame folder not found: {folder}")
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise Gen4DError(f"no images in {folder} (expected frames 0.png, 1.png, ...)")
    if all(p.stem.isdigit() for p in files):
        files.sort(key=lambda p: int(p.stem))
        numbers = [int(p.stem) for p in files]
        if numbers != list(range(len(files))):
            missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
            what = f"{missing[0]}.png is missing" if missing else "a number appears twice"
            raise Gen4DError(f"frames in {folder} must be numbered 0 .. T-1 without gaps; {what}")
        return files
    return sorted(files, key=lambda p: natural_sort_key(p.name))


def _views_in(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    views = [p.name for p in folder.iterdir() if p.is_dir() and _VIEW.match(p.name)]
    return sorted(views, key=lambda v: int(_VIEW.match(v).group(1)))


def _has_frames(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())


@dataclass
class Consistent4DObject:
    """One object of the benchmark: where its input frames and its ground-truth views are (either may be None)."""

    name: str
    input_dir: Path | None
    gt_dir: Path | None

    def input_frames(self) -> list[Path]:
        """The input video's frames in order (``0.png .. {T-1}.png``)."""
        if self.input_dir is None:
            raise Gen4DError(f"no input frames found for Consistent4D object {self.name!r}; expected <root>/<{'|'.join(INPUT_DIRS)}>/{self.name}/0.png ...")
        return frame_files(self.input_dir)

    def views(self) -> list[str]:
        """Ground-truth view names in order: ``["eval_0", "eval_1", ...]``."""
        if self.gt_dir is None:
            raise Gen4DError(
                f"no ground truth found for Consistent4D object {self.name!r}; expected "
                f"<root>/<{'|'.join(GT_DIRS)}>/{self.name}/eval_0/0.png ... (the Consistent4D test set)"
            )
        views = _views_in(self.gt_dir)
        if not views:
            raise Gen4DError(f"{self.gt_dir} holds no eval_<k> view folders")
        return views

    def view_frames(self, view: str) -> list[Path]:
        """Frames of one ground-truth view in order."""
        views = self.views()
        if view not in views:
            raise Gen4DError(f"{self.gt_dir} has no view {view!r} (views: {', '.join(views)})")
        return frame_files(self.gt_dir / view)

    def view_index(self, view: str) -> int:
        """``k`` of ``eval_<k>``: the index into the evaluation azimuths."""
        m = _VIEW.match(view)
        if not m:
            raise Gen4DError(f"{view!r} is not a Consistent4D view name (eval_<k>)")
        return int(m.group(1))


def _gt_candidates(root: Path, name: str) -> list[Path]:
    return [root / d / name for d in GT_DIRS] + [root / name]


def _input_candidates(root: Path, name: str) -> list[Path]:
    return [root / d / name for d in INPUT_DIRS] + [root / name]


def find_object(path: str | os.PathLike, name: str | None = None) -> Consistent4DObject:
    """Locate an object's input frames and ground truth.

    ``path`` may be (1) the dataset root, with ``name``; (2) the object's ground-truth folder (it holds ``eval_<k>``
    folders); (3) the object's input-frame folder. In cases 2 and 3 the other half is looked up beside it: under
    the folder two levels up, in :data:`INPUT_DIRS` / :data:`GT_DIRS`. Raises :class:`Gen4DError` when neither
    half exists.
    """
    path = Path(path)
    if not path.exists():
        raise Gen4DError(f"Consistent4D data not found: {path}")
    if name:
        root = path
        gt = next((c for c in _gt_candidates(root, name) if _views_in(c)), None)
        inp = next((c for c in _input_candidates(root, name) if _has_frames(c) and not _views_in(c)), None)
        if gt is None and inp is None:
            known = ", ".join(list_objects(root)) or "none"
            raise Gen4DError(f"no Consistent4D object {name!r} under {root} (objects found: {known})")
        return Consistent4DObject(name, inp, gt)
    name = path.name
    root = path.parent.parent
    if _views_in(path):
        inp = next((c for c in _input_candidates(root, name) if _has_frames(c) and not _views_in(c)), None)
        return Consistent4DObject(name, inp, path)
    if _has_frames(path):
        gt = next((c for c in _gt_candidates(root, name) if _views_in(c)), None)
        return Consistent4DObject(name, path, gt)
    raise Gen4DError(
        f"{path} is neither a Consistent4D object folder (frames 0.png ... or eval_<k>/ views) nor, without an "
        "object name, a dataset root; pass the object name too"
    )


def list_objects(root: str | os.PathLike) -> list[str]:
    """Names of the objects under a dataset root that have input frames or ground truth, sorted."""
    root = Path(root)
    names: set[str] = set()
    for d in (*GT_DIRS, *INPUT_DIRS):
        folder = root / d
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if p.is_dir() and (_views_in(p) or _has_frames(p)))
    if root.is_dir():
        names.update(p.name for p in root.iterdir() if p.is_dir() and p.name not in (*GT_DIRS, *INPUT_DIRS) and (_views_in(p) or _has_frames(p)))
    return sorted(names)


def consistent4d_input_frames(path: str | os.PathLike, name: str | None = None) -> list[Path]:
    """The input video's frames of a Consistent4D object (arguments as :func:`find_object`), in order.

    ``gen4d video`` can take the folder these files are in (``find_object(...).input_dir``) as it is:
    :func:`gen4d.data.preprocess.load_video_frames` sorts ``0.png .. 31.png`` numerically and uses their alpha.
    """
    return find_object(path, name).input_frames()


# --------------------------------------------------------------------------------------------------------------
# Images


def read_frames(paths: Sequence[str | os.PathLike], background: Sequence[float] = (1.0, 1.0, 1.0)) -> Tensor:
    """Frames ``[T, H, W, 3]`` float32 in [0, 1], RGBA composited on ``background`` and rounded to 8 bits (as
    writing the composited image to a PNG would). All frames must share one size; else :class:`Gen4DError`."""
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
    out = []
    for p in paths:
        try:
            with Image.open(p) as img:
                arr = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as e:
            raise Gen4DError(f"cannot read {p} as an image ({type(e).__name__})") from None
        if out and arr.shape[:2] != out[0].shape[:2]:
            raise Gen4DError(f"frames of different sizes: {paths[0]} is {out[0].shape[1]}x{out[0].shape[0]}, {p} is {arr.shape[1]}x{arr.shape[0]}")
        rgb = arr[..., :3] * arr[..., 3:] + bg * (1.0 - arr[..., 3:])
        out.append(np.round(rgb * 255.0) / 255.0)
    if not out:
        raise Gen4DError("no frames to read")
    return torch.from_numpy(np.stack(out).astype(np.float32))


# --------------------------------------------------------------------------------------------------------------
# Cameras


def threestudio_c2w(azimuth_deg, elevation_deg, distance) -> Tensor:
    """Camera-to-world ``[..., 4, 4]`` (float64, **OpenGL** axes) of threestudio's orbit camera, as Consistent4D
    builds it: eye ``r (cos el cos az, cos el sin az, sin el)``, looking at the origin, up +z, columns
    ``(right, up, -forward)``. gen4d's camera for the same view is ``opengl_to_opencv`` of this matrix."""
    az = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float64))
    el = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float64))
    r = torch.as_tensor(distance, dtype=torch.float64)
    az, el, r = torch.broadcast_tensors(az, el, r)
    eye = torch.stack([r * el.cos() * az.cos(), r * el.cos() * az.sin(), r * el.sin()], dim=-1)
    forward = -eye / eye.norm(dim=-1, keepdim=True)
    z_up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(forward)
    right = torch.linalg.cross(forward, z_up)
    right = right / right.norm(dim=-1, keepdim=True)
    up = torch.linalg.cross(right, forward)
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=torch.float64)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, up, -forward, eye
    c2w[..., 3, 3] = 1.0
    return c2w


def _fov_x(fovy_deg: float, width: int, height: int) -> float:
    """Horizontal field of view (radians) of square pixels with vertical field of view ``fovy_deg``."""
    return 2.0 * math.atan(math.tan(math.radians(fovy_deg) / 2.0) * width / height)


def consistent4d_cameras(
    azimuths_deg: Sequence[float] = EVAL_AZIMUTHS_DEG,
    elevation_deg: float = EVAL_ELEVATION_DEG,
    distance: float = CAMERA_DISTANCE,
    fovy_deg: float = FOVY_DEG,
    width: int = 512,
    height: int = 512,
    times: Sequence[float] | Tensor = (0.0,),
    target: Sequence[float] = (0.0, 0.0, 0.0),
) -> list[Cameras]:
    """Consistent4D's orbit cameras in gen4d's conventions: one :class:`Cameras` batch per azimuth, one camera per
    time (``[T]`` cameras, times as given, e.g. ``frame_times(T)``). Defaults: the four evaluation views.

    The camera looks at ``target`` from ``target + distance * (cos el cos az, cos el sin az, sin el)``; ``fovy_deg``
    is the vertical field of view of a ``width x height`` image with square pixels (see the module docstring).
    """
    times = torch.as_tensor(times, dtype=torch.float32).reshape(-1)
    fov_x = _fov_x(fovy_deg, width, height)
    out = []
    for az in azimuths_deg:
        # orbit_cameras takes the horizontal field of view; fx = W / (2 tan(fov_x / 2)) = H / (2 tan(fovy / 2)) = fy.
        out.append(orbit_cameras([float(az)] * len(times), elevation_deg, distance, fov_x, width, height, times=times, target=tuple(float(v) for v in target)))
    return out


@dataclass(frozen=True)
class InputAlignment:
    """How a gen4d run's world relates to Consistent4D's: ``x_run = scale * x_c4d + target`` (see
    :func:`input_alignment`). Cameras of Consistent4D at distance ``D`` become cameras at distance ``scale * D``
    looking at ``target``; ``distance`` is that for the benchmark's distance 2.0."""

    scale: float
    target: tuple[float, float, float]
    distance: float
    zoom: float
    """Image scale of the crop in normalised image coordinates (``k`` in ``u_run = k u_c4d + shift``)."""
    shift: tuple[float, float]
    """Offset of the crop in normalised image coordinates (x right, y down)."""
    region: tuple[float, float, float, float]
    """The square source region of the input frames that became the run's canvas: x0, y0, x1, y1 in pixels."""


def input_alignment(
    frames: Sequence[str | os.PathLike],
    size: int,
    border_ratio: float,
    run_distance: float,
    run_fov_deg: float,
    fovy_deg: float = FOVY_DEG,
    recentred: bool = True,
    distance: float = CAMERA_DISTANCE,
) -> InputAlignment:
    """The similarity that maps Consistent4D's object into the world a ``gen4d video`` run reconstructed.

    The run saw the input frames (taken by Consistent4D's input camera: azimuth 0, ``fovy_deg``) cut to a square
    source region ``(x0, y0, x0 + L, y0 + L)`` and resized to ``size``; ``recentred=True`` computes that region the
    way :func:`gen4d.data.preprocess.load_video_frames` does for RGBA frames (union of the foreground boxes,
    ``border_ratio``), ``False`` takes the whole frame padded to a square. With ``t0 = tan(fovy/2)``,
    ``t1 = tan(run_fov/2)`` and the input frames ``W0 x H0``, normalised image coordinates ``u = (pixel - centre) /
    focal`` of the two cameras are related by ``u_run = k u_c4d + m`` with

        ``k = (H0 / L) (t1 / t0)``,  ``m = (2 t1) ((W0/2 - x0) / L - 1/2, (H0/2 - y0) / L - 1/2)``.

    For an object small against its distance from the camera (the affine camera model: ``u = lateral / depth``)
    the 3D similarity ``x_run = s x_c4d + target`` with ``s = k R1 / R0`` and ``target = R1 (m_x right + m_y down)``
    reproduces that image map at the run's input camera (distance ``R1`` = ``run_distance``, right = +y, down = -z
    at azimuth 0); ``R0`` is Consistent4D's distance, which cancels out of the camera placement.
    """
    paths = list(frames)
    if not paths:
        raise Gen4DError("no input frames to align the evaluation cameras with")
    arrays = [read_image_file(Path(p)) for p in paths]
    h0, w0 = arrays[0][0].shape[:2]
    if any(a.shape[:2] != (h0, w0) for a, _ in arrays):
        raise Gen4DError(f"input frames of different sizes in {Path(paths[0]).parent}")
    if recentred:
        if not any(meaningful for _, meaningful in arrays):
            raise Gen4DError(f"the input frames in {Path(paths[0]).parent} have no alpha channel; Consistent4D inputs are RGBA")
        box = _union([_foreground_box(a[..., 3]) for a, _ in arrays])
        if box is None:
            raise Gen4DError(f"no foreground in the input frames in {Path(paths[0]).parent}")
        region = _recentre_region(box, size, border_ratio)
    else:
        region = _square_region(h0, w0, fit="pad")
    x0, y0, x1, _ = region
    side = x1 - x0
    t0, t1 = math.tan(math.radians(fovy_deg) / 2.0), math.tan(math.radians(run_fov_deg) / 2.0)
    k = (h0 / side) * (t1 / t0)
    m = (2.0 * t1 * ((w0 / 2.0 - x0) / side - 0.5), 2.0 * t1 * ((h0 / 2.0 - y0) / side - 0.5))
    r1 = float(run_distance)
    target = (0.0, r1 * m[0], -r1 * m[1])  # right = +y, down = -z for the input camera at azimuth 0
    scale = k * r1 / distance
    return InputAlignment(scale, target, scale * distance, k, m, tuple(float(v) for v in region))


def aligned_eval_cameras(
    alignment: InputAlignment,
    width: int,
    height: int,
    times: Sequence[float] | Tensor,
    azimuths_deg: Sequence[float] = EVAL_AZIMUTHS_DEG,
    elevation_deg: float = EVAL_ELEVATION_DEG,
    fovy_deg: float = FOVY_DEG,
) -> list[Cameras]:
    """The evaluation cameras in a run's world: Consistent4D's cameras moved by ``alignment`` (their intrinsics,
    ``fovy_deg`` at ``width x height``, unchanged). One batch of ``len(times)`` cameras per azimuth."""
    return consistent4d_cameras(azimuths_deg, elevation_deg, alignment.distance, fovy_deg, width, height, times, alignment.target)
