"""MotionDirector's aspect-ratio buckets: the pixel size a training video or image is resized to.

MotionDirector never crops its training data. With ``use_bucketing: True`` (the value in every published config:
``config_single_video.yaml``, ``config_single_video_24.yaml``, ``config_multi_videos.yaml``,
``config_single_image.yaml``, ``config_multi_images.yaml``) its datasets (``SingleVideoDataset``,
``VideoFolderDataset`` and ``ImageDataset`` in ``utils/dataset.py``) pick a size with ``sensible_buckets`` of
``utils/bucketing.py`` and resize the whole frame to it (``torchvision`` ``Resize((height, width),
antialias=True)``); with ``use_bucketing: False`` the frames are resized to ``width x height`` (decord's
``VideoReader(width=..., height=...)``). Either way the picture is scaled, never cut.

The bucket rule, for a configured ``W x H`` and a source of ``w x h`` pixels:

* ``w == h``: ``W x H``;
* ``w > h`` (landscape): the width stays ``W``; the height is whichever of ``H - 64`` and ``H - 128``, each raised to
  at least 192, is closest to ``H * h / w`` (a tie goes to ``H - 64``);
* ``w < h`` (portrait): the height stays ``H``; the width is whichever of ``W - 64`` and ``W - 128``, each raised to
  at least 192, is closest to ``W * w / h``.

So the long side keeps its configured length and the short side is chosen from two buckets, which only roughly
follows the source's aspect (384 x 384 configured: 1280 x 720 -> 384 x 256, 640 x 480 -> 384 x 320). Sizes that are
multiples of 64 give multiples of 64. The floor of 192 presumes configured sides of at least 192 (all published
configs use 320 or more); a configured side under 192 is kept as it is here (the floor would make the short side
longer than the long one).
"""

from __future__ import annotations

BUCKET_STEPS: tuple[int, int] = (64, 128)
"""The two reductions of the configured side that make the short-side buckets (``get_bucket_sizes``)."""
BUCKET_MIN_SIDE = 192
"""No short side below this many pixels (``min_res``)."""


def _short_side(configured: int, target: float, min_side: int) -> int:
    if configured < min_side:
        return configured
    buckets = [max(min_side, abs(configured - step)) for step in BUCKET_STEPS]
    return min(buckets, key=lambda b: abs(b - target))  # min keeps the first of equals: ties go to configured - 64


def bucket_size(width: int, height: int, source_width: int, source_height: int, min_side: int = BUCKET_MIN_SIDE) -> tuple[int, int]:
    """``(width, height)`` in pixels a ``source_width x source_height`` frame is resized to when the configured size
    is ``width x height`` (the rule of the module docstring; MotionDirector's ``sensible_buckets``)."""
    for name, v in (("width", width), ("height", height), ("source_width", source_width), ("source_height", source_height)):
        if v < 1:
            raise ValueError(f"{name} must be positive, got {v}")
    if source_width > source_height:
        return width, _short_side(height, height * source_height / source_width, min_side)
    if source_width < source_height:
        return _short_side(width, width * source_width / source_height, min_side), height
    return width, height
