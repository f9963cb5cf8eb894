"""The session's new options in the Blender add-on (headless bpy, in a child process), against the real server's
capabilities plus a studio's refiner, LoRAs and SparseCtrl model, served by a fake that records what it is sent:
each option becomes a property of the right Blender type (Offload and Keyframe motion menus, Keep the first frame
a checkbox, the Refiner split a number behind its `use_` toggle starting at the server's 0.8, the LoRAs a text with the server's LoRAs as
suggestions, the Refiner and SparseCtrl texts suggesting only refiners and SparseCtrl add-ons), and an image job
with LoRAs, Offload and the Refiner set in Blender arrives in the JobRequest as typed fields; a refusal reads in the options' labels, not CLI flags."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "plugin" / "blender"
MARKER = "CINEGEN-FACTS "
REFINER = "stable-diffusion-xl-refiner-1.0"
LORAS = "/studio/loras/ink.safetensors:0.6, /studio/loras/camera-zoom-in.safetensors"

pytestmark = [pytest.mark.bpy,
              pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module")]


def child(server: str) -> dict:
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    sys.path.insert(0, str(ROOT / "tools"))
    from blender_panel_listing import load_addon

    addon = load_addon()  # the add-on as Blender loads it: a package from plugin/blender, registered
    runtime, options = sys.modules["cinegen_blender.runtime"], sys.modules["cinegen_blender.options"]
    scene = bpy.context.scene
    host, port = server.rsplit(":", 1)
    scene.cinegen.host, scene.cinegen.port = host, int(port)
    with bpy.context.temp_override(scene=scene):
        connected = bpy.ops.cinegen.connect()
    facts: dict = {"connect": sorted(connected), "properties": {}}
    for group, name in (("common", "offload"), ("common", "lora"), ("pipeline_image", "refiner"),
                        ("pipeline_image", "refiner_split"), ("pipeline_panorama", "keep_first_frame"),
                        ("pipeline_story", "keyframe_motion"), ("pipeline_story", "sparsectrl")):
        props = getattr(scene.cinegen_options, group)
        rna = props.bl_rna.properties[name]
        facts["properties"][name] = {
            "type": rna.type, "subtype": rna.subtype, "label": rna.name, "description": rna.description,
            "items": [i.identifier for i in rna.enum_items] if rna.type == "ENUM" else [],
            "default": rna.default if rna.type in ("ENUM", "BOOLEAN", "STRING", "FLOAT") else None,
            "toggle": f"use_{name}" in props.bl_rna.properties}
    image, story = runtime.form_of("image"), runtime.form_of("story")
    facts["suggest"] = {"refiner": options.model_suggestions(image.field("refiner"), "image", ""),
                        "sparsectrl": options.addon_suggestions(story.field("sparsectrl"), ""),
                        "lora": options.lora_suggestions("/studio/loras/ink.safetensors, cam")}
    common, own = scene.cinegen_options.common, scene.cinegen_options.pipeline_image
    scene.cinegen.pipeline, scene.cinegen.prompt = "image", "a lighthouse at dusk"
    common.lora, common.offload = LORAS, "model"
    own.refiner, own.use_refiner_split, own.refiner_split = REFINER, True, 0.7
    with bpy.context.temp_override(scene=scene):
        facts["generate"] = sorted(bpy.ops.cinegen.generate(queue=True))
    deadline = time.monotonic() + 30
    while runtime.active_jobs() and time.monotonic() < deadline:
        runtime.drain()  # what bpy.app.timers runs in the UI
        time.sleep(0.02)
    facts["error"] = scene.cinegen.last_error
    scene.cinegen.pipeline = "panorama"  # refused by the server with a sentence naming CLI flags
    scene.cinegen_options.pipeline_panorama.keep_first_frame = True
    with bpy.context.temp_override(scene=scene):
        bpy.ops.cinegen.generate(queue=True)
    deadline = time.monotonic() + 30
    while runtime.active_jobs() and time.monotonic() < deadline:
        runtime.drain()
        time.sleep(0.02)
    facts["refusal"] = scene.cinegen.last_error
    return facts


@pytest.fixture(scope="module")
def sent(tmp_path_factory, running_server):
    import grpc

    from cinegen.common.client import GeneratorClient
    from cinegen.common.proto import generator_pb2 as pb
    from cinegen.common.proto import generator_pb2_grpc as pb_grpc

    with GeneratorClient(running_server.address) as client:
        caps = client.capabilities()
    caps.models.add(id=REFINER, family="sd", source="folder", kind="sdxl-refiner")
    caps.addons.add(id="ink", kind="lora", family="sd1", path="/studio/loras/ink.safetensors")
    caps.addons.add(id="camera-zoom-in", kind="motion-lora", family="sd1", path="/studio/loras/camera-zoom-in.safetensors")
    caps.addons.add(id="sparsectrl-rgb", kind="sparsectrl", family="sd1", path="/studio/sparsectrl-rgb")
    requests, lock = [], threading.Lock()

    class Recorder(pb_grpc.GeneratorServicer):
        def GetCapabilities(self, request, context):  # noqa: N802
            return caps

        def Submit(self, request, context):  # noqa: N802
            with lock:
                requests.append(request)
            if request.pipeline == "panorama":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "--keep-first-frame keeps the input image as the "
                              "first frame: give it with --input, or leave --keep-first-frame off.")
            return pb.JobTicket(job_id=request.job_id, queue_position=1)

        def Watch(self, request, context):  # noqa: N802
            yield pb.JobEvent(job_id=request.job_id, seq=1, cancelled=pb.Cancelled())

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_GeneratorServicer_to_server(Recorder(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    workdir = tmp_path_factory.mktemp("blender-options")
    env = {**os.environ, "CINEGEN_CONFIG_DIR": str(workdir / "config"), "PYTHONWARNINGS": "ignore"}
    try:
        done = subprocess.run([sys.executable, __file__, f"127.0.0.1:{port}"], env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        server.stop(0)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    assert done.returncode == 0 and lines, f"Blender child failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return json.loads(lines[-1][len(MARKER):]), requests


def test_each_new_option_is_a_blender_property_of_its_type(sent):
    facts, _ = sent
    assert facts["connect"] == ["FINISHED"]
    p = facts["properties"]
    assert (p["offload"]["type"], p["offload"]["items"], p["offload"]["default"]) == \
        ("ENUM", ["none", "model", "sequential"], "none")
    assert (p["keyframe_motion"]["type"], p["keyframe_motion"]["items"]) == ("ENUM", ["auto", "sparsectrl", "pinning"])
    assert (p["keep_first_frame"]["type"], p["keep_first_frame"]["default"]) == ("BOOLEAN", False)
    assert p["refiner_split"]["type"] == "FLOAT" and p["refiner_split"]["toggle"]  # unticked: the server's 0.8
    assert p["refiner_split"]["default"] == pytest.approx(0.8)  # ticked, it starts there (not at 1, the base alone)
    for name in ("lora", "refiner", "sparsectrl"):
        assert p[name]["type"] == "STRING" and p[name]["subtype"] != "FILE_PATH", name  # server paths/ids, not local files
        assert not p[name]["toggle"], name
    assert p["offload"]["label"] == "Offload to CPU" and p["lora"]["label"] == "LoRAs"
    for name, prop in p.items():
        assert "--" not in prop["description"] and 'Default: "".' not in prop["description"], name


def test_suggestions_offer_only_what_the_option_takes(sent):
    facts, _ = sent
    assert facts["suggest"]["refiner"] == [REFINER]  # not the SD 1.5 or base models
    assert facts["suggest"]["sparsectrl"] == ["sparsectrl-rgb"]  # not the LoRAs
    assert facts["suggest"]["lora"] == ["/studio/loras/ink.safetensors, /studio/loras/camera-zoom-in.safetensors"]


def test_an_image_job_from_blender_sends_its_loras_offload_and_refiner_as_typed_fields(sent):
    facts, requests = sent
    assert facts["generate"] == ["FINISHED"] and len(requests) == 2, facts["error"]
    request = requests[0]
    assert request.WhichOneof("params") == "image" and request.common.prompt == "a lighthouse at dusk"
    assert list(request.common.lora) == ["/studio/loras/ink.safetensors:0.6", "/studio/loras/camera-zoom-in.safetensors"]
    assert request.common.offload == "model"
    assert request.image.refiner == REFINER and request.image.refiner_split == pytest.approx(0.7)
    assert not request.values  # every option has a typed field in these stubs


if __name__ == "__main__":
    sys.stdout.write(MARKER + json.dumps(child(sys.argv[1])) + "\n")


def test_a_refusal_in_blender_names_the_options_labels_not_cli_flags(sent):
    facts, _ = sent
    assert "Keep the first frame keeps the input image" in facts["refusal"], facts["refusal"]
    assert "give it with Input plate" in facts["refusal"] and "--" not in facts["refusal"]
