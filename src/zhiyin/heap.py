"""glibc heap settings: big tensors without page faults while decoding audio, and freed memory handed back.

glibc serves every allocation above its mmap threshold (which grows to at most 32 MB) with a fresh mmap and unmaps it
when it is freed, so each large tensor page-faults on its first touch, every time. EnCodec's decoder makes dozens of
them, and the faults cost a large share of its time (BENCHMARKS.md, "EnCodec and the heap").
`large_tensors_from_heap()` raises the thresholds for the duration of a block, so that freed memory is reused, then
sets them to glibc's usual steady state (32 MB mmap, 64 MB trim threshold) and trims the heap.
`large_tensors_mapped()` does the opposite while weights load. Elsewhere than glibc all are no-ops.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_lock = threading.Lock()
_users = 0


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> None:
    """Hand freed memory at the top of the heap back to the system (glibc keeps large freed blocks otherwise)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def large_tensors_from_heap() -> AbstractContextManager[None]:
    """While decoding audio: every tensor from the heap, so that freed memory is reused without page faults."""
    return _thresholds(mmap=1 << 30, trim=1 << 30)


def large_tensors_mapped() -> AbstractContextManager[None]:
    """While loading weights: every tensor above 256 KB mapped on its own, so that the temporaries of reading and
    converting (a float32 buffer per tensor) are unmapped when freed instead of fragmenting the heap under the
    weights kept (a lower loading peak: BENCHMARKS.md, "EnCodec and the heap")."""
    return _thresholds(mmap=256 << 10, trim=64 << 20)


@contextmanager
def _thresholds(mmap: int, trim: int) -> Iterator[None]:
    """glibc's mmap and trim thresholds for the duration of a block (the first of concurrent blocks sets them), then
    glibc's usual steady state and a trim."""
    global _users
    libc = _libc()
    if libc is None:
        yield
        return
    with _lock:
        _users += 1
        if _users == 1:
            libc.mallopt(M_MMAP_THRESHOLD, mmap)
            libc.mallopt(M_TRIM_THRESHOLD, trim)
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
                libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
                libc.malloc_trim(0)
