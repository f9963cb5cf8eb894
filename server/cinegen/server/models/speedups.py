"""Denoiser speed-ups for the GPU path (#21): channels-last memory format and `torch.compile`.

Both act on the model's denoiser only (the UNet or the transformer: where the steps spend their time),
in place, so every pipeline, patch and hook that holds the module keeps working:

* **channels-last** (`--channels-last`): the conv weights of a UNet stored NHWC, the layout tensor
  cores' convolutions prefer in half precision. Only modules with a quarter or more of their weights in
  2-D convolutions get it (SD, SDXL, AnimateDiff UNets); a DiT (Wan, CogVideoX) is almost all matmuls,
  for which the layout means nothing.
* **torch.compile** (`--compile [BACKEND]`, inductor by default): `nn.Module.compile` on the denoiser,
  which keeps the module's type and attributes (attention processors, LoRA, offload hooks still find
  it). The first step of each new shape pays for the compile. `eager` and `aot_eager` trace without
  generating code: they check the wiring on a CPU in seconds.

Neither changes what is computed: the frames equal the plain ones up to float rounding (tests).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["COMPILE_BACKENDS", "Speedups", "conv2d_share", "is_compiled"]

COMPILE_BACKENDS = ("inductor", "eager", "aot_eager", "cudagraphs")
CONV_SHARE_FOR_CHANNELS_LAST = 0.25  # below it the module is mostly matmuls: the layout gains nothing


@dataclass(frozen=True)
class Speedups:
    compile: str | None = None  # a torch.compile backend; None = off
    compile_mode: str | None = None  # inductor's mode ("reduce-overhead", "max-autotune", …); None = default
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.compile is not None and self.compile not in COMPILE_BACKENDS:
            raise ValueError(f"--compile takes one of {', '.join(COMPILE_BACKENDS)}; got '{self.compile}'.")

    @property
    def any(self) -> bool:
        return bool(self.compile or self.channels_last)

    def apply(self, adapter: Any) -> list[str]:
        """Apply to every denoiser of ``adapter`` (Wan 2.2 has two); returns what was done, for the log."""
        done: list[str] = []
        if not self.any:
            return done
        modules = list(getattr(adapter, "denoisers", None) or [adapter.denoiser])
        for module in modules:
            done += self.apply_to(module)
        if done:
            log.info("%s: %s", getattr(getattr(adapter, "entry", None), "id", "model"), ", ".join(done))
        return done

    def apply_to(self, module: nn.Module) -> list[str]:
        done: list[str] = []
        name = type(module).__name__
        if self.channels_last and conv2d_share(module) >= CONV_SHARE_FOR_CHANNELS_LAST:
            module.to(memory_format=torch.channels_last)
            done.append(f"{name} channels-last")
        if self.compile and not is_compiled(module):
            # dynamic=None: compiled for the first shape, made shape-generic when a second one comes
            # (window batches and frame counts change between jobs)
            module.compile(backend=self.compile, mode=self.compile_mode)
            done.append(f"{name} compiled ({self.compile}{', ' + self.compile_mode if self.compile_mode else ''})")
        return done


def conv2d_share(module: nn.Module) -> float:
    """The share of the module's parameters in 2-D convolutions (a UNet: about half; a DiT: its patch embedding)."""
    total = sum(p.numel() for p in module.parameters())
    conv = sum(p.numel() for m in module.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False))
    return conv / total if total else 0.0


def is_compiled(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None
