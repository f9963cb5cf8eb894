"""A "remote" Ray cluster: a head started as its own process (`ray start --head --block` in a temporary
folder), and `cinegen serve --ray ADDRESS` in another, whose workers run in the head's cluster; a job
through the gRPC front is split over them and gives the in-process frames.

The head is stopped by its process group (the one this test started), not by `ray stop`: `ray stop`
ends every Ray process on the machine by name, other people's clusters too."""
from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from cinegen.common.client import GeneratorClient, build_request
from cinegen.common.exr import read_exr_frame
from cinegen.common.params import CommonParams, ImageParams

pytestmark = pytest.mark.slow  # a Ray head, a server and its workers: separate processes, ~30 s
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
START_S = 120  # bounds for each process to come up on a busy 2-core machine
# a throwaway test cluster on loopback: no token (Ray 2.5x asks one of every new cluster by default)
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


class Process:
    """A child process in its own process group, its output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, what: str) -> re.Match:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, f"{what} ended:\n" + "".join(self.output)
                continue
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"{what} did not come up in {START_S} s:\n" + "".join(self.output))

    def stop_group(self, grace_s: float) -> None:
        """SIGTERM to the group, then SIGKILL to what is left after `grace_s`."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # Ray's raylet and GCS may linger past SIGTERM
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    if RAY is None:
        pytest.skip("the `ray` command is missing (pip install 'cinegen[ray]'); the remote-cluster test skips")
    # a short path: Ray's unix sockets live under it (108 characters at most)
    temp = tempfile.mkdtemp(prefix="cg-ray-", dir="/tmp")
    port = _free_port()
    process = Process([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp}",
                       "--include-dashboard=false", "--disable-usage-stats", "--block"], ENV)
    try:
        process.wait_for(r"block forever", "ray start --head")
        yield f"127.0.0.1:{port}", process
    finally:
        process.stop_group(grace_s=5)
        shutil.rmtree(temp, ignore_errors=True)


def test_serve_with_the_address_of_a_separately_started_head_runs_the_job_on_its_workers(head, client, tmp_path,
                                                                                         tiny_model_cache):
    address, head_process = head
    serve = Process([sys.executable, "-m", "cinegen.server.cli", "-v", "serve", "--port", "0", "--state-dir",
                     str(tmp_path / "state"), "--no-hf-cache", "--ray", address, "--ray-workers", "2"],
                    {**ENV, "CINEGEN_CACHE": str(tiny_model_cache)})
    try:
        port = serve.wait_for(r"^cinegen server on [\d.]+:(\d+)", "cinegen serve --ray").group(1)
        common = dict(seed=9, steps=2, width=64, height=64, frames=8, prompt="a harbour crane")
        events: list = []
        with GeneratorClient(f"127.0.0.1:{port}", timeout=60) as remote:
            result = remote.run(build_request("image", CommonParams(out=str(tmp_path / "ray" / "i.####.exr"), **common),
                                              ImageParams(), job_id=f"remote-{uuid.uuid4().hex[:8]}"),
                                on_event=events.append)
        assert result.state == "completed", result.message + "".join(serve.output)
        serve.proc.send_signal(signal.SIGTERM)  # the graceful stop: workers killed, exit 0
        assert serve.proc.wait(60) == 0, "".join(serve.output)
    finally:
        if serve.proc.poll() is None:
            serve.stop_group(grace_s=5)
    logs = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    assert "ray: 2 units on 2 worker(s): frames 1001-1004, frames 1005-1008" in logs
    assert {m.split(" on ")[1] for m in logs if re.match(r"ray: frames \d+-\d+ on ", m)} == {"worker 1", "worker 2"}
    # the workers are processes of the head's cluster (its process group), not of the server
    pids = [int(p) for p in re.findall(r"ray: worker \d: pid (\d+)", "".join(serve.output))]
    assert len(pids) == 2, "".join(serve.output)
    in_head = []
    for pid in pids:
        try:
            in_head.append(os.getpgid(pid) == head_process.proc.pid)
        except ProcessLookupError:  # already gone: the server killed its workers on the way out
            in_head.append(True)
    assert all(in_head) and serve.proc.pid not in pids
    reference = client.run(build_request("image", CommonParams(out=str(tmp_path / "box" / "i.####.exr"), **common),
                                         ImageParams()))
    assert reference.state == "completed", reference.message
    box, ray_frames = (sorted((tmp_path / name).glob("*.exr")) for name in ("box", "ray"))
    assert [p.name for p in ray_frames] == [p.name for p in box] and len(box) == 8
    for a, b in zip(box, ray_frames):
        # other processes, other torch thread counts (other sums' order): equal up to a half-float ulp
        np.testing.assert_allclose(read_exr_frame(b)[0], read_exr_frame(a)[0], atol=2e-3, rtol=2e-3)
