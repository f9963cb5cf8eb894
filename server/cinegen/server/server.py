"""Start a gRPC server: the Generator service, the standard health service, server reflection.

Threads: long-lived streams (Watch, Upload, Download) are capped at `--max-streams` by the service,
and the pool has `RESERVED_UNARY` threads more than that cap, so Health, Submit, ListJobs and Cancel
always find a free thread however many panels watch. The port is bound exclusively
(`grpc.so_reuseport` = 0): a second server on the same port fails with a sentence instead of
sharing it. Off loopback the server needs a token (or an explicit `--insecure`) and path roots.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
import time
from collections import deque
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cinegen.common.proto import generator_pb2 as pb
from cinegen.common.proto import generator_pb2_grpc as pb_grpc

from .service import GeneratorService, ServerConfig

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Generator"].full_name
RESERVED_UNARY = 16  # threads no stream can take: health and unary calls always answer
AUTH_FAILURES_ALLOWED = 10  # failed token attempts per host ...
AUTH_WINDOW = 60.0  # ... within this many seconds, then every call from that host waits out the window


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _peer_host(context: grpc.ServicerContext) -> str:
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


class TokenAuth(grpc.ServerInterceptor):
    """Refuses calls without the server's token, and hosts with too many failed attempts.

    The health service and reflection stay open for probes. Tokens are compared as bytes in constant
    time; a header that is not ASCII is refused with a sentence (HTTP/2 headers are ASCII)."""

    def __init__(self, token: str, *, failures_allowed: int = AUTH_FAILURES_ALLOWED, window: float = AUTH_WINDOW,
                 clock: Callable[[], float] = time.monotonic):
        self._expected = token.encode("ascii")
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._allowed = failures_allowed
        self._window = window
        self._clock = clock

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith("/grpc.health.") or method.startswith("/grpc.reflection."):
            return continuation(handler_call_details)
        header = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        scheme, _, value = header.partition(" ") if isinstance(header, str) else ("", "", "")
        # the scheme is case-insensitive (RFC 7235); the token is compared as bytes in constant time
        ok = scheme.lower() == "bearer" and value.isascii() and hmac.compare_digest(value.encode("ascii"),
                                                                                   self._expected)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap_handler(handler, lambda context: self._admit(context, ok, header))

    def _admit(self, context: grpc.ServicerContext, ok: bool, header: Any) -> None:
        host = _peer_host(context)
        now = self._clock()
        with self._lock:
            recent = self._failures.setdefault(host, deque())
            while recent and now - recent[0] > self._window:
                recent.popleft()
            locked = len(recent) >= self._allowed
            if not ok and not locked:
                recent.append(now)
            wait = self._window - (now - recent[0]) if recent else 0.0
        if locked:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"Too many calls with a wrong access token from {host}; wait {wait:.0f} s, then connect "
                          "with the right token.")
        if ok:
            return
        if isinstance(header, str) and not header.isascii():
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "The access token has characters that are not ASCII; tokens are plain ASCII text. "
                          "Copy the server's token again into the connection settings.")
        if isinstance(header, str) and header.partition(" ")[0].lower() == "bearer":
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "The access token is not this server's token. Copy the token the server was started "
                          "with (its --token-file or $CINEGEN_TOKEN) again into the connection settings.")
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "This cinegen server needs an access token. Enter the token the server was started with "
                      "(its --token-file or $CINEGEN_TOKEN) in the connection settings; a client of its own sends "
                      "it as the metadata 'authorization: Bearer TOKEN'.")


def _wrap_handler(handler: grpc.RpcMethodHandler, admit: Callable[[grpc.ServicerContext], None]):
    """The same handler, calling `admit(context)` (which may abort) before the method itself."""
    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        def unary_unary(request, context, inner=handler.unary_unary):
            admit(context)
            return inner(request, context)
        return grpc.unary_unary_rpc_method_handler(unary_unary, **kw)
    if handler.unary_stream:
        def unary_stream(request, context, inner=handler.unary_stream):
            admit(context)
            yield from inner(request, context)
        return grpc.unary_stream_rpc_method_handler(unary_stream, **kw)
    if handler.stream_unary:
        def stream_unary(requests, context, inner=handler.stream_unary):
            admit(context)
            return inner(requests, context)
        return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)

    def stream_stream(requests, context, inner=handler.stream_stream):
        admit(context)
        yield from inner(requests, context)
    return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)


@dataclass
class RunningServer:
    server: grpc.Server
    service: GeneratorService
    port: int
    health: health.HealthServicer

    @property
    def address(self) -> str:
        host = self.service.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop taking jobs, stop the running one at its next step (it stays queued), end every stream."""
        self.health.enter_graceful_shutdown()
        self.service.jobs.stop()
        self.server.stop(grace).wait()
        self.service.close()


def check_exposure(config: ServerConfig) -> None:
    """Refuse to listen off loopback without a token and path roots, unless `--insecure` says so."""
    if config.token is not None and (not config.token or not config.token.isascii() or any(
            ch.isspace() for ch in config.token)):
        raise SystemExit("The access token must be non-empty printable ASCII without spaces; write a new one "
                         "to the --token-file (for example: python -c 'import secrets; print(secrets.token_urlsafe())').")
    if is_loopback(config.host):
        return
    missing = []
    if not config.token:
        missing.append("an access token (--token-file FILE or $CINEGEN_TOKEN)")
    if not config.output_roots:
        missing.append("the folders it may write (--output-root DIR, and --input-root DIR for what it may read)")
    if not missing:
        return
    if config.insecure:
        log.warning("cinegen serve --insecure: listening on %s without %s; anyone who reaches this port can use "
                    "the server.", config.host, " and ".join(missing))
        return
    raise SystemExit(f"Refusing to listen on {config.host} (reachable from other machines) without "
                     f"{' and without '.join(missing)}. Give them, bind to 127.0.0.1, or pass --insecure on a "
                     "network you trust.")


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert and not config.tls_key:
        return None
    if not (config.tls_cert and config.tls_key):
        raise SystemExit("TLS needs both --tls-cert (the certificate chain, PEM) and --tls-key (its private key).")

    def read(path: Path, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise SystemExit(f"Cannot read the TLS {what} {path} ({exc.strerror}).") from None

    ca = read(config.tls_client_ca, "client CA") if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(read(config.tls_key, "key"), read(config.tls_cert, "certificate"))],
                                       root_certificates=ca, require_client_auth=ca is not None)


def start_server(config: ServerConfig, service: GeneratorService | None = None) -> RunningServer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network at run time
    check_exposure(config)
    credentials = _server_credentials(config)
    interceptors = [TokenAuth(config.token)] if config.token else []
    workers = config.limits.max_streams + RESERVED_UNARY
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cinegen-rpc"),
                         interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
    address = f"{config.host}:{config.port}"
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise SystemExit(f"Cannot listen on {address}: another server (maybe another cinegen serve) is already "
                         "listening on that port, or the address is not this machine's. Stop the other server or "
                         "pass another --port.")
    service = service or GeneratorService(config)
    pb_grpc.add_GeneratorServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    server.start()
    log.info("cinegen server listening on %s:%d (%s, device %s)", config.host, port,
             "TLS" if credentials else "plain", service.device)
    return RunningServer(server, service, port, health_servicer)
