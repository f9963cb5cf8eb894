"""The panel's settings, stored on the scene (`scene.cinegen`): the same controls as the Qt panel's
core (pipeline, prompts, seed with lock, size, steps, frames) plus where results go. 0 means "auto"
(the server's model decides), as an empty field does in the Qt panel."""
import bpy

from . import runtime


def _pipeline_items(self, context):
    # Blender keeps only references to these strings: the list must outlive the call
    return runtime.STATE.pipeline_items or [("image", "image", "Connect to see the server's pipelines")]


class CinegenSettings(bpy.types.PropertyGroup):
    host: bpy.props.StringProperty(name="Host", default="127.0.0.1", description="The cinegen server's address")
    port: bpy.props.IntProperty(name="Port", default=50051, min=1, max=65535)
    token: bpy.props.StringProperty(name="Token", subtype="PASSWORD",
                                    description="Access token the server was started with (empty when none)")
    shared_disk: bpy.props.BoolProperty(name="Shared disk", default=True,
                                        description="Off: upload plates to the server and download results")
    pipeline: bpy.props.EnumProperty(name="Pipeline", items=_pipeline_items)
    prompt: bpy.props.StringProperty(name="Prompt", description="What to generate")
    negative_prompt: bpy.props.StringProperty(name="Negative", description="What to keep out of the picture")
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0, description="Random seed (recorded in every frame)")
    seed_locked: bpy.props.BoolProperty(name="Lock seed", default=False,
                                        description="Locked: keep the seed. Unlocked: a new seed for every job")
    model: bpy.props.StringProperty(name="Model", description="Model id; empty = the pipeline's default")
    steps: bpy.props.IntProperty(name="Steps", default=0, min=0, max=1000, description="0 = the model's default")
    width: bpy.props.IntProperty(name="Width", default=0, min=0, max=16384, step=8, description="0 = native size")
    height: bpy.props.IntProperty(name="Height", default=0, min=0, max=16384, step=8, description="0 = native size")
    frames: bpy.props.IntProperty(name="Frames", default=0, min=0, max=10000, description="0 = the model's default")
    use_scene_frames: bpy.props.BoolProperty(
        name="Number frames like the scene", default=True,
        description="Number the generated frames from the scene's start frame (else from 1001)")
    target: bpy.props.EnumProperty(name="Load into", default="both", items=[
        ("compositor", "Compositor", "An Image node in the compositor"),
        ("sequencer", "Sequencer", "An image strip in the sequencer"),
        ("both", "Both", "An Image node and a strip")])
    # what the panel shows while a job runs
    status: bpy.props.StringProperty(name="Status", default="Not connected")
    job_id: bpy.props.StringProperty(name="Job")
    progress: bpy.props.FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    stage: bpy.props.StringProperty(name="Stage")
    last_error: bpy.props.StringProperty(name="Error")


def register() -> None:
    bpy.utils.register_class(CinegenSettings)
    bpy.types.Scene.cinegen = bpy.props.PointerProperty(type=CinegenSettings)


def unregister() -> None:
    del bpy.types.Scene.cinegen
    bpy.utils.unregister_class(CinegenSettings)
