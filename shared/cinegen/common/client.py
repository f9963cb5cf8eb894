"""A small, torch-free client of the cinegen server, used by the CLI and the panel.

`watch` reconnects on its own after a dropped connection, resuming with the last sequence number
seen, so no event is lost or repeated (waiting per the client's `BackoffPolicy` between attempts when
it has one). Connection problems become `ServerUnavailable` with a sentence that says what to do.
TLS (`tls=True`, optional root certificates) and the access token come from `ConnectionSettings`
through `GeneratorClient.from_settings`.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc

from .connection import BackoffPolicy, ConnectionSettings
from .params import PIPELINE_PARAMS, CommonParams, to_proto
from .proto import generator_pb2 as pb
from .proto import generator_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
UPLOAD_CHUNK = 1 << 20
TERMINAL_EVENTS = ("completed", "failed", "cancelled")


class ServerUnavailable(ConnectionError):
    """The server can't be reached; the message says what to do, `details` is gRPC's own text."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class RequestRejected(ValueError):
    """The server refused a request; `code` is the gRPC status name, the message says what to fix."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class JobResult:
    job_id: str
    state: str  # completed | failed | cancelled
    outputs: list[str]
    message: str = ""
    code: str = ""


def build_request(pipeline: str, common: CommonParams, params: Any | None = None, *, job_id: str = "",
                  client: str = "") -> pb.JobRequest:
    request = pb.JobRequest(job_id=job_id, pipeline=pipeline, client=client)
    to_proto(common, request.common)
    if pipeline in PIPELINE_PARAMS:
        msg = getattr(request, pipeline)
        msg.SetInParent()  # selects the oneof even when every field is at its default
        if params is not None:
            to_proto(params, msg)
    return request


def new_job_id(prefix: str = "job") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class GeneratorClient:
    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float = 10.0, token: str | None = None,
                 tls: bool = False, root_certificates: bytes | None = None, backoff: BackoffPolicy | None = None,
                 certificate_chain: bytes | None = None, private_key: bytes | None = None, client_id: str = ""):
        if token and (not token.isascii() or not token.isprintable()):
            # gRPC would fail every call with an opaque error: say what is wrong instead
            raise RequestRejected("UNAUTHENTICATED", "The access token has characters that are not printable "
                                  "ASCII; tokens are plain ASCII text. Copy the server's token again.")
        self.address = address
        self.timeout = timeout
        self.tls = tls or root_certificates is not None or certificate_chain is not None
        self.backoff = backoff
        # a dropped connection is retried by the channel within a second or two, not gRPC's default 20 s cap
        options = [("grpc.max_receive_message_length", 16 << 20),
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)]
        if self.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=private_key,
                                                       certificate_chain=certificate_chain)
            self.channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.GeneratorStub(self.channel)
        self.metadata = ((("authorization", f"Bearer {token}"),) if token else ()) + \
            ((("cinegen-client-id", client_id),) if client_id else ())

    @classmethod
    def from_settings(cls, settings: ConnectionSettings) -> "GeneratorClient":
        """A client for saved connection settings (address, token, TLS, back-off, time-outs)."""
        chain, key = settings.read_client_identity()
        return cls(settings.address, timeout=settings.call_timeout, token=settings.token or None,
                   tls=settings.tls, root_certificates=settings.read_root_cert(), backoff=settings.backoff,
                   certificate_chain=chain, private_key=key)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "GeneratorClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- calls --------------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 30.0) -> None:
        future = grpc.channel_ready_future(self.channel)
        try:
            future.result(timeout=timeout)
        except grpc.FutureTimeoutError as exc:
            future.cancel()  # stop watching the channel's state once we have given up
            raise ServerUnavailable(self._unreachable()) from exc

    def capabilities(self) -> pb.Capabilities:
        return self._call(self.stub.GetCapabilities, pb.GetCapabilitiesRequest())

    def submit(self, request: pb.JobRequest) -> pb.JobTicket:
        return self._call(self.stub.Submit, request)

    def reorder(self, job_id: str, position: int) -> pb.ReorderReply:
        """Move a queued job to `position` among the queued ones (0 = next)."""
        return self._call(self.stub.Reorder, pb.ReorderRequest(job_id=job_id, position=position))

    def cancel(self, job_id: str) -> pb.CancelReply:
        return self._call(self.stub.Cancel, pb.CancelRequest(job_id=job_id))

    def list_jobs(self) -> pb.JobList:
        return self._call(self.stub.ListJobs, pb.ListJobsRequest())

    def watch(self, job_id: str, after_seq: int = 0, *, reconnect_for: float | None = None,
              on_reconnect: Callable[[int, float], None] | None = None) -> Iterator[pb.JobEvent]:
        """Every event after `after_seq` until the job ends; survives dropped connections.

        After a drop it waits (0.5 s, or per the client's back-off policy), calls
        `on_reconnect(after_seq, delay)` and asks again from the last sequence number seen; it gives up
        with `ServerUnavailable` after `reconnect_for` seconds without an event (default: the policy's
        `give_up_after`, else 60 s).
        """
        if reconnect_for is None:
            reconnect_for = self.backoff.give_up_after if self.backoff else 60.0
        last = after_seq
        deadline = None
        attempt = 0
        while True:
            try:
                for event in self.stub.Watch(pb.WatchRequest(job_id=job_id, after_seq=last), metadata=self.metadata):
                    deadline, attempt = None, 0
                    if event.seq <= last:
                        continue  # already delivered before the drop
                    last = event.seq
                    yield event
                    if event.WhichOneof("kind") in TERMINAL_EVENTS:
                        return
                return  # the server closed the stream after the last event
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise _rejected(exc) from None
                deadline = deadline or time.monotonic() + reconnect_for
                if time.monotonic() > deadline:
                    raise ServerUnavailable(self._unreachable(exc.details() or ""), exc.details() or "") from None
                delay = self.backoff.delay(attempt) if self.backoff else 0.5
                attempt += 1
                if on_reconnect:
                    on_reconnect(last, delay)
                time.sleep(delay)

    def run(self, request: pb.JobRequest, on_event=None) -> JobResult:
        """Submit and watch to the end."""
        ticket = self.submit(request)
        outputs: list[str] = []
        for event in self.watch(ticket.job_id):
            if on_event:
                on_event(event)
            kind = event.WhichOneof("kind")
            if kind == "completed":
                return JobResult(ticket.job_id, "completed", list(event.completed.outputs))
            if kind == "failed":
                return JobResult(ticket.job_id, "failed", outputs, event.failed.message, event.failed.code)
            if kind == "cancelled":
                return JobResult(ticket.job_id, "cancelled", outputs, event.cancelled.reason)
            if kind == "frame_written":
                outputs.append(event.frame_written.path)
        return JobResult(ticket.job_id, "failed", outputs, "The server closed the stream before the job ended.")

    def upload_file(self, path: str | Path, asset_id: str = "") -> pb.UploadReply:
        path = Path(path)

        def chunks() -> Iterator[pb.UploadChunk]:
            with open(path, "rb") as f:
                first = True
                while True:
                    data = f.read(UPLOAD_CHUNK)
                    if not data and not first:
                        return
                    yield pb.UploadChunk(asset_id=asset_id, filename=path.name, data=data)
                    first = False
                    if not data:
                        return

        return self._call(self.stub.Upload, chunks())

    def download(self, remote_path: str, local_path: str | Path) -> Path:
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_path.with_name(f".{local_path.name}.part")
        try:
            with open(tmp, "wb") as f:
                for chunk in self.stub.Download(pb.DownloadRequest(path=remote_path), metadata=self.metadata):
                    f.write(chunk.data)
            os.replace(tmp, local_path)
        except grpc.RpcError as exc:
            tmp.unlink(missing_ok=True)
            raise _rejected(exc) from None
        return local_path

    # ---- internals ------------------------------------------------------------------------------
    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ServerUnavailable(self._unreachable(exc.details() or ""), exc.details() or "") from None
            raise _rejected(exc) from None

    def _unreachable(self, details: str = "") -> str:
        if self.tls and any(word in details.lower() for word in ("ssl", "handshake", "certificate", "tls")):
            return (f"The secure (TLS) connection to the cinegen server at {self.address} failed ({details}). "
                    "Check the root certificate in the connection settings, or turn TLS off if the server "
                    "runs without it.")
        return (f"Can't reach the cinegen server at {self.address}. Start it with `cinegen serve` "
                "(or check the address and port in the settings), then try again.")


def _rejected(exc: grpc.RpcError) -> RequestRejected:
    return RequestRejected(exc.code().name, exc.details() or str(exc.code()))
