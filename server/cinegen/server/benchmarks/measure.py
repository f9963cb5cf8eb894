"""Timing and peak-memory helpers for benchmarks."""
from __future__ import annotations

import contextlib
import resource
import time
from dataclasses import dataclass

import torch


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_gpu_bytes: int = 0
    peak_rss_bytes: int = 0

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "peak_gpu_gib": round(self.peak_gpu_bytes / 2**30, 3),
                "peak_rss_gib": round(self.peak_rss_bytes / 2**30, 3)}


@contextlib.contextmanager
def measure(device: torch.device):
    m = Measurement()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        yield m
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            m.peak_gpu_bytes = torch.cuda.max_memory_allocated(device)
        m.seconds = time.perf_counter() - start
        m.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
