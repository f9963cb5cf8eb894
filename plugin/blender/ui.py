"""The sidebar panel ("cinegen" tab) in the 3D view, the compositor and the sequencer."""
from __future__ import annotations

import bpy


class CinegenPanelBase:
    bl_region_type = "UI"
    bl_category = "cinegen"
    bl_label = "cinegen"

    def draw(self, context):
        props = context.scene.cinegen
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False

        box = layout.box()
        row = box.row(align=True)
        row.prop(props, "host", text="")
        row.prop(props, "port", text="")
        row.operator("cinegen.connect", text="", icon="FILE_REFRESH")
        box.prop(props, "token")
        box.prop(props, "shared_disk")
        box.label(text=props.status, icon="LINKED" if props.status.startswith("Connected") else "UNLINKED")

        layout.prop(props, "pipeline")
        layout.prop(props, "prompt")
        layout.prop(props, "negative_prompt")
        row = layout.row(align=True)
        row.prop(props, "seed")
        row.prop(props, "seed_locked", text="", icon="LOCKED" if props.seed_locked else "UNLOCKED")
        row.operator("cinegen.new_seed", text="", icon="FILE_REFRESH")

        settings = layout.column(align=True)
        settings.prop(props, "model")
        settings.prop(props, "steps")
        settings.prop(props, "width")
        settings.prop(props, "height")
        settings.prop(props, "frames")
        layout.prop(props, "use_scene_frames")
        layout.prop(props, "target")

        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator("cinegen.generate", icon="RENDER_STILL")
        if props.job_id:
            row.operator("cinegen.cancel", text="", icon="CANCEL")
        if props.job_id or props.progress:
            if hasattr(layout, "progress"):  # Blender 4.0+
                layout.progress(factor=props.progress, type="BAR", text=props.stage or f"{props.progress:.0%}")
            else:
                layout.prop(props, "progress", slider=True, text=props.stage)
        if props.last_error:
            error = layout.box()
            error.alert = True
            for line in _wrap(props.last_error):
                error.label(text=line)
        if not bpy.app.background:
            layout.operator("cinegen.open_qt_panel", icon="WINDOW")


def _wrap(text: str, width: int = 48) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines


class CINEGEN_PT_view3d(CinegenPanelBase, bpy.types.Panel):
    bl_idname = "CINEGEN_PT_view3d"
    bl_space_type = "VIEW_3D"


class CINEGEN_PT_compositor(CinegenPanelBase, bpy.types.Panel):
    bl_idname = "CINEGEN_PT_compositor"
    bl_space_type = "NODE_EDITOR"

    @classmethod
    def poll(cls, context):
        return getattr(context.space_data, "tree_type", "") == "CompositorNodeTree"


class CINEGEN_PT_sequencer(CinegenPanelBase, bpy.types.Panel):
    bl_idname = "CINEGEN_PT_sequencer"
    bl_space_type = "SEQUENCE_EDITOR"


CLASSES = (CINEGEN_PT_view3d, CINEGEN_PT_compositor, CINEGEN_PT_sequencer)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
