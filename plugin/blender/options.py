"""Blender properties built from the server's fields, kept in the scene (`scene.cinegen_options`).

Each form field becomes one property with the field's type, label, help (as the tooltip), default
and range: `scene.cinegen_options.common.<field>` for the options every pipeline takes and
`scene.cinegen_options.pipeline_<name>.<field>` for a pipeline's own. A field whose default is
`null` ("the model decides") gets a `use_<field>` checkbox; unticked, the value is not sent.
The classes are rebuilt when new capabilities arrive; the values stay in the scene (Blender keeps
them as ID properties by name, so a re-registered class finds them again).
"""
from __future__ import annotations

import re
from typing import Any, Iterable

import bpy

from cinegen.plugin.model.forms import COMMON_GROUP, FieldSpec

from .forms import PipelineForm

# Fields the panel lays out or fills itself, never shown as plain options.
PANEL_FIELDS = ("prompt", "negative_prompt", "seed", "out", "first_frame")
# Filled by the add-on from the scene (the active object's path) or a file; hidden.
FILLED_FIELDS = ("trajectory_json", "story_yaml")
INT_LIMIT = 2**31 - 1  # Blender IntProperty is 32-bit
USE_PREFIX = "use_"
# What an unticked `use_` toggle means where the add-on fills the value in itself (operators.form_values)
FILLED_WHEN_OFF = {"fps": "Off: the scene's frame rate (Output Properties > Format)"}

_registered: list[type] = []


def shown(field: FieldSpec) -> bool:
    return field.name not in PANEL_FIELDS and field.name not in FILLED_FIELDS


def group_key(pipeline: str | None) -> str:
    # an attribute and RNA class name: any character a pipeline name may have beyond [A-Za-z0-9_] becomes _
    return "common" if pipeline is None else "pipeline_" + re.sub(r"\W", "_", pipeline)


def _clamp_int(value: float | None, fallback: int) -> int:
    return fallback if value is None else int(max(-INT_LIMIT, min(INT_LIMIT, value)))


def field_properties(field: FieldSpec) -> dict[str, Any]:
    """The Blender property (and its `use_` toggle for an optional field) for one form field."""
    common = {"name": field.label, "description": field.tooltip}
    kind, default = field.type, field.default
    props: dict[str, Any] = {}
    if default is None and kind in ("int", "float"):
        default = _empty_means(field)  # ticking "Set …" starts at what the server would use (refiner split 0.8)
    if kind == "int":
        low, high = _clamp_int(field.minimum, -INT_LIMIT), _clamp_int(field.maximum, INT_LIMIT)
        value = max(low, min(high, int(default) if isinstance(default, (int, float)) else max(low, 0)))
        props[field.name] = bpy.props.IntProperty(default=value, min=low, max=high,
                                                  step=max(1, int(field.step or 1)), **common)
    elif kind == "float":
        low = -3.4e38 if field.minimum is None else field.minimum
        high = 3.4e38 if field.maximum is None else field.maximum
        value = float(default) if isinstance(default, (int, float)) else max(low, min(high, 1.0))
        # Blender's float step is in hundredths
        props[field.name] = bpy.props.FloatProperty(default=value, min=low, max=high,
                                                    step=max(1, round((field.step or 0.1) * 100)), **common)
    elif kind == "bool":
        props[field.name] = bpy.props.BoolProperty(default=bool(default), **common)
    elif kind == "enum" and field.choices:
        items = [(c, c, "") for c in field.choices]
        props[field.name] = bpy.props.EnumProperty(items=items, default=default if default in field.choices
                                                   else field.choices[0], **common)
    elif kind == "model":  # free text, with the server's models of the right families as suggestions
        props[field.name] = bpy.props.StringProperty(default=str(default or ""), search=_model_search(field),
                                                     **common)
    elif kind == "path":
        props[field.name] = bpy.props.StringProperty(default=str(default or ""), subtype="FILE_PATH", **common)
    elif kind == "addon":  # an add-on's id, with the connected server's add-ons of the field's kinds as suggestions
        props[field.name] = bpy.props.StringProperty(default=str(default or ""), search=_addon_search(field),
                                                     **common)
    elif kind == "lora":  # PATH[:WEIGHT], comma-separated, with the server's LoRAs as suggestions
        props[field.name] = bpy.props.StringProperty(default="", search=_lora_search, **{
            **common, "description": field.tooltip + "\nComma separated; pick the server's LoRAs from the list."})
    elif kind == "list":
        text = ", ".join(str(v) for v in default) if isinstance(default, list) else ""
        props[field.name] = bpy.props.StringProperty(default=text, **{**common, "description": field.tooltip
                                                                        + "\nComma separated."})
    else:  # string, text and anything newer than this plugin
        props[field.name] = bpy.props.StringProperty(default="" if default is None else str(default), **common)
    if field.optional and kind in ("int", "float", "enum"):
        props[USE_PREFIX + field.name] = bpy.props.BoolProperty(
            name=f"Set {field.label.lower()}", default=False,
            description=FILLED_WHEN_OFF.get(field.name, f"Off: the model decides the {field.label.lower()}"))
    return props


def _empty_means(field: FieldSpec) -> float | None:
    """The number an optional field's help says empty stands for ("empty = 0.8", "empty = 1001"), if any."""
    match = re.search(r"\bempty = (-?\d+(?:\.\d+)?)(?![\d%x])", field.help)
    return float(match.group(1)) if match else None


def model_suggestions(field: FieldSpec, pipeline: str, text: str) -> list[str]:
    """The connected server's models that fit: the field's families (else the pipeline's) and kinds (a refiner)."""
    from . import runtime

    capabilities, form = runtime.STATE.capabilities, runtime.form_of(pipeline)
    families = field.families or (form.families if form is not None else ())
    models = capabilities.models if capabilities is not None else ()
    return [m.id for m in models if (not families or m.family in families)
            and (not field.kinds or m.kind in field.kinds) and text.lower() in m.id.lower()]


def _model_search(field: FieldSpec):
    def search(self, context, edit_text):
        return model_suggestions(field, context.scene.cinegen.pipeline, edit_text)
    return search


def addon_suggestions(field: FieldSpec, text: str) -> list[str]:
    """The connected server's add-ons of the field's kinds (SparseCtrl models), by id."""
    from . import runtime

    capabilities = runtime.STATE.capabilities
    addons = capabilities.addons if capabilities is not None else ()
    return [a.id for a in addons if (not field.kinds or a.kind in field.kinds) and text.lower() in a.id.lower()]


def _addon_search(field: FieldSpec):
    def search(self, context, edit_text):
        return addon_suggestions(field, edit_text)
    return search


def lora_suggestions(text: str) -> list[str]:
    """The text with one of the connected server's LoRAs (or motion LoRAs) added after its last comma."""
    from cinegen.plugin.model.forms import lora_addons

    from . import runtime

    capabilities = runtime.STATE.capabilities
    head, _, tail = text.rpartition(",")
    prefix = f"{head.strip()}, " if head.strip() else ""
    paths = [path for _, path in lora_addons(capabilities)] if capabilities is not None else []
    return [prefix + path for path in paths if tail.strip().lower() in path.lower()]


def _lora_search(self, context, edit_text):
    return lora_suggestions(edit_text)


def _group_class(key: str, fields: Iterable[FieldSpec]) -> type:
    annotations: dict[str, Any] = {}
    for field in fields:
        annotations.update(field_properties(field))
    return type(f"CINEGEN_PG_{key}", (bpy.types.PropertyGroup,), {"__annotations__": annotations})


def common_fields(forms: Iterable[PipelineForm]) -> list[FieldSpec]:
    seen: dict[str, FieldSpec] = {}
    for form in forms:
        for field in form.fields:
            if field.group == COMMON_GROUP and shown(field):
                seen.setdefault(field.name, field)
    return list(seen.values())


def own_fields(form: PipelineForm) -> list[FieldSpec]:
    return [f for f in form.fields if f.group != COMMON_GROUP and shown(f)]


def install(forms: list[PipelineForm]) -> None:
    """(Re)build `scene.cinegen_options` for these pipelines; values already in scenes are kept."""
    uninstall()
    groups = {group_key(None): _group_class(group_key(None), common_fields(forms))}
    for form in forms:
        groups[group_key(form.name)] = _group_class(group_key(form.name), own_fields(form))
    for cls in groups.values():
        bpy.utils.register_class(cls)
    container = type("CINEGEN_PG_options", (bpy.types.PropertyGroup,), {"__annotations__": {
        key: bpy.props.PointerProperty(type=cls) for key, cls in groups.items()}})
    bpy.utils.register_class(container)
    bpy.types.Scene.cinegen_options = bpy.props.PointerProperty(type=container)
    _registered[:] = [*groups.values(), container]


def uninstall() -> None:
    if hasattr(bpy.types.Scene, "cinegen_options"):
        del bpy.types.Scene.cinegen_options
    for cls in reversed(_registered):
        bpy.utils.unregister_class(cls)
    _registered.clear()


def group_of(scene: Any, pipeline: str | None) -> Any:
    return getattr(scene.cinegen_options, group_key(pipeline), None)


def read_values(group: Any, fields: Iterable[FieldSpec]) -> dict[str, Any]:
    """Form values from the properties (None = not set: the server decides)."""
    values: dict[str, Any] = {}
    for field in fields:
        if group is None or not hasattr(group, field.name):
            continue
        if hasattr(group, USE_PREFIX + field.name) and not getattr(group, USE_PREFIX + field.name):
            values[field.name] = None
            continue
        value = getattr(group, field.name)
        if field.type == "path":
            value = bpy.path.abspath(value) if value else ""
        values[field.name] = value
    return values


def write_values(group: Any, fields: Iterable[FieldSpec], values: dict[str, Any]) -> None:
    """Put form values back into the properties (re-run from the history)."""
    for field in fields:
        if group is None or field.name not in values or not hasattr(group, field.name):
            continue
        value, toggle = values[field.name], USE_PREFIX + field.name
        if hasattr(group, toggle):
            setattr(group, toggle, value is not None)
        if value is None:
            continue
        if field.type in ("list", "lora") and isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        try:
            setattr(group, field.name, value)
        except (TypeError, ValueError):  # a value from another server version: keep the current one
            pass
