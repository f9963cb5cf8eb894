"""Headless and farm use: submit a job from a script and wait for it, progress on stdout.

    blender -b shot.blend --python-expr "import bl_ext.user_default.cinegen.farm as f; \\
        f.submit_and_wait('image', prompt='a fox', frames=8, server='gpu01:50051'); f.save()"

Any form field can be given by its contract name (`steps=4`, `projection='ring'`, `story='/x.yaml'`);
fields not given keep the scene's settings. Returns what was loaded (one dict per sequence, with
the compositor node and/or strip) and raises `JobFailed` with the server's reason otherwise, so a
farm task fails visibly.
"""
from __future__ import annotations

import sys
from typing import Any, TextIO

import bpy

from . import operators, options, runtime

PANEL_VALUES = ("prompt", "negative_prompt", "seed", "first_frame", "target")


class JobFailed(RuntimeError):
    """The job was refused, failed or was cancelled; the message says why."""


def apply_values(scene: Any, pipeline: str, values: dict[str, Any]) -> None:
    """Put `values` (by contract field name) into the panel and option properties of `scene`."""
    props, form = scene.cinegen, runtime.form_of(pipeline)
    if form is None:
        raise JobFailed(f"No '{pipeline}' pipeline; known: {', '.join(f.name for f in runtime.STATE.forms)}.")
    props.pipeline = pipeline
    known = {f.name for f in form.fields} | set(PANEL_VALUES)
    unknown = sorted(set(values) - known)
    if unknown:
        raise JobFailed(f"The '{pipeline}' pipeline has no field {', '.join(unknown)}.")
    for name in PANEL_VALUES:
        if name in values:
            setattr(props, name, values[name])
    if "seed" in values:
        props.seed_locked = True
    if "first_frame" in values:
        props.use_scene_frames = False
    options.write_values(options.group_of(scene, None), options.common_fields([form]), values)
    options.write_values(options.group_of(scene, pipeline), options.own_fields(form), values)


def server_address(server: str, port: int) -> tuple[str, int]:
    """`gpu01:50051`, `gpu01` (keeping `port`), `[::1]:50051` or `::1` as (host, port)."""
    text = server.strip()
    if text.startswith("["):  # [IPv6] or [IPv6]:PORT
        host, _, rest = text.partition("]")
        host, number = host + "]", rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
    else:  # a bare name, or a bare IPv6 address
        host, number = text, ""
    if not host or (number and not number.isdigit()):
        raise JobFailed(f"server={server!r}: give it as HOST or HOST:PORT, such as gpu01:50051.")
    return host, int(number) if number else port


def submit_and_wait(pipeline: str = "", *, server: str = "", token: str = "", scene: Any = None,
                    stdout: TextIO | None = None, **values: Any) -> list[dict]:
    """Run one job to its end with the scene's settings plus `values`; the results are loaded.

    The access token is `token`, else the one in this user's cinegen settings (a .blend holds none)."""
    scene = scene or bpy.context.scene
    props = scene.cinegen
    runtime.STATE.echo = stdout or sys.stdout
    if server:
        props.host, props.port = server_address(server, props.port)
    if token:
        runtime.set_token(token)
    if runtime.STATE.client is None and not operators.connect_scene(scene):
        raise JobFailed(props.status)
    runtime.STATE.echo.write(f"cinegen: {props.status}\n")
    apply_values(scene, pipeline or props.pipeline, values)
    try:
        job = operators.submit(scene, wait=True)
    except ValueError as exc:  # HostSelectionError is a ValueError too
        raise JobFailed(str(exc)) from exc
    if job.record.state != "completed" or job.error:  # error: completed, but its frames could not be loaded
        raise JobFailed(props.last_error)
    runtime.STATE.echo.write(f"cinegen: {job.job_id} completed: {', '.join(job.record.outputs)}\n")
    runtime.STATE.echo.flush()
    return job.loaded


def save() -> None:
    """Save the .blend (with the loaded nodes and strips) where it was opened from."""
    bpy.ops.wm.save_mainfile()
