"""History: what was generated with which pipeline, seed, model and prompt; kept as JSON per user.

An entry keeps every form value it was made from, so "re-run with changes" puts the exact form
back (seed locked to the one used) and the artist changes one thing.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cinegen.common.connection import config_dir

HISTORY_FILE = "history.json"
HISTORY_LIMIT = 500
THUMBNAILS = "thumbnails"  # beside the history file: <job id>.png, the job's last preview


@dataclass
class HistoryEntry:
    job_id: str
    pipeline: str
    values: dict[str, Any]  # every form value, by field name
    created: float = field(default_factory=time.time)
    seed: int | None = None  # the seed actually used (reported by the server when the form said random)
    model: str = ""
    prompt: str = ""
    state: str = "submitted"
    outputs: list[str] = field(default_factory=list)  # the sequences that came back, DIR/NAME.####.exr
    frames: str = ""  # e.g. "1001-1024"
    message: str = ""
    server: str = ""
    thumbnail: str = ""  # path of a small PNG of the result (its last preview), "" when none came

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created))

    def rerun_values(self) -> dict[str, Any]:
        """The form values to start a re-run from: the same, with the seed that was used."""
        values = dict(self.values)
        if self.seed is not None:
            values["seed"] = self.seed
        return values

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistoryEntry | None:
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:  # a damaged entry: skip it rather than lose the whole history
            return None


class History:
    """Entries newest first, saved after every change (small file, atomic replace)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, limit: int = HISTORY_LIMIT):
        self.path = Path(path) if path else config_dir() / HISTORY_FILE
        self.limit = limit
        self.entries: list[HistoryEntry] = []
        self.load()

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = []
        entries = (HistoryEntry.from_dict(d) for d in data if isinstance(d, dict)) if isinstance(data, list) else ()
        self.entries = [e for e in entries if e is not None]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps([asdict(e) for e in self.entries], indent=1, default=str), encoding="utf-8")
        os.replace(tmp, self.path)

    def add(self, entry: HistoryEntry) -> HistoryEntry:
        self.entries = [entry] + [e for e in self.entries if e.job_id != entry.job_id]
        self._forget_thumbnails(self.entries[self.limit:])  # the oldest entries leave with their pictures
        del self.entries[self.limit:]
        self.save()
        return entry

    def get(self, job_id: str) -> HistoryEntry | None:
        return next((e for e in self.entries if e.job_id == job_id), None)

    def update(self, job_id: str, **changes: Any) -> HistoryEntry | None:
        for index, entry in enumerate(self.entries):
            if entry.job_id == job_id:
                self.entries[index] = replace(entry, **changes)
                self.save()
                return self.entries[index]
        return None

    def save_thumbnail(self, job_id: str, png: bytes) -> str:
        """Keep a job's preview PNG beside the history (atomic) and record it; returns its path."""
        folder = self.path.parent / THUMBNAILS
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{''.join(c if c.isalnum() or c in '._-' else '_' for c in job_id)}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(png)
        os.replace(tmp, path)
        self.update(job_id, thumbnail=str(path))
        return str(path)

    def _forget_thumbnails(self, entries: list[HistoryEntry]) -> None:
        for entry in entries:
            if entry.thumbnail:
                Path(entry.thumbnail).unlink(missing_ok=True)

    def clear(self) -> None:
        self._forget_thumbnails(self.entries)
        self.entries = []
        self.save()
