"""``gen4d view``: a run's 4D asset in the browser (viser). :mod:`.scene` builds what is shown (no viser needed);
:mod:`.server` serves it."""

from .scene import Splats, ViewerScene, build_viewer_scene, splats_of


def serve(*args, **kwargs):
    """:func:`gen4d.viewer.server.serve` (imports viser: ``pip install -e ".[app]"``)."""
    from .server import serve as _serve

    return _serve(*args, **kwargs)


__all__ = ["Splats", "ViewerScene", "build_viewer_scene", "serve", "splats_of"]
