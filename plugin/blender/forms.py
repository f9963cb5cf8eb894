"""The pipelines the panel offers, with their fields: the connected server's capabilities, the last
ones seen (cached on disk, so the pipeline menu works before Connect), or, on first use, the ones
this plugin version knows from `cinegen.common.params`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from cinegen.common.connection import config_dir
from cinegen.common.params import PIPELINE_PARAMS, UNUSED_COMMON, CommonParams, ParamDescription, describe, plain_help
from cinegen.common.proto import generator_pb2 as pb
from cinegen.plugin.model.forms import FieldSpec, pipeline_fields

CACHE_FILE = "blender-capabilities.binpb"
# Pipelines whose `out` is a folder, for the local fallback only (a server says it itself).
FOLDER_OUTPUT = ("story",)


@dataclass(frozen=True)
class PipelineForm:
    name: str
    description: str
    fields: tuple[FieldSpec, ...]
    output_is_folder: bool = False
    families: tuple[str, ...] = ()  # the model families it runs on

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


def forms_from(capabilities: pb.Capabilities) -> list[PipelineForm]:
    return [PipelineForm(p.name, p.description, tuple(pipeline_fields(p)), p.output_is_folder, tuple(p.families))
            for p in capabilities.pipelines]


def cache_path() -> Path:
    return config_dir() / CACHE_FILE


def save_cached(capabilities: pb.Capabilities) -> None:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(capabilities.SerializeToString())
    tmp.replace(path)  # atomic: a second Blender never reads half a file


def load_cached() -> pb.Capabilities | None:
    try:
        return pb.Capabilities.FromString(cache_path().read_bytes())
    except (OSError, DecodeError):  # none yet, or a damaged file
        return None


def _spec(d: ParamDescription, labels: dict[str, str]) -> pb.ParamSpec:
    """As a server publishes it: help naming labels, not CLI options; the pickers' families and kinds."""
    spec = pb.ParamSpec(name=d.name, type=d.type, default_json=json.dumps(d.default), help=plain_help(d.help, labels),
                        group=d.group, label=d.label, step=d.step, choices=list(d.choices),
                        families=list(d.families), kinds=list(d.kinds))
    if d.minimum is not None:
        spec.minimum = d.minimum
    if d.maximum is not None:
        spec.maximum = d.maximum
    return spec


def local_capabilities() -> pb.Capabilities:
    """What this plugin's own parameter descriptions say (used until a server has been seen)."""
    capabilities = pb.Capabilities()
    for name, params_type in PIPELINE_PARAMS.items():
        doc = (params_type.__doc__ or "").strip()
        if doc.startswith(f"{params_type.__name__}("):  # the signature a dataclass writes when it has no docstring
            doc = ""
        info = capabilities.pipelines.add(name=name, description=doc, output_is_folder=name in FOLDER_OUTPUT)
        descriptions = describe(CommonParams, "common") + describe(params_type, name)
        labels = {d.name: d.label for d in descriptions}
        info.params.extend(_spec(d, labels) for d in descriptions if d.name not in UNUSED_COMMON.get(name, ()))
    return capabilities


def startup_forms() -> tuple[list[PipelineForm], str]:
    """The forms to show before connecting, and where they came from."""
    cached = load_cached()
    if cached is not None and cached.pipelines:
        return forms_from(cached), f"last seen on cinegen {cached.server_version or '?'}"
    return forms_from(local_capabilities()), "this plugin's defaults"
