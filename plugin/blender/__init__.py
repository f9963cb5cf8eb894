"""cinegen for Blender: a sidebar panel (3D view, compositor, sequencer) that sends jobs to a cinegen
server and loads the results as image sequences in the compositor and the sequencer.

The native panel works everywhere Blender runs, headless included (`blender -b --python-expr
"import bpy; bpy.ops.cinegen.generate(wait=True)"`); where a Qt binding is installed, "Open Qt
panel" shows the full cinegen panel, its event loop driven from a Blender timer.
"""
from __future__ import annotations

import importlib.util
import os
import sys


def _make_cinegen_importable() -> None:
    """Bundled wheels make `cinegen` importable; in a source checkout, use its folders instead."""
    try:
        if importlib.util.find_spec("cinegen.plugin") is not None:
            return
    except ImportError:  # `cinegen` itself is missing
        pass
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    for folder in ("shared", "plugin"):
        path = os.path.join(root, folder)
        if os.path.isdir(os.path.join(path, "cinegen")) and path not in sys.path:
            sys.path.append(path)


_make_cinegen_importable()

from . import operators, properties, ui  # noqa: E402  (needs the path set above)

_MODULES = (properties, operators, ui)


def register() -> None:
    for module in _MODULES:
        module.register()


def unregister() -> None:
    for module in reversed(_MODULES):
        module.unregister()
