"""Operators behind the panel's buttons: connect, generate, cancel, new seed, open the Qt panel.

`cinegen.generate` builds its request the same way as the Qt panel (form values by field name,
a versioned output folder, uploads when the disk is not shared) and, headless or with
`wait=True`, runs the job to its end before returning, for farm and batch use.
"""
import random

import bpy

from cinegen.common.client import new_job_id
from cinegen.common.connection import ConnectionSettings
from cinegen.common.trajectory_io import to_json
from cinegen.plugin.backend.drafting import make_draft, plan_output, release_folder
from cinegen.plugin.backend.errors import describe_error
from cinegen.plugin.backend.results import results_from_outputs
from cinegen.plugin.hosts.base import HostSelectionError
from cinegen.plugin.hosts.blender_host import BlenderHost
from cinegen.plugin.model.forms import PLATE_FIELD, TRAJECTORY_FIELD
from cinegen.plugin.model.history import History, HistoryEntry
from cinegen.plugin.model.jobs import JobRecord
from cinegen.plugin.model.outputs import safe_name

from . import runtime

SEED_MAX = 2**31 - 1


def settings_from(props) -> ConnectionSettings:
    """The saved connection settings with what the panel shows (host, port, token, shared disk)."""
    saved = ConnectionSettings.load()
    saved.host, saved.port, saved.token, saved.shared_disk = props.host, props.port, props.token, props.shared_disk
    return saved


def form_values(scene, props) -> dict:
    """The panel's controls as form values by contract field name (0 and "" = the server decides)."""
    values = {"prompt": props.prompt, "negative_prompt": props.negative_prompt, "seed": props.seed,
              "model": props.model, "steps": props.steps or None, "width": props.width or None,
              "height": props.height or None, "frames": props.frames or None}
    if props.use_scene_frames:
        values["first_frame"] = scene.frame_start
    return values


def _redraw() -> None:
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            area.tag_redraw()


def _show(props, job: runtime.BlenderJob) -> None:
    record = job.record
    props.progress, props.stage = record.fraction, job.error or record.stage


def _finish(scene, job: runtime.BlenderJob, host: BlenderHost, history: History) -> list:
    """Main thread: load the results into the scene and record the job in the history."""
    props, record, outcome = scene.cinegen, job.record, job.outcome
    _show(props, job)
    loaded = []
    if job.error or outcome is None or outcome.state != "completed":
        message = job.error or (outcome.message if outcome else "") or (outcome.state if outcome else "")
        props.last_error = f"Job {record.job_id} {outcome.state if outcome else 'could not run'}: {message}"
        release_folder(job.claimed_folder)
        history.update(record.job_id, state=outcome.state if outcome else "refused", message=message)
    else:
        results = results_from_outputs(outcome.outputs, job_id=record.job_id, pipeline=record.pipeline,
                                       seed=record.seed, model=record.model, prompt=record.prompt)
        loaded = [host.load_result(result) for result in results]
        props.progress, props.stage, props.last_error = 1.0, f"loaded {len(results)} sequence(s)", ""
        history.update(record.job_id, state="completed", seed=record.seed, model=record.model,
                       outputs=[r.pattern for r in results], frames=", ".join(str(r.frames) for r in results))
    props.job_id = ""
    _redraw()
    return loaded


class CINEGEN_OT_connect(bpy.types.Operator):
    bl_idname = "cinegen.connect"
    bl_label = "Connect"
    bl_description = "Connect to the cinegen server and read its pipelines"

    def execute(self, context):
        props = context.scene.cinegen
        settings = settings_from(props)
        try:
            capabilities = runtime.connect(settings)
        except Exception as exc:
            props.status = props.last_error = describe_error(exc, settings)
            self.report({"ERROR"}, props.status)
            return {"CANCELLED"}
        settings.save()
        device = capabilities.device.name or capabilities.device.kind
        props.status = f"Connected to {settings.address} · cinegen {capabilities.server_version} · {device}"
        props.last_error = ""
        if props.pipeline not in {p.name for p in capabilities.pipelines} and capabilities.pipelines:
            props.pipeline = capabilities.pipelines[0].name
        return {"FINISHED"}


class CINEGEN_OT_generate(bpy.types.Operator):
    bl_idname = "cinegen.generate"
    bl_label = "Generate"
    bl_description = "Queue a job with these settings; the result loads into the compositor / sequencer"

    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                                 description="Run the job to its end before returning (always on headless)")

    def execute(self, context):
        scene, props = context.scene, context.scene.cinegen
        if runtime.STATE.client is None and "FINISHED" not in bpy.ops.cinegen.connect():
            return {"CANCELLED"}
        settings, host = runtime.STATE.settings, BlenderHost(target=props.target)
        fields = runtime.fields_of(props.pipeline)
        if not fields:
            self.report({"ERROR"}, f"This server has no '{props.pipeline}' pipeline: press Connect and pick one.")
            return {"CANCELLED"}
        if not props.seed_locked:
            props.seed = random.randrange(SEED_MAX)
        values, source = form_values(scene, props), ""
        names = {f.name for f in fields}
        try:
            if TRAJECTORY_FIELD in names:
                values[TRAJECTORY_FIELD] = to_json(host.selected_trajectory(props.width or None, props.height or None))
            if PLATE_FIELD in names:
                plate = host.selected_plate()
                values[PLATE_FIELD], source = plate.pattern, plate.source
        except HostSelectionError as exc:
            props.last_error = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        job_id = new_job_id(props.pipeline)
        info = runtime.pipeline_info(props.pipeline)
        place = plan_output(values, settings=settings, output_root=host.output_root(),
                            name=f"{safe_name(host.shot_name())}_{props.pipeline}",
                            folder_output=bool(info and info.output_is_folder))
        try:
            draft = make_draft(props.pipeline, fields, values, job_id=job_id, settings=settings, place=place,
                               client=host.client_name(), source=source)
        except ValueError as exc:
            release_folder(place.claimed_folder)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        job = runtime.BlenderJob(draft, JobRecord(job_id, props.pipeline, prompt=props.prompt, seed=props.seed,
                                                  model=props.model), claimed_folder=place.claimed_folder)
        history = History()
        history.add(HistoryEntry(job_id, props.pipeline, values=values, seed=props.seed, model=props.model,
                                 prompt=props.prompt, server=settings.address))
        props.job_id, props.progress, props.stage, props.last_error = job_id, 0.0, "submitting", ""
        if self.wait or bpy.app.background:
            try:
                runtime.run_blocking(job)
            except Exception as exc:
                job.error = describe_error(exc, settings)
            _finish(scene, job, host, history)
            if props.last_error:
                self.report({"ERROR"}, props.last_error)
                return {"CANCELLED"}
            return {"FINISHED"}
        runtime.start_background(job, on_update=lambda j: (_show(scene.cinegen, j), _redraw()),
                                 on_done=lambda j: _finish(scene, j, host, history))
        return {"FINISHED"}


class CINEGEN_OT_cancel(bpy.types.Operator):
    bl_idname = "cinegen.cancel"
    bl_label = "Cancel"
    bl_description = "Cancel the running job (it stops between denoising steps)"

    def execute(self, context):
        props = context.scene.cinegen
        if props.job_id:
            try:
                runtime.cancel(props.job_id)
            except Exception as exc:
                self.report({"ERROR"}, describe_error(exc, runtime.STATE.settings))
                return {"CANCELLED"}
        return {"FINISHED"}


class CINEGEN_OT_new_seed(bpy.types.Operator):
    bl_idname = "cinegen.new_seed"
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
CLASSES = (CINEGEN_OT_connect, CINEGEN_OT_generate, CINEGEN_OT_cancel, CINEGEN_OT_new_seed,
           CINEGEN_OT_open_qt_panel)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
