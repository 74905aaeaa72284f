"""Symmetric int8 quantization along the last dimension, shared by int8 weights (kernels.py) and the int8 KV cache
(decoder.py); csrc/kernels.cpp's quantize_vector computes the same numbers."""

from __future__ import annotations

import torch
from torch import Tensor


def quantize_int8(x: Tensor, overwrite: bool = False) -> tuple[Tensor, Tensor]:
    """x [..., n] ~= q [..., n] int8 * scale [...] float32, scale = max |x| / 127 per vector, round to nearest even.
    overwrite: x is a float32 buffer the caller no longer needs; it is divided and rounded in place."""
    owned = overwrite or x.dtype != torch.float32
    x = x.float()
    largest = torch.maximum(
        x.amax(dim=-1), x.amin(dim=-1).neg_()
    )  # max |x|, no full-size temporary (nor aminmax: slow)
    scale = (largest / 127).clamp(min=1e-12)
    scaled = x.div_(scale[..., None]) if owned else x / scale[..., None]
    return scaled.round_().clamp_(-127, 127).to(torch.int8), scale


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    """q [..., n], scale [...] -> float32 [..., n]"""
    return q.float() * scale[..., None]
