"""A temporary file beside its final name, for writes that appear whole or not at all (write, then
`os.replace`). Unlike `tempfile.mkstemp`, which always creates 0600, the file gets the permissions
the process's umask gives any new file (0644 under the usual 022), as the EXR frames do: the cut, the
contact sheet and the story's state in `OUT/.cinegen` are read by editorial and by farm steps that
may run as another user on a shared disk.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0)


def temporary_beside(path: Path) -> tuple[int, str]:
    """An open descriptor and the name of a new, hidden, empty file in `path`'s folder (which must exist)."""
    path = Path(path)
    for _ in range(100):
        name = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(name, _FLAGS, 0o666), str(name)  # the kernel applies the umask to 0666
        except FileExistsError:
            continue
    raise FileExistsError(f"could not find a free temporary name beside {path}")
