"""What the server writes: EXR frame sequences (frames.py), the story's OTIO cut (otio_cut.py) and the
keyframe contact sheet (contact_sheet.py)."""
from .frames import FrameSink, base_metadata, resize_alpha, to_numpy_hwc

__all__ = ["FrameSink", "base_metadata", "resize_alpha", "to_numpy_hwc"]
