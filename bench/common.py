"""What the benchmark scripts share."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# --march levels below AVX-512: PyTorch computes as such a CPU does too (its own kernels, and oneDNN's)
PYTORCH_LEVELS = {
    "x86-64-v3": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "x86-64-v2": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "x86-64": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def worker_environment(march: str | None) -> dict[str, str]:
    """The environment of a benchmark's worker process: kernels built for `march` (None: this CPU's) and, below
    AVX-512, PyTorch computing at that level too; no progress bars."""
    return {
        **os.environ,
        "TQDM_DISABLE": "1",
        **({"ZHIYIN_KERNELS_MARCH": march} if march else {}),
        **PYTORCH_LEVELS.get(march, {}),
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


def synchronize() -> None:
    """Wait for the GPU's queued work, if a GPU is in use."""
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of `repeat` calls of fn, waiting for the GPU (if one is in use) before and after each."""
    best = float("inf")
    for _ in range(repeat):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best
