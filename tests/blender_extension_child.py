"""Child process of tests/test_blender_extension.py: a stock headless Blender (the bpy module) that
installs the built extension zip and uses it through its own operators.

Run as `python -I -S blender_extension_child.py ARGS.json`: -I -S give a Python with only the
standard library on sys.path; the parent adds one folder holding links to `bpy` and `numpy` (both
ship with a real Blender). So `grpc`, `google.protobuf` and `cinegen` can only come from the wheels
in the zip, which Blender unpacks into the user folder named by BLENDER_USER_RESOURCES. Prints its
findings as one JSON line after MARKER.
"""
from __future__ import annotations

import importlib.util
import io
import json
import sys
import time
from pathlib import Path

MARKER = "CINEGEN-FACTS "
ADDON = "bl_ext.user_default.cinegen"
DRAIN_LIMIT_S = 120.0  # a queued tiny job ends in seconds; never wait forever


def spec_origin(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:  # a parent package is missing
        return None
    return None if spec is None else (spec.origin or str(list(spec.submodule_search_locations or [])))


def python_compat(zip_path: str) -> dict:
    """Blender's own verdict on the zip for each Python a Blender embeds (4.2-5.0: 3.11, 5.1 on: 3.13)."""
    import tomllib
    import zipfile

    from bl_pkg.bl_extension_utils import pkg_manifest_params_compatible_or_error, python_versions_from_wheels

    manifest = tomllib.loads(zipfile.ZipFile(zip_path).read("blender_manifest.toml").decode())
    versions = [".".join(str(i) for i in v) for v in python_versions_from_wheels(manifest["wheels"])]
    verdicts = {}
    for python, blender in (((3, 11, 9), (4, 2, 0)), ((3, 13, 5), (5, 1, 0))):
        verdicts[".".join(map(str, python[:2]))] = pkg_manifest_params_compatible_or_error(
            blender_version_min=manifest["blender_version_min"], blender_version_max="",
            platforms=manifest["platforms"], python_versions=versions, this_platform="linux-x64",
            this_blender_version=blender, this_python_version=python, error_fn=print)
    return verdicts


def describe_prop(group, name: str) -> dict:
    rna = group.bl_rna.properties[name]
    out = {"type": rna.type, "name": rna.name, "description": rna.description}
    if rna.type in ("INT", "FLOAT"):
        out.update(default=rna.default, min=rna.hard_min, max=rna.hard_max)
    elif rna.type == "ENUM":
        out.update(default=rna.default, items=[i.identifier for i in rna.enum_items])
    elif rna.type in ("STRING", "BOOLEAN"):
        out.update(default=rna.default, subtype=rna.subtype)
    return out


def describe_results(job) -> list[dict]:
    found = []
    for loaded in job.loaded:
        node, strip = loaded.get("node"), loaded.get("strip")
        found.append({
            "node": None if node is None else {"frame_duration": node.frame_duration, "frame_start": node.frame_start,
                                               "frame_offset": node.frame_offset, "image": node.image.filepath,
                                               "source": node.image.source, "label": node.label},
            "strip": None if strip is None else {"frame_start": strip.frame_start, "channel": strip.channel,
                                                 "duration": strip.frame_final_duration,
                                                 "files": [e.filename for e in strip.elements], "name": strip.name}})
    return found


def main(args: dict) -> dict:
    facts: dict = {"before": {name: spec_origin(name) for name in ("grpc", "google.protobuf", "cinegen")}}
    import bpy

    workdir = Path(args["workdir"])
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(workdir / "shot010.blend"))  # outputs go next to it
    installed = bpy.ops.extensions.package_install_files(filepath=args["zip"], repo="user_default",
                                                         enable_on_install=True)
    facts["install"] = sorted(installed)
    facts["after"] = {name: spec_origin(name) for name in ("grpc", "google.protobuf", "cinegen.plugin",
                                                           "cinegen.common.client")}
    facts["enabled"] = ADDON in bpy.context.preferences.addons
    facts["python_compat"] = python_compat(args["zip"])
    grpc_folder = Path(facts["after"]["grpc"]).parent
    facts["grpc_binaries"] = sorted(p.name for p in grpc_folder.glob("_cython/cygrpc*.so"))
    runtime = sys.modules[f"{ADDON}.runtime"]
    farm = importlib.import_module(f"{ADDON}.farm")
    scene = bpy.context.scene
    props, opts = scene.cinegen, scene.cinegen_options

    # before connecting: the menu and the options come from this plugin's own descriptions
    facts["offline"] = {"pipelines": [item[0] for item in runtime.STATE.pipeline_items],
                        "origin": runtime.STATE.forms_origin,
                        "projection": describe_prop(opts.pipeline_panorama, "projection"),
                        "story": describe_prop(opts.pipeline_story, "story")}

    host, port = args["server"].rsplit(":", 1)
    props.host, props.port = host, int(port)
    facts["connect"] = sorted(bpy.ops.cinegen.connect())
    opts = scene.cinegen_options  # rebuilt from the server's capabilities
    facts["online"] = {"pipelines": [item[0] for item in runtime.STATE.pipeline_items],
                       "origin": runtime.STATE.forms_origin, "status": props.status,
                       "cache": Path(args["config"], "blender-capabilities.binpb").is_file(),
                       "steps": describe_prop(opts.common, "steps"),
                       "use_steps": describe_prop(opts.common, "use_steps"),
                       "strength": describe_prop(opts.pipeline_upscale, "strength"),
                       "projection": describe_prop(opts.pipeline_panorama, "projection"),
                       "panorama_input": describe_prop(opts.pipeline_panorama, "input")}
    startup, origin = sys.modules[f"{ADDON}.forms"].startup_forms()  # what the next Blender session starts with
    facts["online"]["next_start"] = {"pipelines": [f.name for f in startup], "origin": origin}
    options_module, image_model = sys.modules[f"{ADDON}.options"], runtime.form_of("image").field("model")
    facts["online"]["model_type"] = image_model.type
    facts["online"]["model_suggestions"] = options_module.model_suggestions(image_model, "image", "tiny")
    common = opts.common
    common.model = "tiny-sd"
    common.use_steps, common.steps = True, 1  # one step: the test is about the plumbing, not the pictures
    common.use_width, common.width, common.use_height, common.height = True, 64, True, 64
    common.use_frames, common.frames = True, 2
    props.prompt, props.seed, props.seed_locked, props.target = "a fox", 77, True, "both"
    scene.frame_start, scene.frame_end = 1, 48

    # image, queued: a worker thread runs it, the timer function applies its updates
    props.pipeline = "image"
    facts["image_queued"] = sorted(bpy.ops.cinegen.generate(queue=True))
    job = runtime.STATE.jobs[props.job_id]
    facts["returned_before_done"] = not job.finished
    facts["timer_registered"] = bpy.app.timers.is_registered(runtime.drain)
    progress, deadline = [], time.monotonic() + DRAIN_LIMIT_S
    while runtime.active_jobs() and time.monotonic() < deadline:
        runtime.drain()  # what bpy.app.timers calls every 0.2 s in the UI
        progress.append(round(props.progress, 3))
        time.sleep(0.05)
    facts["image"] = {"state": job.record.state, "error": props.last_error, "results": describe_results(job),
                      "progress_seen": sorted(set(progress)), "seed": job.record.seed,
                      "preview_icon": runtime.preview_icon(job.job_id) != 0,
                      "preview_size": list(runtime.STATE.previews[job.job_id].image_size)
                      if job.job_id in runtime.STATE.previews else None}

    # panorama without a plate, waiting (as headless scripts do)
    props.pipeline = "panorama"
    opts.pipeline_panorama.projection = "ring"
    common.width, common.frames = 128, 1
    facts["panorama_run"] = sorted(bpy.ops.cinegen.generate(wait=True))
    job = runtime.STATE.jobs[props.job_id]
    facts["panorama"] = {"state": job.record.state, "error": props.last_error, "results": describe_results(job)}

    # story from a file picked in the panel
    story = workdir / "story.yaml"
    story.write_text("title: Harbour\nfps: 24\nstyle: film still\ncharacters:\n  Mira: a keeper\nshots:\n"
                     "  - id: sh010\n    prompt: Mira at the door\n    frames: 2\n    characters: [Mira]\n"
                     "  - id: sh020\n    prompt: the sea at night\n    frames: 2\n")
    props.pipeline = "story"
    opts.pipeline_story.story = str(story)
    common.width, common.use_frames, common.model = 64, False, ""
    facts["story_run"] = sorted(bpy.ops.cinegen.generate(wait=True))
    job = runtime.STATE.jobs[props.job_id]
    facts["story"] = {"state": job.record.state, "error": props.last_error, "results": describe_results(job)}

    # history and re-run: the image job comes back with its seed, and runs again
    history = runtime.history()
    image_entry = next(e for e in history.entries if e.pipeline == "image")
    props.seed, props.seed_locked, props.pipeline, common.model = 5, False, "story", "other"
    facts["rerun"] = sorted(bpy.ops.cinegen.rerun(job_id=image_entry.job_id))
    rerun_job = runtime.STATE.jobs[props.job_id]
    facts["history"] = {"pipelines": [e.pipeline for e in history.entries], "image_seed": image_entry.seed,
                        "image_model": image_entry.model, "image_prompt": image_entry.prompt,
                        "rerun_pipeline": rerun_job.record.pipeline, "rerun_seed": rerun_job.record.seed,
                        "rerun_state": rerun_job.record.state, "rerun_model": common.model}

    # headless / farm helper: progress lines on stdout
    printed = io.StringIO()
    loaded = farm.submit_and_wait("image", prompt="a boat", seed=9, frames=1, stdout=printed)
    facts["farm"] = {"lines": printed.getvalue().splitlines(), "loaded": len(loaded)}

    # saved and opened again: the options and the loaded results are kept in the .blend
    farm.save()
    bpy.ops.wm.open_mainfile(filepath=str(workdir / "shot010.blend"))
    scene = bpy.context.scene
    facts["reopened"] = {"model": scene.cinegen_options.common.model,
                         "projection": scene.cinegen_options.pipeline_panorama.projection,
                         "story": scene.cinegen_options.pipeline_story.story,
                         "image_nodes": sum(n.bl_idname == "CompositorNodeImage"
                                            for n in scene.compositing_node_group.nodes),
                         "strips": len(scene.sequence_editor.strips)}
    return facts


if __name__ == "__main__":
    arguments = json.loads(Path(sys.argv[1]).read_text())
    sys.stdout.write(MARKER + json.dumps(main(arguments)) + "\n")
    sys.stdout.flush()
