"""heap.py: tensors moved onto transparent huge pages keep their values, new ones there are zeros, and the decoder's
weights and KV cache live there."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from torch import nn

from zhiyin import MusicgenForConditionalGeneration, heap
from zhiyin.backends.kernels import KernelLinear

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux's transparent huge pages")


def mapping(tensor: torch.Tensor) -> tuple[str, set[str]]:
    """The file (or '') of the mapping that holds the tensor's first byte, and its VmFlags ('hg': madvise's
    MADV_HUGEPAGE was asked for)."""
    address, inside, path = tensor.data_ptr(), False, ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and ":" not in fields[0]:
            start, end = (int(part, 16) for part in fields[0].split("-"))
            inside, path = start <= address < end, " ".join(fields[5:])
        elif inside and line.startswith("VmFlags:"):
            return path, set(fields[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


def mapping_flags(tensor: torch.Tensor) -> set[str]:
    return mapping(tensor)[1]


def test_tensors_move_onto_huge_pages_with_their_values():
    g = torch.Generator().manual_seed(0)
    tensors = [
        nn.Parameter(torch.randn(3, 5, generator=g)),
        nn.Parameter(torch.randint(0, 255, (5 << 10, 1 << 10), dtype=torch.uint8, generator=g), requires_grad=False),
        torch.randn(7, dtype=torch.bfloat16),
    ]
    before = [t.detach().clone() for t in tensors]
    places = [t.data_ptr() for t in tensors]
    assert heap.onto_huge_pages(tensors)
    gc.collect()  # the mapping lives as long as the tensors made from it
    for tensor, values, place in zip(tensors, before, places):
        assert torch.equal(tensor, values) and tensor.dtype == values.dtype and tensor.shape == values.shape
        assert tensor.data_ptr() != place and tensor.data_ptr() % 64 == 0
        assert "hg" in mapping_flags(tensor)
    assert isinstance(tensors[0], nn.Parameter) and tensors[0].requires_grad and not tensors[1].requires_grad
    tensors[1].data.add_(1)  # written in place (a LoRA merge): a private mapping, writable
    assert torch.equal(tensors[1], before[1] + 1)


def test_new_tensors_on_huge_pages_are_zeros_and_writable():
    specs = [((3, 5), torch.float32), ((1 << 20,), torch.int8), ((2, 7), torch.bfloat16)]
    tensors = heap.zeros_on_huge_pages(specs)
    gc.collect()
    for tensor, (shape, dtype) in zip(tensors, specs):
        assert tensor.shape == shape and tensor.dtype == dtype and tensor.data_ptr() % 64 == 0
        assert not tensor.any() and "hg" in mapping_flags(tensor)
        tensor.fill_(3)
    ends = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors]
    assert all(end <= start for (_, end), (start, _) in zip(ends, ends[1:]))  # apart, in order
    assert [t.sum().item() for t in tensors] == [45, 3 << 20, 42]


def test_the_kv_cache_is_on_huge_pages(tiny_checkpoint, monkeypatch):
    """On the CPU every layer's keys, values and int8 scales are made on huge pages, as zeros (scales ones); where
    there are none, the same cache in ordinary memory."""
    model = MusicgenForConditionalGeneration.from_pretrained(tiny_checkpoint[0], quantize="int8")
    decoder, heads = model.decoder, model.decoder.config.num_attention_heads
    for huge in (True, False):
        if not huge:
            monkeypatch.setattr(heap, "zeros_on_huge_pages", lambda specs: None)
        decoder.setup_caches(3, 10)
        buffers = [b for cache in decoder.caches for b in cache.buffers()]
        assert len(buffers) == 4 * len(decoder.layers) and len({b.data_ptr() for b in buffers}) == len(buffers)
        assert all(("hg" in mapping_flags(b)) == huge for b in buffers)
        for cache in decoder.caches:
            assert cache.k.shape == (3, heads, 10, cache.k.shape[-1]) and cache.v.shape == cache.k.shape
            assert cache.k.dtype == cache.v.dtype == torch.int8 and not cache.k.any() and not cache.v.any()
            assert cache.k_scale.shape == cache.v_scale.shape == (3, heads, 10)
            assert bool((cache.k_scale == 1).all()) and bool((cache.v_scale == 1).all())
        decoder.free_caches()


def test_nothing_to_move():
    assert not heap.onto_huge_pages([])
    meta = torch.empty(4, device="meta")
    assert not heap.onto_huge_pages([meta]) and meta.device.type == "meta"


def test_the_decoders_weights_are_on_huge_pages(tiny_checkpoint):
    model = MusicgenForConditionalGeneration.from_pretrained(tiny_checkpoint[0], quantize="int4")
    linears = [m for m in model.decoder.modules() if isinstance(m, KernelLinear)]
    assert linears and all("hg" in mapping_flags(m.weight) for m in linears)
    lstm = model.audio_encoder.decoder.layers[1].lstm
    assert "hg" in mapping_flags(lstm.weight_hh_l0)


def test_a_cpu_load_keeps_no_file_mapped(tiny_checkpoint):
    """On the CPU the decoder's weights are copied onto huge pages, so no tensor stays in a mapping of the file,
    whose pages would stay resident beside the copies (the peak of loading float32 weights: BENCHMARKS.md)."""
    model = MusicgenForConditionalGeneration.from_pretrained(tiny_checkpoint[0])
    files = {mapping(p)[0] for p in model.parameters() if p.numel() * p.element_size() >= 4096}
    assert not any(f.endswith(".safetensors") for f in files), files
