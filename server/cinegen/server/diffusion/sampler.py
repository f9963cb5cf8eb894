"""One denoising loop for every pipeline; methods plug in as per-step hooks.

The loop is the scheduler loop of diffusers' pipelines (scale input, predict, step), made
reusable: it runs over any latent, may start at a later step index (re-noised cascades and
refinement), and calls hooks before/around/after each step. Cancellation is checked between steps.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Protocol

import torch

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StepHook(Protocol):
    """Any subset of these methods; missing ones are skipped."""

    def before_step(self, index: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...
    def step_context(self, index: int, t: torch.Tensor) -> ContextManager: ...
    def after_step(self, index: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class LoopCallbacks:
    on_step: Callable[[int, int], None] | None = None  # (steps done, steps to do)
    should_stop: Callable[[], None] | None = None  # raises to cancel between steps
    on_latent: Callable[[torch.Tensor], None] | None = None  # the latent after each step (previews)


@dataclass
class DenoiseLoop:
    scheduler: Any
    predict: Predict
    hooks: Iterable[Any] = field(default_factory=tuple)
    callbacks: LoopCallbacks = field(default_factory=LoopCallbacks)
    step_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. eta/generator for DDIM

    def run(self, x: torch.Tensor, timesteps: torch.Tensor | None = None, start_index: int = 0) -> torch.Tensor:
        timesteps = self.scheduler.timesteps if timesteps is None else timesteps
        hooks = list(self.hooks)
        todo = len(timesteps) - start_index
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start_index)  # multistep schedulers index their own state
        for done, index in enumerate(range(start_index, len(timesteps))):
            if self.callbacks.should_stop:
                self.callbacks.should_stop()
            t = timesteps[index]
            x = self.step(index, t, x, hooks)
            if self.callbacks.on_step:
                self.callbacks.on_step(done + 1, todo)
            if self.callbacks.on_latent:
                self.callbacks.on_latent(x)
        return x

    def step(self, index: int, t: torch.Tensor, x: torch.Tensor, hooks: list[Any]) -> torch.Tensor:
        for hook in hooks:
            if hasattr(hook, "before_step"):
                x = hook.before_step(index, t, x)
        with contextlib.ExitStack() as stack:
            for hook in hooks:
                if hasattr(hook, "step_context"):
                    stack.enter_context(hook.step_context(index, t))
            # flow-matching schedulers have no input scaling
            scale = getattr(self.scheduler, "scale_model_input", None)
            model_in = scale(x, t) if scale else x
            out = self.predict(model_in, t)
        x = self.scheduler.step(out, t, x, **self.step_kwargs, return_dict=False)[0]
        for hook in hooks:
            if hasattr(hook, "after_step"):
                x = hook.after_step(index, t, x)
        return x


def scheduler_step_kwargs(scheduler: Any, generator: torch.Generator | None, eta: float = 0.0) -> dict[str, Any]:
    """The extra `step` arguments a scheduler accepts, as diffusers' pipelines pass them."""
    import inspect

    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs
