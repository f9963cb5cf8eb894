"""Where a request may read and write on the server's disk, and how server files are read.

`--output-root` and `--input-root` (repeatable) fence the server: every output and input path is
resolved (symlinks included) and must lie inside one root, else PERMISSION_DENIED. The check comes
before any look at the file, so a refusal says nothing about what exists outside the roots. Without
roots (a loopback server for one artist) every path is allowed, as before.

Files named by a request are read only when they are regular files (never a FIFO that would block,
a device or a folder), up to a size cap, on a reader thread with a time limit (a hung share never
holds an RPC thread for long), and decoded strictly as UTF-8; errors never quote them.
"""
from __future__ import annotations

import os
import stat
import tempfile
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

READ_TIMEOUT = 10.0  # seconds a file named by a request may take to read (a hung network share, say)
# a few reader threads, apart from the RPC threads: a read that hangs holds one of these, never a request
_READERS = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="cinegen-file-reader")


@dataclass
class PathPolicy:
    output_roots: list[Path] = field(default_factory=list)
    input_roots: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.output_roots = [Path(os.path.realpath(r)) for r in self.output_roots]
        self.input_roots = [Path(os.path.realpath(r)) for r in self.input_roots]

    def output(self, path: str, what: str = "The output") -> Path:
        return _inside(path, self.output_roots, what, "--output-root")

    def job_output(self, path: str) -> str:
        """The absolute path a job writes for `out`: `~` expanded (the fence checks it expanded, so the job
        writes there too, not into a folder named '~'), a relative path under the first output root (a
        remote client knows the server's roots, not its working folder), else the working folder."""
        if not path:
            return path
        path = os.path.expanduser(path)
        if not os.path.isabs(path) and self.output_roots:
            path = os.path.join(self.output_roots[0], path)
        return os.path.abspath(path)

    def input(self, path: str, what: str = "The input") -> Path:
        # outputs may be read back (a plate a previous job wrote), so output roots count as inputs too;
        # a server fenced for its outputs is fenced for its inputs as well
        roots = self.input_roots + self.output_roots
        return _inside(path, roots, what, "--input-root")


def _inside(path: str, roots: list[Path], what: str, flag: str) -> Path:
    resolved = Path(os.path.realpath(os.path.expanduser(path)))
    if roots and not any(resolved == r or r in resolved.parents for r in roots):
        raise PermissionDenied(f"{what} '{path}' is outside the folders this server may use "
                               f"({', '.join(map(str, roots))}); pick a path inside one, or start the server "
                               f"with another {flag}.")
    return resolved


def read_request_file(path: Path, max_bytes: int, what: str, flag: str, timeout: float = READ_TIMEOUT) -> bytes:
    """`read_regular_file` on a reader thread, given up after `timeout` seconds with a sentence."""
    future = _READERS.submit(read_regular_file, path, max_bytes, what, flag)
    try:
        return future.result(timeout)
    except futures.TimeoutError:
        raise FailedPrecondition(f"{what} '{path}' did not finish reading within {timeout:.0f} s (a slow or hung "
                                 "disk or share on the server); try again, or copy it somewhere local.") from None


def read_regular_file(path: Path, max_bytes: int, what: str, flag: str) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; a sentence (without its content) otherwise."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOCTTY: a tty never becomes ours
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise NotFound(f"{what} '{path}' does not exist on the server.") from None
    except IsADirectoryError:
        raise InvalidArgument(f"{what} '{path}' is a folder; give a file.") from None
    except OSError as exc:
        raise InvalidArgument(f"{what} '{path}' cannot be opened ({exc.strerror}).") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, socket or device)"
            raise InvalidArgument(f"{what} '{path}' is {kind}; give a regular file.")
        if info.st_size > max_bytes:
            raise ResourceExhausted(f"{what} '{path}' has {info.st_size} bytes, over this server's limit of "
                                    f"{max_bytes} (`cinegen serve {flag} N` changes it).")
        chunks, size = [], 0
        while size <= max_bytes:
            data = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not data:
                break
            chunks.append(data)
            size += len(data)
        if size > max_bytes:  # it grew while we read
            raise ResourceExhausted(f"{what} '{path}' is over this server's limit of {max_bytes} bytes "
                                    f"(`cinegen serve {flag} N` changes it).")
        return b"".join(chunks)
    finally:
        os.close(fd)


def decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{what} is not UTF-8 text (a byte at offset {exc.start} is not valid UTF-8); "
                              "save it as UTF-8.") from None


def prove_writable(folder: Path) -> None:
    """Create `folder` if needed and write a file in it: a real file proves more than os.access, which
    network shares and ACLs can fool. Raises OSError; callers say what it means for them."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".cinegen-write-test-"):
        pass
