"""Where a model's weights live while a job runs: all on the device, or in CPU memory behind diffusers'
offload hooks (`enable_model_cpu_offload`: one whole component on the GPU at a time;
`enable_sequential_cpu_offload`: one leaf module at a time, the rest on the meta device with the
weights kept in CPU memory).

A loaded model stays resident between jobs, so the mode is a state of the adapter: `apply_offload`
moves it from whatever the last job left to what this job asks (hooks removed first, then the new
ones, or the whole pipeline back on the device for "none"), and `after_job` sends every
component of a model-offloaded pipeline back to CPU memory (diffusers' `maybe_free_model_hooks`)
so an idle model holds no GPU memory.

On a CPU-only server offload is accepted and does nothing, with a log line that says so: the
weights are already in the memory the job runs in, so there is nothing to save, and a preset saved
on a GPU workstation (or a farm job spec) should still run on a CPU node instead of being refused.
"""
from __future__ import annotations

from typing import Any

import torch

from cinegen.common.params import OFFLOAD_MODES

from ..errors import InvalidArgument

OFFLOAD_ATTRIBUTE = "_cinegen_offload"  # on the diffusers pipeline: the mode its hooks implement now


def normalise_mode(mode: str | None) -> str:
    """"" (an old client: the proto default) and None mean "none"; anything else must be a known mode."""
    mode = (mode or "none").strip().lower()
    if mode not in OFFLOAD_MODES:
        raise InvalidArgument(f"Offload '{mode[:24]}' is not one of {', '.join(OFFLOAD_MODES)}.")
    return mode


def current_mode(pipe: Any) -> str:
    return getattr(pipe, OFFLOAD_ATTRIBUTE, "none")


def set_offload(pipe: Any, mode: str, device: torch.device) -> None:
    """Install the hooks of `mode` on a diffusers pipeline with `device` as the execution device (any
    device, CPU included: that is how the tests check the wiring), replacing what was there."""
    mode = normalise_mode(mode)
    if current_mode(pipe) == mode:
        return
    if current_mode(pipe) != "none":
        # restores sequential offload's meta weights from the CPU copies accelerate kept
        pipe.remove_all_hooks()
    if mode == "none":
        pipe.to(device)
    elif mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    setattr(pipe, OFFLOAD_ATTRIBUTE, mode)


def apply_offload(adapter: Any, mode: str | None, *, on_cpu: bool = False) -> str | None:
    """Put a loaded model in the job's offload mode; returns a sentence for the job's log, or None.

    `on_cpu=True` installs the hooks even when the model runs on the CPU (tests of the wiring)."""
    mode = normalise_mode(mode)
    if adapter.device.type == "cpu" and not on_cpu:
        if mode == "none":
            return None
        return (f"Offload '{mode}' does nothing on this CPU-only server: the model's weights are already in "
                "the memory the job runs in. The job runs as with offload none.")
    before = current_mode(adapter.pipe)
    set_offload(adapter.pipe, mode, adapter.device)
    if before == mode:
        return None
    return f"'{adapter.entry.id}': offload {before} -> {mode}."


def after_job(adapter: Any) -> None:
    """Model offload leaves the last component used on the GPU: send it back to CPU memory."""
    if current_mode(adapter.pipe) == "model":
        adapter.pipe.maybe_free_model_hooks()


def execution_devices(module: torch.nn.Module) -> set[str]:
    """The execution devices of the offload hooks on a module and its children (empty: no hooks)."""
    found = set()
    for child in module.modules():
        hook = getattr(child, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            device = getattr(h, "execution_device", None)
            if device is not None:
                found.add(str(torch.device(device)))
    return found
