"""The `cinegen` command's job lifecycle as a shell or a farm uses it: Ctrl-C / SIGTERM, exit codes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
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


@pytest.mark.parametrize("failure", ["ENOSPC", "writer without errno"])
def test_a_full_disk_fails_the_job_saying_what_to_do_and_leaves_no_temporary_frame(client, tmp_path, monkeypatch,
                                                                                    failure):
    """A full disk used to fail the job as an 'unexpected error ... please report it' with a temporary path."""
    from cinegen.common import exr
    from cinegen.common.client import build_request
    from cinegen.common.params import CommonParams
    from cinegen.server.output import write_errors

    real_write = exr._write_with_oiio

    def second_frame_fills_the_disk(path, spec, pixels):
        if ".i.1002.exr.tmp-" not in path:
            return real_write(path, spec, pixels)
        with open(path, "wb") as partial:  # what a full disk leaves: part of a file under the temporary name
            partial.write(b"\x76\x2f\x31\x01" + bytes(100))
        if failure == "ENOSPC":
            raise OSError(28, "No space left on device")
        raise exr.ExrWriteError(f"Could not write the EXR frame '{path}': Failed OpenEXR write")  # OIIO: no errno

    monkeypatch.setattr(exr, "_write_with_oiio", second_frame_fills_the_disk)
    monkeypatch.setattr(write_errors.shutil, "disk_usage", lambda folder: type("Usage", (), {"free": 1000})())
    common = CommonParams(prompt="x", seed=1, steps=1, width=64, height=64, frames=3, out=str(tmp_path / "i.####.exr"))
    result = client.run(build_request("image", common, job_id=f"full-{uuid.uuid4().hex[:8]}"))
    assert (result.state, result.code) == ("failed", "RESOURCE_EXHAUSTED"), result.message
    assert f"The disk holding {tmp_path} is full: frame i.1002.exr" in result.message
    assert "Free space there" in result.message and "unexpected" not in result.message
    assert sorted(os.listdir(tmp_path)) == ["i.1001.exr"], "the complete frame stays, no temporary file"


def test_a_write_refused_by_the_folder_says_to_fix_its_permissions(client, tmp_path, monkeypatch):
    from cinegen.common import exr
    from cinegen.common.client import build_request
    from cinegen.common.params import CommonParams

    def read_only(path, spec, pixels):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(exr, "_write_with_oiio", read_only)
    common = CommonParams(prompt="x", seed=1, steps=1, width=64, height=64, frames=1, out=str(tmp_path / "r.####.exr"))
    result = client.run(build_request("image", common, job_id=f"ro-{uuid.uuid4().hex[:8]}"))
    assert (result.state, result.code) == ("failed", "FAILED_PRECONDITION"), result.message
    assert "Read-only file system" in result.message and "permissions" in result.message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_port_out_of_range_is_refused_not_wrapped(port, capsys):
    """`serve --port 99999` used to listen on 34463 (99999 - 65536) without a word."""
    from cinegen.server.cli import build_parser

    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["serve", "--port", port])
    assert exit.value.code == 2 and "is not a port number (0-65535)" in capsys.readouterr().err


def test_a_state_dir_that_cannot_be_a_folder_is_a_sentence(tmp_path):
    """`serve --state-dir` under a file used to end in a NotADirectoryError traceback."""
    from cinegen.server.cli import build_parser
    from cinegen.server.job_client import server_config

    (tmp_path / "afile").write_text("x")
    args = build_parser().parse_args(["serve", "--state-dir", str(tmp_path / "afile" / "state")])
    with pytest.raises(SystemExit, match=r"Cannot keep the job journal in .*afile/state \(Not a directory\); give "
                       "--state-dir a folder"):
        server_config(args, host=args.host, port=args.port)


def test_the_demos_look_command_can_be_pasted_in_a_folder_with_spaces(tmp_path, monkeypatch, capsys):
    """The demo's `oiiotool --info -v PATH` hint used to split a path with a space into two arguments."""
    import shlex

    from cinegen.server import demo
    from cinegen.server.cli import main

    monkeypatch.setattr(demo, "demo_jobs", lambda out: [])  # the closing hint only, no jobs
    assert main(["demo", "--out", str(tmp_path / "my demo"), "--no-hf-cache"]) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if "oiiotool" in line)
    assert shlex.split(hint)[-1] == str(tmp_path / "my demo" / "image" / "demo.1001.exr")


@pytest.mark.parametrize("where", ["PYTHON", "existing venv"])
def test_setup_says_which_python_is_too_old_before_installing_anything(tmp_path, where):
    """With Python 3.9, `./setup.sh demo` used to make a 3.9 venv (reused by every later run) and stop on
    pip's 'ResolutionImpossible' for torch, never naming the Python version."""
    from pathlib import Path

    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\necho 3.9\n")  # answers the version question as Python 3.9 would
    old.chmod(0o755)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(CINEGEN_VENV=str(venv), PYTHON=str(old))
    if where == "existing venv":
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(old)
        env["PYTHON"] = sys.executable
    setup = Path(__file__).resolve().parents[1] / "setup.sh"
    done = subprocess.run(["bash", str(setup), "demo"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "needs Python 3.10 or newer" in done.stderr and "is Python 3.9" in done.stderr
    assert "PYTHON=/path/to/python3.11 ./setup.sh demo" in done.stderr
    assert (f"rm -rf {venv}" in done.stderr) == (where == "existing venv")
    assert (venv.exists()) == (where == "existing venv"), "no venv made with the old Python"


def test_a_server_that_does_not_answer_is_said_while_waiting(monkeypatch, capsys):
    """`--server` at a port nothing listens on used to be 30 s of silence before the error."""
    import socket

    from cinegen.server import job_client
    from cinegen.server.cli import main

    with socket.socket() as probe:  # a free port, closed again: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(job_client, "SERVER_PATIENCE", 1.5, raising=False)
    monkeypatch.setattr(job_client, "QUIET_WAIT", 0.3, raising=False)
    assert main(["models", "--server", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    notice, error = err.index("no answer yet from the server at"), err.index("Can't reach the cinegen server")
    assert notice < error and "check --server, or Ctrl-C to stop" in err


def test_a_job_stopped_by_a_server_restart_is_followed_again_with_its_job_id(registry, tmp_path, capsys):
    """The shutdown event said 'watch it again then' with no way to from the shell; the CLI now names the
    rerun with --job-id, which follows the restored job to its frames instead of queueing a new one."""
    from server_kit import private_server

    from cinegen.server.cli import main

    state, job_id = tmp_path / "state", f"restart-{uuid.uuid4().hex[:8]}"
    argv = ["generate", "image", "--job-id", job_id, "--prompt", "a disc", "--steps", "120", "--width", "64",
            "--height", "64", "--out", str(tmp_path / "out" / "r.####.exr")]
    codes: list[int] = []
    with private_server(registry, state_dir=state) as first:
        cli = threading.Thread(target=lambda: codes.append(main([*argv, "--server", first.address])))
        cli.start()
        with GeneratorClient(first.address, timeout=30) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(j.job_id == job_id and j.state == "running"
                                                          for j in client.list_jobs().jobs):
                time.sleep(0.05)
        first.stop(grace=0.5)
        cli.join(60)
    assert codes == [1]
    assert f"run this same command again with --job-id {job_id}" in capsys.readouterr().err
    with private_server(registry, state_dir=state) as second:
        assert main([*argv, "--server", second.address]) == 0
        with GeneratorClient(second.address, timeout=30) as client:
            assert [j.job_id for j in client.list_jobs().jobs] == [job_id], "the same job, not a second one"
    assert (tmp_path / "out" / "r.1001.exr").is_file()


def _frame_job(path) -> str:
    from cinegen.common.exr import read_exr_frame

    return read_exr_frame(path)[1]["cinegen:job"]


def test_an_overwrite_job_resumed_after_a_restart_still_replaces_the_old_frames(registry, tmp_path):
    """A resumed job kept every frame at its paths as its own: an --overwrite job interrupted by a restart
    left the old sequence's frames in place (and reported them as its output)."""
    from server_kit import private_server, tiny_request

    state, out = tmp_path / "state", tmp_path / "out"
    old = tiny_request(out, job_id="old-seq", frames=2, width=64, height=64)
    old.common.out = str(out / "s.####.exr")
    new = tiny_request(out, job_id=f"ow-{uuid.uuid4().hex[:6]}", frames=2, width=64, height=64, steps=150, seed=9,
                       overwrite=True)
    new.common.out = old.common.out
    with private_server(registry, state_dir=state) as first:
        with GeneratorClient(first.address, timeout=30) as client:
            assert client.run(old).state == "completed"
            client.submit(new)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(j.job_id == new.job_id and j.state == "running"
                                                          for j in client.list_jobs().jobs):
                time.sleep(0.05)
        first.stop(grace=0.5)  # the overwrite job stops mid-way and stays queued in the journal
    assert [_frame_job(out / f"s.{f}.exr") for f in (1001, 1002)] == ["old-seq"] * 2
    with private_server(registry, state_dir=state) as second:
        with GeneratorClient(second.address, timeout=30) as client:
            events = list(client.watch(new.job_id))
    assert events[-1].WhichOneof("kind") == "completed", events[-1]
    assert [_frame_job(out / f"s.{f}.exr") for f in (1001, 1002)] == [new.job_id] * 2


def test_a_second_server_on_the_same_state_dir_is_refused(registry, tmp_path):
    """Two servers on one --state-dir (two GPUs, the default folder): the second took the first's running
    job for an interrupted one and ran it again beside it."""
    from server_kit import private_server

    with private_server(registry, state_dir=tmp_path) as first:
        with GeneratorClient(first.address, timeout=30) as client:
            assert client.list_jobs() is not None
        with pytest.raises(SystemExit, match=rf"Another cinegen server \(process {os.getpid()}\) uses the state "
                           rf"folder {tmp_path}; give each server its own --state-dir"):
            with private_server(registry, state_dir=tmp_path):
                pass
    with private_server(registry, state_dir=tmp_path):  # the first one's stop (or death) frees the folder
        pass


def test_a_full_disk_outside_the_frame_writer_is_not_called_a_bug():
    """A full disk while writing a story's cut or keyframes failed as 'unexpected error ... please report it'."""
    from cinegen.common.proto import generator_pb2 as pb
    from cinegen.server.jobs import InProcessExecutor, Job, JobManager

    def writes_a_cut(job, events):
        raise OSError(28, "No space left on device", "/shows/previz/My_Story.otio")

    manager = JobManager(InProcessExecutor(writes_a_cut))
    try:
        job, _ = manager.submit(Job(id="cut", request=pb.JobRequest(job_id="cut", pipeline="story")))
        failed = [e for e in manager.watch(job.id, 0) if e.WhichOneof("kind") == "failed"][0].failed
    finally:
        manager.stop()
    assert failed.code == "RESOURCE_EXHAUSTED"
    assert failed.message == ("A disk the job writes to is full (/shows/previz/My_Story.otio). Free space there or "
                              "choose another output folder, then submit again.")


def test_relative_plate_and_lora_paths_are_sent_as_this_shells_paths(tmp_path, monkeypatch):
    """`--input`/`--lora` relative paths went to --server as they were, so a server started in another folder
    looked for the plate there (NOT_FOUND naming the server's folder); --out was already made absolute.
    And `generate upscale --lora` crashed (TypeError): the list went into upscale's deprecated text field too."""
    import contextlib

    from cinegen.common.client import JobResult
    from cinegen.server import cli

    sent = []
    monkeypatch.setattr(cli, "connect", lambda args: contextlib.nullcontext(None))
    monkeypatch.setattr(cli, "run_job", lambda client, request, name: sent.append(request) or
                        JobResult(request.job_id, "completed", []))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "upscale", "--server", "gpu01:50051", "--input", "plates/sh010.####.exr",
                     "--lora", "loras/style.safetensors:0.5", "--lora", "a.safetensors,b.safetensors",
                     "--out", "up/sh010.####.exr"]) == 0
    request = sent[0]
    assert request.upscale.input == str(tmp_path / "plates" / "sh010.####.exr")
    assert list(request.common.lora) == [f"{tmp_path}/loras/style.safetensors:0.5",
                                         f"{tmp_path}/a.safetensors,{tmp_path}/b.safetensors"]
    assert request.common.out == str(tmp_path / "up" / "sh010.####.exr")


def test_a_server_lost_mid_job_names_the_rerun_that_finds_the_job_again(monkeypatch, capsys):
    import contextlib

    from cinegen.common.client import ServerUnavailable
    from cinegen.server import cli

    class LostServer:
        def run(self, request, on_event=None):
            raise ServerUnavailable("Can't reach the cinegen server at gpu01:50051. Start it with `cinegen serve` "
                                    "(or check the address and port in the settings), then try again.")

    monkeypatch.setattr(cli, "connect", lambda args: contextlib.nullcontext(LostServer()))
    assert cli.main(["generate", "image", "--server", "gpu01:50051", "--job-id", "sh010-v3",
                     "--out", "/tmp/x.####.exr"]) == 2
    err = capsys.readouterr().err
    assert "run this same command again with --job-id sh010-v3: it follows the job if the server has it" in err


def test_an_output_folder_swapped_for_a_link_while_queued_is_refused_when_the_job_starts(registry, tmp_path):
    """The roots were checked at Submit only: a folder inside --output-root replaced by a link to elsewhere
    while the job waited in the queue took its frames outside the root."""
    from server_kit import private_server, tiny_request

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sh010").mkdir(parents=True)
    outside.mkdir()
    blocker = tiny_request(root, job_id=f"blk-{uuid.uuid4().hex[:6]}", steps=400, width=64, height=64)
    queued = tiny_request(root / "sh010", job_id=f"sw-{uuid.uuid4().hex[:6]}")
    with private_server(registry, state_dir=tmp_path / "state", output_roots=[root]) as running:
        with GeneratorClient(running.address, timeout=30) as client:
            client.submit(blocker)
            client.submit(queued)  # checked now: inside the root
            (root / "sh010").rmdir()
            (root / "sh010").symlink_to(outside, target_is_directory=True)
            client.cancel(blocker.job_id)
            failed = [e for e in client.watch(queued.job_id) if e.WhichOneof("kind") == "failed"]
    assert failed and failed[0].failed.code == "PERMISSION_DENIED", failed
    assert "outside the folders this server may use" in failed[0].failed.message
    assert os.listdir(outside) == []


@pytest.mark.parametrize("links", ["hard links", "a share without hard links"])
def test_a_frame_another_server_publishes_meanwhile_is_never_written_over(tmp_path, monkeypatch, links):
    """Two servers writing one sequence: the no-overwrite check ran when the frame was queued and the frame was
    then renamed over whatever had landed meanwhile (the other server's frame, silently replaced)."""
    from cinegen.common import exr
    from cinegen.common.exr import ExrMetadata
    from cinegen.common.sequence import SequencePattern
    from cinegen.server.errors import AlreadyExists
    from cinegen.server.output.frames import FrameSink

    real_check = exr._check_readable_exr
    theirs = tmp_path / "s.1001.exr"

    def other_server_publishes_first(path):
        real_check(path)
        if not theirs.exists():
            theirs.write_bytes(b"the other server's frame")

    monkeypatch.setattr(exr, "_check_readable_exr", other_server_publishes_first)
    if links != "hard links":
        monkeypatch.setattr(os, "link", lambda *args: (_ for _ in ()).throw(PermissionError(1, "Operation not permitted")))
    sink = FrameSink(SequencePattern.parse(str(tmp_path / "s.####.exr")), 1001, ExrMetadata(pipeline="t", job="mine"),
                     existing="refuse")
    sink.write(0, np.full((8, 8, 3), 0.5, np.float32))
    with pytest.raises(AlreadyExists, match="appeared while the job was writing it"):
        sink.flush()
    assert theirs.read_bytes() == b"the other server's frame"
    assert os.listdir(tmp_path) == ["s.1001.exr"], "no temporary frame left"


@pytest.mark.parametrize("reply, said", [(dict(cancelled=True, state="running"), "cancelled (it stops at its next"),
                                         (dict(cancelled=False, state="completed"), "completed; its frames are"),
                                         (dict(cancelled=False, state="failed"), "had ended (failed)")])
def test_an_interrupt_says_what_became_of_the_job(reply, said):
    """A job that had already failed when Ctrl-C came was reported as cancelled."""
    from cinegen.common.proto import generator_pb2 as pb
    from cinegen.server.job_client import cancel_interrupted

    class Client:
        timeout = 60.0

        def cancel(self, job_id):
            return pb.CancelReply(**reply)

    assert said in cancel_interrupted(Client(), "j1")


def test_a_sequence_named_with_an_underscore_is_summarised_as_one_line():
    """`--out sh010_####.exr` (or `%02d`) listed every frame on its own line: only NAME.####.exr was grouped."""
    from cinegen.server.job_client import summarise_paths

    assert summarise_paths([f"/s/sh010_{f}.exr" for f in range(1001, 1101)]) == ["/s/sh010_####.exr (1001-1100, "
                                                                                  "100 frames)"]
    assert summarise_paths(["/s/a.01.exr", "/s/a.02.exr", "/s/cut.otio"]) == ["/s/a.##.exr (1-2, 2 frames)",
                                                                              "/s/cut.otio"]


def test_an_overwrite_shorter_than_the_old_sequence_says_the_old_tail_remains(client, tmp_path):
    """Re-rendering a shot shorter with --overwrite left the old tail beside the new frames without a word."""
    from cinegen.common.client import build_request
    from cinegen.common.params import CommonParams

    out = str(tmp_path / "sh.####.exr")
    old = CommonParams(prompt="x", seed=1, steps=1, width=64, height=64, frames=4, out=out)
    assert client.run(build_request("image", old, job_id=f"long-{uuid.uuid4().hex[:6]}")).state == "completed"
    short = CommonParams(prompt="x", seed=2, steps=1, width=64, height=64, frames=2, out=out, overwrite=True)
    ticket = client.submit(build_request("image", short, job_id=f"short-{uuid.uuid4().hex[:6]}"))
    events = list(client.watch(ticket.job_id))
    assert events[-1].WhichOneof("kind") == "completed"
    warnings = [e.log.message for e in events if e.WhichOneof("kind") == "log" and e.log.level == "warning"]
    assert warnings == [f"2 frame(s) of {out} from an earlier run remain beside this job's frames (1003-1004); a "
                        "Read node shows them as part of the sequence: delete them if they are not wanted."]
    assert len(os.listdir(tmp_path)) == 4, "never deleted"


def test_a_farm_task_retried_keeps_the_frames_its_first_attempt_finished(registry, tmp_path):
    """An export-job step (fixed --job-id and --seed, an in-process server per attempt) retried by the farm after
    it died mid-chunk was refused forever: ALREADY_EXISTS for the frames its own first attempt had written."""
    from server_kit import private_server

    from cinegen.common.client import RequestRejected, build_request
    from cinegen.common.params import CommonParams

    def attempt(**change):
        common = dict(prompt="a disc", seed=5, steps=1, width=64, height=64, frames=8, frame_range="1001-1004",
                      out=str(tmp_path / "f.####.exr"))
        with private_server(registry) as fresh, GeneratorClient(fresh.address, timeout=30) as client:
            return client.run(build_request("image", CommonParams(**{**common, **change}), job_id="farm-j1"))

    assert attempt().state == "completed"
    (tmp_path / "f.1003.exr").unlink()  # the first attempt died before these two
    (tmp_path / "f.1004.exr").unlink()
    kept = {n: (tmp_path / n).stat().st_mtime_ns for n in ("f.1001.exr", "f.1002.exr")}
    retry = attempt()
    assert retry.state == "completed", retry.message
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in kept} == kept, "the finished frames are not rewritten"
    assert (tmp_path / "f.1004.exr").is_file()
    with pytest.raises(RequestRejected, match="already exist"):
        attempt(seed=6)  # the same id with another seed is another job
    other = attempt(prompt="a square")  # same id and seed, another prompt: the frames on disk are not its own
    assert other.state == "failed" and "already exists" in other.message


def test_a_single_still_whose_name_ends_in_digits_is_listed_as_it_is():
    """Since any digits before .exr count as a frame number, a still (pano_4096.exr, shot_v2.exr) was listed as
    a one-frame sequence 'pano_####.exr (4096-4096, 1 frames)', a name that is on no disk."""
    from cinegen.server.job_client import summarise_paths

    assert summarise_paths(["/s/pano_4096.exr", "/s/shot_v2.exr"]) == ["/s/pano_4096.exr", "/s/shot_v2.exr"]
    assert summarise_paths(["/s/a.1001.exr", "/s/a.1002.exr", "/s/b_v2.exr"]) == ["/s/a.####.exr (1001-1002, 2 "
                                                                                  "frames)", "/s/b_v2.exr"]
