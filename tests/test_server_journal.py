"""The journal across an in-process stop and start with the same state folder: finished jobs replay,
stopped and queued jobs run again with the seed chosen at their first Submit, a job that can no longer
run is failed with the reason, and the database is SQLite in WAL mode."""
from __future__ import annotations

from cinegen.common.client import GeneratorClient

from server_kit import private_server, tiny_request


def _kinds(events):
    return [e.WhichOneof("kind") for e in events]


def test_jobs_survive_a_stop_and_start_of_the_server(registry, tmp_path):
    state, out, fenced = tmp_path / "state", tmp_path / "out", tmp_path / "fenced"
    fenced.mkdir()
    with private_server(registry, state) as first, GeneratorClient(first.address, timeout=30) as c:
        assert first.service.journal.journal_mode == "wal"
        done = c.run(tiny_request(out, job_id="j-done", seed=None))
        assert done.state == "completed"
        long = c.submit(tiny_request(out, job_id="j-long", steps=400, width=64, height=64, seed=None))
        c.submit(tiny_request(out, job_id="j-queued"))
        c.submit(tiny_request(tmp_path / "elsewhere", job_id="j-outside"))
        for event in c.watch(long.job_id):
            if event.WhichOneof("kind") == "started":
                seed_before = event.started.seed
            if event.WhichOneof("kind") == "progress":
                break  # stop the server while j-long runs
    with private_server(registry, state, output_roots=[out, fenced]) as second, \
            GeneratorClient(second.address, timeout=30) as c:
        listed = {j.job_id: j.state for j in c.list_jobs().jobs}
        assert listed["j-done"] == "completed" and listed["j-outside"] == "failed"
        replay = list(c.watch("j-done"))
        assert _kinds(replay)[0] == "queued" and _kinds(replay)[-1] == "completed"
        long_events, restarted = [], False
        for event in c.watch("j-long"):
            long_events.append(event)
            restarted = restarted or "after a server restart" in event.log.message
            if event.WhichOneof("kind") == "started" and restarted:
                c.cancel("j-long")  # its restart is proven by the seed it starts with, not by 400 steps
        starts = [e.started.seed for e in long_events if e.WhichOneof("kind") == "started"]
        assert len(starts) == 2 and starts[1] == starts[0] == seed_before, "the resumed job keeps its seed"
        assert long_events[-1].WhichOneof("kind") == "cancelled"
        assert any("stays queued" in e.log.message for e in long_events if e.WhichOneof("kind") == "log")
        queued = list(c.watch("j-queued"))
        assert _kinds(queued)[-1] == "completed"
        assert any("queued again" in e.log.message for e in queued if e.WhichOneof("kind") == "log")
        outside = list(c.watch("j-outside"))
        assert outside[-1].failed.code == "PERMISSION_DENIED" and "restart" in outside[-1].failed.message


def test_a_reordered_queue_keeps_its_order_across_a_restart(tmp_path):
    import threading

    from cinegen.common.proto import generator_pb2 as pb
    from cinegen.server.jobs import InProcessExecutor, Job, JobManager, Journal

    gate = threading.Event()
    journal = Journal(tmp_path / "jobs.sqlite")
    manager = JobManager(InProcessExecutor(lambda job, events: gate.wait(30) and []), journal=journal)
    for name in ("running", "a", "b", "c"):
        manager.submit(Job(id=name, request=pb.JobRequest(job_id=name)))
    deadline = threading.Event()
    while manager.get("running").state != "running" and not deadline.wait(0.05):
        pass
    manager.move("c", 0)
    manager.submit(Job(id="d", request=pb.JobRequest(job_id="d")))
    assert [j.id for j in journal.load() if j.state == "queued"] == ["c", "a", "b", "d"]
    gate.set()
    manager.stop()
    journal.close()
