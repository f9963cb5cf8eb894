"""Forms from the server's capabilities: each `ParamSpec` becomes a `FieldSpec`, form values become a
`JobRequest` by field name. Nothing here knows a particular pipeline: a new pipeline or option on
the server shows up in the panel without a plugin change (the nuke-ML-server pattern).

An option these stubs have a typed field for goes there; any other (an option or a whole pipeline
newer than this plugin) goes into the request's generic `values` map as a JSON literal under its
ParamSpec name, which the server checks against the same ParamSpecs it advertised.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from cinegen.common.proto import generator_pb2 as pb

COMMON_GROUP = "common"
# Fields the panel fills or lays out itself (by their contract names in CommonParams).
PROMPT_FIELDS = ("prompt", "negative_prompt")
SEED_FIELD = "seed"
MODEL_FIELD = "model"
OUTPUT_FIELD = "out"
# Fields a host adapter can fill from its selection, when the pipeline has them.
PLATE_FIELD = "input"
PLATE_COLORSPACE_FIELD = "input_colorspace"
TRAJECTORY_FIELD = "trajectory_json"


@dataclass(frozen=True)
class FieldSpec:
    """One form field: what widget to build and how to fill the request."""
    name: str
    type: str  # int | float | bool | string | text | enum | path | list | model | lora | addon
    default: Any
    help: str = ""
    group: str = COMMON_GROUP
    label: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    step: float = 0.0
    families: tuple[str, ...] = ()  # type "model": the model families the option takes
    kinds: tuple[str, ...] = ()  # type "model": the model kinds it takes; "addon": the add-on kinds

    @classmethod
    def from_proto(cls, spec: pb.ParamSpec) -> FieldSpec:
        try:
            default = json.loads(spec.default_json) if spec.default_json else None
        except ValueError:
            default = None
        return cls(name=spec.name, type=spec.type or "string", default=default, help=spec.help,
                   group=spec.group or COMMON_GROUP, label=spec.label or spec.name.replace("_", " ").capitalize(),
                   minimum=spec.minimum if spec.HasField("minimum") else None,
                   maximum=spec.maximum if spec.HasField("maximum") else None,
                   choices=tuple(spec.choices), step=spec.step, families=tuple(spec.families),
                   kinds=tuple(spec.kinds))

    @property
    def optional(self) -> bool:
        """A `null` default means "the model decides": the widget offers an 'auto' value."""
        return self.default is None

    @property
    def is_common(self) -> bool:
        return self.group == COMMON_GROUP

    @property
    def tooltip(self) -> str:
        parts = [self.help] if self.help else []
        if self.minimum is not None or self.maximum is not None:
            low = "" if self.minimum is None else _number(self.minimum)
            high = "" if self.maximum is None else _number(self.maximum)
            parts.append(f"Range: {low} to {high}." if low and high else f"Range: {low or '…'} to {high or '…'}.")
        if self.choices:
            parts.append("Choices: " + ", ".join(self.choices) + ".")
        default = _plain_default(self)
        if default:  # an empty field needs no "Default: empty"
            parts.append(f"Default: {default}.")
        return "\n".join(parts)

    @property
    def wants_sequence(self) -> bool:
        """A path to a frame sequence (its help writes the frame number as ####, the server's own spelling), not
        to one picture: the upscale plate is a sequence, a panorama's input image one file."""
        return self.type == "path" and "####" in self.help

    @property
    def automatic_at_minimum(self) -> bool:
        """A number whose smallest value stands for "the server decides" ("0 = automatic"): shown as auto."""
        if self.optional or self.minimum is None or self.type not in ("int", "float"):
            return False
        return re.search(rf"(?<![\d.]){re.escape(_number(self.minimum))} = auto(matic)?\b", self.help) is not None

    @property
    def empty_choice(self) -> str:
        """What a picker's empty entry means, from the help's own "empty = …" (refiner: the base alone)."""
        match = re.search(r"\bempty = ([^;,.()]+)", self.help)
        return match.group(1).strip() if match else "server's choice"


def _plain_default(spec: FieldSpec) -> str:
    """The default as an artist reads it: on/off, 2, zip; "" when the field starts empty."""
    if spec.optional:
        return "auto (the model decides)"
    value = spec.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


LORA_KINDS = ("lora", "motion-lora")  # the add-ons a "lora" option takes


def lora_addons(capabilities: pb.Capabilities) -> list[tuple[str, str]]:
    """(label, server path) of the server's LoRAs and motion LoRAs, for a LoRA picker."""
    return [(f"{a.id} ({a.kind}{', ' + a.family if a.family else ''})", a.path)
            for a in capabilities.addons if a.kind in LORA_KINDS]


PLAIN_MODEL_KINDS = ("", "model")  # a model whose kind says nothing beyond its family


def model_label(model: pb.ModelInfo) -> str:
    """A picker entry: the id with its family, and its kind where that tells more (tiny-xl-refiner (sd, sdxl-refiner))."""
    kind = "" if model.kind in PLAIN_MODEL_KINDS else f", {model.kind}"
    return f"{model.id} ({model.family}{kind})"


def model_catalogue(capabilities: pb.Capabilities) -> list[tuple[str, str, str, str]]:
    """(label, id, family, kind) of every model on the server, for model-typed options."""
    return [(model_label(m), m.id, m.family, m.kind) for m in capabilities.models]


def addon_catalogue(capabilities: pb.Capabilities) -> list[tuple[str, str, str]]:
    """(label, id, kind) of every add-on on the server, for add-on-typed options (picked by id)."""
    return [(f"{a.id} ({a.kind})", a.id, a.kind) for a in capabilities.addons]


def offered_models(spec: FieldSpec, catalogue: Iterable[tuple[str, ...]]) -> list[tuple[str, str]]:
    """(label, id) of the catalogue's models a model-typed option takes: its families and kinds (empty = any)."""
    out = []
    for label, model_id, family, *kind in catalogue:
        if (not spec.families or family in spec.families) and (not spec.kinds or (kind and kind[0] in spec.kinds)):
            out.append((label, model_id))
    return out


def offered_addons(spec: FieldSpec, catalogue: Iterable[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """(label, id) of the add-ons an add-on-typed option takes (its kinds; empty = any)."""
    return [(label, addon_id) for label, addon_id, kind in catalogue if not spec.kinds or kind in spec.kinds]


def pipeline_fields(info: pb.PipelineInfo) -> list[FieldSpec]:
    return [FieldSpec.from_proto(spec) for spec in info.params]


def default_values(fields: Iterable[FieldSpec]) -> dict[str, Any]:
    return {f.name: f.default for f in fields}


def request_from_values(pipeline: str, fields: Iterable[FieldSpec], values: Mapping[str, Any], *,
                        job_id: str = "", client: str = "") -> pb.JobRequest:
    """A JobRequest with every field set from `values` (None = leave unset, the server decides).

    Typed fields where these stubs have them; everything else in `request.values` (see the module)."""
    request = pb.JobRequest(job_id=job_id, pipeline=pipeline, client=client)
    known_pipeline = pipeline in {f.name for f in pb.JobRequest.DESCRIPTOR.oneofs_by_name["params"].fields}
    params_msg = getattr(request, pipeline) if known_pipeline else None
    if params_msg is not None:
        params_msg.SetInParent()  # selects the oneof even when every field is at its default
    for spec in fields:
        value = values.get(spec.name, spec.default)
        if value is None or (isinstance(value, str) and spec.optional and not value.strip()):
            continue
        target = request.common if spec.is_common else params_msg
        descriptor = target.DESCRIPTOR.fields_by_name.get(spec.name) if target is not None else None
        if descriptor is None:  # newer than these stubs: by name, as the server advertised it
            request.values[spec.name] = json_literal(spec, value)
        else:
            set_field(target, descriptor, value)
    return request


def json_literal(spec: FieldSpec, value: Any) -> str:
    """A form value as the JSON literal the server expects for an option of `spec.type`."""
    if spec.type == "int":
        return json.dumps(int(float(value)) if isinstance(value, str) else int(value))
    if spec.type == "float":
        return json.dumps(float(value))
    if spec.type == "bool":
        return json.dumps(value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value))
    if spec.type in ("list", "lora"):
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return json.dumps([str(v).strip() for v in items if str(v).strip()])
    return json.dumps(value if isinstance(value, str) else str(value))


def set_field(message: Any, descriptor: Any, value: Any) -> None:
    """Set one proto field from a form value, converted to the field's wire type."""
    convert = _converter(descriptor)
    if descriptor.is_repeated:
        items = value if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",")]
        del getattr(message, descriptor.name)[:]
        getattr(message, descriptor.name).extend(convert(v) for v in items if v != "")
    else:
        setattr(message, descriptor.name, convert(value))


def _converter(descriptor: Any):
    cpp = descriptor.cpp_type
    if cpp in (descriptor.CPPTYPE_INT32, descriptor.CPPTYPE_INT64, descriptor.CPPTYPE_UINT32,
               descriptor.CPPTYPE_UINT64):
        return lambda v: int(float(v)) if isinstance(v, str) else int(v)
    if cpp in (descriptor.CPPTYPE_FLOAT, descriptor.CPPTYPE_DOUBLE):
        return float
    if cpp == descriptor.CPPTYPE_BOOL:
        return lambda v: v.strip().lower() in ("1", "true", "yes", "on") if isinstance(v, str) else bool(v)
    return str


def values_from_request(request: pb.JobRequest, fields: Iterable[FieldSpec]) -> dict[str, Any]:
    """The form values a request was made from (unset optional fields come back as None)."""
    which = request.WhichOneof("params")
    params_msg = getattr(request, which) if which else None
    out: dict[str, Any] = {}
    for spec in fields:
        if spec.name in request.values:
            try:
                out[spec.name] = json.loads(request.values[spec.name])
            except ValueError:
                pass
            continue
        source = request.common if spec.is_common else params_msg
        if source is None or spec.name not in source.DESCRIPTOR.fields_by_name:
            continue
        descriptor = source.DESCRIPTOR.fields_by_name[spec.name]
        if descriptor.has_presence and not source.HasField(spec.name):
            out[spec.name] = None
        elif descriptor.is_repeated:
            out[spec.name] = list(getattr(source, spec.name))
        else:
            out[spec.name] = getattr(source, spec.name)
    return out
