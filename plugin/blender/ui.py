"""The sidebar panel ("cinegen" tab) in the 3D view, the compositor and the sequencer, with three
sub-panels: Options (every field the server describes for the pipeline), Queue (progress, live
preview, cancel) and History (seed, model, prompt, re-run).

The draw functions only read state and lay out properties; they work with any object that has
Blender's layout methods, which is how tools/blender_panel_listing.py writes the layout down
without a screen.
"""
from __future__ import annotations

import bpy

from cinegen.plugin.model.forms import PLATE_FIELD, TRAJECTORY_FIELD, FieldSpec

from . import options, runtime

SPACES = {"view3d": "VIEW_3D", "compositor": "NODE_EDITOR", "sequencer": "SEQUENCE_EDITOR"}


def _wrap(text: str, width: int = 48) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines


def _progress(layout, factor: float, text: str) -> None:
    if hasattr(layout, "progress"):  # Blender 4.0+
        layout.progress(factor=factor, type="BAR", text=text)
    else:
        layout.label(text=f"{factor:.0%} {text}")


# ---- main panel -----------------------------------------------------------------------------------
def draw_main(layout, scene) -> None:
    props = scene.cinegen
    layout.use_property_split = True
    layout.use_property_decorate = False

    box = layout.box()
    row = box.row(align=True)
    row.prop(props, "host", text="")
    row.prop(props, "port", text="")
    row.operator("cinegen.connect", text="", icon="FILE_REFRESH")
    box.prop(props, "token")
    box.prop(props, "shared_disk")
    connected = runtime.STATE.client is not None
    box.label(text=props.status if connected else f"Not connected · pipelines from {runtime.STATE.forms_origin}",
              icon="LINKED" if connected else "UNLINKED")

    layout.prop(props, "pipeline")
    form = runtime.form_of(props.pipeline)
    if form is not None and form.description:
        for line in _wrap(form.description, 56)[:2]:
            layout.label(text=line)
    for name in ("prompt", "negative_prompt"):  # not for a pipeline that takes none (story: from its file)
        if form is None or form.field(name) is not None:
            layout.prop(props, name)
    row = layout.row(align=True)
    row.prop(props, "seed")
    row.prop(props, "seed_locked", text="", icon="LOCKED" if props.seed_locked else "UNLOCKED")
    row.operator("cinegen.new_seed", text="", icon="FILE_REFRESH")
    layout.prop(props, "use_scene_frames")
    if not props.use_scene_frames:
        layout.prop(props, "first_frame")
    layout.prop(props, "target")

    row = layout.row(align=True)
    row.scale_y = 1.4
    row.operator("cinegen.generate", icon="RENDER_STILL")
    job = runtime.STATE.jobs.get(props.job_id)
    if job is not None and not job.finished:
        row.operator("cinegen.cancel", text="", icon="CANCEL").job_id = props.job_id
    if props.job_id and props.progress:
        _progress(layout, props.progress, props.stage or f"{props.progress:.0%}")
    if props.last_error:
        error = layout.box()
        error.alert = True
        for line in _wrap(props.last_error):
            error.label(text=line)
    if props.notice:
        notice = layout.box()
        for number, line in enumerate(_wrap(props.notice)):
            notice.label(text=line, icon="ERROR" if number == 0 else "BLANK1")
    if not bpy.app.background:
        layout.operator("cinegen.open_qt_panel", icon="WINDOW")


# ---- options --------------------------------------------------------------------------------------
def draw_field(layout, group, field: FieldSpec) -> None:
    if group is None or not hasattr(group, field.name):
        return
    toggle = options.USE_PREFIX + field.name
    if hasattr(group, toggle):
        row = layout.row(align=True, heading=field.label)
        row.prop(group, toggle, text="")
        sub = row.row(align=True)
        sub.active = getattr(group, toggle)
        sub.prop(group, field.name, text="")
    elif field.name == PLATE_FIELD:
        row = layout.row(align=True)
        row.prop(group, field.name)
        row.operator("cinegen.plate_from_strip", text="", icon="SEQUENCE")
    else:
        layout.prop(group, field.name)


def draw_options(layout, scene) -> None:
    props = scene.cinegen
    layout.use_property_split = True
    layout.use_property_decorate = False
    form = runtime.form_of(props.pipeline)
    if form is None:
        layout.label(text="Press Connect to read this server's pipelines.")
        return
    own = options.own_fields(form)
    if own:
        column = layout.column(heading=form.name)
        group = options.group_of(scene, form.name)
        for field in own:
            draw_field(column, group, field)
    if form.field(TRAJECTORY_FIELD) is not None:
        layout.label(text="Empty trajectory: the active object's path over the generated frames", icon="OBJECT_DATA")
    column = layout.column(heading="Common")
    group = options.group_of(scene, None)
    for field in options.common_fields([form]):
        draw_field(column, group, field)


# ---- queue ----------------------------------------------------------------------------------------
def draw_queue(layout, scene) -> None:
    jobs = list(runtime.STATE.jobs.values())
    if not jobs:
        layout.label(text="No jobs yet.")
        return
    for job in jobs:
        record = job.record
        box = layout.box()
        row = box.row(align=True)
        row.label(text=record.title, icon="RENDER_ANIMATION")
        if not job.finished:
            row.operator("cinegen.cancel", text="", icon="CANCEL").job_id = job.job_id
        icon = runtime.preview_icon(job.job_id)
        if icon:
            box.template_icon(icon_value=icon, scale=6.0)
        if job.finished:  # wrapped: a refusal's sentence says what to do, all of it must show
            for line in _wrap(f"{record.state}: {job.error or record.message or record.stage}"):
                box.label(text=line)
        else:
            _progress(box, record.fraction, record.stage or record.state)
    if any(job.finished for job in jobs):
        layout.operator("cinegen.clear_queue", icon="TRASH")


# ---- history --------------------------------------------------------------------------------------
def draw_history(layout, scene) -> None:
    props = scene.cinegen
    entries = runtime.history().entries[:props.history_rows]
    if not entries:
        layout.label(text="Nothing generated yet.")
        return
    for entry in entries:
        box = layout.box()
        row = box.row(align=True)
        seed = "random" if entry.seed is None else str(entry.seed)
        row.label(text=f"{entry.pipeline} · seed {seed} · {entry.model or 'default model'}")
        row.operator("cinegen.rerun", text="", icon="FILE_REFRESH").job_id = entry.job_id
        box.label(text=f"{entry.when} · {entry.state} · {entry.frames or '-'}")
        if entry.prompt:
            box.label(text=entry.prompt[:60])
    layout.prop(props, "history_rows")


# ---- the panel classes ----------------------------------------------------------------------------
class _Base:
    bl_region_type = "UI"
    bl_category = "cinegen"


def _poll_compositor(cls, context):
    return getattr(context.space_data, "tree_type", "") == "CompositorNodeTree"


def _panel_classes() -> list[type]:
    classes: list[type] = []
    for key, space in SPACES.items():
        parent = f"CINEGEN_PT_{key}"
        extra = {"poll": classmethod(_poll_compositor)} if key == "compositor" else {}
        classes.append(type(parent, (_Base, bpy.types.Panel), {
            "bl_idname": parent, "bl_space_type": space, "bl_label": "cinegen",
            "draw": lambda self, context: draw_main(self.layout, context.scene), **extra}))
        for name, label, draw, closed in (("options", "Options", draw_options, False),
                                          ("queue", "Queue", draw_queue, False),
                                          ("history", "History", draw_history, True)):
            idname = f"CINEGEN_PT_{key}_{name}"
            classes.append(type(idname, (_Base, bpy.types.Panel), {
                "bl_idname": idname, "bl_space_type": space, "bl_label": label, "bl_parent_id": parent,
                "bl_options": {"DEFAULT_CLOSED"} if closed else set(),
                "draw": (lambda fn: lambda self, context: fn(self.layout, context.scene))(draw), **extra}))
    return classes


CLASSES = tuple(_panel_classes())


register, unregister = bpy.utils.register_classes_factory(CLASSES)
