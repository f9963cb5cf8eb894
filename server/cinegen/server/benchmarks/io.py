"""`cinegen bench io`: the output path — EXR encode per compression, colour conversion, the overlap of
compute with the background frame writer, and Download throughput on loopback.

1. EXR write of one 4096×2160 half RGBA frame per compression: ours (`write_exr_frame`: temporary
   name, encode, read-back check, fsync, rename, folder fsync) against OpenImageIO's plain
   `ImageOutput.write_image` of the same half pixels, and OpenImageIO handed float32 (what the
   writer did before it passed half).
2. Colour conversion of the frame: OpenColorIO on the host against `device_colour` on the device.
3. Overlap: `FRAMES` frames of stand-in compute (matmuls on the device, about one EXR write long)
   each handed to a `FrameSink`; the caller's time blocked in `write` against the write time the
   writer thread spent, and the total against compute + write done one after the other.
4. Download: an output file streamed by the server over 127.0.0.1 against reading it from disk
   (page cache: both read the same warm file), in MB/s.
Rounds interleave the compared cases; figures are medians with spreads (`measure.stat`).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import OpenImageIO as oiio
import torch

from cinegen.common.color import srgb_display_to_scene_linear
from cinegen.common.exr import ExrMetadata, write_exr_frame
from cinegen.common.sequence import SequencePattern

from ..output import device_colour
from ..output.frames import FrameSink
from .measure import ratio_stat, stat

COMPRESSIONS = ("zip", "piz", "dwaa", "none")
FULL_SIZE, TINY_SIZE = (2160, 4096), (64, 128)  # (height, width)
FRAMES = 4


def _frame(height: int, width: int) -> tuple[torch.Tensor, np.ndarray]:
    """A display-referred picture with structure (gradients + noise, so codecs have work) and its
    scene-linear half RGBA."""
    generator = torch.Generator().manual_seed(0)
    y = torch.linspace(0, 1, height)[:, None].expand(height, width)
    x = torch.linspace(0, 1, width)[None, :].expand(height, width)
    display = torch.stack([x, y, (x + y) / 2]) * 0.8 + 0.2 * torch.rand(3, height, width, generator=generator)
    linear = srgb_display_to_scene_linear(display.permute(1, 2, 0).numpy())
    rgba = np.concatenate([linear, np.ones(linear.shape[:2] + (1,), np.float32)], axis=-1)
    return display, rgba.astype(np.float16)


def _oiio_plain(path: str, pixels: np.ndarray, compression: str) -> None:
    spec = oiio.ImageSpec(pixels.shape[1], pixels.shape[0], 4, "half")
    spec.attribute("compression", compression)
    out = oiio.ImageOutput.create(path)
    assert out is not None and out.open(path, spec) and out.write_image(pixels), oiio.geterror()
    out.close()


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def exr_rows(folder: Path, rgba_half: np.ndarray, rounds: int) -> tuple[list[dict], list[dict]]:
    meta = ExrMetadata(pipeline="bench")
    rgba_float = rgba_half.astype(np.float32)
    cases = {"cinegen write_exr_frame (half in)": lambda p, c: write_exr_frame(p, rgba_half, metadata=meta, compression=c),
             "OpenImageIO write_image (half in)": lambda p, c: _oiio_plain(p, rgba_half, c),
             "OpenImageIO write_image (float32 in)": lambda p, c: _oiio_plain(p, rgba_float, c)}
    rows, comparisons = [], []
    for compression in COMPRESSIONS:
        times: dict[str, list[float]] = {name: [] for name in cases}
        sizes: dict[str, int] = {}
        for r in range(rounds):
            for name in (list(cases) if r % 2 == 0 else list(reversed(cases))):
                path = str(folder / f"{uuid.uuid4().hex}.exr")
                times[name].append(_timed(lambda: cases[name](path, compression)))
                sizes[name] = os.path.getsize(path)
                os.remove(path)
        for name, samples in times.items():
            rows.append({"part": "exr write", "case": name, "compression": compression,
                         "seconds": stat(samples), "megabytes": round(sizes[name] / 1e6, 2)})
        names = list(cases)
        comparisons.append({"name": f"{compression}: cinegen over OpenImageIO plain (half)",
                            "ratio": ratio_stat(times[names[0]], times[names[1]])})
        comparisons.append({"name": f"{compression}: OpenImageIO float32 over half in",
                            "ratio": ratio_stat(times[names[2]], times[names[1]])})
    return rows, comparisons


def colour_rows(display: torch.Tensor, device: torch.device, rounds: int) -> list[dict]:
    hwc = display.permute(1, 2, 0).contiguous().numpy()
    on_device = display.to(device)
    matrix = device_colour.primaries_matrix()
    host, dev = [], []
    for _ in range(rounds):
        host.append(_timed(lambda: srgb_display_to_scene_linear(hwc)))
        if matrix is not None:
            dev.append(_timed(lambda: device_colour.display_to_linear_half_rgba(on_device, None, matrix).cpu()))
    rows = [{"part": "colour", "case": "OpenColorIO on the host (float32 RGB)", "seconds": stat(host)}]
    if dev:
        rows.append({"part": "colour", "case": f"device_colour on {device.type} (+ copy of half RGBA to host)",
                     "seconds": stat(dev)})
    return rows


def _compute(device: torch.device, size: int, repeats: int) -> torch.Tensor:
    a = torch.randn(size, size, device=device)
    for _ in range(repeats):
        a = torch.tanh(a @ a / size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return a


def overlap_rows(folder: Path, display: torch.Tensor, device: torch.device, rounds: int) -> list[dict]:
    """Stand-in compute sized to about one frame write; FRAMES frames through a FrameSink."""
    picture = display.to(device)
    calibration = _sink(folder / "calibrate", device)
    write_alone = _timed(lambda: (calibration.write(0, picture), calibration.flush()))
    size, repeats = 512, 1
    one = _timed(lambda: _compute(device, size, repeats))
    repeats = max(1, round(write_alone / max(one, 1e-4)))
    blocked, written, total, compute_only = [], [], [], []
    for r in range(rounds):
        compute_only.append(_timed(lambda: [_compute(device, size, repeats) for _ in range(FRAMES)]))
        sink, caller_wait = _sink(folder / f"round{r}", device), 0.0
        writer_busy = _instrument_writer()
        start = time.perf_counter()
        for i in range(FRAMES):
            _compute(device, size, repeats)
            caller_wait += _timed(lambda: sink.write(i, picture))
        sink.flush()
        total.append(time.perf_counter() - start)
        blocked.append(caller_wait / FRAMES)
        written.append(writer_busy() / FRAMES)
    serial = [c + w * FRAMES for c, w in zip(compute_only, written)]
    return [{"part": "overlap", "case": f"{FRAMES} frames: compute (each ≈ one write) + FrameSink.write",
             "caller_blocked_per_frame_s": stat(blocked), "writer_busy_per_frame_s": stat(written),
             "total_s": stat(total), "compute_then_write_s": stat(serial),
             "overlap_saved_share": stat([1 - t / s for t, s in zip(total, serial)], 3)}]


def _sink(folder: Path, device: torch.device) -> FrameSink:
    return FrameSink(SequencePattern.parse(str(folder / "f.####.exr")), 1001, ExrMetadata(pipeline="bench"))


def _instrument_writer() -> Callable[[], float]:
    """Time the writer thread spends in `write_exr_frame` plus host colour (its whole job per frame)."""
    busy = [0.0]
    original = FrameSink._write_now

    def timed(self, item):
        start = time.perf_counter()
        try:
            return original(self, item)
        finally:
            busy[0] += time.perf_counter() - start

    FrameSink._write_now = timed  # type: ignore[method-assign]  # restored when read

    def read() -> float:
        FrameSink._write_now = original  # type: ignore[method-assign]
        return busy[0]
    return read


def download_rows(folder: Path, rgba_half: np.ndarray, rounds: int) -> list[dict]:
    from cinegen.common.client import GeneratorClient, build_request
    from cinegen.common.params import CommonParams

    from ..server import start_server
    from ..service import ServerConfig

    running = start_server(ServerConfig(port=0, use_hf_cache=False, device="cpu"))
    try:
        with GeneratorClient(running.address, timeout=120) as client:
            client.wait_ready(timeout=60)
            out = folder / "dl" / "d.####.exr"
            result = client.run(build_request("image", CommonParams(prompt="x", seed=0, steps=1, width=64, height=64,
                                                                    frames=1, out=str(out)),
                                              job_id=f"bench-io-{uuid.uuid4().hex[:8]}"))
            path = result.outputs[0]
            # the job's own output, rewritten as a full-size frame: a big file the server may stream
            write_exr_frame(path, rgba_half, metadata=ExrMetadata(pipeline="bench"), compression="none")
            size = os.path.getsize(path)
            grpc_s, disk_s = [], []
            for r in range(rounds):
                target = folder / f"got{r}.exr"
                grpc_s.append(_timed(lambda: client.download(path, target)))
                disk_s.append(_timed(lambda: _read_all(path)))
                target.unlink()
    finally:
        running.stop()
    mb = size / 1e6
    return [{"part": "download", "case": "Download over 127.0.0.1 (gRPC, 1 MiB chunks)", "megabytes": round(mb, 1),
             "mb_per_s": stat([mb / s for s in grpc_s], 1)},
            {"part": "download", "case": "read the file from disk (page cache)", "megabytes": round(mb, 1),
             "mb_per_s": stat([mb / s for s in disk_s], 1)}]


def _read_all(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..devices import resolve_device

    device = resolve_device(args.device)
    rounds = max(1, getattr(args, "repeat", 1) or 1)
    height, width = TINY_SIZE if getattr(args, "tiny", False) else FULL_SIZE
    display, rgba = _frame(height, width)
    with tempfile.TemporaryDirectory(prefix="cinegen-bench-io-") as tmp:
        folder = Path(tmp)
        rows, comparisons = exr_rows(folder, rgba, rounds)
        rows += colour_rows(display, device, rounds)
        rows += overlap_rows(folder, display, device, rounds)
        rows += download_rows(folder, rgba, rounds)
    dl = [r for r in rows if r["part"] == "download"]
    comparisons.append({"name": "Download over reading the file (throughput)",
                        "ratio": ratio_stat(dl[0]["mb_per_s"]["samples"], dl[1]["mb_per_s"]["samples"])})
    return {"benchmark": "io", "device": str(device), "size": f"{width}x{height}", "rounds": rounds,
            "rows": rows, "comparisons": comparisons,
            "notes": ["wall-clock times; on a shared machine read the spreads"]}
