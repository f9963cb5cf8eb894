"""Where the cinegen server is and how to reach it: settings persisted per user, and a back-off policy.

The settings live as JSON in the user's config folder (``$CINEGEN_CONFIG_DIR``, else
``%APPDATA%/cinegen`` on Windows, ``~/Library/Application Support/cinegen`` on macOS,
``$XDG_CONFIG_HOME/cinegen`` or ``~/.config/cinegen`` elsewhere), so Nuke, Blender and the CLI on one
machine share them.

Reconnecting waits ``initial · factor^k`` seconds before attempt ``k`` (capped at ``maximum``), each
delay shortened by up to ``jitter`` of itself so that many panels do not knock on a restarted server
in the same instant (exponential back-off with jitter, as in gRPC's own connection back-off).

No gRPC, Qt or torch here: plain data.
"""
from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

SETTINGS_FILE = "connection.json"
PROTOCOL_VERSION = 1  # the wire protocol this client speaks (Capabilities.protocol_version)


def config_dir() -> Path:
    """The per-user folder for cinegen's settings and history."""
    override = os.environ.get("CINEGEN_CONFIG_DIR")
    if override:
        return Path(override)
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "cinegen"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "cinegen"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "cinegen"


@dataclass
class BackoffPolicy:
    """Delays between reconnect attempts: initial · factor^k, capped, with jitter; give up after a while."""
    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 10.0
    jitter: float = 0.2  # fraction of each delay that may be taken off at random
    give_up_after: float = 120.0  # seconds of failed attempts before reporting the server as gone

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (0-based)."""
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt))
        if self.jitter <= 0:
            return base
        return base * (1.0 - self.jitter * (rng or random).random())

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Successive delays until their sum would pass ``give_up_after``."""
        spent, attempt = 0.0, 0
        while True:
            wait = self.delay(attempt, rng)
            if spent + wait > self.give_up_after:
                return
            spent += wait
            attempt += 1
            yield wait


@dataclass
class ConnectionSettings:
    """How to reach one cinegen server, and how its files get to this machine."""
    host: str = "127.0.0.1"
    port: int = 50051
    token: str = ""  # sent as `authorization: Bearer <token>` when not empty
    tls: bool = False
    root_cert: str = ""  # PEM file of the CA that signed the server's certificate; empty = system roots
    client_cert: str = ""  # PEM certificate chain of this client, for a server with mutual TLS; empty = none
    client_key: str = ""  # PEM private key of client_cert
    shared_disk: bool = True  # the server writes where this machine can read; off = upload plates, download results
    download_dir: str = ""  # where results of a remote server land; empty = the host's output folder
    remote_output_dir: str = "cinegen-renders"  # folder on the server's disk for jobs of a remote server
    connect_timeout: float = 5.0  # seconds the first call of a connection may take
    call_timeout: float = 30.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)

    @property
    def address(self) -> str:
        host = self.host.strip()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal needs brackets before the port
        return f"{host}:{int(self.port)}"

    def read_root_cert(self) -> bytes | None:
        """The PEM bytes of ``root_cert``; raises a ValueError with a sentence when it can't be read."""
        if not self.root_cert:
            return None
        try:
            return Path(self.root_cert).expanduser().read_bytes()
        except OSError as exc:
            raise ValueError(f"Can't read the TLS root certificate '{self.root_cert}' ({exc.strerror or exc}): "
                             "choose the CA's PEM file in the connection settings, or leave it empty to use "
                             "the system's certificates.") from None

    def read_client_identity(self) -> tuple[bytes | None, bytes | None]:
        """(certificate chain, private key) PEM bytes for mutual TLS, or (None, None) when not set."""
        if not self.client_cert and not self.client_key:
            return None, None
        pems = []
        for label, path in (("client certificate", self.client_cert), ("client key", self.client_key)):
            try:
                pems.append(Path(path).expanduser().read_bytes())
            except OSError as exc:
                raise ValueError(f"Can't read the TLS {label} '{path}' ({exc.strerror or exc}): choose its PEM "
                                 "file in the connection settings, or clear both client fields.") from None
        return pems[0], pems[1]

    # ---- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ConnectionSettings:
        """Known keys only (files written by newer versions still load); bad values fall back to defaults."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k != "backoff"}
        defaults = cls()
        for key, value in list(values.items()):
            expected = type(getattr(defaults, key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                values[key] = float(value)
            elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                del values[key]
        backoff = data.get("backoff")
        if isinstance(backoff, dict):
            allowed = {f.name for f in fields(BackoffPolicy)}
            numbers = {k: float(v) for k, v in backoff.items() if k in allowed and isinstance(v, (int, float))}
            values["backoff"] = BackoffPolicy(**numbers)
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> ConnectionSettings:
        """The saved settings, or the defaults when there are none (or the file is unreadable)."""
        path = Path(path) if path else config_dir() / SETTINGS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        return cls.from_dict(data) if isinstance(data, dict) else cls()

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the settings atomically (a half-written file never replaces a good one)."""
        path = Path(path) if path else config_dir() / SETTINGS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        # it holds the access token: readable by this user only (a default umask left it readable by every user)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # a temporary file an older version left behind keeps its mode otherwise
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path


class IncompatibleServer(ConnectionError):
    """The server speaks another protocol version; the message says what to update."""


def check_protocol(server_version: int, server_release: str = "", address: str = "") -> None:
    """Raise IncompatibleServer unless the server's protocol version is the one this client speaks."""
    if server_version == PROTOCOL_VERSION:
        return
    where = f" at {address}" if address else ""
    release = f" (cinegen {server_release})" if server_release else ""
    if server_version < PROTOCOL_VERSION:
        raise IncompatibleServer(
            f"The cinegen server{where}{release} speaks protocol version {server_version}, older than this "
            f"panel's version {PROTOCOL_VERSION}: update the server (pip install -U cinegen) and restart it.")
    raise IncompatibleServer(
        f"The cinegen server{where}{release} speaks protocol version {server_version}, newer than this "
        f"panel's version {PROTOCOL_VERSION}: update the cinegen plugin to the server's release.")
