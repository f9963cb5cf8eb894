"""Helpers of the server robustness tests: a private in-process server, tiny requests, raw stubs."""
from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Iterator

import grpc

from cinegen.common.client import build_request
from cinegen.common.params import CommonParams
from cinegen.common.proto import generator_pb2_grpc as pb_grpc


def tiny_request(out_dir: Path, job_id: str | None = None, pipeline: str = "image", params=None, **common):
    """A one-step 32 px job on the tiny SD model (the cheapest job there is)."""
    job_id = job_id or f"t-{uuid.uuid4().hex[:8]}"
    c = dict(prompt="a red disc", seed=3, steps=1, width=32, height=32, frames=1,
             out=str(Path(out_dir) / f"{job_id}.####.exr"))
    c.update(common)
    return build_request(pipeline, CommonParams(**c), params, job_id=job_id)


@contextlib.contextmanager
def private_server(registry, state_dir: Path | None = None, **config) -> Iterator:
    """A server of its own (own limits, roots, journal) on a free loopback port."""
    from cinegen.server.server import start_server
    from cinegen.server.service import GeneratorService, ServerConfig

    cfg = ServerConfig(port=0, use_hf_cache=False, max_width=256, max_height=256, state_dir=state_dir, **config)
    running = start_server(cfg, GeneratorService(cfg, registry=registry))
    try:
        yield running
    finally:
        running.stop(grace=0.5)


def stub(address: str, metadata=()):
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.GeneratorStub(channel)


def health_status(address: str, timeout: float = 5.0) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="cinegen.v1.Generator"),
                                                          timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
