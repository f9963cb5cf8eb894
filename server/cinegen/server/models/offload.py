"""Where a model's weights live while a job runs: all on the device, or in CPU memory behind diffusers'
offload hooks (`enable_model_cpu_offload`: one whole component on the GPU at a time;
`enable_sequential_cpu_offload`: one leaf module at a time, the rest on the meta device with the
weights kept in CPU memory).

A loaded model stays resident between jobs, so the mode is a state of the adapter: `apply_offload`
moves it from whatever the last job left to what this job asks (hooks removed first, then the new
ones, or the whole pipeline back on the device for "none"), and `after_job` sends every
component of a model-offloaded pipeline back to CPU memory (diffusers' `maybe_free_model_hooks`)
so an idle model holds no GPU memory.

A module kept beside the pipeline rather than in it (the SparseCtrl model on an AnimateDiff adapter)
gets no hooks from diffusers: `attach` puts it under the same mode. With model offload it comes on
the device at its first call and goes back to CPU memory with the UNet it feeds (when the VAE
runs); with sequential offload it gets accelerate's per-module hooks, as the components do.

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
ATTACHED_ATTRIBUTE = "_cinegen_attached"  # on the pipeline: [(module, the component it moves with)]


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
        for module, _ in attached(pipe):
            _unhook(module)
    if mode == "none":
        pipe.to(device)
    elif mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    setattr(pipe, OFFLOAD_ATTRIBUTE, mode)
    for module, follows in attached(pipe):
        _hook(pipe, module, follows, device)


# ---- modules beside the pipeline ----------------------------------------------------------------------
def attached(pipe: Any) -> list[tuple[torch.nn.Module, str]]:
    return pipe.__dict__.get(ATTACHED_ATTRIBUTE, [])


def attach(pipe: Any, module: torch.nn.Module, device: torch.device, follows: str = "unet") -> None:
    """Put `module` (kept beside `pipe`, not one of its components) under the pipeline's offload mode: on
    `device` with none; with model offload on the device from its first call until component `follows`
    goes back to CPU memory; per-module hooks with sequential. Call it whenever the module is handed out:
    diffusers rebuilds its hooks (LoRA loading, `maybe_free_model_hooks`), and this links it again."""
    entries = pipe.__dict__.setdefault(ATTACHED_ATTRIBUTE, [])
    if not any(m is module for m, _ in entries):
        entries.append((module, follows))
    _hook(pipe, module, follows, device)


def _unhook(module: torch.nn.Module) -> None:
    from accelerate.hooks import remove_hook_from_module

    if any(getattr(m, "_hf_hook", None) is not None for m in module.modules()):
        remove_hook_from_module(module, recurse=True)  # sequential: the weights come back from the CPU copies


def _hook(pipe: Any, module: torch.nn.Module, follows: str, device: torch.device) -> None:
    from accelerate import cpu_offload, cpu_offload_with_hook

    mode = current_mode(pipe)
    if (mode == "model" and _linked(pipe, module)) or (mode == "sequential" and execution_devices(module)):
        return
    _unhook(module)
    if mode == "none":
        module.to(device)
    elif mode == "sequential":
        cpu_offload(module, device, offload_buffers=len(module._parameters) > 0)  # as diffusers does per component
    else:
        module.to("cpu")
        _, own = cpu_offload_with_hook(module, getattr(pipe, "_offload_device", device))
        lead = next((h for h in pipe._all_hooks if h.model is getattr(pipe, follows, None)), None)
        for hook in pipe._all_hooks:  # the component after `follows` in the chain offloads it: now both
            prev = getattr(hook.hook, "prev_module_hook", None)
            if lead is not None and prev is not None and getattr(prev, "lead", prev) is lead:
                hook.hook.prev_module_hook = _offloaded_together(prev, own)
        # maybe_free_model_hooks offloads it at the end of the job as well; a stale hook of it goes
        pipe._all_hooks = [h for h in pipe._all_hooks if h.model is not module] + [own]


def _offloaded_together(prev: Any, own: Any) -> Any:
    """A hook whose offload() offloads the chain's component and the modules that follow it (accelerate's
    CpuOffload calls offload() on the previous component's hook and checks it is a UserCpuOffloadHook)."""
    from accelerate.hooks import UserCpuOffloadHook

    class OffloadedTogether(UserCpuOffloadHook):
        def offload(self) -> None:
            self.lead.offload()
            for follower in self.followers:
                follower.offload()

    lead = getattr(prev, "lead", prev)
    together = OffloadedTogether(lead.model, lead.hook)
    together.lead = lead
    together.followers = [f for f in getattr(prev, "followers", []) if f.model is not own.model] + [own]
    return together


def _linked(pipe: Any, module: torch.nn.Module) -> bool:
    """Model offload: `module` has its hook in the pipeline's chain and goes with its component."""
    followed = any(f.model is module for h in getattr(pipe, "_all_hooks", [])
                   for f in getattr(getattr(h.hook, "prev_module_hook", None), "followers", []))
    return followed and any(h.model is module for h in pipe._all_hooks)


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
        adapter.pipe.maybe_free_model_hooks()  # rebuilds the chain: the attached modules are linked again
        for module, follows in attached(adapter.pipe):
            _hook(adapter.pipe, module, follows, adapter.device)


def release(adapter: Any) -> None:
    """Model offload, mid-job: send every component of `adapter`'s pipeline that its chain left on the device
    back to CPU memory, so a second pipeline (the SDXL refiner after its base) finds the room. Unlike
    `after_job` the chain stays as it is (no rebuild per batch). A no-op with none/sequential or on a CPU
    server (no hooks there)."""
    pipe = getattr(adapter, "pipe", None)
    if pipe is None or current_mode(pipe) != "model":
        return
    for hook in getattr(pipe, "_all_hooks", []):  # the components' hooks and the attached modules' own
        hook.offload()


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
