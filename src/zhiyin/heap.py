"""Where large tensors live: glibc heap settings (big tensors without page faults while decoding audio, freed memory
handed back) and huge pages for the weights every step reads.

glibc serves every allocation above its mmap threshold (which grows to at most 32 MB) with a fresh mmap and unmaps it
when it is freed, so each large tensor page-faults on its first touch, every time. EnCodec's decoder makes dozens of
them, and the faults cost a large share of its time (BENCHMARKS.md, "EnCodec and the heap").
`large_tensors_from_heap()` raises the thresholds for the duration of a block, so that freed memory is reused, then
sets them to glibc's usual steady state (32 MB mmap, 64 MB trim threshold) and trims the heap.
`large_tensors_mapped()` does the opposite while weights load. Elsewhere than glibc all are no-ops.

`onto_huge_pages()` moves tensors that are read whole at every step (the decoder's weights) into memory that Linux
backs with 2 MB pages: a stream over them then misses the TLB 512 times less often. `zeros_on_huge_pages()` makes
new ones there (the decoder's KV cache, which every step reads too).
"""

from __future__ import annotations

import ctypes
import mmap
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
HUGE_PAGE = 2 << 20  # x86-64's and (with 4 KB base pages) aarch64's transparent huge page
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


def onto_huge_pages(tensors: list[Tensor]) -> bool:
    """Move the data of CPU tensors (parameters too), in place and one by one, into one anonymous mapping that Linux
    backs with transparent huge pages: asked for with madvise, which Linux's usual setting ('madvise') grants and
    'always' needs not. A thread streaming weights from 4 KB pages waits on page walks (and on a VM on the host's
    too); from 2 MB pages the decoder's steps ran 2-6 % faster on Zen 4 with the kernels' prefetches into L2, 6-12 %
    with prefetches into L1 (BENCHMARKS.md, "Huge pages and prefetching into L2"). Each tensor's original is freed
    as soon as it is copied, so the peak grows by the largest one only. Returns False, moving nothing, where there
    is no such mapping (not Linux, or no tensors on the CPU); with huge pages off ('never') the mapping has ordinary
    pages."""
    tensors = [t for t in tensors if t.device.type == "cpu"]
    places = zeros_on_huge_pages([(t.shape, t.dtype) for t in tensors]) if tensors else None
    if places is None:
        return False
    for tensor, place in zip(tensors, places):
        tensor.data = place.copy_(tensor.data)
    return True


def zeros_on_huge_pages(specs: list[tuple[tuple[int, ...], torch.dtype]]) -> list[Tensor] | None:
    """New CPU tensors of these (shape, dtype), all zeros, each at a cache line, in one private anonymous mapping
    advised to be backed by transparent huge pages (private: a shared anonymous mapping is tmpfs memory, whose huge
    pages have a setting of their own). Anonymous memory starts zeroed: nothing is written, and a page costs only
    when first used. None where madvise has no such advice or refuses it."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return None
    sizes = [-(-torch.Size(shape).numel() * dtype.itemsize // 64) * 64 for shape, dtype in specs]
    mapping = mmap.mmap(-1, sum(sizes) + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mapping.madvise(advice)
    except OSError:
        return None
    memory = torch.frombuffer(mapping, dtype=torch.uint8)  # the tensors made from it hold the mapping
    at = -memory.data_ptr() % HUGE_PAGE  # huge pages cover the 2 MB-aligned part of a mapping
    tensors = []
    for (shape, dtype), size in zip(specs, sizes):
        tensors.append(memory[at : at + torch.Size(shape).numel() * dtype.itemsize].view(dtype).view(shape))
        at += size
    return tensors
