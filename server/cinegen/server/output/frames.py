"""Frames out: display-referred model output -> scene-linear half-float EXR, atomically, with metadata,
written on a background thread while the next frames are computed."""
from __future__ import annotations

import dataclasses
import json
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import OpenImageIO as oiio
import torch

from cinegen.common.color import DISPLAY_SRGB, DISPLAY_VIEW, display_to_scene_linear, working_space_name
from cinegen.common.exr import CINEGEN_PREFIX, ExrMetadata, write_exr_frame
from cinegen.common.sequence import SequencePattern

from ..errors import AlreadyExists
from .device_colour import display_to_linear_half_rgba, primaries_matrix
from .plate_highlights import PlateHighlights
from .write_errors import frame_write_error


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
class _PendingFrame:
    frame: int
    path: str
    pixels: np.ndarray  # (H, W, 4) scene-linear half, or (H, W, 3) display float32 still to convert
    alpha: np.ndarray | None
    metadata: ExrMetadata
    highlights: PlateHighlights | None = None  # the plate's values kept beyond the model's range


@dataclass
class FrameSink:
    """Writes the frames of one sequence in the background and reports each one.

    `write` returns once the frame is queued: colour conversion (on the device when the pixels are on a
    GPU, else on the writer thread), EXR encode, fsync and the atomic rename run on one writer thread
    while the caller computes the next frame. The queue is bounded (`max_pending` frames), so memory
    stays bounded and a slow disk slows the job instead of filling RAM. The first write error is raised
    by the next `write`, `flush` or `written`, so it fails the job; frames queued after it are dropped.
    """
    pattern: SequencePattern
    first_frame: int
    metadata: ExrMetadata
    compression: str = "zip"
    sequence: str = ""
    on_written: Callable[[int, str, str], None] | None = None  # (frame number, path, sequence); writer thread
    max_pending: int = 2
    device_colour: bool | None = None  # None: on the device when the pixels are on a GPU
    display_transform: str = DISPLAY_SRGB  # color.display_to_scene_linear: view (generated frames) | srgb
    # a final frame already on disk: "write" over it | "refuse" | "keep" it when this job wrote it (same
    # cinegen:job, seed, prompt, model and params: a resumed or retried job), refusing any other |
    # "keep-or-write": keep the job's own, write over others
    existing: str = "write"
    on_log: Callable[[str], None] | None = None  # a line for the job's log (writer thread): NaN pixels written black
    _written: list[str] = field(default_factory=list, init=False, repr=False)
    _queue: queue.Queue = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _writer: threading.Thread | None = field(default=None, init=False, repr=False)
    _failure: BaseException | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._queue = queue.Queue(maxsize=max(1, self.max_pending))

    def write(self, index: int, display_rgb: torch.Tensor | np.ndarray, *, alpha: np.ndarray | None = None,
              extra: dict[str, str] | None = None, highlights: PlateHighlights | None = None) -> str:
        """Queue frame `index` (0-based within the sequence) from display-referred sRGB in [0, 1];
        `highlights`: the plate frame's values beyond the model's range, kept in the scene-linear frame."""
        self._raise_failure()
        frame = self.first_frame + index
        meta = dataclasses.replace(self.metadata, frame=frame, extra={**self.metadata.extra, **(extra or {})})
        path = self.pattern.path_for(frame)
        if self.existing != "write" and os.path.isfile(path):
            own = self.existing != "refuse" and written_by_same_job(path, self.metadata)
            if not own and self.existing in ("refuse", "keep"):
                raise AlreadyExists(f"{path} already exists (it appeared after the job was queued); the job "
                                    "stops rather than overwrite it. Ask to overwrite to replace it.")
            if own:  # whole (written, then renamed): a resumed or retried job keeps it
                self.flush()  # keep the order of `written`: the kept frame takes its place after queued ones
                self._written.append(path)
                if self.on_written:
                    self.on_written(frame, path, self.sequence)
                return path
        pixels, pending_alpha = self._prepare(display_rgb, alpha)
        pending = _PendingFrame(frame, path, pixels, pending_alpha, meta, highlights)
        self._queue.put(pending)  # blocks while the writer is behind
        self._ensure_writer()
        return path

    def flush(self) -> None:
        """Wait until every queued frame is on disk; raise the first write error."""
        self._queue.join()
        self._raise_failure()

    @property
    def written(self) -> list[str]:
        """Paths of the frames on disk, in order, once all queued ones landed (raises a write error)."""
        self.flush()
        return list(self._written)

    # ---- the caller's side ----------------------------------------------------------------------
    def _prepare(self, display_rgb: torch.Tensor | np.ndarray,
                 alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        on_gpu = isinstance(display_rgb, torch.Tensor) and display_rgb.device.type != "cpu"
        wanted = self.device_colour if self.device_colour is not None else on_gpu
        # the device path is the sRGB curve + matrix; the inverse view (a tone curve) runs on the host
        matrix = primaries_matrix() if wanted and self.display_transform == DISPLAY_SRGB else None
        if matrix is not None:
            chw = torch.as_tensor(display_rgb)
            if chw.dim() == 3 and chw.shape[-1] in (3, 4) and chw.shape[0] not in (1, 3, 4):
                chw = chw.permute(2, 0, 1)
            a = None if alpha is None else torch.as_tensor(np.ascontiguousarray(alpha, np.float32)).reshape(chw.shape[-2:])
            # the only device -> host copy: half RGBA, already scene-linear
            return display_to_linear_half_rgba(chw, a, matrix).cpu().numpy(), None
        # a private host copy: the caller may reuse its tensor once write() returns
        rgb = np.array(to_numpy_hwc(display_rgb)[..., :3], dtype=np.float32, order="C", copy=True)
        return rgb, None if alpha is None else np.array(alpha, dtype=np.float32, copy=True)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _ensure_writer(self) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._drain, name=f"frame-writer {self.pattern}", daemon=True)
                self._writer.start()

    # ---- the writer thread ----------------------------------------------------------------------
    def _drain(self) -> None:
        """Write queued frames until the queue is empty, then end (a later write starts a new writer)."""
        while True:
            with self._lock:  # checked under the lock `_ensure_writer` takes: no frame is left without a writer
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    self._writer = None
                    return
            try:
                if self._failure is None:
                    self._write_now(item)
            except BaseException as error:  # noqa: BLE001 - handed to the job thread, which raises it
                self._failure = error
            finally:
                self._queue.task_done()

    def _write_now(self, item: _PendingFrame) -> None:
        pixels = self._finite(item)
        if pixels.shape[-1] == 3:  # display RGB left for this thread: OpenColorIO on the host
            linear = display_to_scene_linear(pixels, self.display_transform)
            a = np.ones(linear.shape[:2] + (1,), np.float32) if item.alpha is None \
                else item.alpha.reshape(linear.shape[:2] + (1,))
            if item.highlights is not None:
                linear = item.highlights.apply(linear)
            pixels = np.concatenate([linear, a], axis=-1).astype(np.float16)
        elif item.highlights is not None:  # half RGBA from the device path
            pixels = item.highlights.apply(pixels)
        try:
            Path(item.path).parent.mkdir(parents=True, exist_ok=True)
            # refuse/keep: the frame was not there when queued; another server writing the same sequence may
            # publish it meanwhile, and is never written over
            write_exr_frame(item.path, pixels, metadata=item.metadata, compression=self.compression,
                            replace=self.existing in ("write", "keep-or-write"))
        except FileExistsError:
            raise AlreadyExists(f"{item.path} appeared while the job was writing it (another job or server "
                                "writing the same sequence?); the job stops rather than overwrite it. Ask to "
                                "overwrite to replace it.") from None
        except OSError as error:  # a full disk or a lost share: a sentence saying what to do, not a crash
            raise frame_write_error(error, item.path, pixels.nbytes) from error
        self._written.append(item.path)
        if self.on_written:
            self.on_written(item.frame, item.path, self.sequence)


    def _finite(self, item: _PendingFrame) -> np.ndarray:
        """The frame's pixels with those the model left NaN or infinite made black (display or linear 0): a NaN in
        an EXR spreads through every blur and merge of a comp; the job's log says how many there were."""
        pixels = item.pixels
        bad = ~np.isfinite(pixels[..., :3]).all(axis=-1)  # before OpenColorIO, which maps NaN to arbitrary values
        count = int(np.count_nonzero(bad))
        if not count:
            return pixels
        pixels = np.array(pixels, copy=True)
        pixels[..., :3][bad] = 0
        if self.on_log:
            self.on_log(f"frame {item.frame}: {count} of {bad.size} pixels came out of the model as NaN or infinite "
                        "(a number overflow in it or its VAE, often half precision) and are written black.")
        return pixels


SAME_JOB_KEYS = ("job", "seed", "prompt", "model", "params")  # what makes a frame on disk this job's frame


def frame_header(path: str) -> dict[str, str]:
    """The cinegen:* attributes of the EXR frame at `path`, as strings; {} when it cannot be read."""
    image = oiio.ImageInput.open(path)
    if image is None:
        return {}
    try:
        return {a.name: str(a.value) for a in image.spec().extra_attribs if a.name.startswith(CINEGEN_PREFIX)}
    finally:
        image.close()


def written_by_same_job(path: str, metadata: ExrMetadata) -> bool:
    """Whether the frame at `path` is one this job writes: the same job id, seed, prompt, model and options
    (a job id reused with another seed or prompt is not the same job); unreadable or foreign: False."""
    if not metadata.job:
        return False
    header, expected = frame_header(path), metadata.cinegen_attributes()
    return all(header.get(CINEGEN_PREFIX + key) == expected.get(CINEGEN_PREFIX + key) for key in SAME_JOB_KEYS)


def display_transform_for(choice: str, has_input: bool = False) -> str:
    """The job's choice, by default the inverse view (highlights above 1). Jobs with an input plate read it
    through the same transform forward (plate_highlights.plate_to_model), so the plate round-trips."""
    return choice or DISPLAY_VIEW


def base_metadata(*, pipeline: str, model: str, seed: int, prompt: str, job: str, params_json: str,
                  fps: float, envmap_latlong: bool = False) -> ExrMetadata:
    return ExrMetadata(pipeline=pipeline, model=model, seed=seed, prompt=prompt, job=job,
                       params=json.loads(params_json), fps=fps, colorspace=working_space_name(),
                       latlong=envmap_latlong)
