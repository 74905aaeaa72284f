"""Symmetric int8 quantization along the last dimension, shared by int8 weights (kernels.py) and the int8 KV cache
(decoder.py); csrc/kernels.cpp's quantize_vector computes the same numbers."""

from __future__ import annotations

import torch
from torch import Tensor


def quantize_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [..., n] ~= q [..., n] int8 * scale [...] float32, scale = max |x| / 127 per vector, round to nearest even."""
    x = x.float()
    scale = (x.abs().amax(dim=-1) / 127).clamp(min=1e-12)
    q = (x / scale[..., None]).round_().clamp_(-127, 127).to(torch.int8)  # in place: no more full-size temporaries
    return q, scale


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    """q [..., n], scale [...] -> float32 [..., n]"""
    return q.float() * scale[..., None]
