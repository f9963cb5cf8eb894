"""LoRAs for one job on any family: loaded through diffusers/peft, weighted, and removed after the job.

`PATH[:WEIGHT]` names a `.safetensors` LoRA (weight 1 when omitted; a Windows drive letter is not a
weight). Every family's pipeline is a diffusers `LoraLoaderMixin` (SD/SDXL, AnimateDiff — whose
motion LoRAs target the motion modules —, Wan, CogVideoX), so one code path serves them all. The
file is checked from its tensor names first (a motion module or a checkpoint given as a LoRA is
refused with a sentence, not a stack trace), and the LoRA layers are unloaded when the block ends,
however it ends: the next job sees the model as it was.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import InvalidArgument
from .checkpoint_kinds import classify_file
from .family import FamilyAdapter

JOB_ADAPTER_PREFIX = "cinegen-job-lora"


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


def check_lora(spec: LoraSpec, family: str | None = None) -> None:
    """INVALID_ARGUMENT unless the spec names a LoRA file (that this family can take, when given)."""
    file = Path(spec.path).expanduser()
    if not file.is_file() or file.suffix.lower() != ".safetensors":
        raise InvalidArgument(f"The LoRA '{spec.path}' is not a .safetensors file on the server.")
    kind = classify_file(file)
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
        pipe.set_adapters(names, [spec.weight for spec in specs])
        yield
    finally:
        if names:
            pipe.unload_lora_weights()


__all__ = ["LoraSpec", "check_lora", "loras_applied", "parse_lora", "parse_loras"]
