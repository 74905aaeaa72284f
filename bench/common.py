"""What the benchmark scripts share."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def checkpoint(folder: Path | None, shape: str) -> Path:
    """`folder`, or bench/checkpoints/<shape>: a random-weight checkpoint of that published shape, made if absent
    (speed does not depend on the values)."""
    folder = folder or HERE / "checkpoints" / shape
    if not (folder / "config.json").exists():
        from zhiyin.random_checkpoint import write_random_checkpoint

        print(f"making a random musicgen-{shape} checkpoint in {folder} ...", file=sys.stderr)
        write_random_checkpoint(folder, shape)
    return folder
