"""`cinegen serve` until SIGTERM or SIGINT, then a graceful stop.

A signal stops the server taking jobs, stops the running job at its next step boundary (it stays
queued in the journal and resumes on the next start), gives every watcher a terminal event and
exits 0. A second signal while stopping is ignored: the stop is already under way and bounded.
"""
from __future__ import annotations

import signal
import threading

from .service import ServerConfig


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
        while not stop.wait(0.5):  # a short wait: signal handlers run between waits on every platform
            pass
        print("stopping: the running job stops at its next step and stays queued", flush=True)
        running.stop(grace=2.0)
        print("stopped", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
