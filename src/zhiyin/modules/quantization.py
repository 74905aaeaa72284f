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


INT4_GROUP, INT4_ROWS, GROUP_SCALE_MAX, INT4_LARGEST_K = 32, 16, 63, 32768  # csrc/matvec.h's


def quantize_int4(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x [n, k] ~= value * groups * scale: value -8..7 per weight, groups int8 (-63..63) per 32 columns, scale [n]
    float32 per row; k is padded with zeros to kp, a multiple of 32. Each group's step is its value of largest
    magnitude over -8 (that value becomes -8 exactly, as in GGML's Q4_0), in whole units of the row's scale (its
    largest step / 63). Returns (packed [n, kp / 2] uint8, scale, groups [n, kp / 32]) in the kernels' order
    (int4_blocks): values as value + 8, two to a byte."""
    n, k = x.shape
    if k > INT4_LARGEST_K:
        raise ValueError(
            f"int4 weights take at most {INT4_LARGEST_K} columns (their sums stay in int32); this one has {k}"
        )
    padded = -(-k // INT4_GROUP) * INT4_GROUP
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
    packed, blocked = int4_blocks(values.view(n, padded), groups.to(torch.int8))
    return packed, scale, blocked


def int4_blocks(values: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """values [n, kp] (value + 8, one a byte) and groups [n, kp / 32] in row order -> the kernels' order
    (csrc/matvec.h's Linear): the rows in blocks of 16 (the last block may hold fewer, R), each block's bytes group
    by group, in each group four runs t = 0..3 of R x 4 bytes: row j's 4 bytes hold columns 8t..8t+3 of the group
    in their low nibbles and 8t+4..8t+7 in their high ones. A block's group scales: group by group, R of them."""
    n, kp = values.shape
    G = kp // INT4_GROUP
    packed, blocked = [], []
    for start, B, R in _blocks(n):
        v = values[start : start + B * R].view(B, R, G, 4, 2, 4)  # [block, row, group, t, low/high, column]
        nibbles = v[:, :, :, :, 0] | (v[:, :, :, :, 1] << 4)  # [B, R, G, 4, 4]
        packed.append(nibbles.permute(0, 2, 3, 1, 4).reshape(B * R, kp // 2))
        blocked.append(groups[start : start + B * R].view(B, R, G).transpose(1, 2).reshape(B * R, G))
    return torch.cat(packed), torch.cat(blocked)


def int4_rows(packed: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """int4_blocks' inverse: (values [n, kp] as value + 8, groups [n, kp / 32]) in row order"""
    n, half = packed.shape
    G = groups.shape[1]
    values, rows = [], []
    for start, B, R in _blocks(n):
        nibbles = packed[start : start + B * R].reshape(B, G, 4, R, 4).permute(0, 3, 1, 2, 4)  # [B, R, G, 4, 4]
        values.append(torch.stack([nibbles & 15, nibbles >> 4], dim=4).reshape(B * R, 2 * half))
        rows.append(groups[start : start + B * R].reshape(B, G, R).transpose(1, 2).reshape(B * R, G))
    return torch.cat(values), torch.cat(rows)


def _blocks(n: int) -> list[tuple[int, int, int]]:
    """n rows as (first row, blocks, rows a block): the whole blocks of 16, then the rest"""
    whole = n // INT4_ROWS * INT4_ROWS
    return [(0, whole // INT4_ROWS, INT4_ROWS)] * (whole > 0) + [(whole, 1, n - whole)] * (n > whole)


def int4_shapes(n: int, k: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Empty (packed, scale, groups) of quantize_int4's shapes for a weight [n, k]"""
    padded = -(-k // INT4_GROUP) * INT4_GROUP
    return (
        torch.empty(n, padded // 2, dtype=torch.uint8, device=device),
        torch.empty(n, device=device),
        torch.empty(n, padded // INT4_GROUP, dtype=torch.int8, device=device),
    )


def dequantize_int4(packed: Tensor, scale: Tensor, groups: Tensor, k: int) -> Tensor:
    """quantize_int4's (packed [n, kp / 2], scale [n], groups [n, kp / 32]) -> float32 [n, k]"""
    values, groups = int4_rows(packed, groups)
    n = values.shape[0]
    steps = groups.float() * scale.float()[:, None]
    return ((values.view(n, -1, INT4_GROUP).float() - 8) * steps[..., None]).view(n, -1)[:, :k]


def concatenate_int4(pieces: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """int4 weights' (packed, groups) of pieces stacked along the rows: one weight's, in the kernels' order (its
    blocks of 16 rows do not end where a piece of other than 16 x rows does)"""
    if all(packed.shape[0] % INT4_ROWS == 0 for packed, _ in pieces):
        return torch.cat([p for p, _ in pieces]), torch.cat([g for _, g in pieces])
    rows = [int4_rows(packed, groups) for packed, groups in pieces]
    return int4_blocks(torch.cat([v for v, _ in rows]), torch.cat([g for _, g in rows]))


QUANTIZED_PARTS = ("scale", "groups")  # what a quantized linear weight brings along, beside the layer's 'weight'


def quantize_weight(weight: Tensor, quantize: str, overwrite: bool = False) -> dict[str, Tensor]:
    """A linear layer's weight [n, k] quantized as `quantize` ('int8' or 'int4') says: its tensors by their names in
    the layer ('weight', 'scale', and for int4 'groups'; kernels.KernelLinear's). overwrite: as quantize_int8's."""
    if quantize == "int8":
        q, scale = quantize_int8(weight, overwrite)
        return {"weight": q, "scale": scale}
    packed, scale, groups = quantize_int4(weight)
    return {"weight": packed, "scale": scale, "groups": groups}
