"""gen4d: text, image, video or multi-view video to 4D assets, on one engine."""

__version__ = "0.1.0"


class Gen4DError(Exception):
    """An error caused by the user's input or settings. The CLI prints its message on one line and exits 2."""
