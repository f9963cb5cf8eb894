"""Work units as an Open Job Description job template (specification `jobtemplate-2023-09`).

One step per unit, each running `cinegen generate ...` with the unit's options on a farm node;
dependencies follow the units' order (story: keyframes → one step per shot → the cut). The
`Cinegen` job parameter names the command on the nodes (default `cinegen` on their PATH).
"""
from __future__ import annotations

from typing import Any

from .units import WorkUnit

SPEC = "jobtemplate-2023-09"
COMMAND_PARAM = "Cinegen"


class TemplateError(ValueError):
    """The job cannot be written as a valid template (the sentence says why)."""


def unit_args(unit: WorkUnit) -> list[str]:
    """The `generate` options that make a full job's command line run just this unit."""
    args: list[str] = []
    if unit.stage:
        args += ["--stage", unit.stage]
    if unit.shots:
        args += ["--shots", ",".join(unit.shots)]
    if unit.frame_range:
        args += ["--frame-range", unit.frame_range]
    return args


def job_template(name: str, base_args: list[str], units: list[WorkUnit]) -> dict[str, Any]:
    """The template: `base_args` (everything after the command, without the units' own options)
    plus each unit's options, one step per unit."""
    for arg in base_args:
        if "{{" in arg:  # OpenJD would read it as a format string and reject or rewrite it
            raise TemplateError(f"The option value {arg!r} contains '{{{{', which a job template cannot carry "
                                "literally; rephrase it.")
    steps = []
    for unit in units:
        step: dict[str, Any] = {
            "name": unit.name,
            "script": {"actions": {"onRun": {"command": "{{Param.%s}}" % COMMAND_PARAM,
                                             "args": base_args + unit_args(unit)}}},
        }
        if unit.after:
            step["dependencies"] = [{"dependsOn": after} for after in unit.after]
        steps.append(step)
    return {
        "specificationVersion": SPEC,
        "name": name[:128],
        "parameterDefinitions": [{"name": COMMAND_PARAM, "type": "STRING", "default": "cinegen",
                                  "description": "The cinegen command on the farm nodes."}],
        "steps": steps,
    }


def validate(template: dict[str, Any]) -> None:
    """The OpenJD model's own check (the same one `openjd check` runs); TemplateError with its message."""
    from openjd.model import DecodeValidationError, decode_job_template

    try:
        decode_job_template(template=template)
    except DecodeValidationError as exc:
        raise TemplateError(f"The job template is not valid Open Job Description: {exc}") from exc
