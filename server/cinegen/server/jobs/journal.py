"""The job journal: every job's request, state, events and outputs in one SQLite database (WAL mode).

The server writes through it as jobs move, so a crash, a `kill -9` or a reboot loses nothing that was
acknowledged: on start-up the queue is rebuilt from it in submission order. WAL lets ListJobs-style
reads run while the GPU worker appends events; `synchronous=NORMAL` keeps every committed row across
a process crash (only a power cut may lose the last few events, never corrupt the file).
"""
from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    n INTEGER PRIMARY KEY AUTOINCREMENT,   -- submission order
    id TEXT UNIQUE NOT NULL,
    client TEXT NOT NULL,                  -- the client key (peer host / client id) that owns the job
    request BLOB NOT NULL,                 -- the JobRequest as sent (serialized proto)
    state TEXT NOT NULL,
    submitted REAL NOT NULL,
    fraction REAL NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '[]',    -- JSON list of paths
    rank REAL                              -- queue order after a Reorder; NULL = submission order (n)
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,                    -- the JobEvent (serialized proto)
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""


@dataclass
class JournaledJob:
    """One job as the journal holds it."""
    id: str
    client: str
    request: bytes
    state: str
    submitted: float
    fraction: float
    outputs: list[str]
    events: list[tuple[int, bytes]] = field(default_factory=list)


class Journal:
    """Thread-safe writes and reads of the job database at `path`."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # autocommit (isolation_level=None): every statement is its own transaction, durable on return
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    @property
    def journal_mode(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    def add_job(self, job_id: str, client: str, request: bytes, state: str, submitted: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO jobs (id, client, request, state, submitted) VALUES (?,?,?,?,?)",
                             (job_id, client, request, state, submitted))

    def set_state(self, job_id: str, state: str, fraction: float | None = None) -> None:
        with self._lock:
            if fraction is None:
                self._db.execute("UPDATE jobs SET state=? WHERE id=?", (state, job_id))
            else:
                self._db.execute("UPDATE jobs SET state=?, fraction=? WHERE id=?", (state, fraction, job_id))

    def set_outputs(self, job_id: str, outputs: list[str]) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET outputs=? WHERE id=?", (json.dumps(outputs), job_id))

    def add_event(self, job_id: str, seq: int, data: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO events VALUES (?,?,?)", (job_id, seq, data))

    def set_queue_order(self, job_ids: list[str]) -> None:
        """The queued jobs are now in this order: they keep their set of ranks, redistributed."""
        with self._lock:
            self._db.execute("BEGIN")
            ranks = sorted(row[0] for job_id in job_ids for row in
                           self._db.execute("SELECT COALESCE(rank, n) FROM jobs WHERE id=?", (job_id,)))
            for job_id, rank in zip(job_ids, ranks):
                self._db.execute("UPDATE jobs SET rank=? WHERE id=?", (rank, job_id))
            self._db.execute("COMMIT")

    def forget(self, job_ids: list[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            for job_id in job_ids:
                self._db.execute("DELETE FROM events WHERE job_id=?", (job_id,))
                self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
            self._db.execute("COMMIT")

    def load(self) -> list[JournaledJob]:
        """Every job in queue order (submission order unless reordered), with its events in sequence order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, client, request, state, submitted, fraction, outputs FROM jobs "
                "ORDER BY COALESCE(rank, n)").fetchall()
            events: dict[str, list[tuple[int, bytes]]] = {}
            for job_id, seq, data in self._db.execute("SELECT job_id, seq, data FROM events ORDER BY job_id, seq"):
                events.setdefault(job_id, []).append((seq, data))
        return [JournaledJob(id=r[0], client=r[1], request=r[2], state=r[3], submitted=r[4], fraction=r[5],
                             outputs=json.loads(r[6]), events=events.get(r[0], [])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
