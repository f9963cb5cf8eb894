"""Client side of the plugin: connection settings, back-off, protocol check, TLS, and the transfers
to and from a server that does not share this machine's disk (against a real in-process server)."""
from __future__ import annotations

import json
import os
import random
import stat

import numpy as np
import pytest

from cinegen.common.client import GeneratorClient, RequestRejected, ServerUnavailable
from cinegen.common.connection import (PROTOCOL_VERSION, BackoffPolicy, ConnectionSettings, IncompatibleServer,
                                       check_protocol, config_dir)
from cinegen.common.exr import ExrMetadata, write_exr_frame
from cinegen.common.proto import generator_pb2 as pb
from cinegen.plugin.backend.job_runner import JobCallbacks, JobDraft, run_job
from cinegen.plugin.backend.transfer import fetch_outputs, local_files, stage_inputs

TINY = dict(model="tiny-sd", width=64, height=64, steps=2, frames=2)


# ---- settings ------------------------------------------------------------------------------------
def test_settings_round_trip_through_the_users_config_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CINEGEN_CONFIG_DIR", str(tmp_path))
    settings = ConnectionSettings(host="gpu-07.studio", port=6000, token="t0k", tls=True, root_cert="/ca.pem",
                                  shared_disk=False, download_dir="/renders", backoff=BackoffPolicy(initial=1.5))
    path = settings.save()
    assert path == tmp_path / "connection.json" and config_dir() == tmp_path
    assert ConnectionSettings.load() == settings


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_the_settings_file_holding_the_token_is_readable_by_its_user_only(tmp_path):
    old = os.umask(0o022)  # the usual umask: a plain write would leave the token readable by every user (0644)
    try:
        path = ConnectionSettings(token="s3cret").save(tmp_path / "connection.json")
        ConnectionSettings(token="s3cret2").save(path)  # replacing an existing file too
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ConnectionSettings.load(path).token == "s3cret2"


def test_settings_file_from_another_version_or_damaged_still_loads(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"host": "h", "port": "not a number", "future_option": 1, "tls": True,
                                "connect_timeout": 3, "backoff": {"initial": 2, "bogus": 9}}))
    loaded = ConnectionSettings.load(path)
    assert (loaded.host, loaded.port, loaded.tls, loaded.connect_timeout) == ("h", 50051, True, 3.0)
    assert loaded.backoff.initial == 2.0
    path.write_text("{ broken")
    assert ConnectionSettings.load(path) == ConnectionSettings()


def test_ipv6_hosts_are_bracketed_in_the_address():
    assert ConnectionSettings(host="::1", port=5).address == "[::1]:5"
    assert ConnectionSettings(host="gpu01", port=5).address == "gpu01:5"


def test_backoff_grows_geometrically_to_its_cap_and_stops_after_the_time_allowed():
    policy = BackoffPolicy(initial=0.5, factor=2.0, maximum=4.0, jitter=0.0, give_up_after=20.0)
    assert [policy.delay(k) for k in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    delays = list(policy.delays())
    assert sum(delays) <= 20.0 and sum(delays) + policy.delay(len(delays)) > 20.0


def test_backoff_jitter_only_shortens_delays_by_at_most_its_fraction():
    policy = BackoffPolicy(initial=1.0, factor=2.0, maximum=8.0, jitter=0.25)
    rng = random.Random(3)
    for attempt in range(8):
        base = min(8.0, 2.0 ** attempt)
        assert all(0.75 * base <= policy.delay(attempt, rng) <= base for _ in range(50))


def test_protocol_check_names_the_side_to_update():
    check_protocol(PROTOCOL_VERSION)
    with pytest.raises(IncompatibleServer, match="update the cinegen plugin"):
        check_protocol(PROTOCOL_VERSION + 1, "0.9.0", "gpu01:50051")
    with pytest.raises(IncompatibleServer, match=r"update the server \(pip install -U cinegen\)"):
        check_protocol(0)


def test_tls_to_a_plaintext_server_fails_saying_to_check_tls(running_server):
    host, port = running_server.address.rsplit(":", 1)
    with GeneratorClient.from_settings(ConnectionSettings(host=host, port=int(port), tls=True)) as client:
        with pytest.raises(ServerUnavailable, match=r"secure \(TLS\) connection .* turn TLS off"):
            client.capabilities()


def test_an_unreadable_root_certificate_is_a_sentence_not_a_crash():
    with pytest.raises(ValueError, match="Can't read the TLS root certificate"):
        GeneratorClient.from_settings(ConnectionSettings(tls=True, root_cert="/nowhere/ca.pem"))


def test_the_token_from_settings_is_sent_with_every_call(registry):
    from cinegen.server.server import start_server
    from cinegen.server.service import GeneratorService, ServerConfig

    config = ServerConfig(port=0, use_hf_cache=False, token="s3cret")
    running = start_server(config, GeneratorService(config, registry=registry))
    try:
        host, port = running.address.rsplit(":", 1)
        with GeneratorClient.from_settings(ConnectionSettings(host=host, port=int(port), token="s3cret")) as ok:
            assert ok.capabilities().protocol_version == PROTOCOL_VERSION
        with GeneratorClient.from_settings(ConnectionSettings(host=host, port=int(port), token="nope")) as bad:
            with pytest.raises(RequestRejected) as refused:
                bad.capabilities()
            assert refused.value.code == "UNAUTHENTICATED"
    finally:
        running.stop()


# ---- transfers ------------------------------------------------------------------------------------
def write_plate(folder, frames=(1001, 1002, 1003)) -> str:
    for frame in frames:
        write_exr_frame(folder / f"plate.{frame}.exr", np.full((8, 8, 4), frame / 2000, np.float32),
                        metadata=ExrMetadata(pipeline="plate"))
    return str(folder / "plate.####.exr")


def test_local_plate_frames_are_uploaded_and_the_request_points_at_the_servers_copy(client, tmp_path):
    pattern = write_plate(tmp_path)
    request = pb.JobRequest(job_id="up", pipeline="upscale", upscale=pb.UpscaleParams(input=pattern, mode="plate"))
    request.common.out = "/remote/out.####.exr"
    stages: list[str] = []
    rewritten = stage_inputs(client, request, [("upscale", "input"), ("common", "out")],
                             lambda state, stage: stages.append(stage))
    remote = request.upscale.input
    assert rewritten == {"input": remote} and remote != pattern and remote.endswith("plate.####.exr")
    assert request.common.out == "/remote/out.####.exr"  # nothing local there: left alone
    assert stages == ["uploading input 1/3", "uploading input 2/3", "uploading input 3/3"]
    for local in local_files(pattern):
        server_copy = remote.replace("####", local[-8:-4])
        assert open(server_copy, "rb").read() == open(local, "rb").read()


def test_a_job_on_a_server_without_shared_disk_comes_back_frame_for_frame(client, tmp_path):
    request = pb.JobRequest(job_id="remote-job-1", pipeline="image", image=pb.ImageParams())
    request.common.prompt, request.common.seed = "remote", 11
    for key, value in TINY.items():
        setattr(request.common, key, value)
    request.common.out = str(tmp_path / "server" / "job" / "render.####.exr")
    local = str(tmp_path / "here" / "v001" / "shot_v001.####.exr")
    transfers: list[tuple[str, str]] = []
    outcome = run_job(client, JobDraft(request, local_output=local), shared_disk=False,
                      callbacks=JobCallbacks(on_transfer=lambda state, stage: transfers.append((state, stage))))
    assert outcome.state == "completed"
    assert outcome.outputs == [str(tmp_path / "here" / "v001" / f"shot_v001.{f}.exr") for f in (1001, 1002)]
    for frame, path in zip((1001, 1002), outcome.outputs):
        assert open(path, "rb").read() == (tmp_path / "server" / "job" / f"render.{frame}.exr").read_bytes()
    assert transfers == [("downloading", "downloading 1/2"), ("downloading", "downloading 2/2")]


def test_only_files_a_job_wrote_can_be_fetched(client, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    with pytest.raises(RequestRejected) as refused:
        fetch_outputs(client, [str(secret)], "/o/a.####.exr", str(tmp_path / "l.####.exr"))
    assert refused.value.code == "NOT_FOUND"


def test_watch_reports_each_reconnect_with_the_sequence_it_resumes_after(client, tmp_path):
    """A stream that drops (UNAVAILABLE) mid-job is asked again from the last event seen."""
    import grpc

    request = pb.JobRequest(job_id="watch-drop-1", pipeline="image", image=pb.ImageParams())
    for key, value in TINY.items():
        setattr(request.common, key, value)
    request.common.out = str(tmp_path / "w.####.exr")
    client.submit(request)
    real_watch, calls = client.stub.Watch, []

    class Dropped(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "connection reset"

    def flaky_watch(req, metadata=()):
        calls.append(req.after_seq)
        for n, item in enumerate(real_watch(req, metadata=metadata)):
            yield item
            if len(calls) == 1 and n == 1:
                raise Dropped()  # the first stream dies after two events

    client.stub.Watch = flaky_watch
    client.backoff = BackoffPolicy(initial=0.01, jitter=0.0)
    reconnects: list[tuple[int, float]] = []
    seqs = [e.seq for e in client.watch("watch-drop-1", on_reconnect=lambda a, d: reconnects.append((a, d)))]
    assert calls[:2] == [0, 2] and reconnects == [(2, 0.01)]
    assert seqs == list(range(1, seqs[-1] + 1))


def test_batch_generation_runs_a_job_and_hands_the_result_to_the_host(running_server, tmp_path):
    from cinegen.plugin.batch import generate_blocking
    from cinegen.plugin.hosts.standalone import StandaloneHost

    host_name, port = running_server.address.rsplit(":", 1)
    settings = ConnectionSettings(host=host_name, port=int(port))
    host = StandaloneHost(tmp_path / "renders")
    seen: list[float] = []
    (result,) = generate_blocking(host, "image", {**TINY, "prompt": "batch", "seed": 5}, settings=settings,
                                  on_progress=lambda fraction, stage: seen.append(fraction))
    assert result is host.loaded[0] and str(result.frames) == "1001-1002" and result.seed == 5
    assert result.pattern.endswith("cinegen_image/v001/cinegen_image_v001.####.exr")
    assert seen and seen == sorted(seen) and seen[-1] == 1.0
    with pytest.raises(RequestRejected, match="multiple of 8"):
        generate_blocking(host, "image", {**TINY, "width": 100}, settings=settings)
    assert not (tmp_path / "renders" / "cinegen_image" / "v002").exists()  # the refused job's folder is given back
