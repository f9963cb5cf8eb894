"""Nuke runs this at start-up (GUI and `nuke -t`): make the cinegen packages importable.

Install: add this folder to Nuke's plugin path, e.g. in ~/.nuke/init.py
    nuke.pluginAddPath("/path/to/cinegen/plugin/nuke")
When cinegen is pip-installed into Nuke's Python nothing else is needed; in a source checkout the
`shared/` and `plugin/` folders next to this one are put on sys.path.
"""
import importlib.util
import os
import sys


def _make_cinegen_importable() -> None:
    try:
        if importlib.util.find_spec("cinegen.plugin") is not None:
            return
    except ImportError:
        pass
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    for folder in ("shared", "plugin"):
        path = os.path.join(root, folder)
        if os.path.isdir(os.path.join(path, "cinegen")) and path not in sys.path:
            sys.path.append(path)


_make_cinegen_importable()
