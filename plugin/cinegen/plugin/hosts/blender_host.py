"""Blender: results as image sequences in the compositor and the sequencer; an object's screen path as
a trajectory; plates from the active image strip.

Image sequences follow Blender's image-user rule (``BKE_image_user_frame_calc``): at scene frame F
an Image node shows file frame ``F - frame_start + 1 + frame_offset``, so a sequence numbered from
1001 placed at scene frame S needs ``frame_start = S`` and ``frame_offset = 1000``. A result made from
a plate strip lands where that strip starts, one channel above it; a story's shots one after another as
in its cut, on one channel (`start`/`channel` of `load_result`, from the add-on); any other at its own
frame numbers when the scene's range holds them, else at the scene's first frame.

The trajectory is the active object's world position on each frame the job generates (first ..
first + frames - 1, not the scene's range) through `bpy_extras.object_utils.world_to_camera_view`
(normalised, bottom-left origin) in pixels of the render size. API differences handled here: the compositor tree is ``scene.compositing_node_group``
in Blender 5 and ``scene.node_tree`` before; sequencer strips are ``strips`` from 4.4, ``sequences``
before.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import bpy  # only host adapters import their host
from bpy_extras.object_utils import world_to_camera_view

from cinegen.common.sequence import FrameRange
from cinegen.common.trajectory_io import Track, Trajectory, from_normalised

from ..backend.exr_header import read_exr_header
from ..model.outputs import ResultSequence, group_sequences
from .base import HostAdapter, HostSelectionError, PlateSelection

TARGETS = ("compositor", "sequencer", "both")
# Blender's own name for its scene-linear space, newest first (4.x/5.x, 3.x), then the OCIO role
SCENE_LINEAR_NAMES = ("Linear Rec.709", "Linear", "scene_linear")
# Blender's linear spaces by the primaries and white point (CIE xy, the EXR `chromaticities` order), for
# a file whose space Blender's config lacks by name (a studio config's `lin_ap1` or `ACES - ACEScg`);
# names newest first (4.x/5.x, then 2.8x-3.x)
LINEAR_BY_PRIMARIES = (
    ((0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290), ("Linear Rec.709", "Linear")),
    ((0.713, 0.293, 0.165, 0.830, 0.128, 0.044, 0.32168, 0.33767), ("ACEScg", "Linear ACEScg")),
    ((0.7347, 0.2653, 0.0, 1.0, 0.0001, -0.0770, 0.32168, 0.33767), ("ACES2065-1", "Linear ACES")),
    ((0.708, 0.292, 0.170, 0.797, 0.131, 0.046, 0.3127, 0.3290), ("Linear Rec.2020",)),
    ((0.680, 0.320, 0.265, 0.690, 0.150, 0.060, 0.3127, 0.3290), ("Linear DCI-P3 D65",)),
)
PRIMARIES_TOLERANCE = 2e-3  # configs round the published primaries differently
FPS_TOLERANCE = 0.01  # 23.976 and 23.98 are one rate
NAME_LIMIT = 63  # Blender ID and strip names are at most 63 bytes


class BlenderHost(HostAdapter):
    name = "blender"

    def __init__(self, target: str = "both", scene: Any = None):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
        self.target = target
        self.scene = scene  # where results load; None = the active scene at that moment
        self._notices: list[str] = []

    def selected_plate(self) -> PlateSelection:
        scene = bpy.context.scene
        editor = scene.sequence_editor
        strip = editor.active_strip if editor else None
        if strip is None or strip.type != "IMAGE":
            raise HostSelectionError("Make an image-sequence strip active in the Sequencer to use it as the plate.")
        folder = bpy.path.abspath(strip.directory)
        files = [os.path.join(folder, element.filename) for element in strip.elements]
        groups = group_sequences(files)
        if groups:
            pattern, frames = groups[0]
        elif len(files) == 1:  # one picture without a frame number: a still (a panorama's input image)
            pattern, frames = files[0], FrameRange(1, 1)
        else:
            raise HostSelectionError(f"The strip '{strip.name}' has no numbered frames: use an image sequence.")
        render = scene.render
        return PlateSelection(pattern=pattern, frames=frames, width=render.resolution_x,
                              height=render.resolution_y, source=strip.name,
                              colorspace=strip.colorspace_settings.name)

    def selected_trajectory(self, width: int | None = None, height: int | None = None,
                            frames: FrameRange | None = None) -> Trajectory:
        """The active object's path over `frames` (the job's frames; default the scene's range)."""
        scene = bpy.context.scene
        frames = frames or FrameRange(scene.frame_start, scene.frame_end)
        return object_trajectory(scene, bpy.context.view_layer.objects.active, scene.camera, frames, width, height)

    def load_result(self, result: ResultSequence, start: int | None = None,
                    channel: int | None = None) -> dict[str, Any]:
        """The sequence as an Image node and / or a strip, from scene frame `start` (None: `placement_frame`),
        the strip in `channel` (None: the lowest free one)."""
        scene = self.scene or bpy.context.scene
        header = _header(result.first_file)
        colorspace, notice = result_colorspace(result, header.get("chromaticities"))
        self._notices += [n for n in (notice, fps_notice(scene, result, header.get("framesPerSecond"))) if n]
        loaded: dict[str, Any] = {}
        if self.target in ("compositor", "both"):
            loaded["node"] = load_into_compositor(scene, result, colorspace, start)
        if self.target in ("sequencer", "both"):
            loaded["strip"] = load_into_sequencer(scene, result, colorspace, start, channel)
        return loaded

    def take_notices(self) -> list[str]:
        notices, self._notices = self._notices, []
        return notices

    def run_on_main_thread(self, fn: Callable[[], None]) -> None:
        def once() -> None:
            fn()
            return None  # a timer that returns None is not called again
        bpy.app.timers.register(once, first_interval=0.0)

    def output_root(self) -> Path:
        if bpy.data.filepath:
            return Path(bpy.data.filepath).parent / "cinegen"
        return super().output_root()

    def shot_name(self) -> str:
        return Path(bpy.data.filepath).stem if bpy.data.filepath else bpy.context.scene.name

    def client_name(self) -> str:
        return f"blender {bpy.app.version_string} / cinegen"


# ---- results ------------------------------------------------------------------------------------
def _available_colorspaces() -> set[str]:
    return {item.identifier for item in
            bpy.types.ColorManagedInputColorspaceSettings.bl_rna.properties["name"].enum_items}


def blender_colorspace(name: str) -> str:
    """`name` when Blender's config has it (e.g. ACEScg), else Blender's scene-linear space."""
    available = _available_colorspaces()
    if name and name in available:
        return name
    return next((candidate for candidate in SCENE_LINEAR_NAMES if candidate in available), "")


def linear_space_with(chromaticities: Any) -> str:
    """Blender's linear space with these primaries and white point (8 floats), or "" when it has none."""
    if chromaticities is None or len(chromaticities) != 8:
        return ""
    available = _available_colorspaces()
    for primaries, names in LINEAR_BY_PRIMARIES:
        if all(abs(a - b) <= PRIMARIES_TOLERANCE for a, b in zip(primaries, chromaticities)):
            return next((n for n in names if n in available), "")
    return ""


def result_colorspace(result: ResultSequence, chromaticities: Any = None) -> tuple[str, str]:
    """The space to tag a result with, and a sentence for the artist when colours may shift.

    The EXR's own space by name; else, by the header's chromaticities, Blender's linear space with the
    same primaries (never silently Rec.709 for a file in AP1); else the scene-linear space, saying so."""
    name, available = result.colorspace, _available_colorspaces()
    if name and name in available:
        return name, ""
    same_primaries = linear_space_with(chromaticities)
    if same_primaries:
        return same_primaries, ""
    fallback = blender_colorspace("")
    if not name:
        return fallback, ""  # no space recorded: float frames are scene-linear
    return fallback, (f"{Path(result.pattern).name} is in {name}, which Blender's colour configuration does not "
                      f"have: it is read as {fallback} and its colours may shift. Set its colour space by hand "
                      f"(Image or Strip > Color Space) to the one it was made in.")


def fps_notice(scene: Any, result: ResultSequence, fps: Any) -> str:
    """A sentence when a moving sequence was made at another rate than the scene plays."""
    if fps is None or result.frames.count < 2:
        return ""
    scene_fps, fps = scene.render.fps / scene.render.fps_base, float(fps)
    if abs(scene_fps - fps) <= FPS_TOLERANCE:
        return ""
    return (f"{Path(result.pattern).name} was made at {_rate(fps)} fps and this scene plays at {_rate(scene_fps)} "
            f"fps: Blender shows one of its frames per scene frame, so it plays "
            f"{'faster' if scene_fps > fps else 'slower'} here. Set the scene's Frame Rate (Output Properties > "
            f"Format) to {_rate(fps)} to see it at its speed.")


def _rate(fps: float) -> str:
    return f"{fps:.3f}".rstrip("0").rstrip(".")  # 25, 23.976, 29.97


def _header(path: str) -> dict[str, Any]:
    try:
        return read_exr_header(path)
    except (OSError, ValueError):  # not an EXR (or unreadable): the name alone decides
        return {}


def placement_frame(scene: Any, frames: FrameRange, source: Any = None) -> int:
    """Scene frame where a sequence starts: where its plate strip starts (frame i of the result is made
    from the plate's i-th file), else its own first frame if the scene's range holds it."""
    if source is not None:
        return round(source.frame_start)  # the first file's frame, also when the strip is trimmed
    return frames.first if scene.frame_start <= frames.first <= scene.frame_end else scene.frame_start


def source_strip(scene: Any, result: ResultSequence) -> Any:
    """The sequencer strip the result was made from (its plate), when it is still in the scene."""
    editor = scene.sequence_editor
    if not result.source or editor is None:
        return None
    every = editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all  # 4.4+ / before
    return every.get(result.source)


def load_image_sequence(result: ResultSequence, colorspace: str | None = None) -> Any:
    image = bpy.data.images.load(result.first_file, check_existing=False)
    image.source = "SEQUENCE"
    colorspace = blender_colorspace(result.colorspace) if colorspace is None else colorspace
    if colorspace:
        image.colorspace_settings.name = colorspace
    image.name = result.label[:NAME_LIMIT]
    return image


def compositor_tree(scene: Any) -> Any:
    if hasattr(scene, "compositing_node_group"):  # Blender 5
        if scene.compositing_node_group is None:
            scene.compositing_node_group = bpy.data.node_groups.new(f"{scene.name} compositor", "CompositorNodeTree")
        return scene.compositing_node_group
    scene.use_nodes = True  # Blender 4 and before
    return scene.node_tree


def load_into_compositor(scene: Any, result: ResultSequence, colorspace: str | None = None,
                         start: int | None = None) -> Any:
    tree = compositor_tree(scene)
    ours = [n for n in tree.nodes if n.bl_idname == "CompositorNodeImage" and n.get("cinegen_job")]
    node = tree.nodes.new("CompositorNodeImage")
    node.image = load_image_sequence(result, colorspace)
    node.frame_duration = result.frames.count
    node.frame_start = placement_frame(scene, result.frames, source_strip(scene, result)) if start is None else start
    node.frame_offset = result.frames.first - 1  # file frame = F - frame_start + 1 + offset
    node.label = result.label[:NAME_LIMIT]
    tag(node, result)
    node.location = (-600.0, -320.0 * len(ours))  # one below the other: earlier results stay
    return node


def load_into_sequencer(scene: Any, result: ResultSequence, colorspace: str | None = None,
                        start: int | None = None, channel: int | None = None) -> Any:
    editor = scene.sequence_editor or scene.sequence_editor_create()
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences  # 4.4+ / before
    source = source_strip(scene, result)
    start = placement_frame(scene, result.frames, source) if start is None else start
    names = result.file_names()
    lowest = 1 if source is None else source.channel + 1  # above its plate, for a glance from one to the other
    if channel is None:
        channel = free_channel(strips, start, start + len(names), lowest)
    strip = strips.new_image(name=result.label[:NAME_LIMIT], filepath=result.first_file, channel=channel,
                             frame_start=start, fit_method=fit_method(scene))
    for name in names[1:]:
        strip.elements.append(name)
    colorspace = blender_colorspace(result.colorspace) if colorspace is None else colorspace
    if colorspace:
        strip.colorspace_settings.name = colorspace
    tag(strip, result)
    return strip


def tag(item: Any, result: ResultSequence) -> None:
    """How it was made, as custom properties (a strip's Custom Properties panel shows them): the name holds
    pipeline, seed and model, not the prompt."""
    item["cinegen_job"] = result.job_id or "cinegen"
    item["cinegen_prompt"] = result.prompt
    item["cinegen_model"] = result.model
    item["cinegen_seed"] = "" if result.seed is None else str(result.seed)  # text: a seed may pass 32 bits


def fit_method(scene: Any) -> str:
    """How a strip of another size than the scene is fitted: the scene's own choice (Scale to Fit unless the
    artist changed it), as for a strip added by hand; `new_image` alone keeps the original size."""
    tools = getattr(scene.tool_settings, "sequencer_tool_settings", None)
    return getattr(tools, "fit_method", "FIT")


def sequencer_channel(scene: Any, start: int, end: int) -> int:
    """The lowest channel of the scene's sequencer free over [start, end) (one channel for a whole cut)."""
    editor = scene.sequence_editor or scene.sequence_editor_create()
    return free_channel(editor.strips if hasattr(editor, "strips") else editor.sequences, start, end)


def free_channel(strips: Any, start: int, end: int, lowest: int = 1) -> int:
    """The lowest channel from `lowest` with no strip overlapping [start, end): earlier results are kept."""
    busy = {s.channel for s in strips if s.frame_final_start < end and s.frame_final_end > start}
    channel = lowest
    while channel in busy:
        channel += 1
    return channel


# ---- trajectory ---------------------------------------------------------------------------------
def object_trajectory(scene: Any, obj: Any, camera: Any, frames: FrameRange, width: int | None = None,
                      height: int | None = None) -> Trajectory:
    """The object's origin through the camera on each of `frames`, in top-left pixels."""
    if obj is None:
        raise HostSelectionError("Make the object to follow the active object (click it in the viewport).")
    if camera is None:
        raise HostSelectionError("The scene has no camera: add one and make it the scene camera.")
    render = scene.render
    width = width or round(render.resolution_x * render.resolution_percentage / 100)
    height = height or round(render.resolution_y * render.resolution_percentage / 100)
    current = scene.frame_current
    normalised = []
    try:
        for frame in range(frames.first, frames.last + 1):
            scene.frame_set(frame)
            view = world_to_camera_view(scene, camera, obj.matrix_world.translation)
            if view.z > 0:  # behind the camera there is no screen position
                normalised.append((frame, view.x, view.y))
    finally:
        scene.frame_set(current)
    if not normalised:
        raise HostSelectionError(f"'{obj.name}' is never in front of the camera '{camera.name}' on frames "
                                 f"{frames.first}-{frames.last}.")
    points = tuple(from_normalised(normalised, width, height, origin="bottom-left"))
    return Trajectory(width=width, height=height, tracks=(Track(name=obj.name, points=points),), origin="top-left")
