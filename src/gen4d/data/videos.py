"""Video files and training videos for motion customisation: decode videos, read clips at a fixed size, split long
videos, find prompts.

What the readers return
-----------------------
* :func:`read_video`: every frame of a video file (MP4 / MOV / WebM / ... via ffmpeg, or GIF), ``uint8`` RGB
  ``[F, H, W, 3]`` at the file's size (the writers are in :mod:`gen4d.export.video`).
* :func:`read_video_clip`: ``float32`` tensor ``[T, 3, H, W]`` in ``[0, 1]`` (RGB), frames
  ``start, start + stride, start + 2 * stride, ...`` of a video file (decoded by :func:`read_video`) or of a
  folder of frames (sorted naturally, ``frame_2`` before ``frame_10``, as
  :func:`gen4d.data.preprocess.load_video_frames` does).
* :func:`read_image`: ``float32`` ``[3, H, W]`` in ``[0, 1]``; transparent pixels are composited on white.
* :func:`read_video_frames` / :func:`read_image_rgb`: the same frames / image as ``uint8`` RGB ``[h, w, 3]`` at the
  source's own size, for callers that choose the output size from the source's (e.g. aspect-ratio buckets).

Resizing
--------
:func:`resize_center_crop` (what :func:`read_video_clip` and :func:`read_image` do): every frame is scaled by
``s = max(H / h, W / w)`` (the smallest scale at which the frame covers ``H x W``) and the centred ``H x W`` window
is kept, so nothing is stretched and the borders of another aspect ratio are cut. Resampling is Pillow's bicubic
filter, which averages over the footprint when shrinking (no aliasing from 1080p sources down to 384 px).
:func:`resize_stretch` scales the whole frame to ``H x W`` (each axis on its own, nothing cut), with Pillow's
bilinear filter, also averaging when shrinking (the filter of ``torchvision``'s ``Resize(antialias=True)``).

Prompts
-------
A clip's prompt comes from a text file beside its source (:func:`prompt_for`): ``video.mp4`` -> ``video.txt``;
a folder of frames -> ``prompt.txt`` inside it; an image ``a.png`` -> ``a.txt``, else ``prompt.txt`` in its
folder. A source without one falls back to the prompt given on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .. import Gen4DError
from .frames import IMAGE_SUFFIXES, list_frame_files, natural_sort_key, read_image_file

__all__ = [
    "VIDEO_SUFFIXES",
    "find_images",
    "find_videos",
    "prompt_for",
    "read_image",
    "read_image_rgb",
    "read_video",
    "read_video_clip",
    "read_video_frames",
    "resize_center_crop",
    "resize_stretch",
    "split_clips",
]

#: File suffixes treated as videos when a folder of training videos is listed.
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif", ".m4v")


def _check_size(height: int, width: int) -> None:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise Gen4DError(f"{name} must be a positive integer, got {v!r}")


def resize_center_crop(rgb: np.ndarray, height: int, width: int) -> Tensor:
    """uint8 ``[h, w, 3]`` -> float32 ``[3, height, width]`` in [0, 1]: scale to cover, keep the centre."""
    h, w = rgb.shape[:2]
    scale = max(height / h, width / w)
    crop_w, crop_h = width / scale, height / scale  # the source window that maps onto the output, in pixels
    x0, y0 = 0.5 * (w - crop_w), 0.5 * (h - crop_h)
    img = Image.fromarray(np.ascontiguousarray(rgb[..., :3]))
    out = img.resize((width, height), resample=Image.Resampling.BICUBIC, box=(x0, y0, x0 + crop_w, y0 + crop_h))
    return torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def resize_stretch(rgb: np.ndarray, height: int, width: int) -> Tensor:
    """uint8 ``[h, w, 3]`` -> float32 ``[3, height, width]`` in [0, 1]: the whole frame scaled to the size (each axis
    by its own factor, nothing cut), Pillow's bilinear filter."""
    _check_size(height, width)
    img = Image.fromarray(np.ascontiguousarray(rgb[..., :3]))
    out = img.resize((width, height), resample=Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode all frames of a video (MP4 / MOV / WebM / ... via ffmpeg, or GIF) to uint8 RGB ``[F, H, W, 3]``.

    Raises :class:`Gen4DError` if the file is missing, cannot be decoded or has no frames.
    """
    path = Path(path)
    if not path.is_file():
        raise Gen4DError(f"video file not found: {path}")
    try:
        if path.suffix.lower() == ".gif":
            arr = np.asarray(iio.imread(path, index=None, plugin="pillow", mode="RGB"))
            if arr.ndim == 3:  # a single-frame GIF comes back without the frame axis
                arr = arr[None]
        else:
            reader = imageio_v2.get_reader(str(path), format="FFMPEG", mode="I")
            try:
                frames = [np.asarray(frame)[..., :3] for frame in reader]
            finally:
                reader.close()
            arr = np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
    except Gen4DError:
        raise
    except Exception as exc:  # decoders raise many exception types for corrupt or unsupported files
        raise Gen4DError(f"cannot decode video {path}: {exc}") from exc
    if len(arr) == 0:
        raise Gen4DError(f"video {path} has no frames")
    return np.ascontiguousarray(arr.astype(np.uint8, copy=False))


def _frame_indices(total: int, num_frames: int | None, stride: int, start: int, source: str) -> list[int]:
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise Gen4DError(f"stride must be a positive integer, got {stride!r}")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise Gen4DError(f"start must be a non-negative integer, got {start!r}")
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1):
        raise Gen4DError(f"num_frames must be a positive integer (or None for all), got {num_frames!r}")
    idx = list(range(start, total, stride))
    if num_frames is not None:
        if len(idx) < num_frames:
            raise Gen4DError(
                f"{source} is too short: {total} frames give {len(idx)} from frame {start} with stride {stride}, "
                f"{num_frames} needed; lower num_frames, stride or start"
            )
        idx = idx[:num_frames]
    if not idx:
        raise Gen4DError(f"{source} has no frame at or after frame {start} ({total} frames); lower start")
    return idx


def read_video_frames(
    path: str | os.PathLike,
    num_frames: int | None = None,
    stride: int = 1,
    start: int = 0,
) -> list[np.ndarray]:
    """Frames ``start + k * stride`` (``k < num_frames``; all of them when None) of a video file or a folder of
    frames, uint8 RGB ``[h, w, 3]`` at the source's size.

    Raises :class:`Gen4DError` for a missing path, a file that cannot be decoded, a folder without images,
    frames of different sizes, or fewer frames than ``num_frames``.
    """
    path = Path(path)
    if not path.exists():
        raise Gen4DError(f"video not found: {path}")
    if path.is_dir():
        files = list_frame_files(path)
        if not files:
            raise Gen4DError(f"no images in folder {path} (expected frames named like frame_0001.png)")
        idx = _frame_indices(len(files), num_frames, stride, start, str(path))
        frames = []
        for i in idx:
            rgba, _ = read_image_file(files[i])
            if frames and rgba.shape[:2] != frames[0].shape[:2]:
                raise Gen4DError(
                    f"frames of different sizes in {path}: {files[idx[0]].name} is {frames[0].shape[1]}x"
                    f"{frames[0].shape[0]}, {files[i].name} is {rgba.shape[1]}x{rgba.shape[0]}"
                )
            frames.append(np.ascontiguousarray(rgba[..., :3]))
        return frames
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise Gen4DError(f"{path} is a single image, not a video; pass a video file or a folder of frames")
    rgb = read_video(path)
    idx = _frame_indices(len(rgb), num_frames, stride, start, str(path))
    return [rgb[i] for i in idx]


def read_video_clip(
    path: str | os.PathLike,
    height: int,
    width: int,
    num_frames: int | None = None,
    stride: int = 1,
    start: int = 0,
) -> Tensor:
    """Frames ``start + k * stride`` (``k < num_frames``; all of them when None) of a video file or a folder of
    frames, resized and centre-cropped to ``height x width``: float32 ``[T, 3, height, width]`` in [0, 1].

    Raises :class:`Gen4DError` as :func:`read_video_frames` does.
    """
    _check_size(height, width)
    frames = read_video_frames(path, num_frames, stride, start)
    return torch.stack([resize_center_crop(f, height, width) for f in frames])


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """One image as uint8 RGB ``[h, w, 3]`` at its own size (alpha composited over white)."""
    rgba, has_alpha = read_image_file(Path(path))
    if not has_alpha:
        return np.ascontiguousarray(rgba[..., :3])
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    return np.round(rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)).astype(np.uint8)


def read_image(path: str | os.PathLike, height: int, width: int) -> Tensor:
    """One image, resized and centre-cropped: float32 ``[3, height, width]`` in [0, 1] (alpha over white)."""
    _check_size(height, width)
    return resize_center_crop(read_image_rgb(path), height, width)


def split_clips(frames: Tensor, num_frames: int) -> list[Tensor]:
    """Consecutive, non-overlapping ``num_frames``-frame clips of ``frames [T, ...]``: clip ``k`` holds frames
    ``k * num_frames ... (k + 1) * num_frames - 1``; a shorter remainder is dropped (a clip's frame count is the
    video model's input length). Raises :class:`Gen4DError` when ``T < num_frames``."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise Gen4DError(f"num_frames must be a positive integer, got {num_frames!r}")
    total = int(frames.shape[0])
    if total < num_frames:
        raise Gen4DError(f"the video has {total} frames, fewer than one {num_frames}-frame clip; lower num_frames")
    return [frames[s : s + num_frames] for s in range(0, total - num_frames + 1, num_frames)]


def _visible(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes]
    return sorted(files, key=lambda p: natural_sort_key(p.name))


def find_videos(folder: str | os.PathLike) -> list[Path]:
    """Video files directly inside ``folder`` (hidden files ignored), sorted naturally."""
    return _visible(Path(folder), VIDEO_SUFFIXES)


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (hidden files ignored), sorted naturally."""
    return _visible(Path(folder), IMAGE_SUFFIXES)


def prompt_for(source: str | os.PathLike) -> str | None:
    """The prompt written beside ``source`` (see the module docstring), stripped; None when there is none."""
    source = Path(source)
    candidates = [source / "prompt.txt"] if source.is_dir() else [source.with_suffix(".txt")]
    if source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
        candidates.append(source.parent / "prompt.txt")
    for c in candidates:
        if c.is_file():
            text = " ".join(c.read_text(encoding="utf-8").split())
            if text:
                return text
    return None
