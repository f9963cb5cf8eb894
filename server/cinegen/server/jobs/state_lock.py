"""One server per state folder. A second `cinegen serve` on the same --state-dir (two GPUs, two servers,
the default folder) would take the first's queued and running jobs for interrupted ones and run them
again beside it, both writing the same frames. The lock is an OS file lock: it goes with the process,
so a `kill -9` or a crash never leaves the folder locked. (No lock where fcntl is missing: Windows.)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "server.lock"
log = logging.getLogger(__name__)


class StateLock:
    """Held from start to close; a second holder is refused with a sentence (SystemExit, like a taken port)."""

    def __init__(self, folder: Path):
        self._fd: int | None = None
        if fcntl is None:
            return
        path = Path(folder) / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # EWOULDBLOCK: another process holds it
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise SystemExit(f"Another cinegen server{f' (process {holder})' if holder.isdigit() else ''} uses the "
                             f"state folder {folder}; give each server its own --state-dir (sharing one, each would "
                             "run the other's jobs again).") from None
        except OSError as exc:  # ENOLCK/ENOSYS: a share without locks (NFS without lockd) is no second server
            os.close(fd)
            log.warning("The state folder %s cannot be locked (%s): nothing stops a second server from using "
                        "it too; give each server its own --state-dir.", folder, exc.strerror or exc)
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
