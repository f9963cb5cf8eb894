"""The `cinegen` command's job lifecycle as a shell or a farm uses it: Ctrl-C / SIGTERM, exit codes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from cinegen.common.client import GeneratorClient


def _cli(*argv: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("CINEGEN_TOKEN", None)
    return subprocess.Popen([sys.executable, "-m", "cinegen.server.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)


def _signal_once_running(proc: subprocess.Popen, signum: int, marker: bytes = b"denoise") -> str:
    """Send `signum` once the job's progress shows; the command's whole output."""
    output = bytearray()

    def pump() -> None:
        sent = False
        while chunk := os.read(proc.stdout.fileno(), 4096):  # type: ignore[union-attr]
            output.extend(chunk)
            if not sent and marker in output:
                proc.send_signal(signum)
                sent = True

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    proc.wait(timeout=120)
    reader.join(10)
    return output.decode(errors="replace")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_generate_cancels_its_job_on_the_server(running_server, tmp_path, signum):
    """Ctrl-C (or a farm's SIGTERM) used to print a traceback and leave the job running on --server."""
    job_id = f"cli-int-{uuid.uuid4().hex[:8]}"
    proc = _cli("generate", "image", "--server", running_server.address, "--job-id", job_id, "--prompt", "a disc",
                "--steps", "500", "--frames", "2", "--width", "64", "--height", "64",
                "--out", str(tmp_path / "int.####.exr"))
    output = _signal_once_running(proc, signum)
    assert proc.returncode == 128 + signum, output
    assert "Traceback" not in output and f"job {job_id} cancelled" in output, output
    with GeneratorClient(running_server.address, timeout=30) as client:
        deadline = time.monotonic() + 30
        while (state := next(j.state for j in client.list_jobs().jobs if j.job_id == job_id)) == "running" \
                and time.monotonic() < deadline:
            time.sleep(0.1)
    assert state == "cancelled"
    assert not list(tmp_path.iterdir()), "no frame, and no temporary frame, of the cancelled job"
