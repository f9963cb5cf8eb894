"""The torch device the models run on, from `--device auto|cpu|cuda` (no gRPC: benchmarks import it too)."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but this machine has no CUDA GPU; use --device cpu.")
    return torch.device(name)
