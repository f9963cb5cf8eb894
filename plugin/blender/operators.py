"""Operators behind the panel's buttons: connect, generate, cancel, clear the queue, plate from the
active strip, re-run from the history, new seed, open the Qt panel.

`cinegen.generate` builds its request the same way as the Qt panel (form values by field name,
a versioned output folder, uploads when the disk is not shared). With the UI it queues the job and
returns at once (a timer follows it); headless, or with `wait=True`, it runs the job to its end
before returning, for farm and batch use.
"""
from __future__ import annotations

import os
import random
from typing import Any

import bpy

from cinegen.common.client import new_job_id
from cinegen.common.connection import ConnectionSettings
from cinegen.common.params import plain_help
from cinegen.common.sequence import FrameRange, SequencePattern, SequencePatternError
from cinegen.common.trajectory_io import to_json
from cinegen.plugin.backend.drafting import make_draft, plan_output, release_folder
from cinegen.plugin.backend.errors import describe_error
from cinegen.plugin.backend.results import results_from_outputs
from cinegen.plugin.backend.story_cut import shot_offsets
from cinegen.plugin.hosts.base import HostSelectionError
from cinegen.plugin.hosts.blender_host import BlenderHost, placement_frame, sequencer_channel
from cinegen.plugin.model.forms import PLATE_COLORSPACE_FIELD, PLATE_FIELD, TRAJECTORY_FIELD
from cinegen.plugin.model.history import HistoryEntry
from cinegen.plugin.model.jobs import JobRecord
from cinegen.plugin.model.outputs import safe_name

from . import options, runtime

SEED_MAX = 2**31 - 1
TRAJECTORY_FILE_FIELD = "trajectory"  # a trajectory file given by hand wins over the active object
FPS_FIELD = "fps"  # unset ("empty = 24"), the scene's frame rate is sent


def settings_from(props) -> ConnectionSettings:
    """The saved connection settings with what the panel shows (host, port, token, shared disk)."""
    saved = ConnectionSettings.load()
    saved.host, saved.port, saved.token, saved.shared_disk = props.host, props.port, props.token, props.shared_disk
    return saved


def first_frame(scene, props) -> int:
    return scene.frame_start if props.use_scene_frames else props.first_frame


def form_values(scene, pipeline: str) -> dict[str, Any]:
    """Every form value by contract field name: the panel's own controls and the server's options."""
    props, form = scene.cinegen, runtime.form_of(pipeline)
    values: dict[str, Any] = {"prompt": props.prompt, "negative_prompt": props.negative_prompt, "seed": props.seed,
                              "first_frame": first_frame(scene, props)}
    if form is not None:
        values.update(options.read_values(options.group_of(scene, None), options.common_fields([form])))
        values.update(options.read_values(options.group_of(scene, pipeline), options.own_fields(form)))
        fps = form.field(FPS_FIELD)
        if fps is not None and values.get(FPS_FIELD) is None:  # the rate recorded: the one this scene plays at
            values[FPS_FIELD] = min(max(scene_fps(scene), fps.minimum or 0.0), fps.maximum or float("inf"))
    return values


def scene_fps(scene) -> float:
    return scene.render.fps / scene.render.fps_base  # 24 / 1.001 = 23.976


def job_frames(scene, values: dict[str, Any]) -> FrameRange:
    """The frames the job writes: first .. first + frames - 1 (the server needs a track inside them)."""
    count = values.get("frames")
    if not count:
        raise HostSelectionError("Set Frames (in Options): the active object's path is sampled over exactly the "
                                 "frames being generated.")
    return FrameRange(values["first_frame"], values["first_frame"] + int(count) - 1)


def _redraw() -> None:
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            area.tag_redraw()


def _show(props, job: runtime.BlenderJob) -> None:
    if props.job_id == job.job_id:
        props.progress, props.stage = job.record.fraction, job.error or job.record.stage


def _live(scene):
    """The scene a job was started from, or the open one if that was closed (File > Open) meanwhile."""
    try:
        scene.name  # noqa: B018  (raises once Blender has freed the scene)
        return scene
    except ReferenceError:
        return bpy.context.scene


def _plain(sentence: str, pipeline: str) -> str:
    """The server names CLI flags (--keep-first-frame); the panel shows the options' labels."""
    form = runtime.form_of(pipeline)
    return plain_help(sentence, {f.name: f.label for f in form.fields}) if form is not None else sentence


def finish(scene, job: runtime.BlenderJob, host: BlenderHost) -> list:
    """Main thread: load the results into the scene and record the outcome in the history."""
    scene = host.scene = _live(scene)  # the job's own scene, even if another one is active now
    props, record, outcome, history = scene.cinegen, job.record, job.outcome, runtime.history()
    _show(props, job)
    loaded, results = [], []
    if not job.error and outcome is not None and outcome.state == "completed":
        results = results_from_outputs(outcome.outputs, job_id=record.job_id, pipeline=record.pipeline,
                                       seed=record.seed, model=record.model, prompt=record.prompt,
                                       source=job.draft.source)  # the plate's strip: results go above it
        job.error = unreadable(results, shared_disk=runtime.STATE.settings.shared_disk)
    if job.error or outcome is None or outcome.state != "completed":
        state = outcome.state if outcome else "refused"
        message = _plain(job.error or (outcome.message if outcome else "") or state, record.pipeline)
        record.state, record.message = state, message
        if props.job_id == job.job_id:
            props.last_error = f"Job {record.job_id} {state}: {message}"
        release_folder(job.claimed_folder)
        history.update(record.job_id, state=state, message=message)
    else:
        starts = cut_starts(scene, results, outcome.outputs)
        channel = cut_channel(scene, results, starts) if starts and host.target != "compositor" else None
        loaded = job.loaded = [host.load_result(r, starts.get(r.pattern), channel if r.pattern in starts else None)
                               for r in results]
        notices = host.take_notices()  # a colour space Blender lacks, another frame rate than the scene's
        if props.job_id == job.job_id:
            props.progress, props.stage, props.last_error = 1.0, f"loaded {len(results)} sequence(s)", ""
            props.notice = " ".join(notices)
        if notices and runtime.STATE.echo is not None:
            runtime.STATE.echo.write("".join(f"cinegen: {record.job_id} note: {n}\n" for n in notices))
        history.update(record.job_id, state="completed", seed=record.seed, model=record.model,
                       outputs=[r.pattern for r in results], frames=", ".join(str(r.frames) for r in results))
    _redraw()
    return loaded


def finish_queued(scene, job: runtime.BlenderJob, host: BlenderHost) -> list:
    """`finish` from the timer: the results loaded become an undo step of their own. Otherwise the
    next Ctrl+Z (of anything done since) goes back to before them, and they vanish."""
    loaded = finish(scene, job, host)
    if loaded:
        try:
            bpy.ops.ed.undo_push(message=f"cinegen: load {job.job_id}")
        except RuntimeError:  # no undo in this context: the results are loaded all the same
            pass
    return loaded


def cut_starts(scene, results: list, outputs: list[str]) -> dict[str, int]:
    """A story's shots one after another as in its cut (the .otio among the outputs), from where its first
    shot would land: the sequencer shows the edit, not every shot stacked at one frame."""
    cut = next((path for path in outputs if path.endswith(".otio")), None)
    offsets = shot_offsets(cut) if cut else {}  # one shot too: a re-run of sh020 alone (`--shots sh020`)
    folders = {r.pattern: os.path.normpath(os.path.dirname(r.first_file)) for r in results}
    placed = [r for r in results if folders[r.pattern] in offsets]
    if not placed:
        return {}
    # every shot is numbered from the same first frame: where one would land is where the cut starts (a
    # re-run of sh020 alone still lands after sh010)
    start = placement_frame(scene, placed[0].frames)
    return {r.pattern: start + offsets[folders[r.pattern]] for r in placed}


def cut_channel(scene, results: list, starts: dict[str, int]) -> int:
    """One sequencer channel free for the whole cut, so its shots read as one edit."""
    ends = [starts[r.pattern] + r.frames.count for r in results if r.pattern in starts]
    return sequencer_channel(scene, min(starts.values()), max(ends))


def unreadable(results: list, *, shared_disk: bool) -> str:
    """A sentence when a finished job's frames are not on this machine (Blender can't load what isn't there)."""
    missing = next((r for r in results if not os.path.isfile(r.first_file)), None)
    if missing is None:
        return ""
    folder = os.path.dirname(missing.first_file)
    if shared_disk:
        return (f"its frames are not on this machine at {folder}: the server wrote them on its own disk. Untick "
                "Shared disk to have results downloaded, or mount the server's output folder at that path here.")
    return f"its frames were not downloaded to {folder}: check that folder can be written, then run the job again."


def forget_scene_token(props) -> None:
    """Earlier versions saved the token in the scene (so in every copy of the .blend): take it, drop it."""
    stale = props.get("token")  # the stored value, not the property (which reads the user's settings)
    if stale is None:
        return
    if isinstance(stale, str) and stale and not runtime.token():
        runtime.set_token(stale)
    del props["token"]


def connect_scene(scene) -> bool:
    """Connect with the scene's settings; on failure the reason is in `scene.cinegen.status`."""
    props = scene.cinegen
    forget_scene_token(props)
    settings = settings_from(props)
    try:
        capabilities = runtime.connect(settings)
    except Exception as exc:
        props.status = props.last_error = describe_error(exc, settings)
        return False
    settings.save()
    runtime.STATE.saved = settings  # a new scene starts from these
    device = capabilities.device.name or capabilities.device.kind
    props.status = f"Connected to {settings.address} · cinegen {capabilities.server_version} · {device}"
    props.last_error = ""
    names = [p.name for p in capabilities.pipelines]
    if names and props.pipeline not in names:
        props.pipeline = names[0]
    return True


class CINEGEN_OT_connect(bpy.types.Operator):
    bl_idname = "cinegen.connect"
    bl_label = "Connect"
    bl_description = "Connect to the cinegen server and read its pipelines and their options"

    def execute(self, context):
        if not connect_scene(context.scene):
            self.report({"ERROR"}, context.scene.cinegen.status)
            return {"CANCELLED"}
        return {"FINISHED"}


def submit(scene, *, wait: bool) -> runtime.BlenderJob:
    """Build the job from the scene's settings and run it (wait) or queue it; raises ValueError with a sentence."""
    props = scene.cinegen
    if runtime.STATE.client is None and not connect_scene(scene):
        raise ValueError(props.status)
    pipeline = props.pipeline
    info, form = runtime.STATE.capabilities, runtime.form_of(pipeline)
    if form is None or pipeline not in {p.name for p in info.pipelines}:
        raise ValueError(f"This server has no '{pipeline}' pipeline: press Connect and pick one.")
    host, settings = BlenderHost(target=props.target), runtime.STATE.settings
    if not props.seed_locked:
        props.seed = random.randrange(SEED_MAX)
    values, names = form_values(scene, pipeline), {f.name for f in form.fields}
    if TRAJECTORY_FIELD in names and not values.get(TRAJECTORY_FILE_FIELD):
        frames = job_frames(scene, values)
        values[TRAJECTORY_FIELD] = to_json(host.selected_trajectory(values.get("width"), values.get("height"), frames))
    # the strip's name only while the input is still the sequence taken from it
    source = props.plate_source if values.get(PLATE_FIELD) and values[PLATE_FIELD] == props.plate_pattern else ""
    job_id = new_job_id(pipeline)
    try:
        place = plan_output(values, settings=settings, output_root=host.output_root(),
                            name=f"{safe_name(host.shot_name())}_{pipeline}", folder_output=form.output_is_folder)
    except OSError as exc:  # the version folder can't be made (a read-only share, a file in the way)
        raise ValueError(describe_error(exc, settings)) from exc
    try:
        draft = make_draft(pipeline, form.fields, values, job_id=job_id, settings=settings, place=place,
                           client=host.client_name(), source=source)
    except ValueError:
        release_folder(place.claimed_folder)
        raise
    model = values.get("model") or ""
    job = runtime.BlenderJob(draft, JobRecord(job_id, pipeline, prompt=props.prompt, seed=props.seed, model=model),
                             claimed_folder=place.claimed_folder, on_done=lambda j: finish_queued(scene, j, host))
    runtime.history().add(HistoryEntry(job_id, pipeline, values=values, seed=props.seed, model=model,
                                       prompt=props.prompt, server=settings.address))
    props.job_id, props.progress, props.stage, props.last_error, props.notice = job_id, 0.0, "submitting", "", ""
    if not wait:
        runtime.start_background(job)
        return job
    try:
        runtime.run_blocking(job)
    except Exception as exc:
        job.error = describe_error(exc, settings)
    job.finished = True
    finish(scene, job, host)
    return job


class CINEGEN_OT_generate(bpy.types.Operator):
    bl_idname = "cinegen.generate"
    bl_label = "Generate"
    bl_description = "Queue a job with these settings; the result loads into the compositor / sequencer"

    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                                 description="Run the job to its end before returning (always on headless)")
    queue: bpy.props.BoolProperty(name="Queue", default=False, options={"SKIP_SAVE", "HIDDEN"},
                                  description="Queue even headless (for scripts that run Blender's timers)")

    def execute(self, context):
        wait = self.wait or (bpy.app.background and not self.queue)  # headless, timers don't run during a script
        try:
            job = submit(context.scene, wait=wait)
        except (HostSelectionError, ValueError) as exc:
            context.scene.cinegen.last_error = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if wait and (job.record.state != "completed" or job.error):  # error: completed, but nothing loaded
            self.report({"ERROR"}, context.scene.cinegen.last_error)
            return {"CANCELLED"}
        if wait and context.scene.cinegen.notice:
            self.report({"WARNING"}, context.scene.cinegen.notice)
        return {"FINISHED"}


class CINEGEN_OT_cancel(bpy.types.Operator):
    bl_idname = "cinegen.cancel"
    bl_label = "Cancel"
    bl_description = "Cancel this job (it stops between denoising steps)"

    job_id: bpy.props.StringProperty(name="Job", description="Empty: the job started last")

    def execute(self, context):
        job_id = self.job_id or context.scene.cinegen.job_id
        if job_id:
            runtime.cancel(job_id)  # returns at once; a refusal shows in the job's progress line
        return {"FINISHED"}


class CINEGEN_OT_clear_queue(bpy.types.Operator):
    bl_idname = "cinegen.clear_queue"
    bl_label = "Clear finished"
    bl_description = "Remove finished jobs from the queue (their results stay in the scene)"

    def execute(self, context):
        runtime.clear_finished()
        return {"FINISHED"}


class CINEGEN_OT_plate_from_strip(bpy.types.Operator):
    bl_idname = "cinegen.plate_from_strip"
    bl_options = {"REGISTER", "UNDO"}  # it changes the scene: Ctrl+Z takes it back
    bl_label = "Plate from active strip"
    bl_description = "Use the active image-sequence strip of the Sequencer as this pipeline's input"

    def execute(self, context):
        scene, props = context.scene, context.scene.cinegen
        try:
            plate = BlenderHost(target=props.target).selected_plate()
        except HostSelectionError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        group, form = options.group_of(scene, props.pipeline), runtime.form_of(props.pipeline)
        field = form.field(PLATE_FIELD) if form is not None else None
        if group is None or field is None or not hasattr(group, PLATE_FIELD):
            self.report({"ERROR"}, f"The '{props.pipeline}' pipeline takes no plate.")
            return {"CANCELLED"}
        try:
            sequence = SequencePattern.parse(plate.pattern, any_extension=True, what="plate")
        except SequencePatternError:
            sequence = None  # one file: a still
        if field.wants_sequence:  # the upscale plate
            if sequence is None:
                self.report({"ERROR"}, f"The strip '{plate.source}' is one picture ({plate.pattern}), not an image "
                                       f"sequence: {props.pipeline} takes a sequence such as DIR/NAME.####.exr.")
                return {"CANCELLED"}
            value = plate.pattern
        else:  # one picture (a panorama's input image): the strip's first frame
            value = sequence.path_for(plate.frames.first) if sequence is not None else plate.pattern
        setattr(group, PLATE_FIELD, value)
        if plate.colorspace and hasattr(group, PLATE_COLORSPACE_FIELD):
            setattr(group, PLATE_COLORSPACE_FIELD, plate.colorspace)  # the server converts from that space
        props.plate_source, props.plate_pattern = plate.source, bpy.path.abspath(value)
        return {"FINISHED"}


class CINEGEN_OT_rerun(bpy.types.Operator):
    bl_idname = "cinegen.rerun"
    bl_options = {"REGISTER", "UNDO"}  # it changes the scene: Ctrl+Z takes it back
    bl_label = "Re-run"
    bl_description = "Put this job's settings back in the panel (seed locked to the one used) and run it again"

    job_id: bpy.props.StringProperty(name="Job")
    run: bpy.props.BoolProperty(name="Run", default=True, description="Off: only restore the settings")

    def execute(self, context):
        scene, props = context.scene, context.scene.cinegen
        entry = runtime.history().get(self.job_id)
        if entry is None:
            self.report({"ERROR"}, f"No job {self.job_id} in the history.")
            return {"CANCELLED"}
        form = runtime.form_of(entry.pipeline)
        if form is None:
            self.report({"ERROR"}, f"This server has no '{entry.pipeline}' pipeline any more.")
            return {"CANCELLED"}
        values = entry.rerun_values()
        props.pipeline = entry.pipeline
        props.prompt, props.negative_prompt = values.get("prompt", ""), values.get("negative_prompt", "")
        if values.get("seed") is not None:
            props.seed, props.seed_locked = int(values["seed"]) % (SEED_MAX + 1), True
        options.write_values(options.group_of(scene, None), options.common_fields([form]), values)
        options.write_values(options.group_of(scene, entry.pipeline), options.own_fields(form), values)
        if self.run:
            return bpy.ops.cinegen.generate("EXEC_DEFAULT", wait=bpy.app.background)
        return {"FINISHED"}


class CINEGEN_OT_new_seed(bpy.types.Operator):
    bl_idname = "cinegen.new_seed"
    bl_options = {"REGISTER", "UNDO"}  # it changes the scene: Ctrl+Z takes it back
    bl_label = "New seed"
    bl_description = "Draw a new random seed now"

    def execute(self, context):
        context.scene.cinegen.seed = random.randrange(SEED_MAX)
        return {"FINISHED"}


class CINEGEN_OT_open_qt_panel(bpy.types.Operator):
    bl_idname = "cinegen.open_qt_panel"
    bl_label = "Open Qt panel"
    bl_description = "The full cinegen panel (needs PySide6 in Blender's Python); its loop runs on a timer"

    @classmethod
    def poll(cls, context):
        return not bpy.app.background

    def execute(self, context):
        try:
            from cinegen.plugin.qt import ensure_application
            from cinegen.plugin.ui.panel import Panel
        except ImportError:
            self.report({"ERROR"}, "No Qt binding in Blender's Python: use this sidebar panel, or install PySide6.")
            return {"CANCELLED"}
        app = ensure_application()
        panel = Panel(host=BlenderHost(target=context.scene.cinegen.target))
        panel.show()
        _QT_WINDOWS.append(panel)

        def pump() -> float | None:
            app.processEvents()
            _QT_WINDOWS[:] = [w for w in _QT_WINDOWS if w.isVisible()]
            return 0.02 if _QT_WINDOWS else None  # keep Qt's loop turning while a panel is open
        bpy.app.timers.register(pump, first_interval=0.02)
        return {"FINISHED"}


_QT_WINDOWS: list = []
CLASSES = (CINEGEN_OT_connect, CINEGEN_OT_generate, CINEGEN_OT_cancel, CINEGEN_OT_clear_queue,
           CINEGEN_OT_plate_from_strip, CINEGEN_OT_rerun, CINEGEN_OT_new_seed, CINEGEN_OT_open_qt_panel)


register, unregister = bpy.utils.register_classes_factory(CLASSES)


def refresh() -> None:
    """After queued updates: the scene's progress line follows the job started last; redraw."""
    scene = bpy.context.scene
    props = getattr(scene, "cinegen", None)
    job = runtime.STATE.jobs.get(props.job_id) if props is not None else None
    if job is not None:
        _show(props, job)
    _redraw()
