"""Video files: H.264 MP4 and GIF writers (the reader is :func:`gen4d.data.videos.read_video`).

Frames are ``uint8`` arrays ``[F, H, W, 3]``. MP4s use the ffmpeg binary bundled with imageio-ffmpeg, H.264 in
yuv420p (the pixel format every browser and player decodes); yuv420p subsamples chroma 2x2, so odd frame sizes
are padded to even by repeating the last row / column. Writes are atomic.
"""

from __future__ import annotations

import os

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np

from ..files import atomic_path

__all__ = ["write_video", "write_gif"]


def _as_frames(frames) -> np.ndarray:
    """Validate and convert to contiguous uint8 ``[F, H, W, 3]`` (grayscale ``[F, H, W]`` is expanded)."""
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"frames must be [F>=1, H, W, 3], got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {arr.dtype} (convert with (x * 255).round().clip(0, 255))")
    return np.ascontiguousarray(arr[..., :3])


def write_video(path: str | os.PathLike, frames, fps: float = 24, quality: float = 8.0) -> None:
    """Write ``frames`` (uint8 ``[F, H, W, 3]``) as an H.264 / yuv420p MP4 at ``fps`` frames per second.

    quality: 1-10 (imageio-ffmpeg's scale; 8 maps to x264 CRF 10, visually lossless). Odd widths / heights are
    padded by one replicated column / row, so a reader gets ``[F, H + H % 2, W + W % 2, 3]``.
    """
    arr = _as_frames(frames)
    pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
        writer = imageio_v2.get_writer(
            str(tmp),
            format="FFMPEG",
            mode="I",
            fps=float(fps),
            codec="libx264",
            pixelformat="yuv420p",
            quality=quality,
            macro_block_size=1,  # sizes are already even; stop imageio from resizing to multiples of 16
            ffmpeg_log_level="error",
            ffmpeg_params=["-movflags", "+faststart"],  # index at the front: playable while downloading
        )
        try:
            for frame in arr:
                writer.append_data(frame)
        finally:
            writer.close()


def write_gif(path: str | os.PathLike, frames, fps: float = 12) -> None:
    """Write ``frames`` (uint8 ``[F, H, W, 3]``) as a looping GIF (256-colour palette per frame).

    GIF delays are whole centiseconds, so the actual rate is ``100 / round(100 / fps)``.
    """
    arr = _as_frames(frames)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, arr, extension=".gif", plugin="pillow", duration=1000.0 / float(fps), loop=0)
