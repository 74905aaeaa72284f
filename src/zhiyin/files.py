"""Reading and writing files. Every file zhiyin writes is written whole or not at all: into a temporary file beside
it, then renamed over it. JSON is read with errors that name the file and the line at fault."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable


def write_atomic(path: str | os.PathLike, write: Callable[[str], object]) -> str:
    """Call write(temporary_path), then put that file at `path` in one rename; on any error (Ctrl-C too) the
    temporary file is removed and an older file at `path` stays as it was. Returns the path."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.remove(temporary)
        except OSError:
            pass
        raise
    return path


def write_json(path: str | os.PathLike, data: dict) -> str:
    """A JSON file as the Hugging Face tools write them (indented, keys sorted), atomically."""

    def dump(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")

    return write_atomic(path, dump)


class DamagedFileError(ValueError):
    """A checkpoint file that can't be read as what it should be: damaged, incomplete, or not that kind of file."""


def read_json(path: str | os.PathLike) -> dict:
    """A checkpoint's JSON file as a dict, or a DamagedFileError that names the file and the line at fault."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as error:
        raise DamagedFileError(f"'{path}' is not a text file ({error.reason}): download it again") from None
    except json.JSONDecodeError as error:
        raise DamagedFileError(
            f"'{path}' is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}): "
            "fix it or download it again"
        ) from None
    if not isinstance(data, dict):
        raise DamagedFileError(f"'{path}' holds a JSON {type(data).__name__}, not an object: download it again")
    return data
