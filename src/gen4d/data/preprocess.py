"""Inputs of the image→4D and video→4D recipes: load, cut out, recentre and resize to a square RGBA canvas.

What the loaders return
-----------------------
* :func:`load_image_rgba`: ``float32`` tensor ``[4, size, size]`` in ``[0, 1]``, RGBA with **straight**
  (non-premultiplied) alpha; fully transparent pixels have RGB 0.
* :func:`load_video_frames`: ``float32`` tensor ``[T, 4, size, size]``, the same per frame.

Foreground
----------
``remove_background`` picks where the alpha channel comes from:

* ``"auto"`` (default): an alpha channel that is not fully opaque (RGBA / LA PNG, WebP, palette images with a
  transparent colour) is used as it is; otherwise the background is removed with ``rembg`` (optional dependency,
  ``pip install rembg``; a missing rembg is a :class:`~gen4d.Gen4DError`).
* ``True``: always run rembg, replacing any alpha channel the input has.
* ``False``: never run rembg. A meaningful alpha channel is still used; an opaque input stays **fully opaque**:
  there is no foreground to recentre on, so the largest centred square is cropped and resized to ``size``.

``segmenter`` picks what removes the background when it is removed: ``"rembg"`` (default; a learned salient-object
model) or ``"plain"``, :func:`segment_plain_background`, a dependency-free cut-out for objects on a plain,
near-uniform background (rendered or generated "on a white background" images, ``--models tiny`` runs).

Recentring
----------
The foreground box is the bounding box of the pixels with ``alpha > ALPHA_THRESHOLD`` (0.5: soft fringes and
faint shadows do not inflate the box). The image is scaled so that the box's longer side becomes
``size * (1 - border_ratio)`` pixels and translated so that the box's centre lands on the canvas centre. Nothing
is cropped away: semi-transparent pixels outside the box keep their place in the border. Resampling is done on
premultiplied colour in float (area averaging when shrinking, bicubic when enlarging), so colours of
transparent pixels never bleed into the edges. With ``recenter=False`` an RGBA image is padded to a square with
transparent pixels and resized as a whole.

Videos use **one** box for all frames (the union of the per-frame foreground boxes), so the object's motion and
size changes across frames are kept; per-frame boxes would cancel them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .. import Gen4DError
from ..files import atomic_path
from .frames import IMAGE_SUFFIXES, list_frame_files, natural_sort_key, read_image_file
from .videos import read_video

__all__ = [
    "ALPHA_THRESHOLD",
    "IMAGE_SUFFIXES",
    "SEGMENTERS",
    "composite",
    "load_image_rgba",
    "load_video_frames",
    "natural_sort_key",
    "save_rgba_png",
    "segment_plain_background",
]

#: Pixels with alpha above this value (in ``[0, 1]``) define the foreground bounding box.
ALPHA_THRESHOLD = 0.5

#: File suffixes treated as still images (single images, and the frames of a frame folder).

RemoveBackground = bool | str
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in continuous pixel coordinates (edges, not centres)


# --------------------------------------------------------------------------------------------------------------
# Small helpers


#: Background removers: rembg (optional dependency) | plain (:func:`segment_plain_background`, no dependency).
SEGMENTERS = ("rembg", "plain")


def _check_settings(size: int, border_ratio: float, remove_background: RemoveBackground, segmenter: str = "rembg") -> None:
    if segmenter not in SEGMENTERS:
        raise Gen4DError(f"segmenter must be one of {', '.join(SEGMENTERS)}, got {segmenter!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise Gen4DError(f"size must be a positive integer, got {size!r}")
    if not (0.0 <= float(border_ratio) < 1.0):
        raise Gen4DError(f"border_ratio must be in [0, 1), got {border_ratio!r}")
    if remove_background not in (True, False, "auto"):
        raise Gen4DError(f"remove_background must be True, False or 'auto', got {remove_background!r}")


_REMBG_SESSION = None
REMBG_INSTALL = 'pip install "rembg[cpu]"  (or: pip install -e ".[segment]")'


def rembg_available() -> bool:
    """Whether rembg can be imported (without importing it: its import loads onnxruntime)."""
    return importlib.util.find_spec("rembg") is not None


def rembg_model_problem() -> str | None:
    """None when rembg can run here; else what is missing: rembg downloads its u2net model on first use, which an
    offline machine cannot do unless the file is already in ``$U2NET_HOME`` (default ``~/.u2net``)."""
    home = Path(os.environ.get("U2NET_HOME", Path.home() / ".u2net"))
    if (home / "u2net.onnx").exists() or os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes"):
        return None
    return (f"rembg's model {home / 'u2net.onnx'} is missing and this machine is offline: download it once from "
            "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx")


def resolve_segmenter(name: str) -> str:
    """``auto`` -> rembg when it is installed, else ``plain`` (:func:`segment_plain_background`, no dependency)."""
    if name == "auto":
        return "rembg" if rembg_available() else "plain"
    if name not in SEGMENTERS:
        raise Gen4DError(f"segmenter must be auto or one of {', '.join(SEGMENTERS)}, got {name!r}")
    return name


def _remove_background(rgb: np.ndarray, source: str) -> np.ndarray:
    """Cut out the foreground of uint8 RGB ``[H, W, 3]`` with rembg; returns uint8 RGBA ``[H, W, 4]``."""
    global _REMBG_SESSION
    try:
        import rembg  # optional dependency
    except ImportError:
        raise Gen4DError(
            f"{source} has no alpha channel and background removal needs rembg: {REMBG_INSTALL} "
            "(or pass an RGBA image)"
        ) from None
    try:
        if _REMBG_SESSION is None:
            _REMBG_SESSION = rembg.new_session()
        out = rembg.remove(Image.fromarray(np.ascontiguousarray(rgb[..., :3])), session=_REMBG_SESSION)
        out = np.asarray(out.convert("RGBA") if isinstance(out, Image.Image) else out, dtype=np.uint8)
    except Exception as exc:  # model download / runtime failures inside rembg and onnxruntime
        raise Gen4DError(f"background removal failed for {source}: {exc}") from exc
    if out.shape[:2] != rgb.shape[:2] or out.ndim != 3 or out.shape[2] != 4:
        raise Gen4DError(f"background removal returned an unexpected shape {out.shape} for {source}")
    # Keep the original colours; only the alpha comes from rembg.
    return np.concatenate([rgb[..., :3], out[..., 3:4]], axis=-1)


def _cut_out(rgba: np.ndarray, source: str, segmenter: str) -> np.ndarray:
    """Replace the alpha of uint8 RGBA ``[H, W, 4]`` with the chosen segmenter's (see :data:`SEGMENTERS`)."""
    if segmenter == "plain":
        alpha = segment_plain_background(rgba[..., :3])
        return np.concatenate([rgba[..., :3], np.round(alpha * 255.0).astype(np.uint8)[..., None]], axis=-1)
    return _remove_background(rgba, source)


def _foreground_box(alpha: np.ndarray) -> Box | None:
    """Bounding box (pixel edges) of ``alpha > ALPHA_THRESHOLD``; ``alpha`` is uint8 ``[H, W]``. None if empty."""
    mask = alpha.astype(np.float32) > ALPHA_THRESHOLD * 255.0
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _union(boxes: Sequence[Box | None]) -> Box | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _recentre_region(box: Box, size: int, border_ratio: float) -> Box:
    """Source region that maps onto the whole ``size x size`` canvas so that ``box`` is centred and its longer
    side spans ``size * (1 - border_ratio)`` canvas pixels."""
    x0, y0, x1, y1 = box
    longer = max(x1 - x0, y1 - y0)
    half = 0.5 * longer / (1.0 - border_ratio)  # half the canvas side, in source pixels
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    return cx - half, cy - half, cx + half, cy + half


def _square_region(height: int, width: int, fit: str) -> Box:
    """Centred square: ``fit="crop"`` the largest one inside the image, ``"pad"`` the smallest one around it."""
    side = min(height, width) if fit == "crop" else max(height, width)
    cx, cy = 0.5 * width, 0.5 * height
    return cx - 0.5 * side, cy - 0.5 * side, cx + 0.5 * side, cy + 0.5 * side


def _resample(rgba: np.ndarray, region: Box, size: int) -> np.ndarray:
    """Resample the source ``region`` of uint8 RGBA ``[H, W, 4]`` onto a ``size x size`` canvas.

    Outside the image counts as transparent. Works on premultiplied float colour; returns straight-alpha float32
    ``[size, size, 4]`` in ``[0, 1]`` (RGB 0 where alpha is 0).
    """
    height, width = rgba.shape[:2]
    x0, y0, x1, y1 = region
    # Pad with transparent pixels so the region lies inside the (padded) image; Pillow's ``box`` must.
    pad_l = max(0, int(np.ceil(-x0)))
    pad_t = max(0, int(np.ceil(-y0)))
    pad_r = max(0, int(np.ceil(x1 - width)))
    pad_b = max(0, int(np.ceil(y1 - height)))
    src = rgba.astype(np.float32) / 255.0
    src[..., :3] *= src[..., 3:4]  # premultiply
    if pad_l or pad_t or pad_r or pad_b:
        src = np.pad(src, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)))
    box = (
        min(max(x0 + pad_l, 0.0), float(src.shape[1])),
        min(max(y0 + pad_t, 0.0), float(src.shape[0])),
        min(max(x1 + pad_l, 0.0), float(src.shape[1])),
        min(max(y1 + pad_t, 0.0), float(src.shape[0])),
    )
    shrinking = (box[2] - box[0]) >= size
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    out = np.empty((size, size, 4), np.float32)
    for c in range(4):
        channel = Image.fromarray(np.ascontiguousarray(src[..., c], dtype=np.float32))
        out[..., c] = np.asarray(channel.resize((size, size), resample=resample, box=box), dtype=np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    alpha = out[..., 3:4]
    covered = alpha > 1e-6
    out[..., :3] = np.where(covered, out[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    np.clip(out, 0.0, 1.0, out=out)
    out[..., 3:4] = np.where(covered, alpha, 0.0)
    return out


def _to_chw(arr: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


# --------------------------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class Region:
    """The part of a source image that becomes the square canvas: ``box`` (x0, y0, x1, y1, pixel edges) in an image of
    ``height x width``. :meth:`scaled` maps it onto another image of the same framing at another resolution."""

    box: Box
    height: int
    width: int

    def scaled(self, height: int, width: int) -> Box:
        sx, sy = width / self.width, height / self.height
        x0, y0, x1, y1 = self.box
        return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def load_image_rgba(
    path: str | os.PathLike,
    size: int = 256,
    border_ratio: float = 0.2,
    recenter: bool = True,
    remove_background: RemoveBackground = "auto",
    segmenter: str = "rembg",
    return_region: bool = False,
) -> Tensor | tuple[Tensor, Region]:
    """Load the input image of an image→4D run as a float32 RGBA tensor ``[4, size, size]`` in ``[0, 1]``.

    See the module docstring for how the foreground is found and recentred, and ``segmenter``. Raises
    :class:`Gen4DError` for a missing file, a file that is not an image, a missing rembg when it is needed, and
    an image without foreground (``no foreground: ...``). ``return_region``: also return the :class:`Region` of the
    image that was used (to frame other images, e.g. a driving video, the same way).
    """
    _check_settings(size, border_ratio, remove_background, segmenter)
    path = Path(path)
    rgba, meaningful = read_image_file(path)
    if remove_background is True or (remove_background == "auto" and not meaningful):
        rgba = _cut_out(rgba, str(path), segmenter)
        meaningful = True
    if not meaningful:  # remove_background=False on an opaque image: keep it opaque, centre-crop to a square
        box = _square_region(*rgba.shape[:2], fit="crop")
    else:
        found = _foreground_box(rgba[..., 3])
        if found is None:
            raise Gen4DError(f"no foreground: {path} is fully transparent (no pixel with alpha > {ALPHA_THRESHOLD})")
        box = _recentre_region(found, size, border_ratio) if recenter else _square_region(*rgba.shape[:2], fit="pad")
    image = _to_chw(_resample(rgba, box, size))
    return (image, Region(box, *rgba.shape[:2])) if return_region else image


def load_video_frames(
    path: str | os.PathLike,
    size: int = 256,
    border_ratio: float = 0.2,
    max_frames: int | None = None,
    stride: int = 1,
    remove_background: RemoveBackground = "auto",
    segmenter: str = "rembg",
    recenter: bool = True,
    region: Region | None = None,
) -> Tensor:
    """Load the input video of a video→4D run as a float32 RGBA tensor ``[T, 4, size, size]`` in ``[0, 1]``.

    ``path`` is a video file (MP4, WebM, GIF, ... decoded by :func:`gen4d.data.videos.read_video`, which gives
    RGB frames, so ``"auto"`` removes the background) or a folder of frames (``.png``, ``.jpg``, ``.webp``, ...;
    sorted naturally, ``frame_2`` before ``frame_10``; hidden files ignored). Frames ``0, stride, 2*stride, ...``
    are kept, at most ``max_frames`` of them. All frames share one crop box and scale (the union of their
    foreground boxes). ``segmenter``: what removes the background (module docstring). Raises
    :class:`Gen4DError` for a missing path, a folder without images, frames of different sizes, fewer than 2
    frames, and no foreground in any frame. ``recenter=False`` keeps the frames' framing (padded to a square);
    ``region`` crops every frame as another image was cropped (e.g. a driving video framed like its input image).
    """
    _check_settings(size, border_ratio, remove_background, segmenter)
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise Gen4DError(f"stride must be a positive integer, got {stride!r}")
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 2
    ):
        raise Gen4DError(f"max_frames must be an integer >= 2 (or None), got {max_frames!r}")
    path = Path(path)
    if not path.exists():
        raise Gen4DError(f"video not found: {path}")

    meaningful = False
    if path.is_dir():
        files = list_frame_files(path)
        if not files:
            raise Gen4DError(f"no images in folder {path} (expected frames named like frame_0001.png)")
        files = files[::stride][:max_frames] if max_frames is not None else files[::stride]
        frames: list[np.ndarray] = []
        names: list[str] = []
        for f in files:
            arr, has_alpha = read_image_file(f)
            if frames and arr.shape != frames[0].shape:
                raise Gen4DError(
                    f"frames of different sizes in {path}: {files[0].name} is {frames[0].shape[1]}x"
                    f"{frames[0].shape[0]}, {f.name} is {arr.shape[1]}x{arr.shape[0]}"
                )
            frames.append(arr)
            names.append(str(f))
            meaningful = meaningful or has_alpha
    else:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise Gen4DError(f"{path} is a single image; video→4D needs at least 2 frames (use image→4D instead)")
        rgb = read_video(path)
        rgb = rgb[::stride][:max_frames] if max_frames is not None else rgb[::stride]
        opaque = np.full(rgb.shape[1:3] + (1,), 255, np.uint8)
        frames = [np.concatenate([f, opaque], axis=-1) for f in rgb]
        names = [f"{path} (frame {i * stride})" for i in range(len(frames))]
    if len(frames) < 2:
        raise Gen4DError(f"{path} has {len(frames)} frame(s) after stride/max_frames; video→4D needs at least 2 frames")

    if remove_background is True or (remove_background == "auto" and not meaningful):
        frames = [_cut_out(f, n, segmenter) for f, n in zip(frames, names)]
        meaningful = True
    height, width = frames[0].shape[:2]
    if region is not None:
        box_region = region.scaled(height, width)
    elif not meaningful:  # remove_background=False on opaque frames: keep them opaque, centre-crop to a square
        box_region = _square_region(height, width, fit="crop")
    else:
        box = _union([_foreground_box(f[..., 3]) for f in frames])
        if box is None:
            raise Gen4DError(
                f"no foreground: every frame of {path} is fully transparent (no pixel with alpha > {ALPHA_THRESHOLD})"
            )
        box_region = _recentre_region(box, size, border_ratio) if recenter else _square_region(height, width, fit="pad")
    out = torch.empty(len(frames), 4, size, size, dtype=torch.float32)
    for i, f in enumerate(frames):
        out[i] = _to_chw(_resample(f, box_region, size))
    return out


def composite(rgba: Tensor, background: Sequence[float] | Tensor = (1.0, 1.0, 1.0)) -> Tensor:
    """Blend straight-alpha RGBA ``[..., 4, H, W]`` over a solid ``background`` colour; returns ``[..., 3, H, W]``."""
    if rgba.ndim < 3 or rgba.shape[-3] != 4:
        raise ValueError(f"rgba must be [..., 4, H, W], got {tuple(rgba.shape)}")
    bg = torch.as_tensor(background, dtype=rgba.dtype, device=rgba.device).reshape(-1)
    if bg.numel() == 1:
        bg = bg.expand(3)
    if bg.numel() != 3:
        raise ValueError(f"background must be 1 or 3 values, got {bg.numel()}")
    alpha = rgba[..., 3:4, :, :]
    return rgba[..., :3, :, :] * alpha + bg.reshape(3, 1, 1) * (1.0 - alpha)


def save_rgba_png(path: str | os.PathLike, rgba: Tensor | np.ndarray) -> None:
    """Write float RGBA ``[4, H, W]`` in ``[0, 1]`` (straight alpha) as an 8-bit RGBA PNG, atomically."""
    arr = rgba.detach().cpu().float().numpy() if isinstance(rgba, Tensor) else np.asarray(rgba, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] != 4:
        raise ValueError(f"rgba must be [4, H, W], got {arr.shape}")
    img = np.clip(np.round(arr.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


# --------------------------------------------------------------------------------------------------------------
# Plain-background segmentation: a dependency-free fallback for rembg


def _label_components(mask: np.ndarray, diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of boolean ``mask [H, W]``: ``(labels int32 [H, W], sizes)``, label 0 = not in the
    mask, ``sizes[k]`` = pixels of component ``k`` (``sizes[0] = 0``). ``diagonal``: 8- (else 4-) connectivity.

    Works on horizontal runs (union-find over the runs of consecutive rows), so the Python loop is over runs, not
    pixels: a few per row for an object on a plain background.
    """
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows_s, cols_s = np.nonzero(edges == 1)  # run starts (inclusive), row-major order
    _, cols_e = np.nonzero(edges == -1)  # run ends (exclusive), same order
    n = len(rows_s)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    reach = 1 if diagonal else 0
    row_start = np.searchsorted(rows_s, np.arange(h + 1))
    for r in range(1, h):
        j, j_end = row_start[r - 1], row_start[r]
        for i in range(row_start[r], row_start[r + 1]):
            s, e = cols_s[i], cols_e[i]
            while j < j_end and cols_e[j] + reach <= s:  # previous-row runs entirely to the left
                j += 1
            k = j
            while k < j_end and cols_s[k] < e + reach:  # overlapping (or diagonally touching) runs
                a, b = find(i), find(k)
                if a != b:
                    parent[max(a, b)] = min(a, b)
                k += 1
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    _, compact = np.unique(roots, return_inverse=True)
    compact = compact.astype(np.int32) + 1
    lengths = cols_e - cols_s
    sizes = np.zeros(compact.max() + 1 if n else 1, np.int64)
    np.add.at(sizes, compact, lengths)
    labels = np.zeros((h, w), np.int32)
    for r, s, e, lab in zip(rows_s, cols_s, cols_e, compact):
        labels[r, s:e] = lab
    return labels, sizes


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of boolean ``mask [H, W]`` (all False when the mask is empty)."""
    labels, sizes = _label_components(mask, diagonal=True)
    if len(sizes) < 2:
        return np.zeros_like(mask)
    return labels == int(np.argmax(sizes))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus the background regions it encloses: 4-connected components of ``~mask`` (the complement of
    an 8-connected object) that do not touch the image border."""
    labels, _ = _label_components(~mask, diagonal=False)
    touching = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return mask | ((labels > 0) & ~np.isin(labels, touching))


def segment_plain_background(
    rgb: np.ndarray,
    low: float = 0.06,
    high: float = 0.15,
    border_fraction: float = 0.03,
    fill_holes: bool = True,
) -> np.ndarray:
    """Alpha ``float32 [H, W]`` in [0, 1] of the object in uint8 RGB ``[H, W, 3]`` on a plain background.

    1. background colour ``b``: the per-channel median of a frame of border pixels ``border_fraction`` of the
       shorter side wide (at least 1 pixel): the object may touch the border, but not cover most of it;
    2. distance ``d(x) = |rgb(x) - b|_2 / sqrt(3)`` in [0, 1] (colours in [0, 1]);
    3. soft threshold ``a(x) = clip((d - lo) / (hi - lo), 0, 1)`` with ``lo = max(low, 3 m)``, ``hi = lo + high -
       low``, ``m`` the median of ``d`` on the border (its noise: compression, gradients, grain);
    4. the object is the largest 8-connected component of ``a >= 1/2``, with the background regions it encloses
       filled (``fill_holes``; e.g. a white shirt on a white background); ``a`` is kept within one pixel of it
       (soft edges), everything else is 0.

    Meant for renders and for generated videos prompted "on a white background"; use rembg for photographs.
    Returns zeros when nothing differs from the background (the loaders then report "no foreground").
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"rgb must be [H, W, 3], got {rgb.shape}")
    if not 0.0 <= low < high:
        raise ValueError(f"need 0 <= low < high, got low={low}, high={high}")
    x = rgb[..., :3].astype(np.float32) / 255.0
    h, w = x.shape[:2]
    b = max(1, round(border_fraction * min(h, w)))
    ring = np.zeros((h, w), bool)
    ring[:b, :] = ring[-b:, :] = ring[:, :b] = ring[:, -b:] = True
    background = np.median(x[ring], axis=0)
    d = np.linalg.norm(x - background, axis=-1) / np.sqrt(3.0)
    lo = max(low, 3.0 * float(np.median(d[ring])))
    hi = lo + (high - low)
    soft = np.clip((d - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    obj = _largest_component(soft >= 0.5)
    if not obj.any():
        return np.zeros((h, w), np.float32)
    if fill_holes:
        filled = _fill_holes(obj)
        soft = np.where(filled & ~obj, 1.0, soft).astype(np.float32)
        obj = filled
    near = torch.nn.functional.max_pool2d(torch.from_numpy(obj.astype(np.float32))[None, None], 3, stride=1, padding=1)[0, 0].numpy() > 0
    return np.where(near, soft, 0.0).astype(np.float32)
