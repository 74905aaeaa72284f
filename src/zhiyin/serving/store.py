"""The server's jobs in SQLite (the standard library's: nothing to install or start), in the data folder beside their
audio files. Every change is committed at once, so after a crash or `kill -9` the store says what was finished
(and where its file is) and what was queued or running (to be run again, with the same seed)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    number INTEGER NOT NULL,           -- the order jobs came in
    status TEXT NOT NULL,              -- queued | running | succeeded | failed | cancelled
    request TEXT NOT NULL,             -- the request as JSON (prompt, duration, seed, settings, format, uploads)
    seed INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER NOT NULL DEFAULT 0,
    file TEXT,                         -- the finished audio, relative to the data folder
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_number ON jobs (number);
"""
FIELDS = (
    "id",
    "number",
    "status",
    "request",
    "seed",
    "created_at",
    "started_at",
    "finished_at",
    "frames_done",
    "frames_total",
    "file",
    "error",
)
UNFINISHED = ("queued", "running")


class JobStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.folder / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def add(self, id: str, request: dict[str, Any], seed: int, frames_total: int) -> dict[str, Any]:
        with self._lock:
            number = self._db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute(
                "INSERT INTO jobs (id, number, status, request, seed, created_at, frames_total) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (id, number, "queued", json.dumps(request), seed, time.time(), frames_total),
            )
        return self.get(id)

    def update(self, id: str, **fields: Any) -> None:
        unknown = fields.keys() - set(FIELDS)
        if unknown:
            raise KeyError(f"no job fields {sorted(unknown)}")
        with self._lock:
            assignments = ", ".join(f"{name} = ?" for name in fields)
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), id))

    def get(self, id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(FIELDS)} FROM jobs WHERE id = ?", (id,)).fetchone()
        return _job(row)

    def list(self, offset: int = 0, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(FIELDS)} FROM jobs ORDER BY number DESC LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [_job(row) for row in rows]

    def unfinished(self) -> list[dict[str, Any]]:
        """Jobs queued or running when the server last stopped, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(FIELDS)} FROM jobs WHERE status IN (?, ?) ORDER BY number", UNFINISHED
            ).fetchall()
        return [_job(row) for row in rows]

    def delete(self, id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (id,))

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {status: count for status, count in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _job(row) -> dict[str, Any] | None:
    if row is None:
        return None
    job = dict(zip(FIELDS, row))
    job["request"] = json.loads(job["request"])
    return job
