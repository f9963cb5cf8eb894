"""The Blender extension in real headless Blender (the `bpy` module), run in a child process.

bpy is a heavy singleton: one child process per test module imports it, runs every scenario and
prints what it found as JSON; the tests below check those facts. The child is this same file run as
a script. Skipped when `bpy` is not installed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "plugin" / "blender"
MARKER = "CINEGEN-FACTS "

pytestmark = [pytest.mark.bpy,
              pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module")]


# ---- the child process ----------------------------------------------------------------------------
def child(workdir: Path, server: str) -> dict:
    import bpy
    import numpy as np

    from cinegen.common.exr import ExrMetadata, write_exr_frame
    from cinegen.common.sequence import FrameRange
    from cinegen.plugin.hosts import blender_host
    from cinegen.plugin.model.outputs import ResultSequence

    facts: dict = {}
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(workdir / "shot010.blend"))  # outputs go next to it

    sys.path.insert(0, str(ROOT / "tools"))
    from blender_panel_listing import load_addon

    addon = load_addon()  # the add-on as Blender loads it: a package from plugin/blender, registered
    scene = bpy.context.scene
    facts["registered"] = {
        "settings": hasattr(scene, "cinegen"),
        "panels": [name for name in ("CINEGEN_PT_view3d", "CINEGEN_PT_compositor", "CINEGEN_PT_sequencer")
                   if hasattr(bpy.types, name)],
        "operators": [op for op in ("connect", "generate", "cancel", "new_seed", "rerun", "plate_from_strip")
                      if hasattr(bpy.ops.cinegen, op)]}
    facts["fresh"] = fresh_scene_scenario(bpy, scene)
    facts["reconnect"] = reconnect_scenario(bpy, scene)
    facts["token"] = token_scenario(bpy, scene, workdir)
    facts["unreadable"] = unreadable_scenario(bpy, scene)
    facts["reregistered"] = reregister_scenario(bpy, addon)
    facts["cancel_unreachable"] = cancel_unreachable_scenario(bpy, scene)
    facts["one_shot_rerun"] = one_shot_rerun_scenario(bpy, scene, workdir)
    farm = importlib.import_module("cinegen_blender.farm")
    facts["farm_servers"] = {text: list(farm.server_address(text, 50051))
                             for text in ("gpu01:50052", "gpu01", "[::1]:50053", "::1", "10.0.0.5")}
    try:
        farm.server_address("gpu01:port", 50051)
    except farm.JobFailed as exc:
        facts["farm_servers"]["bad"] = str(exc)

    # a generated sequence, 1001-1003, written like the server writes it
    frames = workdir / "gen"
    frames.mkdir()
    for frame in (1001, 1002, 1003):
        write_exr_frame(frames / f"gen_v001.{frame}.exr", np.full((8, 16, 4), 0.25, np.float32),
                        metadata=ExrMetadata(pipeline="image", colorspace="ACEScg"))
    result = ResultSequence(pattern=str(frames / "gen_v001.####.exr"), frames=FrameRange(1001, 1003),
                            pipeline="image", job_id="job-1", seed=42, model="tiny-sd", prompt="p",
                            colorspace="ACEScg")
    facts["loads"] = {}
    for label, scene_range in (("default_range", (1, 250)), ("shot_range", (1001, 1100))):
        scene.frame_start, scene.frame_end = scene_range
        loaded = blender_host.BlenderHost("both").load_result(result)
        facts["loads"][label] = {"node": describe_node(loaded["node"]), "strip": describe_strip(loaded["strip"])}
    unknown = blender_host.load_into_sequencer(scene, ResultSequence(**{**result.__dict__, "colorspace": "Made Up"}))
    facts["unknown_colorspace"] = unknown.colorspace_settings.name
    tree = blender_host.compositor_tree(scene)
    facts["compositor_images"] = sum(n.bl_idname == "CompositorNodeImage" for n in tree.nodes)
    strips = scene.sequence_editor.strips
    facts["strip_channels"] = sorted(s.channel for s in strips)

    facts["colour_and_rate"] = colour_and_rate_scenario(bpy, blender_host, workdir)
    facts["trajectory"] = trajectory_scenario(bpy, blender_host)
    if server:
        facts["generate"] = generate_scenario(bpy, scene, server)
        facts["unwritable"] = unwritable_output_scenario(bpy, scene, workdir)
        facts["trajectory_job"] = trajectory_job_scenario(bpy, scene)
        facts["plate"] = plate_scenario(bpy, scene)
        facts["cancel"] = cancel_scenario(bpy, scene)
        facts["layout"] = layout_scenario(bpy, scene)
    facts["undo"] = undo_scenario(bpy, workdir)  # last: an undo gives Blender's data new Python objects
    return facts


def undo_scenario(bpy, workdir: Path) -> dict:
    """A queued job's results loaded by the timer, then something else done and undone: the results stay
    (without an undo step of their own, Ctrl+Z went back to before them)."""
    import numpy as np

    from cinegen.common.exr import ExrMetadata, write_exr_frame
    from cinegen.common.proto import generator_pb2 as pb
    from cinegen.plugin.backend.job_runner import JobDraft, JobOutcome
    from cinegen.plugin.hosts.blender_host import BlenderHost
    from cinegen.plugin.model.jobs import JobRecord

    runtime, operators = sys.modules["cinegen_blender.runtime"], sys.modules["cinegen_blender.operators"]
    scene = bpy.data.scenes.new("undo")
    bpy.context.window.scene = scene
    (workdir / "undo").mkdir()
    files = [str(workdir / "undo" / f"u_v001.{frame:04d}.exr") for frame in (1, 2)]
    for path in files:
        write_exr_frame(path, np.full((8, 8, 4), 0.5, np.float32), metadata=ExrMetadata(colorspace="ACEScg"))
    bpy.ops.ed.undo_push(message="before the result")
    job = runtime.BlenderJob(JobDraft(pb.JobRequest(job_id="image-undo")), JobRecord("image-undo", "image"),
                             on_done=lambda j: operators.finish_queued(scene, j, BlenderHost("sequencer")))
    job.updates.put(("outcome", JobOutcome(job.job_id, "completed", files)))
    runtime.STATE.jobs[job.job_id] = job
    runtime.drain()  # the timer loads it
    scene.frame_current = 40  # something the artist does afterwards, and takes back
    bpy.ops.ed.undo_push(message="frame 40")
    bpy.ops.ed.undo()
    undone = bpy.data.scenes["undo"]
    del runtime.STATE.jobs[job.job_id]
    editor = undone.sequence_editor  # None when the undo went back to before the result
    return {"frame": undone.frame_current, "strips": len(editor.strips) if editor else 0}


def colour_and_rate_scenario(bpy, blender_host, workdir: Path) -> dict:
    """Results whose colour space Blender's config lacks by name, and results at another rate than the scene."""
    import numpy as np

    from cinegen.common.exr import ExrMetadata, write_exr_frame
    from cinegen.common.sequence import FrameRange
    from cinegen.plugin.model.outputs import ResultSequence

    scene = bpy.data.scenes.new("colour and rate")
    scene.render.fps, scene.render.fps_base = 25, 1.0
    found = {}
    # a studio config's alias of ACEScg (AP1 primaries in the header), a space with none, and a 23.976 story shot
    for name, colorspace, fps in (("alias", "lin_ap1", 25.0), ("unknown", "Made Up", 25.0),
                                  ("story", "ACEScg", 24000 / 1001)):
        folder = workdir / name
        folder.mkdir()
        for frame in (1, 2):
            write_exr_frame(folder / f"{name}.{frame:04d}.exr", np.full((8, 8, 4), 0.5, np.float32),
                            metadata=ExrMetadata(pipeline="story", colorspace=colorspace, fps=fps))
        host = blender_host.BlenderHost("both", scene=scene)
        loaded = host.load_result(ResultSequence(pattern=str(folder / f"{name}.####.exr"), frames=FrameRange(1, 2),
                                                 pipeline="story", colorspace=colorspace))
        found[name] = {"node": loaded["node"].image.colorspace_settings.name,
                       "strip": loaded["strip"].colorspace_settings.name, "notices": host.take_notices()}
    return found


def fresh_scene_scenario(bpy, scene) -> dict:
    """A new scene before any Connect: its pipeline menu holds a pipeline and the options are drawn."""
    sys.path.insert(0, str(ROOT / "tools"))
    from blender_panel_listing import RecordingLayout

    ui = sys.modules["cinegen_blender.ui"]
    layout = RecordingLayout()
    ui.draw_options(layout, scene)
    return {"pipeline": scene.cinegen.pipeline, "other_scene": bpy.data.scenes.new("fresh").cinegen.pipeline,
            "options": [line.strip() for line in layout.lines]}


def token_scenario(bpy, scene, workdir: Path) -> dict:
    """The access token lives in the user's cinegen settings, never in the .blend (which is shared)."""
    from cinegen.common.connection import ConnectionSettings

    runtime, operators = sys.modules["cinegen_blender.runtime"], sys.modules["cinegen_blender.operators"]
    props, found = scene.cinegen, {}
    props.token = "typed-token-1"
    bpy.ops.wm.save_as_mainfile(filepath=str(workdir / "token.blend"), copy=True, compress=False)
    found["typed_in_blend"] = b"typed-token-1" in (workdir / "token.blend").read_bytes()
    ConnectionSettings(token="saved-token-2").save()
    runtime.STATE.token = None  # a new Blender session
    found["from_settings"] = props.token
    props["token"] = "old-token-3"  # what an earlier version stored in the scene
    runtime.set_token("")
    operators.forget_scene_token(props)  # Connect does this first
    found["adopted"], found["left_in_scene"] = props.token, "token" in props.keys()
    runtime.set_token("")
    ConnectionSettings().save()
    return found


def cancel_unreachable_scenario(bpy, scene) -> dict:
    """Cancel while the server doesn't answer: the button returns at once (the call waits on a worker
    thread, it held the UI for the whole time-out), and the refusal shows in the job's progress line."""
    import threading
    import time

    from cinegen.common.client import ServerUnavailable
    from cinegen.common.proto import generator_pb2 as pb
    from cinegen.plugin.backend.job_runner import JobDraft
    from cinegen.plugin.model.jobs import JobRecord

    class Unanswering:
        def __init__(self):
            self.release, self.thread = threading.Event(), None

        def cancel(self, job_id):
            self.thread = threading.current_thread().name
            self.release.wait(5)
            raise ServerUnavailable("Can't reach the cinegen server at gpu01:50051.")

    runtime = sys.modules["cinegen_blender.runtime"]
    job = runtime.BlenderJob(JobDraft(pb.JobRequest(job_id="image-far")), JobRecord("image-far", "image"))
    runtime.STATE.jobs[job.job_id], runtime.STATE.client = job, Unanswering()
    client = runtime.STATE.client
    with bpy.context.temp_override(scene=scene):
        cancelled = sorted(bpy.ops.cinegen.cancel(job_id=job.job_id))
    returned_first = not client.release.is_set()
    client.release.set()
    deadline = time.monotonic() + 10
    while not job.record.stage and time.monotonic() < deadline:
        runtime._apply_updates(job)
        time.sleep(0.02)
    runtime.STATE.client = None
    del runtime.STATE.jobs[job.job_id]
    return {"cancel": cancelled, "returned_first": returned_first, "thread": client.thread,
            "stage": job.record.stage, "requested": job.record.cancel_requested}


def reregister_scenario(bpy, addon) -> dict:
    """Disabled and enabled again (or Reload Scripts) while a job runs: the timer follows it again."""
    from cinegen.common.proto import generator_pb2 as pb
    from cinegen.plugin.backend.job_runner import JobDraft
    from cinegen.plugin.model.jobs import JobRecord

    runtime = sys.modules["cinegen_blender.runtime"]
    job = runtime.BlenderJob(JobDraft(pb.JobRequest(job_id="image-running")), JobRecord("image-running", "image"))
    runtime.STATE.jobs[job.job_id] = job
    addon.unregister()
    addon.register()
    followed = bpy.app.timers.is_registered(runtime.drain)
    del runtime.STATE.jobs[job.job_id]
    runtime.stop_timer()
    return {"followed": followed, "settings": hasattr(bpy.context.scene, "cinegen")}


def one_shot_rerun_scenario(bpy, scene, workdir: Path) -> dict:
    """A story job that re-made only sh020 (`--shots sh020`): its outputs are that shot and the cut, and the shot
    lands at its place in the cut (after sh010's 6 frames), not at the cut's start over sh010."""
    from cinegen.common.sequence import FrameRange
    from cinegen.plugin.model.outputs import ResultSequence

    operators = sys.modules["cinegen_blender.operators"]
    story = workdir / "story_v001"
    story.mkdir()
    clip = {"OTIO_SCHEMA": "Clip.2", "active_media_reference_key": "DEFAULT_MEDIA"}
    track = {"OTIO_SCHEMA": "Track.1", "kind": "Video", "children": [
        {**clip, "source_range": {"duration": {"value": float(frames), "rate": 24.0}},
         "media_references": {"DEFAULT_MEDIA": {"OTIO_SCHEMA": "ImageSequenceReference.1",
                                                "target_url_base": f"{shot}/"}}}
        for shot, frames in (("sh010", 6), ("sh020", 4))]}
    cut = story / "Harbour.otio"
    cut.write_text(json.dumps({"OTIO_SCHEMA": "Timeline.1", "tracks": {"children": [track]}}))
    shot = ResultSequence(pattern=str(story / "sh020" / "sh020.####.exr"), frames=FrameRange(1, 4), pipeline="story",
                          job_id="story-2")
    scene.frame_start, scene.frame_end = 1, 250
    return {"starts": operators.cut_starts(scene, [shot], [str(story / "sh020" / "sh020.0001.exr"), str(cut)])}


def unreadable_scenario(bpy, scene) -> dict:
    """A job that completed on a server whose disk this machine doesn't see (Shared disk ticked), and a job whose
    loading raises: the timer says why and keeps following the other jobs (Blender drops a timer that raises)."""
    from cinegen.common.proto import generator_pb2 as pb
    from cinegen.plugin.backend.job_runner import JobDraft, JobOutcome
    from cinegen.plugin.hosts.blender_host import BlenderHost, compositor_tree
    from cinegen.plugin.model.jobs import JobRecord

    runtime, operators = sys.modules["cinegen_blender.runtime"], sys.modules["cinegen_blender.operators"]
    jobs = {}
    for name, outputs in (("remote", ["/mnt/gpu-server/renders/sh010_v001.0001.exr"]), ("broken", []),
                          ("other", [])):
        job = runtime.BlenderJob(JobDraft(pb.JobRequest(job_id=f"image-{name}")), JobRecord(f"image-{name}", "image"),
                                 on_done=lambda j: operators.finish(scene, j, BlenderHost("both")))
        job.updates.put(("outcome", JobOutcome(job.job_id, "completed", outputs)))
        runtime.STATE.jobs[job.job_id] = job
        jobs[name] = job
    jobs["broken"].on_done = lambda j: 1 / 0
    jobs["other"].updates = type(jobs["other"].updates)()  # still running
    scene.cinegen.job_id = "image-remote"
    nodes_before = len(compositor_tree(scene).nodes)
    runtime.drain()
    raised = None
    try:
        runtime.drain()  # the timer again: it must not have raised the first time either
    except Exception as exc:  # noqa: BLE001
        raised = repr(exc)
    sys.path.insert(0, str(ROOT / "tools"))
    from blender_panel_listing import RecordingLayout

    queue = RecordingLayout()
    sys.modules["cinegen_blender.ui"].draw_queue(queue, scene)
    found = {"error": scene.cinegen.last_error, "broken": [jobs["broken"].record.state, jobs["broken"].record.message],
             "other_active": jobs["other"] in runtime.active_jobs(), "raised": raised,
             "new_nodes": len(compositor_tree(scene).nodes) - nodes_before,
             "queue": [line.strip() for line in queue.lines]}
    for job in jobs.values():
        del runtime.STATE.jobs[job.job_id]
    scene.cinegen.job_id, scene.cinegen.last_error = "", ""
    return found


def reconnect_scenario(bpy, scene) -> dict:
    """The job runner lost the server and is resuming: the queued job's progress line and a headless job's
    log say so (they used to show the last progress for the two minutes of retries)."""
    import io

    from cinegen.common.proto import generator_pb2 as pb
    from cinegen.plugin.backend.job_runner import JobDraft
    from cinegen.plugin.model.jobs import JobRecord

    runtime = sys.modules["cinegen_blender.runtime"]
    job = runtime.BlenderJob(JobDraft(pb.JobRequest(job_id="image-lost")), JobRecord("image-lost", "image"))
    runtime.STATE.jobs[job.job_id] = job
    scene.cinegen.job_id = job.job_id
    runtime._callbacks(job, direct=False).on_reconnect(7, 1.5)  # from the worker thread, as run_job calls it
    runtime.drain()  # the timer, on the main thread
    queued_stage = scene.cinegen.stage
    printed = runtime.STATE.echo = io.StringIO()
    runtime._callbacks(job, direct=True).on_reconnect(9, 3.0)  # headless: straight to the log
    runtime.STATE.echo = None
    del runtime.STATE.jobs[job.job_id]
    scene.cinegen.job_id, scene.cinegen.stage = "", ""
    return {"stage": queued_stage, "log": printed.getvalue(), "reconnects": job.record.reconnects}


def describe_node(node) -> dict:
    return {"frame_duration": node.frame_duration, "frame_start": node.frame_start, "frame_offset": node.frame_offset,
            "source": node.image.source, "colorspace": node.image.colorspace_settings.name,
            "filepath": node.image.filepath, "label": node.label}


def describe_strip(strip) -> dict:
    return {"frame_start": strip.frame_start, "duration": strip.frame_final_duration, "channel": strip.channel,
            "files": [e.filename for e in strip.elements], "directory": strip.directory,
            "colorspace": strip.colorspace_settings.name, "name": strip.name,
            "scale": [strip.transform.scale_x, strip.transform.scale_y],
            "made": {k: strip.get(f"cinegen_{k}") for k in ("prompt", "seed", "model")}}


def trajectory_scenario(bpy, blender_host) -> dict:
    from cinegen.common.sequence import FrameRange

    """A camera at (0, 0, 10) looking down -Z (50 mm lens, 36 mm sensor) and an object keyed linearly
    from (-2, 1, 0) on frame 1 to (2, -1, 0) on frame 5."""
    scene = bpy.data.scenes.new("trajectory")
    bpy.context.window.scene = scene  # the object's animation is evaluated for the active scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 1920, 1080, 100
    scene.frame_start, scene.frame_end = 1, 5
    camera_data = bpy.data.cameras.new("cam")
    camera_data.lens, camera_data.sensor_width, camera_data.sensor_fit = 50.0, 36.0, "AUTO"
    camera = bpy.data.objects.new("cam", camera_data)
    camera.location = (0.0, 0.0, 10.0)
    scene.collection.objects.link(camera)
    scene.camera = camera
    ball = bpy.data.objects.new("ball", None)
    scene.collection.objects.link(ball)
    for frame, location in ((1, (-2.0, 1.0, 0.0)), (5, (2.0, -1.0, 0.0))):
        ball.location = location
        ball.keyframe_insert("location", frame=frame)
    for curve in _fcurves(ball):
        for key in curve.keyframe_points:
            key.interpolation = "LINEAR"
    scene.frame_set(3)
    trajectory = blender_host.object_trajectory(scene, ball, camera, FrameRange(1, 5))
    return {"width": trajectory.width, "height": trajectory.height, "origin": trajectory.origin,
            "name": trajectory.tracks[0].name, "frame_after": scene.frame_current,
            "points": [[p.frame, p.x, p.y] for p in trajectory.tracks[0].points]}


def _fcurves(obj):
    action = obj.animation_data.action
    if hasattr(action, "fcurves"):
        return action.fcurves
    from bpy_extras import anim_utils  # Blender 5: layered actions keep curves in channelbags
    return anim_utils.action_get_channelbag_for_slot(action, obj.animation_data.action_slot).fcurves


def generate_scenario(bpy, scene, server: str) -> dict:
    """The sidebar panel's own operators, headless, against a real server."""
    host, port = server.rsplit(":", 1)
    bpy.context.window.scene = scene
    props = scene.cinegen
    props.host, props.port = host, int(port)
    scene.frame_start, scene.frame_end = 1, 48
    with bpy.context.temp_override(scene=scene):
        connected = bpy.ops.cinegen.connect()
        common = scene.cinegen_options.common  # built from the server's capabilities
        common.model, common.use_steps, common.steps = "tiny-sd", True, 2
        common.use_width, common.width, common.use_height, common.height = True, 64, True, 64
        common.use_frames, common.frames = True, 2
        props.prompt, props.seed, props.seed_locked, props.target = "a fox", 77, True, "both"
        scene.render.fps, scene.render.fps_base = 25, 1.0  # Frames per second left unset: the scene's rate
        nodes_before = len(bpy.context.scene.compositing_node_group.nodes)
        generated = bpy.ops.cinegen.generate(wait=True)
    from cinegen.plugin.backend.exr_header import read_exr_header

    tree = scene.compositing_node_group
    newest = [n for n in tree.nodes if n.bl_idname == "CompositorNodeImage"][-1]
    (strip,) = [s for s in scene.sequence_editor.strips if s.get("cinegen_job", "").startswith("image-")]
    return {"connect": sorted(connected), "generate": sorted(generated), "status": props.status,
            "error": props.last_error, "progress": props.progress, "stage": props.stage,
            "new_nodes": len(tree.nodes) - nodes_before, "node": describe_node(newest),
            "strip_job": strip["cinegen_job"], "strip": describe_strip(strip), "notice": props.notice,
            "fps": float(read_exr_header(bpy.path.abspath(newest.image.filepath))["framesPerSecond"]),
            "server_port": int(port), "new_scene": [bpy.data.scenes.new("next shot").cinegen.port, props.port]}


def unwritable_output_scenario(bpy, scene, workdir: Path) -> dict:
    """Generate where the version folder can't be made (a file in the way, a read-only share): a sentence, not
    a Python traceback."""
    from cinegen.plugin.hosts.blender_host import BlenderHost

    blocker = workdir / "not-a-folder"
    blocker.write_text("")
    original, BlenderHost.output_root = BlenderHost.output_root, lambda self: blocker
    try:
        with bpy.context.temp_override(scene=scene):
            try:
                result = sorted(bpy.ops.cinegen.generate(wait=True))
            except RuntimeError as exc:  # headless, an operator's error report is raised
                result = [str(exc)]
    finally:
        BlenderHost.output_root = original
    error, scene.cinegen.last_error = scene.cinegen.last_error, ""
    return {"result": result, "error": error}


def trajectory_job_scenario(bpy, scene) -> dict:
    """An object animated over the scene's default 1-250 and a trajectory job of 8 frames from 1001: the
    track sent is sampled on the job's own frames (it used to be the scene's 250, and was refused)."""
    from cinegen.common.trajectory_io import parse_trajectory
    from cinegen.plugin.model.history import History

    bpy.context.window.scene = scene
    scene.frame_start, scene.frame_end = 1, 250
    camera = bpy.data.objects.new("trajectory cam", bpy.data.cameras.new("trajectory cam"))
    camera.location = (0.0, 0.0, 10.0)
    scene.collection.objects.link(camera)
    scene.camera = camera
    cube = bpy.data.objects.new("Cube", None)
    scene.collection.objects.link(cube)
    for frame, location in ((1, (-2.0, 0.0, 0.0)), (250, (2.0, 0.0, 0.0))):
        cube.location = location
        cube.keyframe_insert("location", frame=frame)
    bpy.context.view_layer.objects.active = cube
    props, common = scene.cinegen, scene.cinegen_options.common
    props.pipeline, props.use_scene_frames, props.first_frame = "trajectory", False, 1001
    common.model, common.frames, common.width, common.height = "", 8, 64, 64
    with bpy.context.temp_override(scene=scene):
        generated = bpy.ops.cinegen.generate(wait=True)
    entry = History().get(props.job_id)
    track = parse_trajectory(json.loads(entry.values["trajectory_json"])).tracks[0]
    return {"generate": sorted(generated), "error": props.last_error, "track": track.name,
            "frames": [p.frame for p in track.points], "outputs": entry.outputs, "frames_text": entry.frames}


def plate_scenario(bpy, scene) -> dict:
    """"Plate from active strip" fills the pipeline's input with the strip's sequence; no strip, no change."""
    props = scene.cinegen
    (strip,) = [s for s in scene.sequence_editor.strips if s.get("cinegen_job", "").startswith("image-")]
    props.pipeline = "upscale"
    with bpy.context.temp_override(scene=scene):
        scene.sequence_editor.active_strip = None
        try:
            refused = bpy.ops.cinegen.plate_from_strip()
        except RuntimeError as exc:  # headless, an operator's error report is raised
            refused = [str(exc)]
        scene.sequence_editor.active_strip = strip
        taken = bpy.ops.cinegen.plate_from_strip()
    group = scene.cinegen_options.pipeline_upscale
    facts = {"refused": sorted(refused), "taken": sorted(taken), "input": group.input,
             "source": props.plate_source, "strip": strip.name, "pattern": props.plate_pattern,
             "colorspace": group.input_colorspace, "strip_colorspace": strip.colorspace_settings.name}
    # the plate moved to frame 30 (outside the result's own numbers, 1001 on): the upscale lands on it
    strip.frame_start = 30
    common = scene.cinegen_options.common
    common.use_frames, common.model = False, ""
    with bpy.context.temp_override(scene=scene):
        upscaled = bpy.ops.cinegen.generate(wait=True)
    common.use_frames = True
    (loaded,) = sys.modules["cinegen_blender.runtime"].STATE.jobs[props.job_id].loaded
    facts["upscale"] = {"generate": sorted(upscaled), "error": props.last_error, "plate_channel": strip.channel,
                        "strip": describe_strip(loaded["strip"]), "node": describe_node(loaded["node"])}
    # a panorama's input is one picture: the strip's first frame, not its #### pattern (the server refused that)
    props.pipeline = "panorama"
    with bpy.context.temp_override(scene=scene):
        scene.sequence_editor.active_strip = strip
        facts["panorama_input"] = [sorted(bpy.ops.cinegen.plate_from_strip()),
                                   scene.cinegen_options.pipeline_panorama.input]
    # a strip of one picture without a frame number: a panorama's input, never an upscale plate
    import numpy as np

    from cinegen.common.exr import ExrMetadata, write_exr_frame

    write_exr_frame(Path(bpy.path.abspath("//")) / "sky.exr", np.full((8, 16, 4), 0.5, np.float32),
                    metadata=ExrMetadata(colorspace="ACEScg"))
    still = scene.sequence_editor.strips.new_image(name="sky", filepath=bpy.path.abspath("//sky.exr"), channel=9,
                                                   frame_start=200)
    with bpy.context.temp_override(scene=scene):
        scene.sequence_editor.active_strip = still
        facts["still_panorama"] = [sorted(bpy.ops.cinegen.plate_from_strip()),
                                   scene.cinegen_options.pipeline_panorama.input]
        props.pipeline = "upscale"
        try:
            facts["still_upscale"] = sorted(bpy.ops.cinegen.plate_from_strip())
        except RuntimeError as exc:  # headless, an operator's error report is raised
            facts["still_upscale"] = [str(exc)]
    scene.sequence_editor.strips.remove(still)
    return facts


def cancel_scenario(bpy, scene) -> dict:
    """A queued job cancelled from its queue row's button while it runs; the timer function follows it."""
    import time

    from cinegen.plugin.model.history import History

    runtime = sys.modules["cinegen_blender.runtime"]
    bpy.context.window.scene = scene
    props, common = scene.cinegen, scene.cinegen_options.common
    props.pipeline, props.use_scene_frames = "image", True
    common.model, common.steps, common.frames, common.width, common.height = "tiny-sd", 200, 1, 64, 64
    nodes_before = len(scene.compositing_node_group.nodes)
    with bpy.context.temp_override(scene=scene):
        queued = bpy.ops.cinegen.generate(queue=True)
    job, states, cancelled = runtime.STATE.jobs[props.job_id], [], None
    deadline = time.monotonic() + 120
    while runtime.active_jobs() and time.monotonic() < deadline:
        runtime.drain()  # what bpy.app.timers runs in the UI
        states.append(job.record.state)
        if cancelled is None and job.record.state == "running" and job.record.fraction > 0:
            with bpy.context.temp_override(scene=scene):
                cancelled = bpy.ops.cinegen.cancel(job_id=job.job_id)
        time.sleep(0.05)
    return {"queued": sorted(queued), "cancel": sorted(cancelled or ()), "state": job.record.state,
            "seen_running": "running" in states, "new_nodes": len(scene.compositing_node_group.nodes) - nodes_before,
            "history_state": History().get(job.job_id).state, "error": props.last_error}


def layout_scenario(bpy, scene) -> dict:
    """Every pipeline's panel drawn by the add-on's own draw functions into a recording layout."""
    sys.path.insert(0, str(ROOT / "tools"))
    from blender_panel_listing import RecordingLayout

    runtime, ui = sys.modules["cinegen_blender.runtime"], sys.modules["cinegen_blender.ui"]
    drawn = {}
    for form in runtime.STATE.forms:
        scene.cinegen.pipeline = form.name
        lines = []
        for draw in (ui.draw_main, ui.draw_options, ui.draw_queue, ui.draw_history):
            layout = RecordingLayout()
            draw(layout, scene)
            lines += layout.lines
        drawn[form.name] = [line.strip() for line in lines]
    return drawn


# ---- the tests ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def facts(tmp_path_factory, running_server):
    workdir = tmp_path_factory.mktemp("blender")
    env = {**os.environ, "CINEGEN_CONFIG_DIR": str(workdir / "config"), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, __file__, str(workdir), running_server.address], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    assert done.returncode == 0 and lines, f"Blender child failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return {**json.loads(lines[-1][len(MARKER):]), "workdir": str(workdir)}


def test_the_extension_registers_its_settings_panels_and_operators(facts):
    assert facts["registered"] == {"settings": True,
                                   "panels": ["CINEGEN_PT_view3d", "CINEGEN_PT_compositor", "CINEGEN_PT_sequencer"],
                                   "operators": ["connect", "generate", "cancel", "new_seed", "rerun",
                                                 "plate_from_strip"]}


def test_a_new_scene_starts_on_a_pipeline_with_its_options_before_connecting(facts):
    fresh = facts["fresh"]
    assert fresh["pipeline"] == fresh["other_scene"] == "image"  # not '' (0, a number no pipeline has)
    assert not any("Press Connect" in line for line in fresh["options"])
    assert any(line.startswith("- `steps` ") for line in fresh["options"]), fresh["options"]


def test_a_lost_connection_shows_in_the_progress_line_and_the_log(facts):
    r = facts["reconnect"]
    assert r["stage"] == "connection lost: resuming after event 7 in 1.5 s"
    assert "connection lost: resuming after event 9 in 3.0 s" in r["log"] and r["reconnects"] == 2


def test_the_token_is_kept_in_the_users_settings_not_in_the_blend(facts):
    t = facts["token"]
    assert not t["typed_in_blend"] and t["from_settings"] == "saved-token-2"
    assert t["adopted"] == "old-token-3" and not t["left_in_scene"]  # an earlier version's file: taken, dropped


def test_frames_this_machine_cannot_read_are_explained_and_the_timer_keeps_going(facts):
    u = facts["unreadable"]
    assert u["error"].startswith("Job image-remote completed: its frames are not on this machine at "
                                 "/mnt/gpu-server/renders") and "Untick Shared disk" in u["error"]
    assert u["new_nodes"] == 0 and u["raised"] is None and u["other_active"]
    assert u["broken"] == ["failed", "Loading the results failed: division by zero"]
    # the queue row shows the whole sentence, wrapped, not one label cut at the panel's edge
    texts = [line[len("- label: '"):-1] for line in u["queue"] if line.startswith("- label: ")]
    assert "at that path here." in " ".join(texts) and all(len(text) <= 48 for text in texts), u["queue"]


def test_a_job_running_while_the_addon_is_enabled_again_is_followed_again(facts):
    assert facts["reregistered"] == {"followed": True, "settings": True}


def test_results_loaded_by_the_timer_survive_undoing_what_came_after(facts):
    assert facts["undo"] == {"frame": 1, "strips": 1}


def test_the_farm_helper_takes_a_server_with_or_without_its_port(facts):
    # `server="gpu01"` raised ValueError (int("gpu01")); an IPv6 address lost its brackets' meaning
    assert facts["farm_servers"] == {"gpu01:50052": ["gpu01", 50052], "gpu01": ["gpu01", 50051],
                                     "[::1]:50053": ["[::1]", 50053], "::1": ["::1", 50051],
                                     "10.0.0.5": ["10.0.0.5", 50051],
                                     "bad": "server='gpu01:port': give it as HOST or HOST:PORT, such as gpu01:50051."}


def test_cancel_returns_at_once_when_the_server_does_not_answer(facts):
    c = facts["cancel_unreachable"]
    assert c["cancel"] == ["FINISHED"] and c["returned_first"] and c["thread"] != "MainThread" and c["requested"]
    assert c["stage"] == "cancel failed: Can't reach the cinegen server at gpu01:50051."


def test_the_manifest_declares_an_addon_for_blender_4_2_and_later():
    import tomllib

    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text())
    assert (manifest["type"], manifest["id"], manifest["blender_version_min"]) == ("add-on", "cinegen", "4.2.0")
    assert "network" in manifest["permissions"] and "files" in manifest["permissions"]


@pytest.mark.parametrize("scene_range, start", [("default_range", 1), ("shot_range", 1001)])
def test_a_sequence_from_1001_becomes_a_compositor_image_node_with_offset_1000(facts, scene_range, start):
    node = facts["loads"][scene_range]["node"]
    # Blender shows file frame F - frame_start + 1 + frame_offset: scene frame `start` shows file 1001
    assert (node["frame_duration"], node["frame_start"], node["frame_offset"]) == (3, start, 1000)
    assert start - node["frame_start"] + 1 + node["frame_offset"] == 1001
    assert node["source"] == "SEQUENCE" and node["filepath"].endswith("gen_v001.1001.exr")
    assert node["colorspace"] == "ACEScg"  # the EXR header's space, which Blender's config knows
    assert "seed 42" in node["label"]


@pytest.mark.parametrize("scene_range, start", [("default_range", 1), ("shot_range", 1001)])
def test_a_sequence_becomes_a_sequencer_strip_with_every_frame_at_the_right_place(facts, scene_range, start):
    strip = facts["loads"][scene_range]["strip"]
    assert (strip["frame_start"], strip["duration"]) == (start, 3)
    assert strip["files"] == ["gen_v001.1001.exr", "gen_v001.1002.exr", "gen_v001.1003.exr"]
    assert strip["directory"].rstrip("/").endswith("gen") and strip["colorspace"] == "ACEScg"
    assert "seed 42" in strip["name"]
    # 16 x 8 frames in the 1920 x 1080 scene, fitted as a strip added by hand (Scale to Fit), not 16 pixels wide
    assert strip["scale"] == [120.0, 120.0]


def test_earlier_results_are_kept_and_an_unknown_colorspace_falls_back_to_scene_linear(facts):
    assert facts["compositor_images"] == 2
    assert len(facts["strip_channels"]) == 3 and facts["strip_channels"][-1] >= 2  # stacked, not replaced
    assert facts["unknown_colorspace"] == "Linear Rec.709"


def test_a_result_in_a_space_blender_lacks_by_name_is_tagged_by_its_primaries_or_noticed(facts):
    found = facts["colour_and_rate"]
    # lin_ap1 (a studio config's name) with AP1 primaries in the header: Blender's ACEScg, not Rec.709
    assert found["alias"] == {"node": "ACEScg", "strip": "ACEScg", "notices": []}
    unknown = found["unknown"]
    assert unknown["node"] == unknown["strip"] == "Linear Rec.709"
    (notice,) = unknown["notices"]
    assert "Made Up" in notice and "Color Space" in notice and "Linear Rec.709" in notice


def test_a_sequence_at_another_rate_than_the_scene_is_noticed(facts):
    (notice,) = facts["colour_and_rate"]["story"]["notices"]
    assert "story.####.exr was made at 23.976 fps and this scene plays at 25 fps" in notice
    assert "plays faster" in notice and "Frame Rate" in notice


def test_an_animated_object_yields_its_hand_projected_screen_path(facts):
    t = facts["trajectory"]
    assert (t["width"], t["height"], t["origin"], t["name"]) == (1920, 1080, "top-left", "ball")
    assert t["frame_after"] == 3  # the artist's current frame is given back
    focal = 50.0 / 36.0  # lens / sensor width; the sensor fits the wider (horizontal) side
    for frame, x, y in t["points"]:
        s = (frame - 1) / 4  # linear keys from frame 1 to 5
        wx, wy, depth = -2 + 4 * s, 1 - 2 * s, 10.0
        nx = 0.5 + focal * wx / depth
        ny = 0.5 + focal * (1920 / 1080) * wy / depth
        assert x == pytest.approx(nx * 1920, abs=1e-3) and y == pytest.approx((1 - ny) * 1080, abs=1e-3)
    assert [p[0] for p in t["points"]] == [1, 2, 3, 4, 5]


def test_the_sidebar_generate_operator_runs_a_job_headless_and_loads_it(facts):
    g = facts["generate"]
    assert g["connect"] == ["FINISHED"] and g["generate"] == ["FINISHED"], g["error"]
    assert g["status"].startswith("Connected") and g["progress"] == 1.0 and not g["error"]
    assert g["new_nodes"] == 1
    node, strip = g["node"], g["strip"]
    # numbered like the scene (from frame 1), so no offset is needed and frame 1 shows file 1
    assert (node["frame_duration"], node["frame_start"], node["frame_offset"]) == (2, 1, 0)
    assert strip["files"] == ["shot010_image_v001.0001.exr", "shot010_image_v001.0002.exr"]
    assert strip["frame_start"] == 1 and node["colorspace"] == strip["colorspace"] == "ACEScg"
    assert "seed 77" in node["label"] and g["strip_job"].startswith("image-")
    assert strip["made"] == {"prompt": "a fox", "seed": "77", "model": "tiny-sd"}  # the prompt too, on the strip
    assert g["fps"] == 25.0 and not g["notice"]  # the scene's rate is recorded (it was 24 whatever the scene)
    # a new scene reaches the server connected to last, not 127.0.0.1:50051 (it kept its own once set)
    assert g["new_scene"] == [g["server_port"], g["server_port"]] and g["server_port"] != 50051
    outputs = {Path(p).name for p in Path(facts["workdir"]).joinpath("cinegen").rglob("shot010_image_*.exr")}
    assert outputs == {"shot010_image_v001.0001.exr", "shot010_image_v001.0002.exr"}



def test_an_output_folder_that_cannot_be_made_is_a_sentence_not_a_traceback(facts):
    u = facts["unwritable"]
    assert "not-a-folder" in u["error"] and "check the path" in u["error"], u
    assert "Traceback" not in u["result"][0] and u["result"][0].startswith("Error: A file on this machine")


def test_a_trajectory_is_sampled_over_the_jobs_own_frames_not_the_scenes(facts):
    t = facts["trajectory_job"]
    assert t["generate"] == ["FINISHED"], t["error"]
    assert t["track"] == "Cube" and t["frames"] == list(range(1001, 1009))  # 8 frames from 1001, not 1-250
    assert t["frames_text"] == "1001-1008"



def test_a_queued_job_is_cancelled_from_the_queue_and_nothing_is_loaded(facts):
    c = facts["cancel"]
    assert c["queued"] == ["FINISHED"] and c["cancel"] == ["FINISHED"] and c["seen_running"]
    assert c["state"] == "cancelled" and c["history_state"] == "cancelled" and c["new_nodes"] == 0


def _props(lines: list[str]) -> list[str]:
    return [line.split("`")[1] for line in lines if line.startswith("- `")]


def test_every_pipeline_draws_its_own_options_from_the_capabilities(facts):
    layout = facts["layout"]
    assert {"image", "upscale", "panorama", "trajectory", "story"} <= set(layout)
    for name, lines in layout.items():
        props = _props(lines)
        assert {"pipeline", "seed", "model", "use_steps", "steps"} <= set(props), name
        assert ("prompt" in props) == (name != "story"), name  # a story's prompts come from its file
        assert any("button `cinegen.generate`" in line for line in lines)
        assert not {"out", "trajectory_json", "story_yaml"} & set(props)  # the panel fills these itself
    assert {"projection", "loop", "input"} <= set(_props(layout["panorama"]))
    assert {"mode", "scale", "strength", "stages", "input"} <= set(_props(layout["upscale"]))
    assert any(line.startswith("- `story` ") and " string file picker" in line for line in layout["story"])
    assert any("button `cinegen.plate_from_strip`" in line for line in layout["panorama"])
    assert any("active object's path" in line for line in layout["trajectory"])
    # the queue and history rows: cancel for running jobs, re-run for past ones
    assert any("button `cinegen.rerun`" in line for line in layout["image"])



def test_the_active_strip_becomes_the_plate_of_a_pipeline_that_takes_one(facts):
    p = facts["plate"]
    assert "Make an image-sequence strip active" in p["refused"][0] and p["taken"] == ["FINISHED"]
    assert p["input"].endswith("shot010_image_v001.####.exr") and p["source"] == p["strip"]
    assert p["pattern"] == p["input"]  # the strip's name goes with the job only while the input is its sequence
    assert p["colorspace"] and p["colorspace"] == p["strip_colorspace"]  # the server converts from the strip's space
    assert p["panorama_input"][0] == ["FINISHED"] and p["panorama_input"][1].endswith("shot010_image_v001.0001.exr")
    assert p["still_panorama"][0] == ["FINISHED"] and p["still_panorama"][1].endswith("sky.exr")
    assert "is one picture" in p["still_upscale"][0] and "takes a sequence" in p["still_upscale"][0]
    # the result of a plate strip lands where the strip starts, one channel above it, node and strip alike
    u = p["upscale"]
    assert u["generate"] == ["FINISHED"], u["error"]
    assert (u["strip"]["frame_start"], u["strip"]["channel"]) == (30, p["upscale"]["plate_channel"] + 1)
    assert u["node"]["frame_start"] == 30 and 30 - u["node"]["frame_start"] + 1 + u["node"]["frame_offset"] == 1001


if __name__ == "__main__":
    sys.stdout.write(MARKER + json.dumps(child(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")) + "\n")


def test_a_story_shot_made_again_alone_lands_at_its_place_in_the_cut(facts):
    (start,) = facts["one_shot_rerun"]["starts"].values()
    assert start == 1 + 6  # after sh010's 6 frames; at 1 it covered sh010
