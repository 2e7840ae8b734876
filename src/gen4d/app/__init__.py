"""``gen4d app``: a gradio page running every recipe of the registry (:mod:`.ui`), its jobs run and followed by
:mod:`.jobs` and :mod:`.handlers` (which need no gradio)."""


def launch(*args, **kwargs):
    """:func:`gen4d.app.ui.launch` (imports gradio: ``pip install -e ".[app]"``)."""
    from .ui import launch as _launch

    return _launch(*args, **kwargs)


__all__ = ["launch"]
