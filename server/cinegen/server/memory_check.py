"""The memory check at Submit: a job that cannot fit the device is refused before it queues.

The estimate (models/memory_estimate.py) takes the model's architecture, read from its folder
without loading it (models/architecture.py), and the request as each pipeline runs it: the image
pipeline denoises up to 4 frames in one batch; upscale runs its last stage at the output size with
scale fusion's chunked attention; panoramas are counted at their full size (the windows together
cover it); trajectory and story video at the clip's frames; a story also keeps its keyframe model
resident unless offloaded. Models a job puts on the device beside its main one are added: the SDXL
refiner (`--refiner`), a SparseCtrl model on AnimateDiff (story keyframe motion, a panorama's
input) and the job's LoRAs (the parameters peft adds). Frames above the model's native size are
decoded in tiles, as the adapters do. The budget is `--device-memory` when given, else on CUDA the free memory plus what
this process's allocator already holds; on a CPU without `--device-memory` nothing is checked.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidArgument, ResourceExhausted, UserError
from .models.architecture import architecture_of, folder_component, lora_components
from .diffusion.chunked_attention import DEFAULT_MAX_LOGITS as CHUNKED_ATTENTION_LOGITS
from .models.memory_estimate import Architecture, Estimate, Workload, advice, estimate, fewer_decode_frames
from .models.registry import ensure_tiny_model

log = logging.getLogger(__name__)

IMAGE_BATCH = 4  # pipelines/image.py BATCH
STORY_KEYFRAME_FAMILIES = ("sd",)


def device_budget(device: torch.device, configured: int | None) -> int | None:
    if configured:
        return int(configured)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device))  # our own cache is ours to reuse
    return None


def model_architecture(registry: Any, model_id: str) -> tuple[Architecture, Path]:
    """The architecture and the folder it was read from (a built-in model is built first, once)."""
    entry = registry.entry(model_id)
    folder = Path(entry.path)
    if entry.source == "builtin":
        fam = registry.families[entry.family]
        tiny = next(t for t in fam.tiny if t.id == entry.id)
        folder = ensure_tiny_model(tiny, registry.cache_dir)
    return architecture_of(entry, entry.family, registry.dtype_of(entry.family), folder), folder


def native(arch: Architecture, folder_profile: dict | None = None) -> tuple[int, int, int]:
    """(width, height, frames) the model was trained at, from its configs."""
    profile = folder_profile or {}
    if "native_width" in profile:
        return int(profile["native_width"]), int(profile["native_height"]), int(profile.get("native_frames", 1))
    frames = int(profile.get("native_frames", 16 if arch.family == "animatediff" else 1))
    d, s = arch.denoiser, arch.vae_scale
    if arch.family == "cogvideox":
        return int(d.get("sample_width", 90)) * s, int(d.get("sample_height", 60)) * s, int(d.get("sample_frames", 49))
    if arch.family == "wan":
        width = int(d.get("num_attention_heads", 12)) * int(d.get("attention_head_dim", 128))
        return {5120: (1280, 720, 81), 3072: (1280, 704, 121)}.get(width, (832, 480, 81))
    side = int(d.get("sample_size", 64)) * s
    return side, side, frames


def _profile(registry: Any, model_id: str, folder: Path) -> dict:
    """What the folder's cinegen.json says (native size and frames), or a loaded model's own geometry."""
    if registry.is_loaded(model_id):
        adapter = registry.get(model_id)
        w, h = adapter.native_size
        return {"native_width": w, "native_height": h, "native_frames": adapter.native_frames}
    try:
        return json.loads((folder / "cinegen.json").read_text())
    except (OSError, ValueError):
        return {}


def workload(pipeline: str, job: Any, arch: Architecture, size: tuple[int, int, int]) -> Workload:
    c, p = job.common, job.params
    native_w, native_h, native_frames = size
    width, height = c.width or native_w, c.height or native_h
    video = arch.family != "sd"
    frames = (c.frames or native_frames) if video else 1
    rows = 1 if video else min(c.frames or 1, IMAGE_BATCH)
    logits = 0
    if pipeline == "upscale":
        from .pipelines.upscale import resolve_target

        try:
            width, height = resolve_target((native_w, native_h), p.scale, c.width, c.height)
        except Exception:  # the pipeline's own validation says what is wrong
            pass
        logits = CHUNKED_ATTENTION_LOGITS
    elif pipeline == "trajectory" and arch.family == "animatediff":
        logits = CHUNKED_ATTENTION_LOGITS  # FreeTraj's masked attention
    tile = max(512, native_w, native_h)
    vae_tile = getattr(p, "vae_tile", None)
    decode_tile = vae_tile or (tile if max(width, height) > tile else None)
    decode_frames = min(frames, 16) if arch.family == "animatediff" else 1
    return Workload(width=width, height=height, frames=frames, cfg=(c.guidance is None or c.guidance > 1.0),
                    rows=rows, decode_frames=decode_frames, decode_tile=decode_tile,
                    offload=c.offload or "none", chunked_attention_logits=logits)


def job_estimate(pipeline: Any, job: Any, registry: Any) -> tuple[Architecture, Workload, Estimate]:
    model_id = pipeline.model_id(job, registry)
    if job.pipeline == "story":
        model_id = pipeline.video_model_id(job, registry)
    arch, folder = model_architecture(registry, model_id)
    if job.pipeline == "story" and (job.common.offload or "none") == "none":
        keyframes, _ = model_architecture(registry, pipeline.model_id(job, registry))  # resident beside it
        arch = dataclasses.replace(arch, components=arch.components + tuple(
            dataclasses.replace(c, role="other") for c in keyframes.components))
    arch = with_job_models(arch, pipeline, job, registry)
    work = workload(job.pipeline, job, arch, native(arch, _profile(registry, model_id, folder)))
    return arch, work, estimate(arch, work)


# Model offload, the refiner's pipeline: its text encoder runs first (sent back to CPU memory after the
# prompt encoding; counted in the text phase, which is conservative); its UNet takes turns with the base's
# (pipelines/refiner.py sends each back to CPU memory before the other runs); its VAE never runs.
REFINER_PHASES = {"text": ("text",), "denoiser": ("denoise",), "vae": ()}


def refiner_component(c: Any) -> Any:
    """A component of the refiner's pipeline as it sits beside the base's."""
    return dataclasses.replace(c, name=f"refiner.{c.name}" if not c.name.startswith("refiner.") else c.name,
                               phases=REFINER_PHASES.get(c.role), turns_with="denoiser" if c.role == "denoiser" else "")


def with_job_models(arch: Architecture, pipeline: Any, job: Any, registry: Any) -> Architecture:
    """`arch` with the models the job adds beside its main one (refiner, SparseCtrl, LoRAs)."""
    extra: list = []
    refiner_id = getattr(job.params, "refiner", "") if job.pipeline == "image" else ""
    if refiner_id:
        refiner, _ = model_architecture(registry, refiner_id)
        extra += [refiner_component(c) for c in refiner.components]
        arch = dataclasses.replace(arch, extra_denoisers=arch.extra_denoisers + (refiner.denoiser,))
    addon = _sparsectrl_addon(job, registry, arch.family)
    if addon is not None:  # moves with the UNet under offload (models/offload.py attach)
        component, config = folder_component(Path(addon.path), f"sparsectrl:{addon.id}", "denoiser",
                                             arch.denoiser_bytes)
        extra.append(component)
        arch = dataclasses.replace(arch, control=config)
    from .models.lora import job_loras

    for spec in job_loras(job.common, job.params):
        extra += lora_components(Path(spec.path).expanduser(), arch.denoiser_bytes)
    return dataclasses.replace(arch, components=arch.components + tuple(extra)) if extra else arch


def _sparsectrl_addon(job: Any, registry: Any, family: str) -> Any:
    """The SparseCtrl add-on the job will load, as the pipeline picks it: story keyframe motion on
    AnimateDiff, an AnimateDiff panorama with an input image; else None."""
    from .models.sparsectrl import pick_sparsectrl

    if family != "animatediff":
        return None
    if job.pipeline == "story":
        return pick_sparsectrl(registry.addons(), job.params.keyframe_motion, job.params.sparsectrl, family)
    if job.pipeline == "panorama" and getattr(job.params, "input", ""):
        return pick_sparsectrl(registry.addons(), "auto", "", family)
    return None


def check_offload_runs(pipeline: Any, job: Any, registry: Any) -> None:
    """Sequential offload cannot run FreeNoise (AnimateDiff clips longer than the motion module's
    window): diffusers rebuilds the windowed blocks from the weights, which sequential offload keeps
    off the modules (on the meta device), so the new blocks would have none."""
    if (job.common.offload or "none") != "sequential" or job.pipeline == "story":
        return
    model_id = pipeline.model_id(job, registry)
    if registry.entry(model_id).family != "animatediff":
        return
    arch, folder = model_architecture(registry, model_id)
    window = native(arch, _profile(registry, model_id, folder))[2]
    if (job.common.frames or window) > window:
        raise InvalidArgument(f"Offload sequential cannot run AnimateDiff clips longer than its {window}-frame "
                              f"window (FreeNoise rebuilds blocks from weights sequential offload keeps off the "
                              f"GPU): set offload to model, or frames to {window} or fewer.")


def check_fits(pipeline: Any, job: Any, registry: Any, budget: int | None, device: torch.device) -> None:
    """RESOURCE_EXHAUSTED with the settings to lower when the job's estimate is over the budget."""
    if device.type == "cuda":
        check_offload_runs(pipeline, job, registry)
    if budget is None:
        return
    try:
        arch, work, _ = job_estimate(pipeline, job, registry)
    except UserError:
        raise  # the model is unknown or the request wrong: the sentence says so
    except Exception:  # a folder the estimate cannot read must not block jobs that ran before it existed
        log.warning("no memory estimate for job %s; accepted unchecked", job.job_id, exc_info=True)
        return
    where = "this GPU" if device.type == "cuda" else "this server (--device-memory)"
    work = fewer_decode_frames(arch, work, budget)  # AnimateDiff decodes in smaller batches when short
    message = advice(arch, work, budget, video=arch.family != "sd", device=where)
    if message:
        raise ResourceExhausted(message)
