"""Write the Blender panel's layout down as text: `python tools/blender_panel_listing.py docs/blender_panel.md`.

Headless Blender (`blender -b`, the bpy module) has no window, so it cannot draw or screenshot its
UI. Instead this runs the add-on's own draw functions (plugin/blender/ui.py) against a layout that
records each call, for every pipeline this plugin knows, and prints every control with its label,
type, default, range and tooltip — the panel as the artist sees it, minus the pixels. One running
job and one history entry are made up so that the Queue and History sub-panels show their rows.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "plugin" / "blender"


@dataclass
class _OperatorCall:
    """What `layout.operator()` returns: the properties a button sets on its operator."""
    settings: dict[str, Any] = field(default_factory=dict)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "settings":
            object.__setattr__(self, name, value)
        else:
            self.settings[name] = value


class RecordingLayout:
    """The subset of `bpy.types.UILayout` the panel uses; every call becomes a line."""

    def __init__(self, kind: str = "panel", heading: str = "", depth: int = 0, lines: list[str] | None = None):
        self.lines = [] if lines is None else lines
        self.depth = depth
        if kind != "panel":
            self._add(f"[{kind}{': ' + heading if heading else ''}]")
            self.depth += 1

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # use_property_split, alert, active, scale_y...

    def _add(self, text: str) -> None:
        self.lines.append("  " * self.depth + "- " + text)

    def _child(self, kind: str, heading: str = "") -> RecordingLayout:
        return RecordingLayout(kind, heading, self.depth, self.lines)

    def row(self, align: bool = False, heading: str = "") -> RecordingLayout:
        return self._child("row", heading)

    def column(self, align: bool = False, heading: str = "") -> RecordingLayout:
        return self._child("column", heading)

    def box(self) -> RecordingLayout:
        return self._child("box")

    def label(self, text: str = "", icon: str = "NONE") -> None:
        self._add(f"label: {text!r}")

    def progress(self, factor: float = 0.0, type: str = "BAR", text: str = "") -> None:
        self._add(f"progress bar {factor:.0%}: {text!r}")

    def template_icon(self, icon_value: int = 0, scale: float = 1.0) -> None:
        self._add(f"preview image (icon {icon_value}, scale {scale:g})")

    def operator(self, idname: str, text: str | None = None, icon: str = "NONE") -> _OperatorCall:
        import bpy

        module, name = idname.split(".")
        rna = getattr(getattr(bpy.ops, module), name).get_rna_type()
        self._add(f"button `{idname}` {text or rna.name!r}: {rna.description}")
        return _OperatorCall()

    def prop(self, data: Any, name: str, text: str | None = None, icon: str = "NONE", **_: Any) -> None:
        rna = data.bl_rna.properties[name]
        parts = [f"`{name}`", repr(rna.name if text is None else text or "(no label)"), rna.type.lower()]
        if rna.type == "INT":
            parts.append(f"default {rna.default}, range {rna.hard_min}..{rna.hard_max}")
        elif rna.type == "FLOAT":
            parts.append(f"default {rna.default:g}, range {rna.hard_min:g}..{rna.hard_max:g}")
        elif rna.type == "ENUM":
            items = [i.identifier for i in rna.enum_items]  # empty when the items come from a function
            parts.append(f"one of {', '.join(items)}" if items else "menu of the pipelines below")
        elif rna.type == "STRING" and rna.subtype == "FILE_PATH":
            parts.append("file picker")
        description = rna.description.replace("\n", " ")
        self._add(" ".join(parts) + (f" — {description}" if description else ""))


def load_addon():
    spec = importlib.util.spec_from_file_location("cinegen_blender", ADDON / "__init__.py",
                                                  submodule_search_locations=[str(ADDON)])
    addon = importlib.util.module_from_spec(spec)
    sys.modules["cinegen_blender"] = addon
    spec.loader.exec_module(addon)
    addon.register()
    return addon


def listing() -> str:
    """The whole panel, once per pipeline, as markdown."""
    import bpy

    from cinegen.plugin.model.history import HistoryEntry
    from cinegen.plugin.model.jobs import JobRecord

    load_addon()
    runtime, ui = sys.modules["cinegen_blender.runtime"], sys.modules["cinegen_blender.ui"]
    scene = bpy.context.scene
    record = JobRecord("image-0123456789", "image", prompt="a fox", seed=77, model="tiny-sd", state="running",
                       fraction=0.45, stage="denoise 9/20")
    runtime.STATE.jobs = {record.job_id: runtime.BlenderJob(draft=None, record=record)}
    runtime.history().entries = [HistoryEntry(record.job_id, "image", values={"prompt": "a fox"}, seed=77,
                                              model="tiny-sd", prompt="a fox", state="completed",
                                              frames="1001-1002", created=1.7e9)]
    out = ["# The cinegen panel in Blender, control by control", "",
           "Generated by `python tools/blender_panel_listing.py` from the add-on's own draw functions "
           "(headless Blender cannot draw or screenshot its UI). The pipelines and their options are this "
           "plugin's defaults; connected, they are the server's. Sidebar tab *cinegen* in the 3D View, the "
           "Compositor and the Sequencer.", ""]
    for form in runtime.STATE.forms:
        scene.cinegen.pipeline = form.name
        out += [f"## Pipeline `{form.name}`", ""]
        for title, draw in (("cinegen", ui.draw_main), ("Options", ui.draw_options), ("Queue", ui.draw_queue),
                            ("History", ui.draw_history)):
            if title in ("Queue", "History") and form.name != runtime.STATE.forms[0].name:
                continue  # the same for every pipeline: listed once
            layout = RecordingLayout()
            draw(layout, scene)
            out += [f"### {title}", "", *layout.lines, ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    # a private settings folder: no saved server address, history or capabilities leak into the listing
    os.environ["CINEGEN_CONFIG_DIR"] = tempfile.mkdtemp(prefix="cinegen-listing-")
    text = listing() + "\n"
    if argv:
        Path(argv[0]).write_text(text, encoding="utf-8")  # a file: Blender prints its own lines on stdout
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
