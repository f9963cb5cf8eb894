"""The panel's plain-data model: forms from parameter specs, job records, history, versioned outputs,
the plain-Python EXR header reader, and error sentences. No Qt, no server."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import OpenImageIO as oiio
import pytest

from cinegen.common.client import RequestRejected, ServerUnavailable
from cinegen.common.connection import ConnectionSettings
from cinegen.common.exr import ExrMetadata, write_exr_frame
from cinegen.common.params import PIPELINE_PARAMS, CommonParams, describe
from cinegen.common.proto import generator_pb2 as pb
from cinegen.common.sequence import FrameRange
from cinegen.plugin.backend.errors import describe_error
from cinegen.plugin.backend.exr_header import exr_colorspace, read_exr_header
from cinegen.plugin.model.forms import (FieldSpec, default_values, request_from_values,
                                        values_from_request)
from cinegen.plugin.model.history import History, HistoryEntry
from cinegen.plugin.model.jobs import JobQueue, JobRecord
from cinegen.plugin.model.outputs import claim_version_folder, group_sequences, versioned_output


def specs_for(pipeline: str) -> list[FieldSpec]:
    """What the server publishes for a pipeline, through the same ParamSpec wire form."""
    from cinegen.server.service import _param_spec

    return [FieldSpec.from_proto(_param_spec(d)) for d in
            describe(CommonParams, "common") + describe(PIPELINE_PARAMS[pipeline], pipeline)]


# ---- forms -------------------------------------------------------------------------------------
@pytest.mark.parametrize("pipeline", sorted(PIPELINE_PARAMS))
def test_default_form_values_make_the_same_request_as_the_dataclass_defaults(pipeline):
    from cinegen.common.client import build_request

    fields = specs_for(pipeline)
    from_form = request_from_values(pipeline, fields, default_values(fields), job_id="j")
    from_dataclasses = build_request(pipeline, CommonParams(), PIPELINE_PARAMS[pipeline](), job_id="j")
    assert from_form == from_dataclasses


def test_form_values_fill_common_and_pipeline_fields_by_name_with_wire_types():
    fields = specs_for("upscale")
    values = {**default_values(fields), "prompt": "a castle", "seed": 7, "steps": "12", "guidance": 5,
              "width": None, "scale": 2, "fast": True, "mode": "plate", "input": "/p/plate.####.exr"}
    request = request_from_values("upscale", fields, values, job_id="up-1", client="test")
    assert (request.pipeline, request.job_id, request.client) == ("upscale", "up-1", "test")
    assert request.common.prompt == "a castle" and request.common.seed == 7 and request.common.steps == 12
    assert request.common.guidance == 5.0 and not request.common.HasField("width")  # None = server decides
    assert request.WhichOneof("params") == "upscale"
    assert request.upscale.scale == 2.0 and request.upscale.fast and request.upscale.mode == "plate"
    assert values_from_request(request, fields) == {**values, "steps": 12, "guidance": 5.0, "scale": 2.0}


def test_list_fields_take_comma_separated_text_or_lists():
    fields = specs_for("story")
    text = request_from_values("story", fields, {"shots": "sh010, sh020,,sh030"})
    assert list(text.story.shots) == ["sh010", "sh020", "sh030"]
    assert list(request_from_values("story", fields, {"shots": ["a", "b"]}).story.shots) == ["a", "b"]


def test_a_pipeline_and_options_unknown_to_these_stubs_go_by_name_as_json_literals():
    fields = [FieldSpec.from_proto(p) for p in (
        pb.ParamSpec(name="prompt", type="text", default_json='""', group="common"),
        pb.ParamSpec(name="halo", type="float", default_json="null", group="common"),
        pb.ParamSpec(name="rings", type="int", default_json="3", group="hologram"),
        pb.ParamSpec(name="tint", type="enum", default_json='"blue"', choices=["blue", "red"], group="hologram"),
        pb.ParamSpec(name="layers", type="list", default_json="[]", group="hologram"),
        pb.ParamSpec(name="glow", type="bool", default_json="false", group="hologram"))]
    values = {"prompt": "a ghost", "halo": "0.5", "rings": "4", "tint": "red", "layers": "a, b", "glow": True}
    request = request_from_values("hologram", fields, values, job_id="h-1")
    assert request.pipeline == "hologram" and request.WhichOneof("params") is None
    assert request.common.prompt == "a ghost"  # a typed field where the stubs have one
    assert dict(request.values) == {"halo": "0.5", "rings": "4", "tint": '"red"', "layers": '["a", "b"]',
                                    "glow": "true"}
    assert values_from_request(request, fields) == {"prompt": "a ghost", "halo": 0.5, "rings": 4, "tint": "red",
                                                    "layers": ["a", "b"], "glow": True}
    unset = request_from_values("hologram", fields, {**values, "halo": None})
    assert "halo" not in unset.values  # None = the server decides, as for typed fields


def test_field_spec_tooltip_gives_help_range_and_default():
    spec = FieldSpec.from_proto(pb.ParamSpec(name="strength", type="float", default_json="null", minimum=0,
                                             maximum=1, help="How much may change."))
    assert spec.optional and spec.default is None
    assert spec.tooltip.splitlines() == ["How much may change.", "Range: 0 to 1.",
                                         "Default: auto (the model decides)."]


# ---- jobs --------------------------------------------------------------------------------------
def event(seq: int, **kind) -> pb.JobEvent:
    return pb.JobEvent(job_id="j", seq=seq, **kind)


def test_a_job_record_applies_each_sequence_number_once_and_records_holes():
    record = JobRecord("j", "image")
    stream = [event(1, queued=pb.Queued(position=2)), event(2, started=pb.Started(model="tiny-sd", seed=5)),
              event(3, progress=pb.Progress(stage="denoise", step=1, total=4, fraction=0.25))]
    assert all(record.apply(e) for e in stream)
    resumed = stream[1:] + [event(4, progress=pb.Progress(stage="denoise", step=2, total=4, fraction=0.5))]
    applied = [record.apply(e) for e in resumed]
    assert applied == [False, False, True]  # a resumed stream's repeats change nothing
    assert record.duplicates == 2 and record.seqs == [1, 2, 3, 4] and record.gaps == []
    assert (record.state, record.seed, record.model, record.fraction) == ("running", 5, "tiny-sd", 0.5)
    assert record.stage == "denoise 2/4"
    record.apply(event(7, completed=pb.Completed(outputs=["/o/a.1001.exr"], summary="1 file(s) written")))
    assert record.gaps == [(4, 7)] and record.done and record.fraction == 1.0


def test_queue_lists_newest_first_and_clears_only_finished_jobs():
    queue = JobQueue()
    old, new = queue.add(JobRecord("a", "image")), queue.add(JobRecord("b", "image"))
    assert queue.records() == [new, old]
    old.apply(event(1, cancelled=pb.Cancelled(reason="x")))
    assert queue.clear_finished() == ["a"] and queue.records() == [new]


# ---- history -----------------------------------------------------------------------------------
def test_history_survives_a_restart_and_keeps_every_form_value(tmp_path):
    path = tmp_path / "history.json"
    history = History(path)
    history.add(HistoryEntry("j1", "image", values={"prompt": "fox", "seed": None, "steps": 4}, prompt="fox"))
    history.update("j1", seed=123, model="tiny-sd", state="completed", outputs=["/o/x.####.exr"], frames="1001-1002")
    again = History(path).get("j1")
    assert (again.seed, again.model, again.state, again.frames) == (123, "tiny-sd", "completed", "1001-1002")
    assert again.rerun_values() == {"prompt": "fox", "seed": 123, "steps": 4}


def test_a_damaged_history_file_or_entry_does_not_lose_the_rest(tmp_path):
    path = tmp_path / "history.json"
    path.write_text(json.dumps([{"job_id": "ok", "pipeline": "image", "values": {}}, {"nonsense": 1}, 3]))
    assert [e.job_id for e in History(path).entries] == ["ok"]
    path.write_text("{ not json")
    assert History(path).entries == []


def test_history_keeps_the_newest_entries_up_to_its_limit(tmp_path):
    history = History(tmp_path / "h.json", limit=3)
    for i in range(5):
        history.add(HistoryEntry(f"j{i}", "image", values={}))
    assert [e.job_id for e in History(tmp_path / "h.json").entries] == ["j4", "j3", "j2"]


# ---- outputs -----------------------------------------------------------------------------------
def test_every_output_gets_its_own_version_folder_even_when_claimed_at_once(tmp_path):
    claimed: list[int] = []
    lock = threading.Lock()

    def claim():
        _, version = claim_version_folder(tmp_path, "sh010 image")
        with lock:
            claimed.append(version)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(1, 9))
    assert versioned_output(tmp_path, "sh010 image") == str(tmp_path / "sh010_image" / "v009" /
                                                             "sh010_image_v009.####.exr")


def test_output_files_group_into_sequences_with_their_frame_range_and_padding():
    paths = ["/o/a.1001.exr", "/o/a.1003.exr", "/o/a.1002.exr", "/o/b.0007.exr", "/o/b.0012.exr",
             "/o/notes.otio", "/o/big.12345.exr"]
    assert group_sequences(paths) == [("/o/a.####.exr", FrameRange(1001, 1003)),
                                      ("/o/b.####.exr", FrameRange(7, 12)),
                                      ("/o/big.#####.exr", FrameRange(12345, 12345))]


def test_a_story_cut_whose_title_ends_in_a_number_is_not_taken_for_a_frame():
    """A story titled "Episode 2" writes Episode_2.otio beside its shots: it became a Read of "Episode_#.otio"."""
    outputs = ["/o/sh010/sh010.1001.exr", "/o/Episode_2.otio", "/o/Reel 3.otio", "/o/Episode_2.keyframes.png"]
    assert group_sequences(outputs) == [("/o/sh010/sh010.####.exr", FrameRange(1001, 1001))]


# ---- EXR header ----------------------------------------------------------------------------------
def test_plain_python_header_reader_agrees_with_openimageio(tmp_path):
    path = tmp_path / "f.1001.exr"
    meta = ExrMetadata(pipeline="image", model="tiny-sd", seed=9, prompt="a ünïcode prompt", job="j",
                       colorspace="ACEScg", fps=24)
    write_exr_frame(path, np.zeros((6, 10, 4), np.float32), metadata=meta)
    ours = read_exr_header(path)
    spec = oiio.ImageInput.open(str(path)).spec()
    for name in ("cinegen:colorspace", "cinegen:model", "cinegen:prompt", "cinegen:seed", "cinegen:pipeline"):
        assert ours[name] == spec.getattribute(name), name
    assert ours["dataWindow"] == (0, 0, 9, 5)
    assert ours["framesPerSecond"] == 24
    assert exr_colorspace(path) == "ACEScg"


def test_header_reader_refuses_files_that_are_not_exr(tmp_path):
    (tmp_path / "x.exr").write_bytes(b"\x89PNG not an exr at all")
    assert exr_colorspace(tmp_path / "x.exr") == "" and exr_colorspace(tmp_path / "missing.exr") == ""


# ---- a story's cut --------------------------------------------------------------------------------
def test_shot_offsets_place_each_finished_shot_where_the_cut_has_it(tmp_path):
    from cinegen.plugin.backend.story_cut import shot_offsets
    from cinegen.server.output.otio_cut import MissingShot, ShotRecord, write_story_timeline

    shots = [ShotRecord("sh010", "a", 1, "m", "k", "job", first_frame=1, frames=12, fps=24.0),
             MissingShot("sh020", "b", frames=8, fps=24.0),  # a gap in the cut: sh030 still starts at 20
             ShotRecord("sh 030", "c", 3, "m", "k", "job", first_frame=1, frames=5, fps=24.0)]
    cut = write_story_timeline(tmp_path, "Harbour", 24.0, shots)
    assert shot_offsets(cut) == {str(tmp_path / "sh010"): 0, str(tmp_path / "sh 030"): 20}
    absolute = write_story_timeline(tmp_path / "abs", "Harbour", 24.0, shots[:1], absolute_urls=True)
    assert shot_offsets(absolute) == {str(tmp_path / "abs" / "sh010"): 0}  # file:// URLs too
    (tmp_path / "bad.otio").write_text("{")
    assert shot_offsets(tmp_path / "bad.otio") == {} and shot_offsets(tmp_path / "none.otio") == {}


# ---- error sentences ------------------------------------------------------------------------------
def test_errors_become_sentences_that_say_what_to_do():
    settings = ConnectionSettings(host="gpu01", port=50051)
    down = describe_error(ServerUnavailable("Can't reach the cinegen server at gpu01:50051. Start it with "
                                            "`cinegen serve`"), settings)
    assert "gpu01:50051" in down and "cinegen serve" in down
    assert "needs an access token" in describe_error(RequestRejected("UNAUTHENTICATED", "x"), settings)
    settings.token = "wrong"
    assert "refused the access token" in describe_error(RequestRejected("UNAUTHENTICATED", "x"), settings)
    plain = describe_error(RequestRejected("RESOURCE_EXHAUSTED", "The GPU ran out of memory."), settings)
    assert plain == "The GPU ran out of memory. Lower the size or frame count, then try again."
    limit = describe_error(RequestRejected("RESOURCE_EXHAUSTED", "Steps is 900, over this server's limit of 500 "
                                                          "(`cinegen serve --max-steps N` changes it)."), settings)
    assert limit.endswith("changes it). Lower it to the limit, or ask whoever runs the server to raise it.")
    kept = describe_error(RequestRejected("INVALID_ARGUMENT", "Width 100 is not a positive multiple of 8; try 96."))
    assert kept == "Width 100 is not a positive multiple of 8; try 96."  # already says what to do
    assert "check the path" in describe_error(FileNotFoundError(2, "No such file", "/plates/x.exr"))


def test_the_plugin_imports_neither_torch_nor_a_host_module():
    code = ("import sys; import cinegen.plugin.ui.panel, cinegen.plugin.backend.session, cinegen.plugin.hosts; "
            "bad = [m for m in ('torch', 'nuke', 'bpy', 'cinegen.server') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={"QT_QPA_PLATFORM": "offscreen",
                                                                  "PATH": "/usr/bin:/bin"})
