"""Frames out: display-referred model output -> scene-linear half-float EXR, atomically, with metadata."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cinegen.common.color import srgb_display_to_scene_linear, working_space_name
from cinegen.common.exr import ExrMetadata, write_exr_frame
from cinegen.common.sequence import SequencePattern


def to_numpy_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C,H,W) tensor or (H,W,C) array in [0,1] -> contiguous float32 (H,W,C)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        if image.dim() == 3 and image.shape[0] in (1, 3, 4):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    return np.ascontiguousarray(image, dtype=np.float32)


def resize_alpha(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """A plate's (H, W) alpha at the output size: bilinear (antialiased when shrinking), kept in [0, 1].

    The model refines the plate's colour as stored (premultiplied, as EXR plates are) and never sees the
    matte; carrying it through keeps the comp's cut-out. Where alpha is 0 the model may still paint a
    little colour: a Premult/Unpremult pair downstream cleans that if it matters."""
    if alpha.shape == (height, width):
        return alpha.astype(np.float32)
    shrink = height < alpha.shape[0] or width < alpha.shape[1]
    resized = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(alpha, np.float32))[None, None],
                                              size=(height, width), mode="bilinear", align_corners=False,
                                              antialias=shrink)
    return resized[0, 0].clamp(0.0, 1.0).numpy()


@dataclass
class FrameSink:
    """Writes the frames of one sequence and reports each one."""
    pattern: SequencePattern
    first_frame: int
    metadata: ExrMetadata
    compression: str = "zip"
    sequence: str = ""
    on_written: Callable[[int, str, str], None] | None = None  # (frame number, path, sequence)
    written: list[str] = field(default_factory=list)

    def write(self, index: int, display_rgb: torch.Tensor | np.ndarray, *, alpha: np.ndarray | None = None,
              extra: dict[str, str] | None = None) -> str:
        """Write frame `index` (0-based within the sequence) from display-referred sRGB in [0, 1]."""
        rgb = to_numpy_hwc(display_rgb)[..., :3]
        linear = srgb_display_to_scene_linear(rgb)
        a = np.ones(linear.shape[:2] + (1,), np.float32) if alpha is None else alpha.reshape(linear.shape[:2] + (1,))
        rgba = np.concatenate([linear, a.astype(np.float32)], axis=-1)
        frame = self.first_frame + index
        meta = dataclasses.replace(self.metadata, frame=frame, extra={**self.metadata.extra, **(extra or {})})
        path = self.pattern.path_for(frame)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_exr_frame(path, rgba, metadata=meta, compression=self.compression)
        self.written.append(path)
        if self.on_written:
            self.on_written(frame, path, self.sequence)
        return path


def base_metadata(*, pipeline: str, model: str, seed: int, prompt: str, job: str, params_json: str,
                  fps: float, envmap_latlong: bool = False) -> ExrMetadata:
    return ExrMetadata(pipeline=pipeline, model=model, seed=seed, prompt=prompt, job=job,
                       params=json.loads(params_json), fps=fps, colorspace=working_space_name(),
                       latlong=envmap_latlong)
