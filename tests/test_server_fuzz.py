"""Property-based fuzzing of every request message: each answer is OK or a named status (never UNKNOWN
or INTERNAL), and the server is still SERVING afterwards. Bounded: a fixed number of examples, no
shrinking time limit surprises (deadline off, examples capped), outputs fenced inside a temporary root."""
from __future__ import annotations

import collections
import json
import logging

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cinegen.common.proto import generator_pb2 as pb

from server_kit import health_status, private_server, stub

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
           grpc.StatusCode.PERMISSION_DENIED}
SEEN: collections.Counter = collections.Counter()

floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, 1.0, 2.0, 7.5, -1.0]))
int32 = st.one_of(st.none(), st.integers(-2**31, 2**31 - 1), st.integers(-2, 70))
text = st.one_of(st.text(max_size=40), st.sampled_from(["", "tiny-sd", "zip", "plate", "ring", "sphere", "x" * 5000]))
documents = st.one_of(st.just(""), st.text(max_size=200),
                      st.sampled_from(['{"width": 64}', "[" * 3000, "a: &a [1]\nb: *a\n", "title: t\n\x00",
                                       '{"width": 64, "height": 64, "tracks": []}', "/etc/passwd", "/"]))


@st.composite
def requests(draw, root: str):
    request = pb.JobRequest(job_id=draw(st.one_of(st.just(""), st.text(max_size=70))),
                            pipeline=draw(st.sampled_from(["image", "upscale", "panorama", "trajectory", "story",
                                                           "", "nope"])),
                            client=draw(st.text(max_size=30)))
    c = request.common
    c.prompt, c.negative_prompt, c.model, c.compression = draw(text), draw(text), draw(text), draw(text)
    c.out = draw(st.one_of(st.sampled_from([f"{root}/f.####.exr", f"{root}/d", f"{root}/../x.####.exr",
                                            "/tmp/escape.####.exr", "", f"{root}/a\x00b.####.exr"]), st.text(max_size=30)))
    for name in ("steps", "width", "height", "frames", "first_frame"):
        value = draw(int32)
        if value is not None:
            setattr(c, name, value)
    for name in ("guidance", "fps"):
        value = draw(floats)
        if value is not None:
            setattr(c, name, value)
    seed = draw(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)))
    if seed is not None:
        c.seed = seed
    c.overwrite = draw(st.booleans())
    which = draw(st.sampled_from(["image", "upscale", "panorama", "trajectory", "story", None]))
    if which == "image":
        request.image.SetInParent()
    elif which == "upscale":
        u = request.upscale
        u.mode, u.input, u.lora = draw(text), draw(text), draw(text)
        for name in ("scale", "strength", "cosine_scale"):
            value = draw(floats)
            if value is not None:
                setattr(u, name, value)
        for name in ("dilate_tau", "stages", "vae_tile"):
            value = draw(int32)
            if value is not None:
                setattr(u, name, value)
        u.fast, u.latent_resize = draw(st.booleans()), draw(st.booleans())
    elif which == "panorama":
        p = request.panorama
        p.projection, p.input, p.loop = draw(text), draw(text), draw(st.booleans())
        value = draw(floats)
        if value is not None:
            p.guidance_scale_down = value
    elif which == "trajectory":
        request.trajectory.trajectory_json = draw(documents)
        request.trajectory.trajectory = draw(st.sampled_from(["", root, "/dev/zero", "/etc/hostname"]))
    elif which == "story":
        s = request.story
        s.story_yaml, s.story = draw(documents), draw(st.sampled_from(["", root, "/dev/null", "x.yaml"]))
        s.shots.extend(draw(st.lists(st.text(max_size=8), max_size=5)))
        s.video_model = draw(text)
    return request


def _code(call, *args) -> grpc.StatusCode:
    try:
        result = call(*args, timeout=20)
        if hasattr(result, "__iter__") and not isinstance(result, pb.JobTicket):
            for _ in result:
                pass
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


class _Tracebacks(logging.Handler):
    """Unexpected exceptions the service caught (it answers them with a status, but they are bugs)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def fuzz_server(registry, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-root")
    tracebacks = _Tracebacks()
    logging.getLogger("cinegen.server").addHandler(tracebacks)
    try:
        with private_server(registry, output_roots=[root]) as running:
            channel, raw = stub(running.address)
            yield running, raw, str(root)
            channel.close()
    finally:
        logging.getLogger("cinegen.server").removeHandler(tracebacks)
    print("fuzz statuses:", json.dumps({k.name: v for k, v in SEEN.items()}))
    assert not tracebacks.records, [r.getMessage() + str(r.exc_info) for r in tracebacks.records[:3]]


def test_fuzzed_submits_get_named_statuses(fuzz_server):
    running, raw, root = fuzz_server

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests(root))
    def check(request):
        try:
            ticket = raw.Submit(request, timeout=20)
            code = grpc.StatusCode.OK
            raw.Cancel(pb.CancelRequest(job_id=ticket.job_id), timeout=20)  # fuzz answers, not GPU time
        except grpc.RpcError as exc:
            code = exc.code()
            assert exc.details(), "every refusal has a sentence"
        SEEN[code] += 1
        assert code in ALLOWED, (code, request)

    check()
    assert health_status(running.address) == "SERVING"


def test_fuzzed_watch_cancel_download_upload(fuzz_server):
    running, raw, root = fuzz_server

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(st.text(max_size=80), st.integers(-2**63, 2**63 - 1), st.binary(max_size=64), st.text(max_size=20))
    def check(name, seq, data, asset):
        codes = [_code(raw.Watch, pb.WatchRequest(job_id=name, after_seq=seq)),
                 _code(raw.Cancel, pb.CancelRequest(job_id=name)),
                 _code(raw.Download, pb.DownloadRequest(path=name)),
                 _code(raw.Upload, iter([pb.UploadChunk(asset_id=asset, filename=name, data=data)]))]
        SEEN.update(codes)
        assert set(codes) <= ALLOWED, codes

    check()
    assert health_status(running.address) == "SERVING"
