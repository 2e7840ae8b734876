"""Reader for multi-view videos stored in the D-NeRF (Blender) format.

Layout of a scene folder ``DIR``::

    DIR/transforms_train.json   DIR/transforms_test.json   [DIR/transforms_val.json]
    DIR/train/r_000.png ...     (RGBA PNGs; the paths come from the JSON files)

Each JSON file is ``{"camera_angle_x": float (radians, horizontal field of view), "frames": [{"file_path":
"./train/r_000", "transform_matrix": 4x4 OpenGL camera-to-world, "time": float in [0, 1]}, ...]}``. ``file_path``
is relative to ``DIR`` and may or may not end with ``.png``.

Everything the reader returns follows :mod:`gen4d.cameras`: OpenCV camera axes, ``viewmat`` = world-to-camera,
pixel centres at integer + 0.5, times in ``[0, 1]``. Malformed input raises :class:`gen4d.Gen4DError` with one line
naming the problem and the file, before any partially loaded data is handed out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from gen4d import Gen4DError
from gen4d.cameras import Cameras, intrinsics_from_fov, opengl_to_opencv

Background = tuple[float, float, float]

#: Splits read by :func:`read_dnerf_scene`; ``train`` and ``test`` are required, ``val`` is optional.
REQUIRED_SPLITS = ("train", "test")
OPTIONAL_SPLITS = ("val",)

# Suffixes a ``file_path`` may already carry; anything else gets ".png" appended (D-NeRF writes none).
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class MultiViewVideo:
    """One split of a multi-view video: M frames, each an image seen by its own camera at its own time.

    images: ``[M, H, W, 3]`` float32 in [0, 1], composited on ``background``.
    alphas: ``[M, H, W, 1]`` float32 in [0, 1] (all ones for images without an alpha channel).
    cameras: M cameras (float32 OpenCV ``viewmats``, ``Ks`` in pixels of the returned images, ``times`` ``[M]``).
    names: basename of each frame's ``file_path`` without the image suffix, e.g. ``"r_000"``.
    background: RGB in [0, 1] the images were composited on.
    """

    images: Tensor
    alphas: Tensor
    cameras: Cameras
    names: list[str]
    background: Background

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def times(self) -> Tensor:
        """``[M]`` normalised frame times."""
        return self.cameras.times

    @property
    def width(self) -> int:
        return self.cameras.width

    @property
    def height(self) -> int:
        return self.cameras.height

    def premultiplied(self) -> Tensor:
        """``[M, H, W, 3]`` colour times alpha, i.e. the images with the background taken out again."""
        bg = torch.tensor(self.background, dtype=self.images.dtype)
        return self.images - (1.0 - self.alphas) * bg


@dataclass
class _FrameSpec:
    """One validated JSON frame, before its image is read."""

    index: int
    file_path: str
    image_path: Path
    name: str
    c2w_opengl: np.ndarray  # [4, 4] float64
    time: float


@dataclass
class _SplitSpec:
    json_path: Path
    camera_angle_x: float
    frames: list[_FrameSpec]


# ----------------------------------------------------------------------------------------------------- public API
def parse_background(background: str | Sequence[float]) -> Background:
    """``"white"`` | ``"black"`` | an ``(r, g, b)`` sequence in [0, 1] -> an RGB tuple of floats."""
    if isinstance(background, str):
        named = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
        key = background.strip().lower()
        if key in named:
            return named[key]
        raise Gen4DError(f"background must be 'white', 'black' or an (r, g, b) tuple in [0, 1], got {background!r}")
    try:
        values = tuple(float(v) for v in background)
    except (TypeError, ValueError):
        raise Gen4DError(f"background must be 'white', 'black' or an (r, g, b) tuple in [0, 1], got {background!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise Gen4DError(f"background must be 'white', 'black' or an (r, g, b) tuple in [0, 1], got {background!r}")
    return values  # type: ignore[return-value]


def load_dnerf(
    path: str | Path,
    split: str = "train",
    downscale: int = 1,
    background: str | Sequence[float] = "white",
) -> MultiViewVideo:
    """Read one split (``DIR/transforms_<split>.json`` and its images) of a D-NeRF scene.

    downscale: integer factor >= 1; images are shrunk by area averaging of premultiplied colour (so colour
    under transparent pixels never bleeds into edges) and ``K`` is scaled to match.
    background: ``"white"``, ``"black"`` or ``(r, g, b)`` in [0, 1], used to composite RGBA images.
    """
    root = _check_folder(path)
    factor = _check_downscale(downscale)
    bg = parse_background(background)
    json_path = root / f"transforms_{split}.json"
    if not json_path.is_file():
        raise Gen4DError(f"{json_path} not found: a D-NeRF scene needs transforms_{split}.json in {root}")
    spec = _read_split_spec(json_path, root)
    return _load_split(spec, factor, bg)


def read_dnerf_scene(
    path: str | Path,
    downscale: int = 1,
    background: str | Sequence[float] = "white",
) -> dict[str, MultiViewVideo]:
    """Read every split of a D-NeRF scene: ``train`` and ``test`` (required) and ``val`` (when present).

    All JSON files are validated before any image is decoded, and all images before anything is returned, so a
    bad scene fails fast and never half-loads. Arguments as in :func:`load_dnerf`.
    """
    root = _check_folder(path)
    factor = _check_downscale(downscale)
    bg = parse_background(background)
    missing = [f"transforms_{s}.json" for s in REQUIRED_SPLITS if not (root / f"transforms_{s}.json").is_file()]
    if missing:
        raise Gen4DError(f"{' and '.join(missing)} not found in {root}: a D-NeRF scene needs transforms_train.json and transforms_test.json")
    splits = list(REQUIRED_SPLITS) + [s for s in OPTIONAL_SPLITS if (root / f"transforms_{s}.json").is_file()]
    specs = {s: _read_split_spec(root / f"transforms_{s}.json", root) for s in splits}
    return {s: _load_split(spec, factor, bg) for s, spec in specs.items()}


# ------------------------------------------------------------------------------------------------- validation
def _check_folder(path: str | Path) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise Gen4DError(f"scene folder {root} does not exist")
    if not root.is_dir():
        raise Gen4DError(f"{root} is not a folder: pass the folder that holds transforms_train.json")
    return root


def _check_downscale(downscale: Any) -> int:
    if isinstance(downscale, bool) or not isinstance(downscale, (int, np.integer)) or downscale < 1:
        raise Gen4DError(f"downscale must be an integer >= 1, got {downscale!r}")
    return int(downscale)


def _is_real(value: Any) -> bool:
    # JSON true/false arrive as bool, a subclass of int; they are never a valid angle or time.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_split_spec(json_path: Path, root: Path) -> _SplitSpec:
    """Parse and validate one transforms JSON without touching its images."""
    name = json_path.name
    try:
        text = json_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise Gen4DError(f"cannot read {json_path}: {err}") from err
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise Gen4DError(f"{json_path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno} (char {err.pos})") from err
    if not isinstance(meta, dict):
        raise Gen4DError(f"{json_path} must hold a JSON object with 'camera_angle_x' and 'frames', got a {type(meta).__name__}")

    if "camera_angle_x" not in meta:
        raise Gen4DError(f"{json_path} has no 'camera_angle_x' (the horizontal field of view in radians)")
    angle = meta["camera_angle_x"]
    if not _is_real(angle) or not math.isfinite(angle) or not 0.0 < angle < math.pi:
        raise Gen4DError(f"'camera_angle_x' in {json_path} must be a field of view in radians in (0, pi), got {angle!r}")

    if "frames" not in meta:
        raise Gen4DError(f"{json_path} has no 'frames' list")
    raw_frames = meta["frames"]
    if not isinstance(raw_frames, list):
        raise Gen4DError(f"'frames' in {json_path} must be a list, got a {type(raw_frames).__name__}")
    if not raw_frames:
        raise Gen4DError(f"{json_path} has no frames: the scene is empty")

    frames = [_parse_frame(i, frame, name, json_path, root) for i, frame in enumerate(raw_frames)]
    return _SplitSpec(json_path=json_path, camera_angle_x=float(angle), frames=frames)


def _parse_frame(i: int, frame: Any, name: str, json_path: Path, root: Path) -> _FrameSpec:
    where = f"frame {i} of {json_path}"
    if not isinstance(frame, dict):
        raise Gen4DError(f"{where} must be a JSON object, got a {type(frame).__name__}")

    file_path = frame.get("file_path")
    if not isinstance(file_path, str) or not file_path.strip():
        raise Gen4DError(f"{where} has no 'file_path' string (the image path relative to {root})")

    if "transform_matrix" not in frame:
        raise Gen4DError(f"{where} has no 'transform_matrix' (4x4 camera-to-world)")
    try:
        c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError):
        raise Gen4DError(f"'transform_matrix' of {where} is not a 4x4 matrix of numbers") from None
    if c2w.shape != (4, 4):
        raise Gen4DError(f"'transform_matrix' of {where} is not a 4x4 matrix (shape {tuple(c2w.shape)})")
    if not np.isfinite(c2w).all():
        raise Gen4DError(f"'transform_matrix' of {where} has non-finite entries (NaN or infinity)")
    if not np.allclose(c2w[3], [0.0, 0.0, 0.0, 1.0], atol=1e-4):
        raise Gen4DError(f"'transform_matrix' of {where} must end with the row [0, 0, 0, 1], got {c2w[3].tolist()}")
    if abs(np.linalg.det(c2w[:3, :3])) < 1e-8:
        raise Gen4DError(f"'transform_matrix' of {where} has a singular rotation block")

    if "time" not in frame:
        raise Gen4DError(f"frame {i} of {name} has no 'time'; every frame of a 4D scene needs one ({json_path})")
    time = frame["time"]
    if not _is_real(time) or not math.isfinite(time) or not 0.0 <= time <= 1.0:
        raise Gen4DError(f"'time' of {where} must be a number in [0, 1], got {time!r}")

    image_path, stem = _resolve_image(root, file_path)
    return _FrameSpec(index=i, file_path=file_path, image_path=image_path, name=stem, c2w_opengl=c2w, time=float(time))


def _resolve_image(root: Path, file_path: str) -> tuple[Path, str]:
    """Image path on disk and the frame name (basename without the image suffix)."""
    rel = Path(file_path)
    has_suffix = rel.suffix.lower() in _IMAGE_SUFFIXES
    image_path = root / (rel if has_suffix else rel.with_name(rel.name + ".png"))
    # Only a known image suffix is stripped: "frame.001" is a name, not "frame" with suffix ".001".
    stem = rel.name[: -len(rel.suffix)] if has_suffix else rel.name
    return image_path, stem


# ------------------------------------------------------------------------------------------------------ images
def _read_rgba(frame: _FrameSpec, json_path: Path) -> np.ndarray:
    """``[H, W, 4]`` float32 straight (not premultiplied) RGBA in [0, 1]; opaque where the file has no alpha."""
    where = f"frame {frame.index} of {json_path}"
    if not frame.image_path.is_file():
        raise Gen4DError(f"image {frame.image_path} of {where} is missing")
    try:
        with Image.open(frame.image_path) as im:
            im.load()
            return _to_rgba_float(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise Gen4DError(f"{frame.image_path} ({where}) is not an image: {detail}") from err


def _to_rgba_float(im: Image.Image) -> np.ndarray:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit greyscale; Pillow cannot convert it to RGBA without clipping to 8 bits.
        grey = np.asarray(im, dtype=np.float32) / 65535.0
        grey = np.clip(grey, 0.0, 1.0)
        return np.stack([grey, grey, grey, np.ones_like(grey)], axis=-1)
    if im.mode == "F":
        grey = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return np.stack([grey, grey, grey, np.ones_like(grey)], axis=-1)
    # convert() handles L, LA, P (+ transparency), RGB, RGBa, CMYK...; modes without alpha come back opaque.
    return np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0


def _area_downscale(premultiplied: np.ndarray, factor: int) -> np.ndarray:
    """Shrink ``[H, W, 4]`` premultiplied RGBA by ``factor`` with exact area averaging.

    The output is ``H // factor`` x ``W // factor`` and covers the full input extent (so ``K`` scales by the size
    ratio). Sizes not divisible by ``factor`` use fractional box weights (Pillow's BOX filter on float images).
    """
    h, w = premultiplied.shape[0] // factor, premultiplied.shape[1] // factor
    if premultiplied.shape[0] == h * factor and premultiplied.shape[1] == w * factor:
        return premultiplied.reshape(h, factor, w, factor, 4).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(premultiplied[..., c])).resize((w, h), Image.Resampling.BOX))
        for c in range(4)
    ]
    return np.stack(channels, axis=-1).astype(np.float32)


def _load_split(spec: _SplitSpec, factor: int, background: Background) -> MultiViewVideo:
    first = spec.frames[0]
    num = len(spec.frames)
    images: np.ndarray | None = None
    alphas: np.ndarray | None = None
    full_size: tuple[int, int] = (0, 0)
    bg = np.asarray(background, dtype=np.float32)
    for k, frame in enumerate(spec.frames):
        rgba = _read_rgba(frame, spec.json_path)
        size = (rgba.shape[1], rgba.shape[0])  # (W, H)
        if images is None:
            full_size = size
            if size[0] // factor < 1 or size[1] // factor < 1:
                raise Gen4DError(f"downscale {factor} is larger than the {size[0]}x{size[1]} image {frame.image_path}")
            out_h, out_w = size[1] // factor, size[0] // factor
            images = np.empty((num, out_h, out_w, 3), dtype=np.float32)
            alphas = np.empty((num, out_h, out_w, 1), dtype=np.float32)
        elif size != full_size:
            raise Gen4DError(
                f"images of different sizes in {spec.json_path}: {first.image_path} is {full_size[0]}x{full_size[1]} "
                f"but {frame.image_path} is {size[0]}x{size[1]}"
            )
        assert alphas is not None
        # Work in premultiplied colour: averaging and compositing are then both linear and exact at edges.
        alpha = rgba[..., 3:4]
        premult = np.concatenate([rgba[..., :3] * alpha, alpha], axis=-1)
        if factor > 1:
            premult = _area_downscale(premult, factor)
        alpha = np.clip(premult[..., 3:4], 0.0, 1.0)
        images[k] = np.clip(premult[..., :3] + (1.0 - alpha) * bg, 0.0, 1.0)
        alphas[k] = alpha
    assert images is not None and alphas is not None

    out_h, out_w = images.shape[1], images.shape[2]
    K = intrinsics_from_fov(spec.camera_angle_x, full_size[0], full_size[1])
    K[0] *= out_w / full_size[0]
    K[1] *= out_h / full_size[1]
    c2w_gl = torch.from_numpy(np.stack([f.c2w_opengl for f in spec.frames]))
    # A general inverse: exact for rigid poses and still the right world-to-camera map if a pose carries scale.
    viewmats = torch.linalg.inv(opengl_to_opencv(c2w_gl))
    cameras = Cameras(
        viewmats=viewmats.float(),
        Ks=K.float().expand(num, 3, 3).clone(),
        width=out_w,
        height=out_h,
        times=torch.tensor([f.time for f in spec.frames], dtype=torch.float32),
    )
    return MultiViewVideo(
        images=torch.from_numpy(images),
        alphas=torch.from_numpy(alphas),
        cameras=cameras,
        names=[f.name for f in spec.frames],
        background=background,
    )
