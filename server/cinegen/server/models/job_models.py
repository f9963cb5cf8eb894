"""The model registry as one job sees it: every model the job gets is in the job's offload mode.

Pipelines ask `ctx.registry.get(id)` as before; this view applies `--offload` to what they get
(a model left resident by a job with another setting is re-offloaded or restored first), logs what
changed once per model, and after the job hands model-offloaded pipelines' weights back to CPU
memory. Everything else is the registry's own.
"""
from __future__ import annotations

from typing import Any, Callable

from .family import FamilyAdapter
from .offload import after_job, apply_offload, normalise_mode


class JobModels:
    def __init__(self, registry: Any, offload: str | None, log: Callable[[str], None] = lambda _m: None,
                 *, on_cpu: bool = False):
        self.registry = registry
        self.offload = normalise_mode(offload)
        self._log = log
        self._on_cpu = on_cpu
        self._used: dict[str, FamilyAdapter] = {}
        self._said: set[str] = set()

    def get(self, model_id: str) -> FamilyAdapter:
        adapter = self.registry.get(model_id)
        if self._used.get(model_id) is not adapter:  # first use, or reloaded after the budget unloaded it
            message = apply_offload(adapter, self.offload, on_cpu=self._on_cpu)
            if message and message not in self._said:
                self._said.add(message)
                self._log(message)
            self._used[model_id] = adapter
        return adapter

    def close(self) -> None:
        for adapter in self._used.values():
            after_job(adapter)
        self._used.clear()

    def __getattr__(self, name: str) -> Any:  # entries, entry, default_model, device, ...: the registry's
        return getattr(self.registry, name)
