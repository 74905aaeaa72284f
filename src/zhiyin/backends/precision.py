"""Which dtype each part of a model holds and computes in, decided once per load: the precision plan.

    part                         float32     bfloat16 / float16                     int8 / int4 (quantize)
    decoder linear weights       float32     the dtype                              int8, a scale per output row;
                                                                                    int4, and one per 32 columns
    decoder activations, norms   float32     float32 on the CPU (the kernels widen  float32
                                             the weights), else the dtype
    KV cache                     float32     bfloat16 on the CPU, else the dtype    int8 on the CPU
    conditioning: T5, the text   float32     the dtype where the device computes    as the dtype says
    and melody projections,                  it natively, else float32
    EnCodec

The conditioning parts run on PyTorch. A CPU without native bfloat16 (most AVX2 machines; PyTorch limited to AVX2
with ATEN_CPU_CAPABILITY / oneDNN with ONEDNN_MAX_CPU_ISA) computes them in bfloat16 far slower than in float32
(BENCHMARKS.md, "As an AVX2 machine computes"), so there they stay float32 while the decoder's weights stay narrow in
zhiyin's kernels: no mode is slower than float32.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .. import heap

# x86 flags (/proc/cpuinfo) of native bfloat16 / float16 arithmetic, and aarch64 features
_NATIVE_FLAGS = {
    torch.bfloat16: ({"avx512_bf16", "amx_bf16"}, {"bf16"}),
    torch.float16: ({"avx512_fp16", "amx_fp16"}, {"fphp", "asimdhp"}),
}


@dataclass(frozen=True)
class Precision:
    weights: torch.dtype  # what the decoder's float weights are read as (int8/int4 ones come on top, per quantize)
    activations: torch.dtype  # the decoder's activations, norms and embeddings
    cache: torch.dtype  # the decoder's KV cache
    conditioning: torch.dtype  # T5, enc_to_dec_proj (and melody's chroma projection), EnCodec

    def of(self, key: str) -> torch.dtype:
        """The dtype of a float tensor of the checkpoint (its key, in the checkpoint's or zhiyin's spelling)."""
        return self.weights if key.startswith("decoder.") else self.conditioning


def plan(device: torch.device | None, dtype: torch.dtype, quantize: str | None) -> Precision:
    """The precision plan for a model loaded in `dtype` onto `device` (None: the CPU), quantized or not."""
    on_cpu = device is None or device.type == "cpu"
    if dtype == torch.float32:
        return Precision(dtype, dtype, torch.int8 if on_cpu and quantize is not None else dtype, dtype)
    if not on_cpu:
        return Precision(dtype, dtype, dtype, dtype)
    conditioning = dtype if native_on_cpu(dtype) else torch.float32
    activations = torch.float32 if dtype == torch.bfloat16 else dtype  # the kernels widen bfloat16 weights
    cache = torch.int8 if quantize is not None else torch.bfloat16 if dtype == torch.bfloat16 else dtype
    return Precision(dtype, activations, cache, conditioning)


def place(decoder: nn.Module, precision: Precision) -> None:
    """Put a decoder whose linear weights are already in place (float, int8 or int4) in the plan's dtypes: its other
    parameters (norms, embeddings) in the activations' dtype, and its KV cache in the plan's. On the CPU the linear
    layers' weights, which every step reads whole, go onto huge pages (heap.onto_huge_pages)."""
    linear = []
    for module in decoder.modules():
        if hasattr(module, "in_features"):  # linear layers (nn.Linear, KernelLinear) keep their weights' dtype
            linear += module.parameters(recurse=False)
        else:
            for param in module.parameters(recurse=False):
                param.data = param.data.to(precision.activations)
    heap.onto_huge_pages(linear)
    decoder.cache_dtype = precision.cache


@lru_cache(maxsize=None)
def native_on_cpu(dtype: torch.dtype) -> bool:
    """Whether this CPU, as PyTorch is set to use it here, computes `dtype` natively (not by emulation)."""
    if dtype not in _NATIVE_FLAGS:
        return dtype == torch.float32
    x86_flags, arm_features = _NATIVE_FLAGS[dtype]
    flags = _cpu_flags()
    if platform.machine().lower() in ("x86_64", "amd64"):
        if not flags & x86_flags or not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
            return False  # no such instructions, or PyTorch told to use AVX2 at most (ATEN_CPU_CAPABILITY)
    elif not flags & arm_features:
        return False
    if dtype == torch.bfloat16:
        try:  # oneDNN, which runs the convolutions, may be capped below bfloat16 (ONEDNN_MAX_CPU_ISA)
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return True
    return True


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()  # elsewhere (macOS): nothing known, so float32, which is never the slow choice
