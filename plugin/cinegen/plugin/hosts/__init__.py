"""Host adapters. `detect_host` picks the one for the application this panel runs in.

The host is recognised by its module already being loaded (Nuke and Blender import theirs before
any plugin), so the panel itself never imports `nuke` or `bpy`.
"""
from __future__ import annotations

import sys

from .base import HostAdapter, HostSelectionError, PlateSelection


def detect_host() -> HostAdapter:
    if "nuke" in sys.modules:
        from .nuke_host import NukeHost
        return NukeHost()
    if "bpy" in sys.modules:
        from .blender_host import BlenderHost
        return BlenderHost()
    from .standalone import StandaloneHost
    return StandaloneHost()


__all__ = ["HostAdapter", "HostSelectionError", "PlateSelection", "detect_host"]
