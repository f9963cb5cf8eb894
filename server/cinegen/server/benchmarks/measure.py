"""Timing, peak memory and fair repetition for benchmarks.

Fairness on a shared or thermally busy machine: cases that are compared run *interleaved* (round
1: A, B; round 2: A, B; …), every figure is the median over rounds with its spread (max − min), and
a comparison's ratio is the median of the per-round ratios (A and B of one round ran seconds apart,
under the same load). Peak memory: `torch.cuda.max_memory_allocated` on a GPU (reset per case);
on a CPU the peak RSS, which is process-wide, so a case whose memory matters runs in its own process.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch


@dataclass
class Measurement:
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time: on a shared CPU, the work done (run on one thread)
    peak_gpu_bytes: int = 0
    peak_rss_bytes: int = 0

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3),
                "peak_gpu_gib": round(self.peak_gpu_bytes / 2**30, 3),
                "peak_rss_gib": round(self.peak_rss_bytes / 2**30, 3)}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@contextlib.contextmanager
def measure(device: torch.device) -> Iterator[Measurement]:
    m = Measurement()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        yield m
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            m.peak_gpu_bytes = torch.cuda.max_memory_allocated(device)
        m.seconds = time.perf_counter() - start
        m.cpu_seconds = time.process_time() - cpu_start
        m.peak_rss_bytes = peak_rss_bytes()


def stat(samples: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """Median and spread (max − min) of repeated figures, with the samples themselves."""
    values = [float(v) for v in samples]
    return {"median": round(statistics.median(values), digits), "spread": round(max(values) - min(values), digits),
            "n": len(values), "samples": [round(v, digits) for v in values]}


def ratio_stat(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """The per-round ratios' median and spread (rounds pair figures measured under the same load)."""
    return stat([a / b for a, b in zip(numerators, denominators) if b > 0], digits=3)


def interleaved(cases: Sequence[Any], rounds: int, run_one: Callable[[Any, int], dict[str, Any]],
                on_sample: Callable[[Any, int, dict[str, Any]], None] | None = None) -> dict[Any, list[dict[str, Any]]]:
    """`run_one(case, round)` for round 1: every case, round 2: every case, …; samples by case.

    The order of cases alternates between rounds (A B, B A, A B…) so neither always runs first."""
    samples: dict[Any, list[dict[str, Any]]] = {case: [] for case in cases}
    for r in range(rounds):
        for case in (cases if r % 2 == 0 else list(reversed(cases))):
            sample = run_one(case, r)
            samples[case].append(sample)
            if on_sample:
                on_sample(case, r, sample)
    return samples


def in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`fn(*args)` in a spawned process: its peak RSS is its own (fn must be importable)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def device_peak(device: torch.device) -> dict[str, float | None]:
    """The peak memory figures of the case that just ran (see the module docstring)."""
    gpu = round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None
    return {"peak_gpu_gib": gpu, "peak_rss_gib": round(peak_rss_bytes() / 2**30, 3)}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
