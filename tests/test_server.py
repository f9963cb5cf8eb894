"""The gRPC server against a client that knows only the proto: submit, watch, resume, cancel, errors."""
from __future__ import annotations

import os
import threading
import uuid

import grpc
import pytest

from cinegen.common.client import GeneratorClient, RequestRejected, ServerUnavailable, build_request
from cinegen.common.exr import read_exr_frame
from cinegen.common.params import CommonParams
from cinegen.common.proto import generator_pb2 as pb


def _request(tmp_path, job_id=None, **common):
    c = dict(prompt="a red disc", seed=3, steps=3, width=64, height=64, frames=2,
             out=str(tmp_path / "img.####.exr"))
    c.update(common)
    return build_request("image", CommonParams(**c), job_id=job_id or f"t-{uuid.uuid4().hex[:8]}")


def _kinds(events):
    return [e.WhichOneof("kind") for e in events]


def test_capabilities_describe_every_pipeline_parameter(client):
    caps = client.capabilities()
    assert caps.protocol_version == 1
    image = next(p for p in caps.pipelines if p.name == "image")
    names = {p.name for p in image.params}
    assert {"prompt", "negative_prompt", "model", "seed", "steps", "guidance", "width", "height", "frames",
            "fps", "out"} <= names
    width = next(p for p in image.params if p.name == "width")
    assert width.type == "int" and width.minimum == 8 and width.help
    assert any(m.id == "tiny-sd" and m.family == "sd" for m in caps.models)


def test_submit_and_watch_to_completion_writes_exr_frames(client, tmp_path):
    result = client.run(_request(tmp_path))
    assert result.state == "completed", result.message
    assert sorted(os.path.basename(p) for p in result.outputs) == ["img.1001.exr", "img.1002.exr"]
    pixels, meta = read_exr_frame(tmp_path / "img.1001.exr")
    assert pixels.shape == (64, 64, 4)
    assert meta["cinegen:pipeline"] == "image" and meta["cinegen:seed"] == "3"
    assert meta["cinegen:model"] == "tiny-sd" and meta["cinegen:prompt"] == "a red disc"
    assert sorted(os.listdir(tmp_path)) == ["img.1001.exr", "img.1002.exr"], "no temporary files left"


def test_events_are_numbered_and_progress_reaches_one(client, tmp_path):
    ticket = client.submit(_request(tmp_path))
    events = list(client.watch(ticket.job_id))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = _kinds(events)
    assert kinds[0] == "queued" and "started" in kinds and kinds[-1] == "completed"
    assert max(e.progress.fraction for e in events if e.WhichOneof("kind") == "progress") == pytest.approx(1.0)
    assert kinds.count("frame_written") == 2


def test_reconnecting_with_after_seq_loses_no_event(client, tmp_path):
    ticket = client.submit(_request(tmp_path, steps=6))
    first = []
    for event in client.watch(ticket.job_id):
        first.append(event)
        if len(first) == 3:
            break  # the client drops the stream mid-job
    rest = list(client.watch(ticket.job_id, after_seq=first[-1].seq))
    full = list(client.watch(ticket.job_id))
    assert [e.SerializeToString() for e in first + rest] == [e.SerializeToString() for e in full]


def test_every_watcher_gets_every_event(client, running_server, tmp_path):
    ticket = client.submit(_request(tmp_path, steps=5))
    results: dict[int, list] = {}

    def watch(i):
        with GeneratorClient(running_server.address) as other:
            results[i] = [e.seq for e in other.watch(ticket.job_id)]

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[0] == results[1] == results[2] and len(results[0]) > 5


def test_cancel_stops_a_running_job_between_steps(client, tmp_path):
    ticket = client.submit(_request(tmp_path, steps=400, frames=1))
    events = []
    for event in client.watch(ticket.job_id):
        events.append(event)
        if event.WhichOneof("kind") == "progress":
            reply = client.cancel(ticket.job_id)
            assert reply.cancelled
    kinds = _kinds(events)
    assert kinds[-1] == "cancelled"
    steps = [e.progress.step for e in events if e.WhichOneof("kind") == "progress"]
    assert max(steps) < 400
    assert not list(tmp_path.iterdir()), "a cancelled job leaves no frames"


def test_cancel_a_queued_job_means_it_never_starts(client, tmp_path):
    blocker = client.submit(_request(tmp_path / "a", steps=200, frames=1))
    queued = client.submit(_request(tmp_path / "b"))
    assert queued.queue_position >= 1
    client.cancel(queued.job_id)
    client.cancel(blocker.job_id)
    kinds = _kinds(client.watch(queued.job_id))
    assert "started" not in kinds and kinds[-1] == "cancelled"


def test_same_job_id_is_idempotent(client, tmp_path):
    request = _request(tmp_path, job_id="idem-1")
    first = client.submit(request)
    second = client.submit(request)
    assert second.job_id == first.job_id == "idem-1" and second.existing
    list(client.watch("idem-1"))
    assert len([j for j in client.list_jobs().jobs if j.job_id == "idem-1"]) == 1
    with pytest.raises(RequestRejected) as err:
        client.submit(_request(tmp_path, job_id="idem-1", prompt="something else"))
    assert err.value.code == "ALREADY_EXISTS"


@pytest.mark.parametrize("change, code, words", [
    (dict(width=100), "INVALID_ARGUMENT", "multiple of 8"),
    (dict(height=4096), "INVALID_ARGUMENT", "limit"),
    (dict(steps=0), "INVALID_ARGUMENT", "at least 1"),
    (dict(model="no-such-model"), "NOT_FOUND", "Known models"),
    (dict(out="frames/img.exr"), "INVALID_ARGUMENT", "####"),
    (dict(out="n" * 230 + ".####.exr"), "INVALID_ARGUMENT", "Shorten the NAME"),  # was a job failing at frame 1
])
def test_bad_input_gets_a_status_and_a_sentence(client, tmp_path, change, code, words):
    if "out" in change:
        change = dict(out=str(tmp_path / change["out"]))
    with pytest.raises(RequestRejected) as err:
        client.submit(_request(tmp_path, **change))
    assert err.value.code == code
    assert words in err.value.message
    assert not any(tmp_path.rglob("*.exr"))


def test_unknown_pipeline_is_not_found(client, tmp_path):
    request = _request(tmp_path)
    request.pipeline = "teleport"
    request.ClearField("image")
    with pytest.raises(RequestRejected) as err:
        client.submit(request)
    assert err.value.code == "NOT_FOUND" and "image" in err.value.message


def test_unwritable_output_folder_is_a_failed_precondition(client, tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    with pytest.raises(RequestRejected) as err:
        client.submit(_request(tmp_path, out=str(blocked / "img.####.exr")))
    assert err.value.code == "FAILED_PRECONDITION"


def test_server_keeps_serving_after_bad_input(client, running_server, tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for _ in range(3):
        with pytest.raises(RequestRejected):
            client.submit(_request(tmp_path, width=7))
    channel = grpc.insecure_channel(running_server.address)
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="cinegen.v1.Generator"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert client.run(_request(tmp_path, frames=1)).state == "completed"


def test_reflection_lists_the_generator_service(running_server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(running_server.address)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "cinegen.v1.Generator" in names and "grpc.health.v1.Health" in names


def test_upload_then_download_round_trips_bytes(client, tmp_path):
    payload = os.urandom((1 << 20) * 2 + 123)  # three chunks
    src = tmp_path / "plate.1001.exr"
    src.write_bytes(payload)
    reply = client.upload_file(src)
    assert reply.size == len(payload)
    with open(reply.path, "rb") as f:
        assert f.read() == payload
    result = client.run(_request(tmp_path / "out", frames=1))
    local = client.download(result.outputs[0], tmp_path / "dl" / "frame.exr")
    assert local.read_bytes() == open(result.outputs[0], "rb").read()
    with pytest.raises(RequestRejected) as err:
        client.download("/etc/passwd", tmp_path / "x")
    assert err.value.code == "NOT_FOUND"


def test_token_is_required_when_the_server_has_one(registry, tmp_path):
    from cinegen.server.server import start_server
    from cinegen.server.service import GeneratorService, ServerConfig

    config = ServerConfig(port=0, use_hf_cache=False, token="s3cret")
    running = start_server(config, GeneratorService(config, registry=registry))
    try:
        with GeneratorClient(running.address) as anonymous:
            with pytest.raises(RequestRejected) as err:
                anonymous.capabilities()
            assert err.value.code == "UNAUTHENTICATED" and "token" in err.value.message
        with GeneratorClient(running.address, token="s3cret") as good:
            assert good.capabilities().protocol_version == 1
    finally:
        running.stop()


def test_unreachable_server_says_how_to_fix_it():
    with GeneratorClient("127.0.0.1:1", timeout=2) as c:
        with pytest.raises(ServerUnavailable, match="cinegen serve"):
            c.capabilities()


def test_raw_stub_client_knowing_only_the_proto(running_server, tmp_path):
    """What a third-party client does: build messages from the proto and call the stub."""
    from cinegen.common.proto import generator_pb2_grpc as pb_grpc

    stub = pb_grpc.GeneratorStub(grpc.insecure_channel(running_server.address))
    request = pb.JobRequest(pipeline="image", job_id="raw-1", image=pb.ImageParams())
    request.common.prompt = "x"
    request.common.steps = 2
    request.common.out = str(tmp_path / "raw.####.exr")
    ticket = stub.Submit(request)
    kinds = [e.WhichOneof("kind") for e in stub.Watch(pb.WatchRequest(job_id=ticket.job_id))]
    assert kinds[-1] == "completed"
    assert (tmp_path / "raw.1001.exr").exists()


def test_typed_pipeline_messages_left_at_proto_defaults_mean_the_documented_defaults(running_server, tmp_path):
    """proto3 sends an unset string as "": story's stage was refused ("Story stage '' is not one of ...")."""
    from cinegen.common.proto import generator_pb2_grpc as pb_grpc

    stub = pb_grpc.GeneratorStub(grpc.insecure_channel(running_server.address))
    story = "title: t\nshots:\n  - id: sh010\n    prompt: a red disc\n    frames: 2\n"
    track = ('{"width": 64, "height": 64, "tracks": [{"name": "d", "points": [{"frame": 1001, "x": 1, "y": 1}, '
             '{"frame": 1002, "x": 9, "y": 9}]}]}')
    for pipeline, params in (("story", pb.StoryParams(story_yaml=story)), ("panorama", pb.PanoramaParams()),
                             ("trajectory", pb.TrajectoryParams(trajectory_json=track))):
        request = pb.JobRequest(pipeline=pipeline, **{pipeline: params})
        request.common.prompt, request.common.steps = "x", 1
        request.common.out = str(tmp_path / pipeline) + ("" if pipeline == "story" else "/p.####.exr")
        ticket = stub.Submit(request, timeout=60)
        stub.Cancel(pb.CancelRequest(job_id=ticket.job_id))
        spec = running_server.service.jobs.get(ticket.job_id).spec
        assert spec.common.compression == "zip" and spec.common.offload == "none"
        defaults = {"story": ("stage", "all"), "panorama": ("window_order", "plan"),
                    "trajectory": ("tora_sampler", "dpm")}[pipeline]
        assert getattr(spec.params, defaults[0]) == defaults[1]


def test_list_jobs_stays_under_a_stock_clients_4mb_limit_by_counting_older_outputs():
    """500 kept 1000-frame plates are ~40 MB of file names: the reply was larger than any client reads."""
    from types import SimpleNamespace

    from cinegen.server.service import LIST_OUTPUT_BUDGET, job_list

    def job(n: int, frames: int):
        request = SimpleNamespace(pipeline="upscale", client="cli", common=SimpleNamespace(prompt=f"shot {n}"))
        outputs = [f"/shows/x/sh{n:04d}/plate_upscale.{f:04d}.exr" for f in range(1001, 1001 + frames)]
        return SimpleNamespace(id=f"job-{n}", request=request, state="completed", fraction=1.0, submitted=float(n),
                               outputs=outputs, last_seq=frames + 3)

    jobs = [job(n, 1000) for n in range(120)]
    reply = job_list(list(reversed(jobs)))
    assert reply.ByteSize() < 4 << 20
    assert [j.job_id for j in reply.jobs] == [j.id for j in jobs]  # oldest first, every job listed
    shown = [j for j in reply.jobs if j.outputs]
    assert shown and all(len(j.outputs) == 1000 and j.outputs_omitted == 0 for j in shown)
    assert shown[-1].job_id == "job-119" and reply.jobs[0].outputs_omitted == 1000 and not reply.jobs[0].outputs
    assert sum(len(p) for j in shown for p in j.outputs) <= LIST_OUTPUT_BUDGET
    small = job_list(jobs[:3])  # what fits is listed whole, as before
    assert [list(j.outputs) for j in small.jobs] == [j.outputs for j in jobs[:3]]
    assert all(j.outputs_omitted == 0 for j in small.jobs)


def test_list_jobs_counts_the_prompts_and_long_paths_in_its_budget():
    """Long prompts (up to --max-prompt each) and paths over 127 bytes (a 2-byte length each) were left out of
    the outputs' budget: 300 jobs with 4000-character prompts and 200-byte paths made a 4.3 MB reply, which a
    stock gRPC client (4 MB) refuses to read."""
    from types import SimpleNamespace

    from cinegen.server.service import LIST_OUTPUT_BUDGET, job_list

    folder = "/shows/a_long_show_name/sequences/sq0100/shots/" + "x" * 120
    def job(n: int):
        request = SimpleNamespace(pipeline="upscale", client="cli", common=SimpleNamespace(prompt="p" * 4000))
        outputs = [f"{folder}/sh{n:04d}/plate_upscale.{f:04d}.exr" for f in range(1001, 1101)]
        return SimpleNamespace(id=f"job-{n}", request=request, state="completed", fraction=1.0, submitted=float(n),
                               outputs=outputs, last_seq=103)

    jobs = [job(n) for n in range(300)]
    reply = job_list(jobs)
    assert reply.ByteSize() <= LIST_OUTPUT_BUDGET < 4 << 20
    shown = [j for j in reply.jobs if j.outputs]
    assert shown and shown[-1].job_id == "job-299" and reply.jobs[0].outputs_omitted == 100
