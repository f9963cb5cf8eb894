"""What the panel's forms held when it was last open: the pipeline shown and every form's values.

A host closes a docked panel without asking (a pane closed, the host quitting or crashing), so the
panel writes this small file soon after each change and reads it when it builds its forms again:
a prompt being written survives closing and reopening the panel. A damaged file is ignored.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORM_STATE_FILE = "panel.json"


class FormState:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def load(self) -> tuple[str, dict[str, dict[str, Any]]]:
        """(pipeline shown, {pipeline: {field: value}}); ("", {}) when nothing usable was saved."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "", {}
        if not isinstance(data, dict):
            return "", {}
        forms = data.get("forms")
        forms = {name: values for name, values in forms.items() if isinstance(values, dict)} \
            if isinstance(forms, dict) else {}
        pipeline = data.get("pipeline")
        return (pipeline if isinstance(pipeline, str) else ""), forms

    def save(self, pipeline: str, forms: dict[str, dict[str, Any]]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps({"pipeline": pipeline, "forms": forms}, indent=1, default=str), encoding="utf-8")
            os.replace(tmp, self.path)  # never half a file: the previous state stays until this one is whole
        except OSError:
            pass  # a read-only config folder: the panel works on, it just forgets
