"""Concurrent Submits as third-party clients make them (a retry after a deadline, a script firing a batch):
the job id check and the queue limits hold together with the insert into the queue."""
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
