"""The generic side of a request: `JobRequest.values`, any advertised option by name as a JSON literal.

A client built before the server learnt an option (or a whole pipeline) has no typed proto field for
it; it sends the option here under its ParamSpec name. Every entry is checked against the same
descriptions the server publishes in `GetCapabilities` (name, type, range, choices), so a value
arriving this way is held to exactly the rules of the form that offered it. A typed field the
request also sets wins: the map only fills what the typed messages left at their defaults.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

from cinegen.common.params import ParamDescription, describe

from .errors import InvalidArgument

MAX_VALUES = 256  # entries in one request's map: far more than any pipeline has options
MAX_VALUE_CHARS = 1 << 20  # one JSON literal (a story or trajectory document fits)


def apply_named_values(values: Mapping[str, str], *, common: Any, params: Any, pipeline: str,
                       typed_common: Any, typed_params: Any | None) -> None:
    """Set each named value on `common` or `params` (dataclasses) after checking it; raises InvalidArgument."""
    if not values:
        return
    if len(values) > MAX_VALUES:
        raise InvalidArgument(f"The request names {len(values)} values; at most {MAX_VALUES} are taken.")
    specs = {d.name: (d, common, typed_common) for d in describe(type(common), "common")}
    specs.update({d.name: (d, params, typed_params) for d in describe(type(params), pipeline)})
    for name, literal in sorted(values.items()):
        if name not in specs:
            known = ", ".join(sorted(specs))
            raise InvalidArgument(f"The '{pipeline}' pipeline has no option '{name[:64]}'. Its options are: {known}.")
        description, target, typed = specs[name]
        if typed is not None and _typed_field_is_set(typed, name):
            continue  # the typed field wins
        setattr(target, name, checked_value(description, literal))


def checked_value(d: ParamDescription, literal: str) -> Any:
    """The Python value of one JSON literal for option `d`, or InvalidArgument saying what is expected."""
    label = d.label or d.name
    if len(literal) > MAX_VALUE_CHARS:
        raise InvalidArgument(f"The value of {label} is longer than {MAX_VALUE_CHARS} characters.")
    try:
        value = json.loads(literal)
    except ValueError:
        raise InvalidArgument(f"The value of {label} ('{literal[:40]}') is not a JSON literal; send numbers as "
                              "1.5, text as \"text\", lists as [\"a\", \"b\"].") from None
    if value is None:
        if d.default is None:
            return None  # "the model decides"
        raise InvalidArgument(f"{label} needs a value; it has no automatic setting.")
    kind = d.type
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidArgument(f"{label} is on or off (true or false), not {literal[:40]}.")
        return value
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgument(f"{label} is a number, not {literal[:40]}.")
        if kind == "int" and float(value) != int(value):
            raise InvalidArgument(f"{label} is a whole number, not {value}.")
        value = int(value) if kind == "int" else float(value)
        if (d.minimum is not None and value < d.minimum) or (d.maximum is not None and value > d.maximum):
            raise InvalidArgument(f"{label} must be between {_number(d.minimum)} and {_number(d.maximum)} (got {value}).")
        return value
    if kind in ("list", "lora"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"{label} is a list of texts, such as [\"a\", \"b\"].")
        return value
    if not isinstance(value, str):
        raise InvalidArgument(f"{label} is text, not {literal[:40]}.")
    if kind == "enum" and d.choices and value not in d.choices:
        raise InvalidArgument(f"{label} is one of {', '.join(d.choices)} (got '{value[:40]}').")
    return value


def _typed_field_is_set(message: Any, name: str) -> bool:
    descriptor = message.DESCRIPTOR.fields_by_name.get(name)
    if descriptor is None:
        return False
    if descriptor.is_repeated:
        return len(getattr(message, name)) > 0
    if descriptor.has_presence:
        return message.HasField(name)
    return getattr(message, name) != descriptor.default_value


def _number(value: float | None) -> str:
    if value is None:
        return "…"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


__all__ = ["apply_named_values", "checked_value", "MAX_VALUES"]
