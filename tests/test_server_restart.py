"""Durability, as a studio's server lives: `kill -9` mid-job and a restart with the same --state-dir
(queue restored in order, the interrupted job resumed keeping its frames, no temporary or truncated
frame left), then SIGTERM with a running job (watchers get a terminal event, the job stays queued in
the journal, exit 0). Real `cinegen serve` processes on loopback."""
from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cinegen.common.client import GeneratorClient
from cinegen.common.exr import read_exr_frame

from server_kit import tiny_request

START_TIMEOUT = 120  # seconds for a cold `cinegen serve` (torch import) on a busy CI machine


class ServeProcess:
    def __init__(self, state_dir: Path, cache: Path):
        env = {**os.environ, "CINEGEN_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("CINEGEN_TOKEN", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "cinegen.server.cli", "serve", "--port", "0",
                                      "--state-dir", str(state_dir), "--device", "cpu", "--no-hf-cache"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.address = self._wait_for_address()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.output.append(line)
            self.lines.put(line)

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.output)
                continue
            if line.startswith("cinegen server on"):
                port = line.split(":", 1)[1].split()[0]
                return f"127.0.0.1:{port}"
        raise AssertionError("cinegen serve did not start:\n" + "".join(self.output))

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("cinegen serve did not stop:\n" + "".join(self.output)) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _frames(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.exr")}


@pytest.mark.slow
@pytest.mark.timeout(900)  # two cold `cinegen serve` starts (torch imports) and four tiny jobs
def test_kill9_restart_then_sigterm(tmp_path, tiny_model_cache):
    state, out = tmp_path / "state", tmp_path / "out"
    first = ServeProcess(state, tiny_model_cache)
    try:
        with GeneratorClient(first.address, timeout=30) as c:
            a = c.submit(tiny_request(out, job_id="crash-a", frames=12))
            c.submit(tiny_request(out, job_id="crash-b", frames=1))
            c.submit(tiny_request(out, job_id="crash-c", frames=1))
            for event in c.watch(a.job_id):
                if event.WhichOneof("kind") == "frame_written":
                    break  # the first frame is on disk: the job is mid-write
            first.proc.send_signal(signal.SIGKILL)
            first.wait(10)
    finally:
        first.kill()
    before = _frames(out)
    assert 1 <= len(before) < 12, "the kill landed while job a was writing its frames"
    stale = out / ".crash-a.1011.exr.tmp-999-abcd1234"  # what a kill during a write leaves
    stale.write_bytes(b"")

    second = ServeProcess(state, tiny_model_cache)
    try:
        with GeneratorClient(second.address, timeout=30) as c:
            assert not stale.exists(), "stale temporary frames of journaled jobs are removed at start-up"
            listed = {j.job_id: j for j in c.list_jobs().jobs}
            assert set(listed) == {"crash-a", "crash-b", "crash-c"}
            results = {job_id: list(c.watch(job_id)) for job_id in ("crash-a", "crash-b", "crash-c")}
            for job_id, events in results.items():
                assert events[-1].WhichOneof("kind") == "completed", (job_id, events[-1])
                assert [e.seq for e in events] == list(range(1, len(events) + 1)), "one history across the restart"
            a_logs = [e.log.message for e in results["crash-a"] if e.WhichOneof("kind") == "log"]
            assert any("resuming" in m for m in a_logs)
            started = {j: next(e.time for e in ev if e.WhichOneof("kind") == "started" and e.time > ev[0].time)
                       for j, ev in results.items() if j != "crash-a"}
            assert started["crash-b"] < started["crash-c"], "queued jobs run again in their order"
            after = _frames(out)
            assert len(after) == 14
            assert all(after[name] == stamp for name, stamp in before.items()), "frames written before the kill are kept"
            assert not list(out.glob(".*tmp*")), "no temporary frame left"
            for path in out.glob("*.exr"):
                assert read_exr_frame(path)[0].shape == (32, 32, 4), f"{path} is whole"
            replay = list(c.watch("crash-b"))  # a finished job replays its events and terminal state
            assert replay[-1].WhichOneof("kind") == "completed"

            d = c.submit(tiny_request(out, job_id="term-d", steps=400, width=64, height=64))
            seen = []
            for event in c.watch(d.job_id):
                seen.append(event.WhichOneof("kind"))
                if seen[-1] == "progress" and seen.count("progress") == 1:
                    second.proc.send_signal(signal.SIGTERM)
            assert seen[-1] == "failed" and event.failed.code == "UNAVAILABLE", seen
            assert second.wait(60) == 0, "".join(second.output)
    finally:
        second.kill()
    with sqlite3.connect(state / "jobs.sqlite") as db:
        assert db.execute("SELECT state FROM jobs WHERE id='term-d'").fetchone() == ("queued",)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_during_a_job_is_a_clean_stop(tmp_path, tiny_model_cache):
    """SIGINT used to abort the process mid-job (`terminate called without an active exception`)."""
    server = ServeProcess(tmp_path / "state", tiny_model_cache)
    try:
        with GeneratorClient(server.address, timeout=30) as c:
            job = c.submit(tiny_request(tmp_path / "out", job_id="int-a", steps=400, width=64, height=64))
            sent = False
            for event in c.watch(job.job_id):  # the same stream carries the terminal event
                if event.WhichOneof("kind") == "progress" and not sent:
                    server.proc.send_signal(signal.SIGINT)
                    sent = True
            assert sent and event.failed.code == "UNAVAILABLE", event
        assert server.wait(60) == 0, "".join(server.output)
        assert "terminate called" not in "".join(server.output)
    finally:
        server.kill()
