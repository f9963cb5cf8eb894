"""Reorder: a queued job moves to another place in the server's queue; the jobs whose places changed hear
their new positions; running and finished jobs stay where they are; only the job's own client may move it."""
from __future__ import annotations

import threading

import pytest

from cinegen.common.client import GeneratorClient, RequestRejected
from cinegen.common.proto import generator_pb2 as pb
from cinegen.server.jobs import InProcessExecutor, Job, JobManager


@pytest.fixture()
def busy_queue():
    """A manager whose worker holds the first job until released: the others stay queued."""
    release, order = threading.Event(), []

    def run(job, events):
        order.append(job.id)
        release.wait(10)
        return []

    manager = JobManager(InProcessExecutor(run))
    for name in ("a", "b", "c", "d"):
        manager.submit(Job(id=name, request=pb.JobRequest(job_id=name)))
    yield manager, release, order
    release.set()
    manager.stop(timeout=10)


def _positions(manager, job_id):
    return [e.queued.position for e in manager.get(job_id).events if e.WhichOneof("kind") == "queued"]


def test_a_queued_job_moves_and_every_moved_job_hears_its_new_place(busy_queue):
    manager, release, order = busy_queue
    for _ in range(1000):  # until "a" runs (bounded): b, c, d are queued
        if order:
            break
        threading.Event().wait(0.01)
    assert manager.move("d", 0) == (0, ["d", "b", "c"])
    assert _positions(manager, "d")[-1] == 1 and _positions(manager, "b")[-1] == 2
    assert _positions(manager, "c")[-1] == 3
    assert manager.move("b", 99) == (2, ["d", "c", "b"])  # past the end = last
    assert manager.move("a", 0) == (-1, ["d", "c", "b"])  # running: stays where it is
    release.set()
    for _ in range(1000):  # bounded wait for the worker to drain the queue
        if len(order) == 4:
            break
        threading.Event().wait(0.01)
    assert order == ["a", "d", "c", "b"]  # the worker takes them in the new order


def test_reorder_over_grpc_is_for_the_jobs_own_client(running_server, tmp_path):
    service = running_server.service
    blocker = threading.Event()
    real_run = service._run_job

    def held(job, manager):
        blocker.wait(20)
        return real_run(job, manager)

    service.jobs._executor = InProcessExecutor(held)
    try:
        with GeneratorClient(running_server.address, client_id="panel-a") as mine, \
                GeneratorClient(running_server.address, client_id="panel-b") as other:
            ids = []
            for n in range(3):
                request = pb.JobRequest(job_id=f"reorder-{n}", pipeline="image", common=pb.CommonParams(
                    model="tiny-sd", width=64, height=64, steps=1, out=str(tmp_path / f"r{n}" / "f.####.exr")))
                ids.append(mine.submit(request).job_id)
            reply = mine.reorder(ids[2], 0)
            assert list(reply.queued)[:2] == [ids[2], ids[1]] and reply.position == 0
            with pytest.raises(RequestRejected) as refused:
                other.reorder(ids[1], 0)
            assert refused.value.code == "PERMISSION_DENIED"
    finally:
        service.jobs._executor = InProcessExecutor(real_run)
        blocker.set()
