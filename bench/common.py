"""What the benchmark scripts share."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# --march levels below AVX-512: PyTorch computes as such a CPU does too (its own kernels, and oneDNN's)
PYTORCH_LEVELS = {
    "x86-64-v3": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "x86-64-v2": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "x86-64": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def checkpoint(folder: Path | None, shape: str) -> Path:
    """`folder`, or bench/checkpoints/<shape>: a random-weight checkpoint of that published shape, made if absent
    (speed does not depend on the values)."""
    folder = folder or HERE / "checkpoints" / shape
    if not (folder / "config.json").exists():
        from zhiyin.random_checkpoint import write_random_checkpoint

        print(f"making a random musicgen-{shape} checkpoint in {folder} ...", file=sys.stderr)
        write_random_checkpoint(folder, shape)
    return folder
