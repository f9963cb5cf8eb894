"""The largest tensor an operation allocates, seen at the dispatcher (what would cost GPU memory).

`LargestTensor` is a `TorchDispatchMode` that looks at every tensor each aten op returns and keeps
the biggest byte count. Composite ops (SDPA's math backend, convolutions) are seen op by op, so a
materialised logit matrix shows up; `math_attention()` forces SDPA onto that backend so the probe
sees the logits a non-fused GPU path would hold.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LargestTensor(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.op = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                size = item.numel() * item.element_size()
                if size > self.bytes:
                    self.bytes, self.op = size, str(func)
        return out


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def largest_tensor(fn: Callable[[], Any]) -> int:
    """Bytes of the largest tensor allocated while `fn()` runs (SDPA on its math backend)."""
    probe = LargestTensor()
    with torch.no_grad(), math_attention(), probe:
        fn()
    return probe.bytes
