"""Forms that need no plugin update: an option or a pipeline newer than the plugin's stubs still reaches
the server, through `JobRequest.values`, checked there against the ParamSpecs the server advertised."""
from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from cinegen.common.params import CommonParams, PanoramaParams, describe
from cinegen.common.proto import generator_pb2 as pb
from cinegen.common.proto import generator_pb2_grpc as pb_grpc
from cinegen.server.errors import InvalidArgument
from cinegen.server.named_values import apply_named_values

pytest.importorskip("PySide6", reason="the panel needs a Qt binding")


# ---- server side: the map is held to the advertised ParamSpecs -----------------------------------
def _apply(values, typed_common=None, typed_params=None):
    common, params = CommonParams(), PanoramaParams()
    apply_named_values(values, common=common, params=params, pipeline="panorama",
                       typed_common=typed_common or pb.CommonParams(), typed_params=typed_params)
    return common, params


def test_named_values_set_common_and_pipeline_options_with_their_types():
    common, params = _apply({"steps": "12", "guidance": "4.5", "projection": '"ring"', "loop": "true",
                             "band_prompts": '["sky", "sea"]', "seed": "null"})
    assert (common.steps, common.guidance, common.seed) == (12, 4.5, None)
    assert (params.projection, params.loop, params.band_prompts) == ("ring", True, ["sky", "sea"])


@pytest.mark.parametrize("values, words", [
    ({"sparkle": "1"}, "has no option 'sparkle'"),
    ({"steps": "0"}, "between 1 and 1000"),
    ({"steps": "2.5"}, "whole number"),
    ({"projection": '"cube"'}, "one of plane, ring, sphere"),
    ({"loop": '"yes"'}, "true or false"),
    ({"guidance": "fast"}, "not a JSON literal"),
    ({"band_prompts": '"sky"'}, "list of texts"),
    ({"prompt": "null"}, "needs a value"),
])
def test_named_values_are_refused_with_the_rule_they_break(values, words):
    with pytest.raises(InvalidArgument, match=words):
        _apply(values)


def test_a_typed_field_set_in_the_same_request_wins_over_the_map():
    common, params = _apply({"steps": "30", "projection": '"sphere"'}, typed_common=pb.CommonParams(steps=8),
                            typed_params=pb.PanoramaParams(projection="ring"))
    assert common.steps is None  # skipped: the typed 8 wins (from_proto copies it; not called here)
    assert params.projection == "plane"  # the map did not touch a field the typed message set


def test_the_real_server_takes_options_by_name(client, tmp_path):
    request = pb.JobRequest(job_id="named-1", pipeline="image",
                            common=pb.CommonParams(model="tiny-sd", out=str(tmp_path / "n.####.exr")))
    request.values.update({"width": "64", "height": "64", "steps": "2", "prompt": '"by name"'})
    ticket = client.submit(request)
    events = list(client.watch(ticket.job_id))
    assert events[-1].WhichOneof("kind") == "completed", events[-1]
    bad = pb.JobRequest(job_id="named-2", pipeline="image", common=pb.CommonParams(out=str(tmp_path / "m.####.exr")))
    bad.values["sparkle"] = "1"
    from cinegen.common.client import RequestRejected
    with pytest.raises(RequestRejected, match="no option 'sparkle'"):
        client.submit(bad)


def test_capabilities_publish_labels_plain_help_and_skip_options_a_pipeline_ignores(client):
    caps = client.capabilities()
    for info in caps.pipelines:
        for spec in info.params:
            assert spec.label and spec.label[0].isupper(), spec.name
            assert "--" not in spec.help and "`" not in spec.help and "cinegen " not in spec.help, spec.help
    story = next(p for p in caps.pipelines if p.name == "story")
    names = {s.name for s in story.params}
    assert "prompt" not in names and "negative_prompt" not in names
    video = next(s for s in story.params if s.name == "video_model")
    assert video.type == "model" and "wan" in video.families
    labels = {s.name: s.label for s in describe(CommonParams, "common")}
    assert labels["fps"] == "Frames per second"


# ---- client side: a fake newer server, the unchanged panel ------------------------------------------
class NewerServer(pb_grpc.GeneratorServicer):
    """Advertises a pipeline ('relight') and an image option ('grain') these stubs have no fields for."""

    def __init__(self):
        self.submitted: list[pb.JobRequest] = []
        self.lock = threading.Lock()

    def GetCapabilities(self, request, context):  # noqa: N802
        common = [pb.ParamSpec(name="prompt", type="text", default_json='""', group="common", label="Prompt"),
                  pb.ParamSpec(name="steps", type="int", default_json="null", group="common", label="Steps",
                               minimum=1, maximum=100),
                  pb.ParamSpec(name="out", type="path", default_json='""', group="common", label="Output")]
        image = pb.PipelineInfo(name="image", description="Text to image", params=common + [
            pb.ParamSpec(name="grain", type="float", default_json="0.25", group="image", label="Film grain",
                         minimum=0, maximum=1, help="How much grain to add.")])
        relight = pb.PipelineInfo(name="relight", description="Relight a plate", params=common + [
            pb.ParamSpec(name="sun_angle", type="float", default_json="45", group="relight", label="Sun angle"),
            pb.ParamSpec(name="mood", type="enum", default_json='"dusk"', choices=["dawn", "dusk"], group="relight",
                         label="Mood")])
        return pb.Capabilities(server_version="9.0", protocol_version=1, pipelines=[image, relight],
                               max_width=4096, max_height=4096)

    def Submit(self, request, context):  # noqa: N802
        with self.lock:
            self.submitted.append(request)
        return pb.JobTicket(job_id=request.job_id, queue_position=1)

    def Watch(self, request, context):  # noqa: N802
        yield pb.JobEvent(job_id=request.job_id, seq=1, cancelled=pb.Cancelled(reason="fake server"))


@pytest.fixture()
def newer_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = NewerServer()
    pb_grpc.add_GeneratorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_the_unchanged_panel_sends_a_new_option_and_a_new_pipeline(newer_server, tmp_path, monkeypatch):
    from cinegen.common.connection import ConnectionSettings
    from cinegen.plugin.hosts.standalone import StandaloneHost
    from cinegen.plugin.model.history import History
    from cinegen.plugin.qt import QtCore, ensure_application
    from cinegen.plugin.ui.panel import Panel

    servicer, address = newer_server
    monkeypatch.setenv("CINEGEN_CONFIG_DIR", str(tmp_path / "config"))
    app = ensure_application()
    host, port = address.rsplit(":", 1)
    panel = Panel(host=StandaloneHost(tmp_path / "renders"), settings=ConnectionSettings(host=host, port=int(port)),
                  history=History(tmp_path / "config" / "history.json"))

    def wait_until(predicate, what):
        deadline = time.monotonic() + 30
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            app.processEvents(QtCore.QEventLoop.AllEvents, 50)
            time.sleep(0.005)

    try:
        wait_until(lambda: set(panel.forms) == {"image", "relight"}, "the forms")
        image = panel.forms["image"]
        assert image.labels["grain"].text().startswith("Film grain")
        image.set_values({"prompt": "a dune", "grain": 0.5})
        assert panel.generate()
        assert panel.select_pipeline("relight")
        panel.forms["relight"].set_values({"prompt": "night", "sun_angle": 12.5, "mood": "dawn"})
        assert panel.generate()
        wait_until(lambda: len(servicer.submitted) == 2, "both submissions")
    finally:
        panel.shutdown()
        panel.deleteLater()
        app.processEvents()
    first, second = sorted(servicer.submitted, key=lambda r: r.pipeline)
    assert first.pipeline == "image" and first.common.prompt == "a dune" and first.values["grain"] == "0.5"
    assert second.pipeline == "relight" and second.WhichOneof("params") is None
    assert second.common.prompt == "night"
    assert dict(second.values) == {"sun_angle": "12.5", "mood": '"dawn"'}


def test_help_published_to_forms_names_labels_not_cli_options():
    from cinegen.common.params import plain_help
    labels = {"guidance": "Guidance", "cosine_scale": "Detail mix"}
    assert plain_help("empty = --guidance; like `--cosine-scale` where it is 0", labels) == \
        "empty = Guidance; like Detail mix where it is 0"
    assert plain_help("a range 1-2 --unknown-thing stays readable", labels) == "a range 1-2 unknown thing stays readable"
    # a command for whoever runs the server keeps its flags (it read "cinegen serve max steps N changes it")
    assert plain_help("Steps is 900, over this server's limit of 500 (`cinegen serve --max-steps N` changes it); "
                      "see --guidance", labels) == \
        "Steps is 900, over this server's limit of 500 (cinegen serve --max-steps N changes it); see Guidance"
