"""`cinegen bench memory`: the Submit estimate against the measured peak, per tiny model and offload mode.

Each case runs one prompt encoding, one guided denoiser call and the decode (every component once)
with the offload hooks of the mode installed on the device. Measured: on a GPU
`torch.cuda.max_memory_allocated` over the case (resident weights included); on a CPU the weights
plus the peak of live tensors (benchmarks/live_memory.py), mode none only: offloaded weights stay
in the CPU memory a CPU job runs in, so there is nothing to compare (and accelerate cannot run
sequential offload with the CPU as its execution device). Reported beside the estimate
without its margin (`raw`) and with it (`total`); the ratio is raw / measured.
"""
from __future__ import annotations

import argparse
import gc
from typing import Any

import torch

from ..memory_check import model_architecture
from ..models.memory_estimate import GiB, Workload, estimate
from ..models.offload import set_offload
from ..models.registry import ModelRegistry
from ..devices import resolve_device
from .live_memory import live_peak

CASES = [("tiny-sd", 256, 1), ("tiny-animatediff", 128, 8), ("tiny-wan", 128, 17), ("tiny-cogvideox", 128, 17)]


def _one_step(adapter: Any, side: int, frames: int) -> torch.Tensor:
    cond = adapter.encode_prompt("a red disc", "blue", guidance=adapter.default_guidance)
    x = torch.randn(adapter.latent_shape(1, side, side, frames), generator=torch.Generator().manual_seed(0))
    return adapter.decode(adapter.predict(x.to(adapter.device), torch.tensor(500), cond))


def _measured(adapter: Any, device: torch.device, side: int, frames: int, resident: int) -> int:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            _one_step(adapter, side, frames)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    return resident + live_peak(lambda: _one_step(adapter, side, frames))


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    registry = ModelRegistry(device=device, use_hf_cache=False)
    modes = ("none", "model", "sequential") if device.type == "cuda" else ("none",)
    rows = []
    for model_id, side, frames in CASES:
        adapter = registry.get(model_id)
        arch, _ = model_architecture(registry, model_id)
        video = adapter.kind == "video"
        for mode in modes:
            set_offload(adapter.pipe, mode, device)
            work = Workload(width=side, height=side, frames=frames if video else 1, offload=mode,
                            decode_frames=min(frames, 16) if adapter.family == "animatediff" else 1)
            est = estimate(arch, work)
            raw = max(sum(v) for v in est.phases.values())
            resident = adapter.parameter_bytes()  # on a CPU every weight is in the memory the job runs in
            measured = _measured(adapter, device, side, frames, resident)
            rows.append({"model": model_id, "size": side, "frames": frames, "offload": mode,
                         "estimate_raw_mib": round(raw / 2**20, 1), "estimate_mib": round(est.total / 2**20, 1),
                         "measured_mib": round(measured / 2**20, 1), "raw_over_measured": round(raw / measured, 2),
                         "peak_phase": est.phase})
        set_offload(adapter.pipe, "none", device)
    return {"benchmark": "memory", "device": str(device), "torch": torch.__version__, "gib": GiB, "rows": rows}
