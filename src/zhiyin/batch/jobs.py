"""A jobs file: one piece of music a line (JSON Lines) or a row (CSV with a header), each checked on its own.

    {"id": "intro", "prompt": "lofi hip hop with a warm piano", "duration": 10, "seed": 7}
    {"prompt": null, "duration": 5}                                   # unconditional; id from its line number
    {"id": "more", "prompt": "jazz", "audio_prompt": "clips/sax.wav"}  # paths relative to the jobs file

Fields: `id` (the output file's stem), the request's fields (requests.py: prompt, duration, seed, guidance_scale,
top_k, top_p, temperature, format; the CLI's defaults), `audio_prompt` and `melody` (audio files). A line that cannot
be made (not JSON, an unknown field, a value out of range, an empty prompt, a missing audio file, an id used before)
becomes a Problem naming its line; the others go on.

An item without a seed gets one made from its id, so that a run made again (after a crash, or to finish) makes the
same music; `settings` is a digest of everything that decides an item's file, to tell a finished item from one
whose line changed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ..requests import MAX_SEED, FieldError, GenerationRequest, check

FILE_FIELDS = ("audio_prompt", "melody")
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Item:
    line: int
    id: str
    request: GenerationRequest  # its seed set
    audio_prompt: Path | None
    melody: Path | None
    settings: str  # digest of what decides its file

    @property
    def file(self) -> str:
        return f"{self.id}.{self.request.format}"


@dataclass(frozen=True)
class Problem:
    line: int
    id: str
    error: str


def read_jobs(path: Path, run: dict) -> list[Item | Problem]:
    """The jobs file's items in order (a Problem for each line that cannot be made). `run`: what else decides the
    files (model, dtype, quantize), part of each item's settings. Raises OSError/ValueError for a file that cannot
    be read at all."""
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    seen: dict[str, int] = {}
    out: list[Item | Problem] = []
    for line, fields in rows:
        default_id = f"{line:05d}"
        if isinstance(fields, str):  # the line's own problem, found while reading it
            out.append(Problem(line, default_id, fields))
            continue
        id = str(fields.pop("id", None) or default_id)
        item = _item(path.parent, line, id, fields, run)
        if isinstance(item, Item):
            if id in seen:  # its entry goes under its line's id: the first item's entry stays its own
                item = Problem(line, default_id, f"duplicate id '{id}' (first on line {seen[id]}): give each its own")
            else:
                seen[id] = line
        out.append(item)
    return out


def _jsonl_rows(path: Path):
    with open(path, encoding="utf-8") as file:
        for line, text in enumerate(file, 1):
            if not text.strip():
                continue
            try:
                fields = json.loads(text)
            except json.JSONDecodeError as error:
                yield line, f"is not JSON ({error.msg} at column {error.colno}): one JSON object per line"
                continue
            yield line, fields if isinstance(fields, dict) else "is not a JSON object: one object of fields per line"


def _csv_rows(path: Path):
    with open(path, encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        for row in reader:
            line = reader.line_num
            if None in row:
                yield line, "has more cells than the header has columns"
                continue
            fields = {key.strip(): value for key, value in row.items() if value is not None and value.strip() != ""}
            if fields.get("prompt", "").strip().lower() == "null":
                fields["prompt"] = None
            if fields:
                yield line, fields


def _item(folder: Path, line: int, id: str, fields: dict, run: dict) -> Item | Problem:
    if not ID.fullmatch(id):
        return Problem(line, id, f"id '{id}' is not a file name: letters, digits, '.', '_', '-' (at most 100)")
    files = {}
    for field in FILE_FIELDS:
        value = fields.pop(field, None)
        if value is None:
            files[field] = None
            continue
        file = folder / str(value)
        if not file.is_file():
            return Problem(line, id, f"{field} file '{value}' not found (paths are relative to the jobs file)")
        files[field] = file.resolve()
    try:
        request = GenerationRequest.model_validate(fields)
        check(request)
    except ValidationError as error:
        return Problem(line, id, _validation_message(error))
    except FieldError as error:
        return Problem(line, id, str(error))
    if request.seed is None:
        request = request.model_copy(update={"seed": seed_of(id)})
    decided = {**request.model_dump(), **{k: file_key(v) for k, v in files.items()}, **run}
    settings = hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()[:16]
    return Item(line, id, request, files["audio_prompt"], files["melody"], settings)


def seed_of(id: str) -> int:
    """The seed of an item that gave none: the same for the same id, run after run."""
    return int.from_bytes(hashlib.sha256(id.encode()).digest()[:8], "little") % (MAX_SEED + 1)


def file_key(path: Path | None) -> list | None:
    if path is None:
        return None
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "line"
    if first["type"] == "extra_forbidden":
        known = ", ".join(["id", *GenerationRequest.model_fields, *FILE_FIELDS])
        return f"{field} is not a field of a job (fields: {known})"
    if first["type"] == "missing":
        return f"{field} is required" + (" (null for music from nothing)" if field == "prompt" else "")
    return f"{field} {first['msg']}"
