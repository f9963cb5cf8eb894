"""cinegen for Blender: a sidebar panel (3D view, compositor, sequencer) that sends jobs to a cinegen
server and loads the results as image sequences in the compositor and the sequencer.

The native panel works everywhere Blender runs; headless and on a farm, `farm.submit_and_wait`
(or `bpy.ops.cinegen.generate(wait=True)`) runs a job to its end with progress on stdout. Where a
Qt binding is installed, "Open Qt panel" shows the full cinegen panel, its event loop driven from a
Blender timer.
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

from . import forms, operators, options, properties, runtime, ui  # noqa: E402  (needs the path set above)

_MODULES = (properties, operators, ui)


def register() -> None:
    for module in _MODULES:
        module.register()
    runtime.set_forms(*forms.startup_forms())  # the pipeline menu and options work before Connect
    runtime.open_previews()
    runtime.STATE.on_change = operators.refresh
    runtime.start_timer()  # jobs queued before a Reload Scripts (or disable / enable) are followed again
    import bpy

    runtime.echo_to_stdout(bpy.app.background)  # farm logs show each job's progress


def unregister() -> None:
    runtime.stop_timer()
    runtime.disconnect()
    runtime.close_previews()
    runtime.STATE.on_change = None
    options.uninstall()
    for module in reversed(_MODULES):
        module.unregister()
