"""The peak of live tensor bytes an operation allocates, seen at the dispatcher (what a GPU allocator holds).

`LivePeak` is a `TorchDispatchMode`: every storage an aten op returns is counted until it is freed
(a weak reference to the storage, checked after each op), and the largest sum is kept. Tensors that
existed before (the weights) are not counted. This is the quantity a CUDA caching allocator's
`max_memory_allocated` reports for the same ops, less fragmentation and the library's workspaces.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LivePeak(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if not isinstance(item, torch.Tensor) or item.device.type == "meta":
                continue
            storage = item.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            known = self.live.get(key)
            if key and size and (known is None or known[0].expired()):  # new, or a freed address reused
                if known is not None:
                    self.current -= known[1]
                self.live[key] = (StorageWeakRef(storage), size)
                self.current += size
        self.peak = max(self.peak, self.current)
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        return out


def live_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensors alive at once while `fn()` runs, its result included."""
    probe = LivePeak()
    with torch.no_grad(), probe:
        result = fn()
    del result
    return probe.peak
