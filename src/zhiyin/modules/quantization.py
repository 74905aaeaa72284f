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


INT4_GROUP, INT4_BLOCK, GROUP_SCALE_MAX = 32, 64, 63  # csrc/matvec.h's


def quantize_int4(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x [n, k] ~= value * groups * scale: value -8..7 per weight, groups [n, kp / 32] int8 (-63..63) per 32 columns,
    scale [n] float32 per row; kp is k rounded up to 64, the padding zeros. Each group's step is its value of largest
    magnitude over -8 (that value becomes -8 exactly, as in GGML's Q4_0), in whole units of the row's scale (its
    largest step / 63). Returns (packed [n, kp / 2] uint8, scale, groups), packed as csrc/matvec.h's Linear says: in
    each 64 columns, byte b holds column b (low nibble) and column 32 + b (high), each as value + 8."""
    n, k = x.shape
    padded = -(-k // INT4_BLOCK) * INT4_BLOCK
    if x.is_meta:  # (the layers a checkpoint's quantized weights load into)
        return int4_shapes(n, k, x.device)
    x = torch.nn.functional.pad(x.float(), (0, padded - k)) if padded != k else x.float()
    grouped = x.view(n, padded // INT4_GROUP, INT4_GROUP)
    top, bottom = grouped.amax(dim=-1), grouped.amin(dim=-1)
    extreme = torch.where(top >= -bottom, top, bottom)  # [n, G]: each group's value of largest magnitude
    steps = extreme / -8
    scale = (steps.abs().amax(dim=-1) / GROUP_SCALE_MAX).clamp(min=1e-12)
    groups = torch.round(steps / scale[:, None]).clamp_(-GROUP_SCALE_MAX, GROUP_SCALE_MAX)
    groups = torch.where(groups == 0, torch.ones_like(groups), groups)  # a group of (near) zeros: any step
    values = torch.round(grouped / (groups * scale[:, None])[..., None]).clamp_(-8, 7).add_(8).to(torch.uint8)
    halves = values.view(n, padded // INT4_BLOCK, 2, INT4_BLOCK // 2)
    packed = halves[:, :, 0] | (halves[:, :, 1] << 4)
    return packed.reshape(n, padded // 2), scale, groups.to(torch.int8)


def int4_shapes(n: int, k: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Empty (packed, scale, groups) of quantize_int4's shapes for a weight [n, k]"""
    padded = -(-k // INT4_BLOCK) * INT4_BLOCK
    return (
        torch.empty(n, padded // 2, dtype=torch.uint8, device=device),
        torch.empty(n, device=device),
        torch.empty(n, padded // INT4_GROUP, dtype=torch.int8, device=device),
    )


def dequantize_int4(packed: Tensor, scale: Tensor, groups: Tensor, k: int) -> Tensor:
    """quantize_int4's (packed [n, kp / 2], scale [n], groups [n, kp / 32]) -> float32 [n, k]"""
    n = packed.shape[0]
    blocks = packed.view(n, -1, INT4_BLOCK // 2)
    values = torch.stack([blocks & 15, blocks >> 4], dim=2).view(n, -1, INT4_GROUP).float() - 8
    steps = groups.float() * scale.float()[:, None]
    return (values * steps[..., None]).view(n, -1)[:, :k]


QUANTIZED_PARTS = ("scale", "groups")  # what a quantized linear weight brings along, beside the layer's 'weight'


def quantize_weight(weight: Tensor, quantize: str, overwrite: bool = False) -> dict[str, Tensor]:
    """A linear layer's weight [n, k] quantized as `quantize` ('int8' or 'int4') says: its tensors by their names in
    the layer ('weight', 'scale', and for int4 'groups'; kernels.KernelLinear's). overwrite: as quantize_int8's."""
    if quantize == "int8":
        q, scale = quantize_int8(weight, overwrite)
        return {"weight": q, "scale": scale}
    packed, scale, groups = quantize_int4(weight)
    return {"weight": packed, "scale": scale, "groups": groups}
