"""Start a gRPC server: the Generator service, the standard health service, server reflection."""
from __future__ import annotations

import hmac
import logging
import os
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cinegen.common.proto import generator_pb2 as pb
from cinegen.common.proto import generator_pb2_grpc as pb_grpc

from .service import GeneratorService, ServerConfig

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Generator"].full_name


class TokenAuth(grpc.ServerInterceptor):
    """Refuses calls without the server's token; the health service stays open for probes."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}"

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "This cinegen server needs an access token. Enter the token the server was started "
                          "with (cinegen serve --token ...) in the connection settings.")
        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)
        self._deny_client_stream = grpc.stream_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith("/grpc.health.") or method.startswith("/grpc.reflection."):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        if hmac.compare_digest(metadata.get("authorization", ""), self._expected):
            return continuation(handler_call_details)
        if method.endswith("/Watch") or method.endswith("/Download"):
            return self._deny_stream
        if method.endswith("/Upload"):
            return self._deny_client_stream
        return self._deny


@dataclass
class RunningServer:
    server: grpc.Server
    service: GeneratorService
    port: int
    health: health.HealthServicer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}" if self.service.config.host in ("0.0.0.0", "::") else \
            f"{self.service.config.host}:{self.port}"

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.service.jobs.stop()
        self.server.stop(grace).wait()
        self.service.close()


def start_server(config: ServerConfig, service: GeneratorService | None = None) -> RunningServer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network at run time
    service = service or GeneratorService(config)
    # watchers hold a thread each while streaming; leave room for many panels at once
    interceptors = [TokenAuth(config.token)] if config.token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="cinegen-rpc"),
                         interceptors=interceptors)
    pb_grpc.add_GeneratorServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise SystemExit(f"Cannot listen on {config.host}:{config.port}: the port is taken or not allowed. "
                         "Stop the other server or pass another --port.")
    server.start()
    log.info("cinegen server listening on %s:%d (device %s)", config.host, port, service.device)
    return RunningServer(server, service, port, health_servicer)
