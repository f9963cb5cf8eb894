"""Concurrent calls as third-party clients make them (a retry after a deadline, a script firing a batch):
the job id check and the queue limits hold together with the insert into the queue, and two uploads of
one file at once each land whole."""
from __future__ import annotations

import threading
import time

import grpc
import pytest

from cinegen.common.proto import generator_pb2 as pb

from server_kit import private_server, stub, tiny_request


@pytest.fixture()
def held(registry, tmp_path, monkeypatch):
    """A server whose worker is busy with a long job, and whose next 4 Submits are each checked before
    any of them is queued (the window a retried Submit falls into)."""
    from cinegen.server.limits import Limits

    with private_server(registry, limits=Limits(max_queue_per_client=2)) as running:
        channel, s = stub(running.address)
        blocker = s.Submit(tiny_request(tmp_path / "b", steps=400, width=64, height=64), timeout=30)
        while running.service.jobs.get(blocker.job_id).state != "running":
            time.sleep(0.05)
        barrier = threading.Barrier(4, timeout=20)
        validate = running.service.validate

        def validate_then_wait(request, **kw):
            spec = validate(request, **kw)
            barrier.wait()
            return spec
        monkeypatch.setattr(running.service, "validate", validate_then_wait)
        try:
            yield running, s
        finally:
            for job in running.service.jobs.jobs():
                s.Cancel(pb.CancelRequest(job_id=job.id), timeout=10)
            channel.close()


def submit_together(s, requests) -> list:
    answers: list = [None] * len(requests)

    def submit(i: int) -> None:
        try:
            answers[i] = s.Submit(requests[i], timeout=30)
        except grpc.RpcError as exc:
            answers[i] = exc
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def test_one_job_id_submitted_four_times_at_once_is_queued_once(held, tmp_path):
    running, s = held
    request = tiny_request(tmp_path, job_id="retried")
    answers = submit_together(s, [request] * 4)
    assert sorted(a.existing for a in answers) == [False, True, True, True]
    assert running.service.jobs.queued_count() == 1  # was 4: the job ran four times, failing on its own frame


def test_concurrent_submits_never_pass_the_queue_limit_together(held, tmp_path):
    running, s = held
    answers = submit_together(s, [tiny_request(tmp_path) for _ in range(4)])
    refused = [a for a in answers if isinstance(a, grpc.RpcError)]
    assert len(refused) == 2 and all(a.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for a in refused)
    assert "--max-queue-per-client" in refused[0].details()
    assert running.service.jobs.queued_count() == 2


def test_two_uploads_of_one_file_at_once_each_land_whole(registry):
    with private_server(registry) as running:
        channel, s = stub(running.address)
        b_done = threading.Event()

        def a_chunks():
            yield pb.UploadChunk(asset_id="plates", filename="p.exr", data=b"a" * 10)
            b_done.wait(20)
            yield pb.UploadChunk(data=b"a" * 10)
        answer: list = []
        thread = threading.Thread(target=lambda: answer.append(s.Upload(a_chunks(), timeout=30)))
        thread.start()
        while not list(running.service.uploads_dir.rglob(".p.exr.part*")):  # A's part file is open
            time.sleep(0.02)
        b = s.Upload(iter([pb.UploadChunk(asset_id="plates", filename="p.exr", data=b"b" * 10)]), timeout=30)
        b_done.set()
        thread.join(30)
        assert b.size == 10 and answer and answer[0].size == 20  # A was UNKNOWN: its part file was B's, renamed
        assert open(answer[0].path, "rb").read() == b"a" * 20  # the last one to finish, whole
        channel.close()


def test_an_upload_the_servers_disk_cannot_take_is_a_sentence(registry, monkeypatch):
    import errno
    import os

    with private_server(registry) as running:
        channel, s = stub(running.address)

        def full(*_args):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "replace", full)
        with pytest.raises(grpc.RpcError) as err:
            s.Upload(iter([pb.UploadChunk(filename="p.exr", data=b"x")]), timeout=30)
        monkeypatch.undo()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "disk is full" in err.value.details()
        assert not list(running.service.uploads_dir.rglob("*.part*"))  # was UNKNOWN, quoting the server's path
        channel.close()


def test_an_upload_that_fills_the_disk_leaves_no_part_file(registry, monkeypatch):
    """A write that fails on a full disk leaves bytes in the file's buffer; closing it in the clean-up failed the
    same way, so the hidden part file was never removed (the disk stayed fuller, and the part counted against
    --max-upload-total at every later start)."""
    import errno
    import io

    from cinegen.server import service

    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(service, "open", lambda path, mode: io.BufferedWriter(FullDisk(path, mode), 16),
                        raising=False)
    with private_server(registry) as running:
        channel, s = stub(running.address)
        with pytest.raises(grpc.RpcError) as err:
            s.Upload(iter([pb.UploadChunk(filename="p.exr", data=b"x" * 10), pb.UploadChunk(data=b"y" * 10)]),
                     timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "disk is full" in err.value.details()
        assert not list(running.service.uploads_dir.rglob("*.part*"))
        assert running.service._upload_bytes == 0
        channel.close()
