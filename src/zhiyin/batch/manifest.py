"""OUT_DIR/manifest.jsonl: what a batch job has finished, one JSON line per item, appended (and synced) as each
finishes, so that a run killed at any moment leaves a manifest that says what is done:

    {"id": "intro", "line": 1, "status": "ok", "file": "intro.wav", "seed": 7, "seconds": 10.0, "wall": 21.4,
     "error": null, "settings": "3f9c0e51a2d4b8e7"}

A run reads it first: an item whose last entry is ok, with the same settings and its file there, is done and
skipped; the others are made (again). The manifest is then rewritten (atomically) without the entries of the
items to be made, so that each item has one line when the run ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..files import write_atomic

NAME = "manifest.jsonl"


class Manifest:
    def __init__(self, folder: Path):
        self.path = folder / NAME

    def read(self) -> dict[str, dict]:
        """The last entry of each id; a line cut short by a crash is skipped."""
        entries: dict[str, dict] = {}
        if not self.path.exists():
            return entries
        with open(self.path, encoding="utf-8") as file:
            for text in file:
                try:
                    entry = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    entries[entry["id"]] = entry
        return entries

    def keep(self, entries: list[dict]) -> None:
        """Rewrite it with just these entries."""
        text = "".join(json.dumps(entry) + "\n" for entry in entries)
        write_atomic(self.path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))

    def append(self, entry: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")
            file.flush()
            os.fsync(file.fileno())
