"""What the server writes: EXR frame sequences (frames.py), the story's OTIO cut (otio_cut.py, exported
for editorial by cut_export.py) and the keyframe contact sheet (contact_sheet.py).

The frame writer's names are loaded on first use (PEP 562), so `cinegen export-cut` and the CLI's
help, which need only the OTIO modules here, never import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FrameSink", "base_metadata", "resize_alpha", "to_numpy_hwc"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".frames", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
