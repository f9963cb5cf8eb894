"""Limits and validation at Submit: every refusal is a named status whose sentence names the limit, the
value and the flag; odd inputs (NaN, folders, FIFOs, bad bytes, deep nesting, alias bombs) never reach a
pipeline and never come back as UNKNOWN."""
from __future__ import annotations

import math
import os
import time

import grpc
import pytest

from cinegen.common.client import GeneratorClient, RequestRejected
from cinegen.common.params import StoryParams, TrajectoryParams, UpscaleParams
from cinegen.common.proto import generator_pb2 as pb

from server_kit import health_status, private_server, tiny_request

TRACK = ('{"width": 64, "height": 64, "tracks": [{"name": "disc", "points": '
         '[{"frame": 1001, "x": 12, "y": 12}, {"frame": 1008, "x": 52, "y": 52}]}]}')


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    from cinegen.server.limits import Limits

    limits = Limits(max_pixels=200_000, max_prompt=100, max_text=4096, max_tracks=2, max_upload=3000,
                    max_queue=3, max_queue_per_client=2, max_streams=3)
    with private_server(registry, tmp_path_factory.mktemp("state"), limits=limits) as running:
        yield running


@pytest.fixture()
def client(server):
    with GeneratorClient(server.address, timeout=20) as c:
        yield c


def rejected(client, request) -> RequestRejected:
    with pytest.raises(RequestRejected) as err:
        client.submit(request)
    return err.value


@pytest.mark.parametrize("field, value", [("guidance", math.inf), ("guidance", math.nan), ("fps", -math.inf),
                                          ("fps", 0.0), ("guidance", 51.0)])
def test_every_common_float_is_finite_and_in_range(client, tmp_path, field, value):
    err = rejected(client, tiny_request(tmp_path, **{field: value}))
    assert err.code == "INVALID_ARGUMENT" and field in err.message
    assert "between" in err.message or "at most" in err.message


@pytest.mark.parametrize("field, value", [("scale", math.nan), ("scale", math.inf), ("cosine_scale", math.nan),
                                          ("strength", 1.5)])
def test_pipeline_floats_are_checked_too(client, tmp_path, field, value):
    err = rejected(client, tiny_request(tmp_path, pipeline="upscale", params=UpscaleParams(**{field: value})))
    assert err.code == "INVALID_ARGUMENT" and field in err.message


@pytest.mark.parametrize("change, flag", [(dict(steps=1000), "--max-steps"),
                                          (dict(frames=200), "--max-pixels"),
                                          (dict(prompt="x" * 101), "--max-prompt")])
def test_per_job_limits_name_the_value_and_the_flag(client, tmp_path, change, flag):
    err = rejected(client, tiny_request(tmp_path, **change))
    assert err.code == "RESOURCE_EXHAUSTED" and flag in err.message
    assert str(next(iter(change.values())))[:4] in err.message or "characters" in err.message


def test_frame_range_and_output_pattern_are_checked(client, tmp_path):
    err = rejected(client, tiny_request(tmp_path, first_frame=9_999_999, frames=5))
    assert err.code == "INVALID_ARGUMENT" and "last frame" in err.message
    err = rejected(client, tiny_request(tmp_path, out=str(tmp_path / "a\x01b.####.exr")))
    assert err.code == "INVALID_ARGUMENT" and "control character" in err.message


def test_trajectory_files_must_be_regular_small_utf8_files(client, tmp_path):
    def submit(path):
        return rejected(client, tiny_request(tmp_path, pipeline="trajectory", model="tiny-video",
                                             params=TrajectoryParams(trajectory=str(path))))

    assert submit(tmp_path).code == "INVALID_ARGUMENT"  # a folder
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    started = time.monotonic()
    err = submit(fifo)
    assert err.code == "INVALID_ARGUMENT" and "regular file" in err.message
    assert time.monotonic() - started < 10, "a FIFO must be refused, not waited on"
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"width": 64, "name": "caf\xe9"}')
    assert "UTF-8" in submit(latin).message
    big = tmp_path / "big.json"
    big.write_text(" " * 5000)
    err = submit(big)
    assert err.code == "RESOURCE_EXHAUSTED" and "--max-text" in err.message


def test_a_hung_file_read_gives_the_request_back(monkeypatch, tmp_path):
    import threading

    from cinegen.server import paths

    release = threading.Event()
    monkeypatch.setattr(paths, "read_regular_file", lambda *args: release.wait(30))
    try:
        with pytest.raises(paths.FailedPrecondition, match="did not finish reading"):
            paths.read_request_file(tmp_path / "slow.json", 100, "The trajectory file", "--max-text", timeout=0.2)
    finally:
        release.set()


def test_errors_never_quote_a_server_file(client, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"width": 64, "height": 64, "tracks": [{"name": "TOPSECRET-123", "points": "TOPSECRET"}]}')
    err = rejected(client, tiny_request(tmp_path, pipeline="trajectory", model="tiny-video",
                                        params=TrajectoryParams(trajectory=str(secret))))
    assert err.code == "INVALID_ARGUMENT" and "TOPSECRET" not in err.message
    story = tmp_path / "story.yaml"
    story.write_text("title: t\nshots:\n  - {id: TOPSECRET, prompt: p, frames: 4, characters: [Nobody]}\n")
    err = rejected(client, tiny_request(tmp_path, pipeline="story", out=str(tmp_path / "cut"),
                                        params=StoryParams(story=str(story))))
    assert err.code == "INVALID_ARGUMENT" and "TOPSECRET" not in err.message and "line" in err.message


def test_inline_trajectories_are_bounded(client, tmp_path):
    def submit(document):
        return rejected(client, tiny_request(tmp_path, pipeline="trajectory", model="tiny-video",
                                             params=TrajectoryParams(trajectory_json=document)))

    err = submit("[" * 100_000 + "]" * 100_000)
    assert err.code == "RESOURCE_EXHAUSTED" and "--max-text" in err.message
    assert "JSON object" in submit("/etc/passwd").message, "inline JSON is never taken for a server path"
    point = '{"frame": 1001, "x": 1, "y": 1}, {"frame": 1002, "x": 2, "y": 2}'
    three = ('{"width": 64, "height": 64, "tracks": ['
             + ", ".join(f'{{"name": "t{i}", "points": [{point}]}}' for i in range(3)) + "]}")
    err = submit(three)
    assert err.code == "RESOURCE_EXHAUSTED" and "--max-tracks" in err.message and "3" in err.message


def test_deep_json_within_the_size_limit_is_a_sentence(registry, tmp_path):
    with private_server(registry) as running, GeneratorClient(running.address, timeout=20) as c:
        deep = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
        err = rejected(c, tiny_request(tmp_path, pipeline="trajectory", model="tiny-video",
                                       params=TrajectoryParams(trajectory_json=deep)))
        assert err.code == "INVALID_ARGUMENT" and "deeply" in err.message


@pytest.mark.parametrize("text, words", [
    ("a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "alias"),
    ("title: t\x07\nshots: []\n", "character"),
    ("title: [unclosed\n", "not valid YAML"),
])
def test_story_yaml_without_alias_bombs_or_control_characters(client, tmp_path, text, words):
    err = rejected(client, tiny_request(tmp_path, pipeline="story", out=str(tmp_path / "cut"),
                                        params=StoryParams(story_yaml=text)))
    assert err.code == "INVALID_ARGUMENT" and words in err.message


def test_a_story_counts_its_shots_frames_in_the_pixel_budget(client, tmp_path):
    err = rejected(client, tiny_request(tmp_path, pipeline="story", out=str(tmp_path / "cut"), params=StoryParams(
        story_yaml="title: t\nshots:\n  - {id: a, prompt: p, frames: 100000000}\n")))
    assert err.code == "RESOURCE_EXHAUSTED" and "--max-pixels" in err.message and "100000000 frames" in err.message


def test_a_one_line_story_is_never_taken_for_a_server_path(client, tmp_path):
    secret = tmp_path / "notes.yaml"
    secret.write_text("title: TOPSECRET\nshots: []\n")
    err = rejected(client, tiny_request(tmp_path, pipeline="story", out=str(tmp_path / "cut"),
                                        params=StoryParams(story_yaml=str(secret))))
    assert err.code == "INVALID_ARGUMENT" and "TOPSECRET" not in err.message


def test_existing_frames_are_not_overwritten_unless_asked(client, tmp_path):
    assert client.run(tiny_request(tmp_path, job_id="first-write")).state == "completed"
    before = (tmp_path / "same.1001.exr")
    os.replace(tmp_path / "first-write.1001.exr", before)
    stamp = before.stat().st_mtime_ns
    err = rejected(client, tiny_request(tmp_path, out=str(tmp_path / "same.####.exr")))
    assert err.code == "ALREADY_EXISTS" and "overwrite" in err.message
    assert before.stat().st_mtime_ns == stamp
    result = client.run(tiny_request(tmp_path, out=str(tmp_path / "same.####.exr"), overwrite=True))
    assert result.state == "completed" and before.stat().st_mtime_ns != stamp


def started(server, ticket):
    """The blocker runs (else it still counts as queued, and a busy box refuses the next Submit)."""
    while server.service.jobs.get(ticket.job_id).state == "queued":
        time.sleep(0.02)
    return ticket


def test_a_frame_that_appears_after_submit_is_not_overwritten_either(server, client, tmp_path):
    blocker = started(server, client.submit(tiny_request(tmp_path / "b", steps=400, width=64, height=64)))
    first = client.submit(tiny_request(tmp_path, out=str(tmp_path / "race.####.exr"), seed=1))
    second = client.submit(tiny_request(tmp_path, out=str(tmp_path / "race.####.exr"), seed=2))
    client.cancel(blocker.job_id)
    assert list(client.watch(first.job_id))[-1].WhichOneof("kind") == "completed"
    stamp = (tmp_path / "race.1001.exr").stat().st_mtime_ns
    last = list(client.watch(second.job_id))[-1]
    assert last.failed.code == "ALREADY_EXISTS" and "overwrite" in last.failed.message
    assert (tmp_path / "race.1001.exr").stat().st_mtime_ns == stamp


def test_uploads_are_capped_named_safely_and_per_client(server, tmp_path):
    with GeneratorClient(server.address, client_id="artist-a") as a, \
            GeneratorClient(server.address, client_id="artist-b") as b:
        big = tmp_path / "big.exr"
        big.write_bytes(b"x" * 4000)
        with pytest.raises(RequestRejected) as err:
            a.upload_file(big)
        assert err.value.code == "RESOURCE_EXHAUSTED" and "--max-upload" in err.value.message
        with pytest.raises(RequestRejected) as err:
            a._call(a.stub.Upload, iter([pb.UploadChunk(filename="pl\x00ate.exr", data=b"1")]))
        assert err.value.code == "INVALID_ARGUMENT"
        small = tmp_path / "plate.exr"
        small.write_bytes(b"from a")
        ra = a.upload_file(small, asset_id="shared-id")
        small.write_bytes(b"from b")
        rb = b.upload_file(small, asset_id="shared-id")
        assert ra.path != rb.path, "the same asset id of two clients names two files"
        assert open(ra.path, "rb").read() == b"from a" and open(rb.path, "rb").read() == b"from b"


def test_download_serves_only_this_clients_regular_outputs(server, tmp_path):
    with GeneratorClient(server.address, client_id="owner") as owner, \
            GeneratorClient(server.address, client_id="other") as other:
        result = owner.run(tiny_request(tmp_path, job_id="dl-1"))
        path = result.outputs[0]
        assert owner.download(path, tmp_path / "copy.exr").read_bytes() == open(path, "rb").read()
        with pytest.raises(RequestRejected) as err:
            other.download(path, tmp_path / "stolen.exr")
        assert err.value.code == "NOT_FOUND"
        secret = tmp_path / "secret.txt"
        secret.write_text("TOPSECRET")
        os.replace(path, tmp_path / "moved.exr")
        os.symlink(secret, path)  # a link planted over the output
        with pytest.raises(RequestRejected) as err:
            owner.download(path, tmp_path / "link.exr")
        assert err.value.code == "NOT_FOUND" and "TOPSECRET" not in err.value.message
        os.unlink(path)  # the output deleted
        with pytest.raises(RequestRejected) as err:
            owner.download(path, tmp_path / "gone.exr")
        assert err.value.code == "NOT_FOUND" and "no longer" in err.value.message


def test_queue_limits_in_total_and_per_client(server, tmp_path):
    with GeneratorClient(server.address, client_id="q1") as q1, GeneratorClient(server.address, client_id="q2") as q2:
        blocker = started(server, q1.submit(tiny_request(tmp_path / "b", steps=400, width=64, height=64)))
        tickets = [q1.submit(tiny_request(tmp_path / "q")), q1.submit(tiny_request(tmp_path / "q"))]
        try:
            err = rejected(q1, tiny_request(tmp_path / "q"))
            assert err.code == "RESOURCE_EXHAUSTED" and "--max-queue-per-client" in err.message
            tickets.append(q2.submit(tiny_request(tmp_path / "q")))
            err = rejected(q2, tiny_request(tmp_path / "q"))
            assert err.code == "RESOURCE_EXHAUSTED" and "--max-queue " in err.message
        finally:
            for t in tickets + [blocker]:
                q1.cancel(t.job_id)


def test_streams_over_the_limit_are_refused_and_health_still_answers(server, tmp_path):
    with GeneratorClient(server.address) as c:
        ticket = c.submit(tiny_request(tmp_path, steps=400, width=64, height=64))
        calls = [c.stub.Watch(pb.WatchRequest(job_id=ticket.job_id)) for _ in range(3)]
        try:
            for call in calls:
                next(call)  # the stream is open and holds its slot
            with pytest.raises(grpc.RpcError) as err:
                next(c.stub.Watch(pb.WatchRequest(job_id=ticket.job_id)))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-streams" in err.value.details()
            assert health_status(server.address) == "SERVING"
            assert c.list_jobs().jobs
        finally:
            for call in calls:
                call.cancel()
            c.cancel(ticket.job_id)


def test_output_and_input_roots(registry, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    with private_server(registry, output_roots=[root]) as running, GeneratorClient(running.address) as c:
        for out in (outside / "x.####.exr", root / ".." / "outside" / "x.####.exr", root / "escape" / "x.####.exr"):
            err = rejected(c, tiny_request(tmp_path, out=str(out)))
            assert err.code == "PERMISSION_DENIED" and "--output-root" in err.message
        (outside / "real.json").write_text(TRACK)
        answers = {rejected(c, tiny_request(root, pipeline="trajectory", model="tiny-video",
                                            params=TrajectoryParams(trajectory=str(outside / name)))).message
                   .replace(name, "NAME") for name in ("real.json", "missing.json")}
        assert len(answers) == 1 and "--input-root" in answers.pop(), "existing and missing files look the same"
        assert c.run(tiny_request(root)).state == "completed"


def test_still_serving_after_everything(server):
    assert health_status(server.address) == "SERVING"
