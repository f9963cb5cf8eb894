"""The panel's connection to one server: all network work on worker threads, results as Qt signals.

Signals are emitted from worker threads and delivered on the thread of the receiving widgets (Qt
queues cross-thread signals), so slots in the UI always run on the UI thread. A failed connection
is retried after `BackoffPolicy` delays while the server is merely unreachable; a wrong token, a
bad certificate or an incompatible server are not retried: the artist has to change something.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from cinegen.common.client import GeneratorClient, ServerUnavailable
from cinegen.common.connection import ConnectionSettings, check_protocol
from cinegen.common.proto import generator_pb2 as pb

from ..qt import QtCore, Signal
from .errors import describe_error
from .job_runner import JobCallbacks, JobDraft, JobOutcome, run_job

CLOSE_TIMEOUT = 5.0  # seconds close() waits for worker threads (a closed channel ends their calls at once)
DISCONNECTED, CONNECTING, CONNECTED, RETRYING, FAILED = "disconnected", "connecting", "connected", "retrying", "failed"


class ServerSession(QtCore.QObject):
    status_changed = Signal(str, str)  # state, sentence
    capabilities_changed = Signal(object)  # pb.Capabilities
    job_submitted = Signal(str, object)  # job id, pb.JobTicket
    job_event = Signal(str, object)  # job id, pb.JobEvent
    job_transfer = Signal(str, str, str)  # job id, state (uploading/downloading), stage text
    job_reconnecting = Signal(str, int, float)  # job id, after_seq, delay in seconds
    job_finished = Signal(str, object)  # job id, JobOutcome
    job_error = Signal(str, str)  # job id, sentence: the job could not be run
    notice = Signal(str)  # a sentence not tied to a job

    _connected = Signal(int, object, object)  # generation, client, capabilities
    _connect_failed = Signal(int, object)  # generation, exception
    _connection_lost = Signal()  # a job's stream gave up: the server went away

    def __init__(self, settings: ConnectionSettings | None = None, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.settings = settings or ConnectionSettings.load()
        self.client: GeneratorClient | None = None
        self.capabilities: pb.Capabilities | None = None
        self.state = DISCONNECTED
        self.message = ""
        self._generation = 0
        self._attempt = 0
        self._waited = 0.0
        self._closing = False
        self._clients: list[GeneratorClient] = []
        self._threads: list[threading.Thread] = []
        self._retry = QtCore.QTimer(self)
        self._retry.setSingleShot(True)
        self._retry.timeout.connect(self._reconnect)
        self._connected.connect(self._on_connected)
        self._connect_failed.connect(self._on_connect_failed)
        self._connection_lost.connect(self._on_connection_lost)

    # ---- connection -------------------------------------------------------------------------
    def connect_to_server(self, settings: ConnectionSettings | None = None) -> None:
        """(Re)connect, now; resets the back-off."""
        if settings is not None:
            self.settings = settings
        self._attempt, self._waited = 0, 0.0
        self._reconnect()

    def _reconnect(self) -> None:
        self._retry.stop()
        self._generation += 1
        generation, settings = self._generation, self.settings
        self._set_status(CONNECTING, f"Connecting to {settings.address}…")
        self._spawn(self._connect_worker, generation, settings)

    def _connect_worker(self, generation: int, settings: ConnectionSettings) -> None:
        client = None
        try:
            client = GeneratorClient.from_settings(settings)
            # a first call rather than waiting for the channel: its failure says why (refused, TLS, ...)
            client.timeout = settings.connect_timeout
            capabilities = client.capabilities()
            client.timeout = settings.call_timeout
            check_protocol(capabilities.protocol_version, capabilities.server_version, settings.address)
        except Exception as exc:  # every failure becomes a sentence on the UI thread
            if client is not None:
                client.close()
            self._emit(self._connect_failed, generation, exc)
            return
        self._emit(self._connected, generation, client, capabilities)

    def _on_connected(self, generation: int, client: GeneratorClient, capabilities: pb.Capabilities) -> None:
        if generation != self._generation or self._closing:
            client.close()  # a newer attempt superseded this one
            return
        self.client, self.capabilities = client, capabilities
        self._clients.append(client)
        self._attempt, self._waited = 0, 0.0
        device = capabilities.device.name or capabilities.device.kind
        self._set_status(CONNECTED, f"Connected to {self.settings.address} · cinegen "
                                    f"{capabilities.server_version} · {device}")
        self.capabilities_changed.emit(capabilities)

    def _on_connect_failed(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation or self._closing:
            return
        sentence = describe_error(exc, self.settings)
        if not isinstance(exc, ServerUnavailable) or _is_tls_failure(exc):
            self._set_status(FAILED, sentence)  # retrying can't fix a token, certificate or version
            return
        delay = self.settings.backoff.delay(self._attempt)
        if self._waited + delay > self.settings.backoff.give_up_after:
            self._set_status(DISCONNECTED, f"{sentence} (Stopped retrying: press Connect when the server is up.)")
            return
        self._attempt += 1
        self._waited += delay
        self._set_status(RETRYING, f"{sentence} Retrying in {delay:.0f} s.")
        self._retry.start(int(delay * 1000))

    def _on_connection_lost(self) -> None:
        if self.state == CONNECTED and not self._closing:
            self.connect_to_server()  # reconnects with back-off; the status says what is happening

    def _set_status(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        self.status_changed.emit(state, message)

    # ---- jobs -------------------------------------------------------------------------------
    def submit(self, draft: JobDraft) -> bool:
        """Run a job on a worker thread; False (and `job_error`) when not connected."""
        if self.client is None or self.state != CONNECTED:
            self.job_error.emit(draft.job_id, "The panel is not connected to a cinegen server: press Connect "
                                "(or fix the connection settings), then Generate again.")
            return False
        self._spawn(self._job_worker, self.client, draft, self.settings)
        return True

    def _job_worker(self, client: GeneratorClient, draft: JobDraft, settings: ConnectionSettings) -> None:
        job_id = draft.job_id
        callbacks = JobCallbacks(
            on_submitted=lambda ticket: self._emit(self.job_submitted, job_id, ticket),
            on_event=lambda event: self._emit(self.job_event, job_id, event),
            on_transfer=lambda state, stage: self._emit(self.job_transfer, job_id, state, stage),
            on_reconnect=lambda after_seq, delay: self._emit(self.job_reconnecting, job_id, after_seq, delay))
        try:
            outcome: JobOutcome = run_job(client, draft, shared_disk=settings.shared_disk, callbacks=callbacks)
        except Exception as exc:  # refused, unreachable, a file that can't be read
            self._emit(self.job_error, job_id, describe_error(exc, settings))
            if isinstance(exc, ServerUnavailable):
                self._emit(self._connection_lost)
            return
        self._emit(self.job_finished, job_id, outcome)

    def cancel(self, job_id: str) -> None:
        client = self.client
        if client is None:
            self.notice.emit("Not connected, so the job can't be cancelled: press Connect, then cancel again.")
            return
        self._spawn(self._cancel_worker, client, job_id)

    def reorder(self, job_id: str, position: int) -> None:
        """Ask the server to move a queued job to `position` (0 = next); the queued events show the result."""
        client = self.client
        if client is None:
            self.notice.emit("Not connected, so the queue can't be reordered: press Connect, then try again.")
            return
        self._spawn(self._reorder_worker, client, job_id, position)

    def _reorder_worker(self, client: GeneratorClient, job_id: str, position: int) -> None:
        try:
            client.reorder(job_id, position)
        except Exception as exc:  # the job started meanwhile, or an older server without Reorder
            self._emit(self.notice, describe_error(exc, self.settings))

    def _cancel_worker(self, client: GeneratorClient, job_id: str) -> None:
        try:
            client.cancel(job_id)
        except Exception as exc:
            self._emit(self.notice, describe_error(exc, self.settings))

    # ---- lifetime ---------------------------------------------------------------------------
    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop retrying, close every channel (running watches end quietly) and wait for the worker threads,
        so none is still emitting into Qt while the application tears down."""
        self._closing = True
        self._retry.stop()
        for client in self._clients:
            client.close()
        self._clients.clear()
        self.client = None
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def _emit(self, signal: Any, *args: Any) -> None:
        if self._closing:
            return
        try:
            signal.emit(*args)
        except RuntimeError:  # the panel was deleted while this thread was still working
            pass

    def _spawn(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name="cinegen-panel-net", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread


def _is_tls_failure(exc: ServerUnavailable) -> bool:
    details = exc.details.lower()
    return any(word in details for word in ("handshake", "ssl", "certificate"))
