"""`cinegen serve` until SIGTERM or SIGINT, then a graceful stop.

A signal stops the server taking jobs, stops the running job at its next step boundary (it stays
queued in the journal and resumes on the next start), gives every watcher a terminal event and
exits 0. A second signal while stopping is ignored: the stop is already under way and bounded.
"""
from __future__ import annotations

import logging
import signal
import threading

from .service import ServerConfig

log = logging.getLogger(__name__)


def announce_models(registry) -> threading.Thread:
    """Discover the models when the server starts, not at the first client's request, so what is skipped and
    why is in the server's terminal from the start; in the background (a large HF cache takes seconds)."""
    def discover() -> None:
        try:
            models, notes = registry.entries(), registry.discovery_notes()
        except Exception:  # noqa: BLE001 - the first request discovers again and reports it there
            log.exception("model discovery failed")
            return
        found = sum(1 for m in models if m.source != "builtin")
        said = f"; {len(notes)} note(s) on the model folders above (`cinegen models` lists them)" if notes else ""
        print(f"models: {found} found, {len(models) - found} built in, {len(registry.addons())} add-on(s){said}",
              flush=True)

    thread = threading.Thread(target=discover, name="cinegen-model-discovery", daemon=True)
    thread.start()
    return thread


def serve_until_signalled(config: ServerConfig) -> int:
    from .server import start_server

    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        running = start_server(config)
        print(f"cinegen server on {config.host}:{running.port} — device {running.service.device}, state in "
              f"{running.service.state_dir}. Ctrl-C stops it.", flush=True)
        announce_models(running.service.registry)
        while not stop.wait(0.5):  # a short wait: signal handlers run between waits on every platform
            pass
        print("stopping: the running job stops at its next step and stays queued", flush=True)
        running.stop(grace=2.0)
        print("stopped", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
