"""Still images and folders of frames on disk: reading one image as RGBA, listing a folder's frames in order."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .. import Gen4DError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def natural_sort_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``frame_2`` < ``frame_10``; case-insensitive otherwise."""
    parts = [p for p in re.split(r"(\d+)", name) if p != ""]
    # Numbers before text at the same position; ties (frame_01 vs frame_1, Frame vs frame) broken by the raw name.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts), name



def read_image_file(path: Path) -> tuple[np.ndarray, bool]:
    """Read one still image (the first frame of an animated one) as uint8 ``[H, W, 4]``.

    Returns the array and whether the file carried a meaningful alpha channel (some pixel not fully opaque).
    Files without alpha get alpha 255 everywhere. EXIF orientation is applied.
    """
    if not path.exists():
        raise Gen4DError(f"image file not found: {path}")
    if not path.is_file():
        raise Gen4DError(f"not an image file: {path} is a folder")
    try:
        with Image.open(path) as img:
            img.seek(0)
            has_alpha_channel = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
            img = ImageOps.exif_transpose(img)
            if has_alpha_channel:
                arr = np.asarray(img.convert("RGBA"), dtype=np.uint8)
            else:
                rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
                arr = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    except UnidentifiedImageError:
        raise Gen4DError(f"not an image: cannot read {path} as an image file") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt files
        raise Gen4DError(f"not an image: cannot decode {path} ({exc})") from exc
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise Gen4DError(f"not an image: {path} has no pixels")
    meaningful = bool(has_alpha_channel and arr[..., 3].min() < 255)
    return np.ascontiguousarray(arr), meaningful



def list_frame_files(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(files, key=lambda p: natural_sort_key(p.name))
