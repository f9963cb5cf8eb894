"""Frames as a client watching a job sees them: each FrameWritten comes before the job's terminal event,
even when the job stops while a frame is still being written, and an announced frame is the job's
output at once (ListJobs, Download), not only after the job ends."""
from __future__ import annotations

import threading
import time

from cinegen.common.proto import generator_pb2 as pb

from server_kit import private_server, stub, tiny_request


def kinds_and_frames(s, job_id):
    events = list(s.Watch(pb.WatchRequest(job_id=job_id), timeout=60))
    return [e.WhichOneof("kind") for e in events], [e.frame_written.path for e in events if e.HasField("frame_written")]


def test_a_job_cancelled_while_a_frame_is_written_reports_it_before_it_ends(registry, tmp_path, monkeypatch):
    from cinegen.server.output import frames

    write = frames.write_exr_frame
    with private_server(registry) as running:
        def cancel_then_write(path, *args, **kw):
            running.service.jobs.cancel("cut")  # the job stops at its next check while this frame is written
            time.sleep(0.2)
            return write(path, *args, **kw)
        monkeypatch.setattr(frames, "write_exr_frame", cancel_then_write)
        channel, s = stub(running.address)
        s.Submit(tiny_request(tmp_path, job_id="cut", frames=6), timeout=30)
        kinds, written = kinds_and_frames(s, "cut")
        time.sleep(1.0)  # what is still being written lands meanwhile (it did, after the job had ended)
        on_disk = sorted(str(p) for p in tmp_path.glob("cut.*.exr"))
        assert kinds[-1] == "cancelled"
        assert on_disk and written == on_disk
        assert list(s.ListJobs(pb.ListJobsRequest()).jobs[0].outputs) == on_disk
        channel.close()


def test_an_announced_frame_downloads_while_the_job_still_runs(registry, tmp_path, monkeypatch):
    from cinegen.server.output import frames

    write, gate = frames.write_exr_frame, threading.Event()
    with private_server(registry) as running:
        def hold_the_second_frame(path, *args, **kw):
            if ".1002." in str(path):
                gate.wait(30)
            return write(path, *args, **kw)
        monkeypatch.setattr(frames, "write_exr_frame", hold_the_second_frame)
        channel, s = stub(running.address)
        s.Submit(tiny_request(tmp_path, job_id="live", frames=2), timeout=30)
        try:
            first = next(e for e in s.Watch(pb.WatchRequest(job_id="live"), timeout=60) if e.HasField("frame_written"))
            assert running.service.jobs.get("live").state == "running"
            data = b"".join(c.data for c in s.Download(pb.DownloadRequest(path=first.frame_written.path), timeout=30))
            assert data == open(first.frame_written.path, "rb").read()  # was NOT_FOUND "not a file a job of yours wrote"
        finally:
            gate.set()
        kinds, written = kinds_and_frames(s, "live")
        assert kinds[-1] == "completed" and len(written) == 2
        channel.close()


def test_relative_and_home_outputs_land_where_the_fence_checked_them(registry, tmp_path, monkeypatch):
    """The panel's remote default is relative ('cinegen-renders/JOB/...'): under the first --output-root.
    '~' was checked expanded but written into a folder named '~' in the server's working folder."""
    root = tmp_path / "root"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", str(root))
    with private_server(registry, output_roots=[root]) as running:
        channel, s = stub(running.address)
        for out, where in (("renders/j/x.####.exr", root / "renders/j/x.1001.exr"),
                           ("~/shots/x.####.exr", root / "shots/x.1001.exr")):
            request = tiny_request(tmp_path)
            request.common.out = out
            s.Submit(request, timeout=30)
            kinds, written = kinds_and_frames(s, request.job_id)
            assert kinds[-1] == "completed" and written == [str(where)] and where.is_file()
        assert not list((tmp_path / "cwd").iterdir())
        channel.close()
