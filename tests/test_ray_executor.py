"""Ray behind the same gRPC front, on a local Ray instance of 2 CPU workers and the tiny models: an
8-shot story on 1 and on 2 workers gives the same frames (and in-process ones up to rounding), events arrive in order in
the job's one stream, a worker killed mid-unit has its unit run again, and a cancel stops every unit."""
from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from cinegen.common.client import GeneratorClient, build_request
from cinegen.common.exr import read_exr_frame
from cinegen.common.params import CommonParams, ImageParams, StoryParams

pytestmark = pytest.mark.slow  # a local Ray instance and its workers take ~20 s to start
ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'cinegen[ray]'); its tests skip")

from cinegen.server.scaleout.ray_executor import (RayUnitRunner, WorkerConfig, create_workers,  # noqa: E402
                                                      start_local_ray)

SHOTS = "".join(f"  - id: sh{10 * (k + 1):03d}\n    prompt: shot {k} of the harbour\n    frames: 2\n"
                + ("    continuity: true\n" if k == 2 else "") for k in range(8))
STORY = f"title: Eight Shots\nfps: 24\nstyle: grey dawn\nshots:\n{SHOTS}"
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def workers(tiny_model_cache):
    start_local_ray(num_cpus=2)  # its own instance, started again if Ray's 30 s raylet wait runs out
    try:
        # one torch thread each: 2 workers on 2 cores, and the same kernels on every worker
        config = WorkerConfig(use_hf_cache=False, cache_dir=str(tiny_model_cache), threads=1)
        yield create_workers(config, 2, {"num_cpus": 1})
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_servers(workers, registry):
    """Two gRPC servers on the same Ray workers: one that uses the first worker only, one that uses both."""
    from cinegen.server.server import start_server
    from cinegen.server.service import GeneratorService, ServerConfig

    servers = {}
    for count in (1, 2):
        config = ServerConfig(port=0, use_hf_cache=False, max_width=1024, max_height=1024)
        servers[count] = start_server(config, GeneratorService(config, registry=registry,
                                                               unit_runner=RayUnitRunner(workers[:count])))
    yield servers
    for running in servers.values():
        running.stop()


def _client(running) -> GeneratorClient:
    return GeneratorClient(running.address, timeout=30)


def _story(out: Path, **common) -> object:
    c = dict(seed=21, steps=1, width=64, height=64, out=str(out))
    c.update(common)
    return build_request("story", CommonParams(**c), StoryParams(story_yaml=STORY), job_id=f"ray-{uuid.uuid4().hex[:8]}")


def _frames(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): read_exr_frame(p)[0] for p in sorted(folder.glob("sh*/*.exr"))}


def _files(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_an_eight_shot_story_on_one_and_two_workers_is_identical_and_matches_the_in_process_run(ray_servers, client, tmp_path):
    one_box = client.run(_story(tmp_path / "box"))
    assert one_box.state == "completed", one_box.message
    in_process = _frames(tmp_path / "box")
    assert len(in_process) == 16
    reference = None
    for count, running in ray_servers.items():
        events = []
        with _client(running) as ray_client:
            result = ray_client.run(_story(tmp_path / f"ray{count}"), on_event=events.append)
        assert result.state == "completed", result.message
        frames = _frames(tmp_path / f"ray{count}")
        reference = reference or frames
        assert frames.keys() == reference.keys() == in_process.keys()
        for name in reference:
            # 1 and 2 workers: the same ops in the same order (one torch thread each), bit for bit
            assert np.array_equal(frames[name], reference[name]), (count, name)
            # in-process torch may use other thread counts (other sums' order): equal up to a half-float ulp
            np.testing.assert_allclose(frames[name], in_process[name], atol=2e-3, rtol=2e-3)
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), "one stream, in order, nothing lost"
        fractions = [e.progress.fraction for e in events if e.WhichOneof("kind") == "progress"]
        assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
        written = [e.frame_written.path for e in events if e.WhichOneof("kind") == "frame_written"]
        assert sorted(Path(p).relative_to(tmp_path / f"ray{count}").as_posix() for p in written) == sorted(reference)
        assert any("10 units on" in e.log.message for e in events if e.WhichOneof("kind") == "log")
        timelines = list((tmp_path / f"ray{count}").glob("*.otio"))
        assert len(timelines) == 1 and str(timelines[0]) in result.outputs, "the cut, written once all shots are in"


def _wait_for(stream, predicate, what: str):
    deadline = time.monotonic() + TIMEOUT_S
    for event in stream:
        if predicate(event):
            return event
        assert time.monotonic() < deadline, f"no {what} within {TIMEOUT_S} s"
    raise AssertionError(f"the job ended before {what}")


def test_a_cancel_stops_every_running_unit(ray_servers, tmp_path):
    out = tmp_path / "img.####.exr"
    with _client(ray_servers[2]) as ray_client:
        ticket = ray_client.submit(build_request("image", CommonParams(
            out=str(out), seed=8, steps=200, width=64, height=64, frames=8, prompt="a long exposure"), ImageParams()))
        seen: set[str] = set()

        def both_chunks_running(event) -> bool:
            if event.WhichOneof("kind") == "progress":
                seen.add(event.progress.stage.split(" denoise")[0])
            return len(seen) >= 2

        stream = ray_client.watch(ticket.job_id)
        _wait_for(stream, both_chunks_running, "both chunks denoising at once")
        ray_client.cancel(ticket.job_id)
        last = _wait_for(stream, lambda e: e.WhichOneof("kind") in ("completed", "failed", "cancelled"), "the end")
    assert seen == {"frames 1001-1004", "frames 1005-1008"}
    assert last.WhichOneof("kind") == "cancelled"
    time.sleep(1.5)  # a unit still running would write a frame by now (its 200 steps end long before)
    assert not list(tmp_path.glob("*.exr")) and not list(tmp_path.glob(".*")), "a unit kept running after the cancel"
    for worker in ray_servers[2].service.unit_runner.workers:  # both workers are free again at once
        assert ray.get(worker.pid.remote(), timeout=10) > 0


def test_a_worker_killed_mid_unit_has_its_unit_run_again_and_the_frames_are_whole(ray_servers, workers, tmp_path):
    common = dict(seed=4, steps=30, width=64, height=64, frames=8, prompt="a harbour crane")
    with _client(ray_servers[1]) as ray_client:  # the reference, on the first worker alone
        reference = ray_client.run(build_request("image", CommonParams(out=str(tmp_path / "box" / "img.####.exr"),
                                                                       **common), ImageParams()))
    assert reference.state == "completed", reference.message
    victim = ray.get(workers[0].pid.remote())
    with _client(ray_servers[2]) as ray_client:
        ticket = ray_client.submit(build_request("image", CommonParams(out=str(tmp_path / "ray" / "img.####.exr"),
                                                                       **common), ImageParams()))
        stream = ray_client.watch(ticket.job_id)
        # the first unit goes to the first idle worker: kill it while it denoises
        _wait_for(stream, lambda e: e.WhichOneof("kind") == "progress" and e.progress.stage.startswith("frames 1001"),
                  "the first chunk running")
        os.kill(victim, signal.SIGKILL)
        events = list(stream)
    assert events[-1].WhichOneof("kind") == "completed", events[-1]
    logs = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    assert any("frames 1001-1004 was lost" in m and "attempt 2" in m for m in logs), logs
    box, cluster = (sorted((tmp_path / name).glob("*.exr")) for name in ("box", "ray"))
    assert [p.name for p in cluster] == [p.name for p in box] == [f"img.{f}.exr" for f in range(1001, 1009)]
    for a, b in zip(box, cluster):
        assert np.array_equal(read_exr_frame(a)[0], read_exr_frame(b)[0]), b.name


def test_serve_with_ray_but_without_the_extra_says_how_to_install_it(monkeypatch, registry):
    import sys

    from cinegen.server.scaleout.ray_executor import start_ray_runner
    from cinegen.server.service import ServerConfig

    monkeypatch.setitem(sys.modules, "ray", None)  # as on a machine without the extra
    with pytest.raises(SystemExit, match=r"pip install 'cinegen\[ray\]'"):
        start_ray_runner(ServerConfig(ray="local"), registry)


def test_a_local_ray_whose_raylet_misses_rays_30_s_is_started_again(monkeypatch):
    calls, shutdowns = [], []

    def init(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(1))
    start_local_ray(num_cpus=2)
    assert len(calls) == 2 and shutdowns == [1] and all(c["address"] == "local" for c in calls)
    calls.clear()
    monkeypatch.setattr(ray, "init", lambda **kw: (_ for _ in ()).throw(ValueError("bad address")))
    with pytest.raises(ValueError):  # anything else is not retried
        start_local_ray(num_cpus=2)
