"""LoRAs for one job on any family: loaded through diffusers/peft, weighted, and removed after the job.

`PATH[:WEIGHT]` names a `.safetensors` LoRA (weight 1 when omitted; a Windows drive letter is not a
weight). Every family's pipeline is a diffusers `LoraLoaderMixin` (SD/SDXL, AnimateDiff — whose
motion LoRAs target the motion modules —, Wan, CogVideoX), so one code path serves them all. The
file is checked from its tensor names first (a motion module or a checkpoint given as a LoRA is
refused with a sentence, not a stack trace), and the LoRA layers are unloaded when the block ends,
however it ends: the next job sees the model as it was.

Whether a LoRA fits a model is read from its layers (diffusers' `lora_state_dict`, which converts kohya
and older diffusers names): every layer it changes must be a layer of the model with the same input and
output widths. That refuses an SDXL LoRA on SD 1.5 (2048- vs 768-wide context), a UNet LoRA on a DiT,
and a motion LoRA on a model without motion modules, with a sentence naming the file and the model —
at Submit, before any step runs. A job with several models (story: keyframe and motion model) gives
each LoRA to the first model it fits, motion LoRAs to AnimateDiff (`route_loras`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from torch import nn

from ..errors import InvalidArgument
from .checkpoint_kinds import classify_file
from .family import FamilyAdapter
from .folder_check import is_cut_short

JOB_ADAPTER_PREFIX = "cinegen-job-lora"
MAX_LORAS = 32  # LoRAs one job may name: far more than anyone stacks


@dataclass(frozen=True)
class LoraSpec:
    path: str
    weight: float = 1.0


def parse_lora(text: str) -> LoraSpec:
    """`PATH[:WEIGHT]` → spec; the part after the last colon is a weight only when it is a number."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return LoraSpec(head, float(tail))
        except ValueError:
            pass
    return LoraSpec(text)


def parse_loras(text: str) -> list[LoraSpec]:
    """Comma-separated `PATH[:WEIGHT]` specs (the upscale pipeline's --lora); empty → none."""
    return [parse_lora(part.strip()) for part in text.split(",") if part.strip()]


def job_loras(common, params=None) -> list[LoraSpec]:
    """A job's LoRAs: the common `lora` list (each item may itself be comma-separated) and, for old clients,
    the upscale pipeline's deprecated `lora` text after them."""
    specs = [spec for item in getattr(common, "lora", None) or [] for spec in parse_loras(item)]
    alias = getattr(params, "lora", "")
    return specs + (parse_loras(alias) if isinstance(alias, str) else [])


# ---- does it fit? -----------------------------------------------------------------------------
# Where a LoRA tensor name says which layer it changes and which of its two matrices it is:
# peft (lora_A/lora_B), diffusers (lora.down/up), kohya after conversion (lora_down/up) and the
# attention-processor layout of older diffusers and AnimateDiff motion LoRAs (attn1.processor.to_q_lora.down).
_MARKERS = ((".lora_A.", "down"), (".lora_B.", "up"), (".lora.down.", "down"), (".lora.up.", "up"),
            (".lora_down.", "down"), (".lora_up.", "up"), ("_lora.down.", "down"), ("_lora.up.", "up"))
BASE_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL", "wan": "Wan"}


def _layer_of(key: str) -> tuple[str, str] | None:
    for marker, matrix in _MARKERS:
        if marker in key:
            path = key.split(marker)[0]
            if marker.startswith("_lora"):  # processor layout: ...attn2.processor.to_k_lora.down.weight
                path = path.replace(".processor.", ".")
                path += ".0" if path.endswith("to_out") else ""
            return path, matrix
    return None


def _widths(module: nn.Module) -> tuple[int, int] | None:
    module = getattr(module, "base_layer", module)  # a LoRA another job has loaded wraps the layer
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels, module.out_channels
    return None


def _component(pipe, path: str) -> tuple[nn.Module | None, str]:
    """(module tree, path inside it) for a layer path such as `unet.down_blocks.0...`; diffusers loads a
    layer only under its component's prefix (unet., transformer., text_encoder.), so no prefix = no layer."""
    head, _, rest = path.partition(".")
    part = getattr(pipe, head, None) if rest else None
    return (part, rest) if isinstance(part, nn.Module) else (None, path)


def lora_state_dict(adapter: FamilyAdapter, spec: LoraSpec) -> dict:
    """The LoRA's tensors with the names diffusers gives them for this pipeline (read-only: the model is untouched)."""
    unet = getattr(adapter.pipe, "unet", None)
    # SDXL kohya block numbers are remapped from the UNet's config, as load_lora_weights does
    extra = {"unet_config": unet.config} if unet is not None else {}
    out = type(adapter.pipe).lora_state_dict(str(Path(spec.path).expanduser()), **extra)
    return out[0] if isinstance(out, tuple) else out


def lora_fit_problem(adapter: FamilyAdapter, spec: LoraSpec) -> str | None:
    """Why the LoRA cannot go on this model (a phrase), or None when every layer it changes is the model's."""
    kind = classify_file(Path(spec.path).expanduser())
    if kind.kind == "motion-lora" and adapter.family != "animatediff":
        return "it is a motion LoRA (it changes AnimateDiff's motion modules) and this is not an AnimateDiff model"
    if not hasattr(adapter.pipe, "load_lora_weights"):
        return "this model takes no LoRAs"
    try:
        tensors = lora_state_dict(adapter, spec)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        return f"diffusers cannot read it for this model ({exc})"
    found = missing = 0
    for key, tensor in tensors.items():
        layer = _layer_of(key)
        if layer is None or not hasattr(tensor, "shape") or tensor.dim() < 2:
            continue
        path, matrix = layer
        tree, inner = _component(adapter.pipe, path)
        try:
            if tree is None:
                raise AttributeError(path)
            widths = _widths(tree.get_submodule(inner))
        except AttributeError:
            missing += 1
            continue
        if widths is None:
            continue
        want, have = (tensor.shape[1], widths[0]) if matrix == "down" else (tensor.shape[0], widths[1])
        if want != have:
            side = "inputs" if matrix == "down" else "outputs"
            return f"its layer {path} has {want} {side} where the model's has {have}"
        found += 1
    if missing and not found:
        hint = (" (an original AnimateDiff motion LoRA? diffusers' scripts/convert_animatediff_motion_lora_to_"
                "diffusers.py converts it)" if kind.kind == "motion-lora" else "")
        return f"none of its {missing} layers is a layer of this model{hint}"
    return None


def check_lora_fits(adapter: FamilyAdapter, spec: LoraSpec) -> None:
    problem = lora_fit_problem(adapter, spec)
    if problem:
        raise InvalidArgument(_refusal(spec, [adapter], [problem]))


def _refusal(spec: LoraSpec, adapters: Sequence[FamilyAdapter], problems: Sequence[str]) -> str:
    name = Path(spec.path).name
    base = BASE_NAMES.get(classify_file(Path(spec.path).expanduser()).base, "")
    made_for = f" It was made for {base} models." if base else ""
    fits = "; ".join(f"'{a.entry.id}' ({a.family}): {p}" for a, p in zip(adapters, problems))
    return (f"The LoRA '{name}' does not fit {'the model' if len(adapters) == 1 else 'any model of this job'}: "
            f"{fits}.{made_for} Use a LoRA trained for this model, or pick the model it was made for.")


def route_loras(specs: Sequence[LoraSpec], adapters: dict[str, FamilyAdapter]) -> dict[str, list[LoraSpec]]:
    """Each LoRA to the first model (in the order given) it fits; motion LoRAs to an AnimateDiff model.
    INVALID_ARGUMENT naming the file and the models when one fits none."""
    routed: dict[str, list[LoraSpec]] = {role: [] for role in adapters}
    for spec in specs:
        check_lora(spec)
        problems = []
        for role, adapter in adapters.items():
            problem = lora_fit_problem(adapter, spec)
            if problem is None:
                routed[role].append(spec)
                break
            problems.append(problem)
        else:
            raise InvalidArgument(_refusal(spec, list(adapters.values()), problems))
    return routed


def check_lora(spec: LoraSpec, family: str | None = None) -> None:
    """INVALID_ARGUMENT unless the spec names a LoRA file (that this family can take, when given)."""
    if not math.isfinite(spec.weight):
        raise InvalidArgument(f"The weight of the LoRA '{Path(spec.path).name}' is {spec.weight}; give a number "
                              "such as 0.8 after the colon.")
    file = Path(spec.path).expanduser()
    if not file.is_file() or file.suffix.lower() != ".safetensors":
        raise InvalidArgument(f"The LoRA '{spec.path}' is not a .safetensors file on the server.")
    kind = classify_file(file)
    if kind.kind in ("lora", "motion-lora") and is_cut_short(file):
        raise InvalidArgument(f"The LoRA '{file.name}' is cut short: the file ends before the tensors its header "
                              "lists (a download or copy that did not finish?). Copy it again.")
    if kind.kind not in ("lora", "motion-lora"):
        raise InvalidArgument(f"'{file.name}' is not a LoRA but a {kind.kind} file ({kind.why}); "
                              "give a LoRA with --lora.")
    if kind.kind == "motion-lora" and family not in (None, "animatediff"):
        raise InvalidArgument(f"'{file.name}' is a motion LoRA (it changes AnimateDiff's motion modules); "
                              "use it with an AnimateDiff model.")


@contextlib.contextmanager
def loras_applied(adapter: FamilyAdapter, specs: Sequence[LoraSpec]) -> Iterator[None]:
    """Within the block the LoRAs are active at their weights; outside it the model is untouched."""
    if not specs:
        yield
        return
    pipe = adapter.pipe
    if not hasattr(pipe, "load_lora_weights"):
        raise InvalidArgument(f"'{adapter.entry.id}' does not take LoRAs.")
    for spec in specs:
        check_lora(spec, adapter.family)
        check_lora_fits(adapter, spec)  # also at run time: a resumed or farmed job was checked elsewhere
    names: list[str] = []
    try:
        for index, spec in enumerate(specs):
            name = f"{JOB_ADAPTER_PREFIX}-{index}"
            try:
                pipe.load_lora_weights(str(Path(spec.path).expanduser()), adapter_name=name)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise InvalidArgument(f"The LoRA '{spec.path}' does not fit '{adapter.entry.id}' ({exc}). "
                                      f"Use a LoRA trained for this {adapter.family} model.") from exc
            names.append(name)
            if not any(name in getattr(part, "peft_config", {}) for part in pipe.components.values()):
                raise InvalidArgument(f"The LoRA '{Path(spec.path).name}' put none of its layers on "
                                      f"'{adapter.entry.id}'. Use a LoRA trained for this model.")
        pipe.set_adapters(names, [spec.weight for spec in specs])
        yield
    finally:
        if names:
            pipe.unload_lora_weights()
            for part in pipe.components.values():  # unload leaves peft's adapter table behind; the next job
                if isinstance(part, nn.Module) and hasattr(part, "peft_config"):  # would warn of "multiple adapters"
                    del part.peft_config
                    if getattr(part, "_hf_peft_config_loaded", False):
                        part._hf_peft_config_loaded = False


__all__ = ["LoraSpec", "check_lora", "check_lora_fits", "job_loras", "lora_fit_problem", "loras_applied", "parse_lora",
           "parse_loras", "route_loras"]
