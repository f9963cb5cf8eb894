"""The panel's own settings, stored on the scene (`scene.cinegen`): connection, pipeline, prompts,
seed with lock, frame numbering and where results go. Every other option comes from the server's
capabilities (`options.py`, `scene.cinegen_options`)."""
import bpy

from . import runtime


def _pipeline_items(self, context):
    # Blender keeps only references to these strings: the list must outlive the call
    return runtime.STATE.pipeline_items or [(runtime.DEFAULT_PIPELINE, runtime.DEFAULT_PIPELINE,
                                             "Connect to see the server's pipelines", "NONE",
                                             runtime.pipeline_number(runtime.DEFAULT_PIPELINE))]


def _get_token(self) -> str:
    return runtime.token()


def _set_token(self, value: str) -> None:
    runtime.set_token(value)


def _scene_or_saved(name: str, kind: type, low: int = 0, high: int = 0):
    """A connection setting the scene keeps once set in it; until then the user's last Connect's (so a new
    .blend reaches the studio's server, not 127.0.0.1)."""
    def get(self):
        return kind(self.get(name, getattr(runtime.saved_settings(), name)))

    def set(self, value) -> None:
        self[name] = min(max(value, low), high) if high else value  # a setter of its own skips min and max
    return {"get": get, "set": set}


class CinegenSettings(bpy.types.PropertyGroup):
    host: bpy.props.StringProperty(name="Host", default="127.0.0.1", description="The cinegen server's address (a "
                                   "new scene: the last one connected to)", **_scene_or_saved("host", str))
    port: bpy.props.IntProperty(name="Port", default=50051, min=1, max=65535, **_scene_or_saved("port", int, 1, 65535))
    # kept in this user's cinegen settings, not in the scene: a .blend is shared (farm, vendors, bug reports)
    token: bpy.props.StringProperty(name="Token", subtype="PASSWORD", get=_get_token, set=_set_token,
                                    description="Access token the server was started with (empty when none); "
                                                "kept in your user settings, never saved in the .blend")
    shared_disk: bpy.props.BoolProperty(name="Shared disk", default=True, description="Off: upload plates to the "
                                        "server and download results", **_scene_or_saved("shared_disk", bool))
    # a dynamic menu's default is an item's number (a new scene would otherwise hold 0, no pipeline)
    pipeline: bpy.props.EnumProperty(name="Pipeline", items=_pipeline_items,
                                     default=runtime.pipeline_number(runtime.DEFAULT_PIPELINE),
                                     description="What to generate (the server's pipelines)")
    prompt: bpy.props.StringProperty(name="Prompt", description="What to generate")
    negative_prompt: bpy.props.StringProperty(name="Negative", description="What to keep out of the picture")
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0, description="Random seed (recorded in every frame)")
    seed_locked: bpy.props.BoolProperty(name="Lock seed", default=False,
                                        description="Locked: keep the seed. Unlocked: a new seed for every job")
    use_scene_frames: bpy.props.BoolProperty(
        name="Number frames like the scene", default=True,
        description="Number the generated frames from the scene's start frame (else from First frame)")
    first_frame: bpy.props.IntProperty(name="First frame", default=1001, min=0, max=10_000_000,
                                       description="Number of the first generated frame when not numbered like "
                                                   "the scene; an object's path is sampled from this frame on")
    target: bpy.props.EnumProperty(name="Load into", default="both", items=[
        ("compositor", "Compositor", "An Image node in the compositor"),
        ("sequencer", "Sequencer", "An image strip in the sequencer"),
        ("both", "Both", "An Image node and a strip")])
    plate_source: bpy.props.StringProperty(name="Plate strip",
                                           description="The strip the plate was taken from (results go next to it)")
    plate_pattern: bpy.props.StringProperty(name="Plate frames", description="The sequence taken from that strip")
    # what the panel shows
    status: bpy.props.StringProperty(name="Status", default="Not connected")
    job_id: bpy.props.StringProperty(name="Job", description="The job started last")
    progress: bpy.props.FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    stage: bpy.props.StringProperty(name="Stage")
    last_error: bpy.props.StringProperty(name="Error")
    notice: bpy.props.StringProperty(name="Notice", description="What to check about the results loaded last")
    history_rows: bpy.props.IntProperty(name="Rows", default=5, min=1, max=50, description="History entries shown")


def register() -> None:
    bpy.utils.register_class(CinegenSettings)
    bpy.types.Scene.cinegen = bpy.props.PointerProperty(type=CinegenSettings)


def unregister() -> None:
    del bpy.types.Scene.cinegen
    bpy.utils.unregister_class(CinegenSettings)
