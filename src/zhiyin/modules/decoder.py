"""The MusicGen decoder: a pre-LayerNorm transformer over K parallel streams of EnCodec tokens.

Input tokens are [B, K, T]: one embedding table per codebook, summed, plus sinusoidal positions. Each block has
causal self-attention (with a preallocated KV cache for generation), cross-attention over the projected text
states (their keys/values are computed once per generation) and a GELU FFN. Melody models have no
cross-attention (`cross_attention=False`): their conditioning is a `prefix` of embeddings [B, L, D] put before
the token embeddings, so the tokens sit at positions L, L+1, ... One LM head per codebook gives
logits [B, K, T, V]. Projections have no biases. The delay pattern and the sampling loop live elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import heap
from ..config import DecoderConfig
from .quantization import dequantize_int8, quantize_int8


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """Integer positions [...] -> [..., dim] float32, cos half then sin half (the tensor2tensor layout)."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, device=positions.device, dtype=torch.float32) * -(math.log(10000) / (half - 1))
    )
    angles = positions.float()[..., None] * freqs  # [..., half]
    table = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table


class KVCache(nn.Module):
    """Preallocated self-attention keys/values for one layer: [rows, H, max_len, Dh] each, in float, or in int8 with
    a scale per vector ([rows, H, max_len]; quantization.py). Each row is its own sequence at its own positions."""

    def __init__(self, k: Tensor, v: Tensor, k_scale: Tensor | None = None, v_scale: Tensor | None = None):
        super().__init__()
        self.register_buffer("k", k, persistent=False)
        self.register_buffer("v", v, persistent=False)
        if k.dtype == torch.int8:
            self.register_buffer("k_scale", k_scale, persistent=False)
            self.register_buffer("v_scale", v_scale, persistent=False)

    @staticmethod
    def zeros(layers: int, shape: tuple[int, int, int, int], dtype: torch.dtype, device) -> list[KVCache]:
        """Empty caches of `layers` layers, [rows, H, max_len, Dh] each (int8's scales ones). On the CPU in one
        mapping of huge pages (heap.zeros_on_huge_pages), as the weights are: every step reads the caches whole, a
        row and head at a time, and from 4 KB pages its attention took 5-15 % longer (BENCHMARKS.md, "The KV cache on
        huge pages")."""
        scaled = dtype == torch.int8  # the scales after every key and value: filling them touches few pages
        specs = [(shape, dtype)] * (2 * layers) + [(shape[:3], torch.float32)] * (2 * layers if scaled else 0)
        made = heap.zeros_on_huge_pages(specs) if torch.device(device).type == "cpu" else None
        if made is None:
            made = [torch.zeros(size, dtype=kind, device=device) for size, kind in specs]
        keys_values, scales = made[: 2 * layers], [scale.fill_(1.0) for scale in made[2 * layers :]]
        return [KVCache(*keys_values[2 * i : 2 * i + 2], *scales[2 * i : 2 * i + 2]) for i in range(layers)]

    def update(self, positions: Tensor, k: Tensor, v: Tensor, rows: slice, length: int | None) -> tuple[Tensor, Tensor]:
        """Write k, v [b, H, T, Dh] of cache rows `rows` at positions [b, T] (each row its own); return those rows'
        keys/values at positions 0..length-1 (None: every position), [b, H, length, Dh] in k's dtype."""
        b, H, T, Dh = k.shape
        at = positions[:, None, :].expand(b, H, T)  # [b, H, T]
        if self.k.dtype == torch.int8:
            for cache, scales, new in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
                values, scale = quantize_int8(new)
                cache[rows].scatter_(2, at[..., None].expand(b, H, T, Dh), values)
                scales[rows].scatter_(2, at, scale)
            keys = dequantize_int8(self.k[rows, :, :length], self.k_scale[rows, :, :length])
            values = dequantize_int8(self.v[rows, :, :length], self.v_scale[rows, :, :length])
            return keys.to(k.dtype), values.to(v.dtype)
        index = at[..., None].expand(b, H, T, Dh)
        self.k[rows].scatter_(2, index, k.to(self.k.dtype))
        self.v[rows].scatter_(2, index, v.to(self.v.dtype))
        return self.k[rows, :, :length].to(k.dtype), self.v[rows, :, :length].to(v.dtype)  # the cache may be narrower


@dataclass
class CrossKV:
    """Text keys/values of every layer, computed once per generation, and the additive text mask."""

    keys: list[Tensor]  # per layer [B, H, S, Dh]
    values: list[Tensor]  # per layer [B, H, S, Dh]
    mask: Tensor  # [B, 1, 1, S], 0 where the text is valid, a large negative number where it is padding

    def rows(self, rows: slice) -> CrossKV:
        return CrossKV([k[rows] for k in self.keys], [v[rows] for v in self.values], self.mask[rows])

    def padded(self, length: int) -> CrossKV:
        """Its texts padded (zeros, masked) to `length` positions: each row's numbers stay its own."""
        pad = length - self.mask.shape[-1]
        if pad == 0:
            return self
        neg = torch.finfo(self.mask.dtype).min
        return CrossKV(
            keys=[F.pad(k, (0, 0, 0, pad)) for k in self.keys],
            values=[F.pad(v, (0, 0, 0, pad)) for v in self.values],
            mask=F.pad(self.mask, (0, pad), value=neg),
        )

    def write(self, table: CrossKV, first_row: int) -> None:
        """Its rows into rows first_row.. of a wider table (in place): its texts, then zeros, masked."""
        rows, S = slice(first_row, first_row + self.mask.shape[0]), self.mask.shape[-1]
        for into, written in zip([*table.keys, *table.values], [*self.keys, *self.values]):
            into[rows, :, :S] = written
            into[rows, :, S:] = 0
        table.mask[rows, ..., :S] = self.mask
        table.mask[rows, ..., S:] = torch.finfo(table.mask.dtype).min

    @staticmethod
    def concat(parts: list[CrossKV]) -> CrossKV:
        """The rows of several, their texts padded (masked) to the longest: each row's numbers stay its own."""
        S = max(part.mask.shape[-1] for part in parts)
        parts = [part.padded(S) for part in parts]
        return CrossKV(
            keys=[torch.cat([part.keys[i] for part in parts]) for i in range(len(parts[0].keys))],
            values=[torch.cat([part.values[i] for part in parts]) for i in range(len(parts[0].values))],
            mask=torch.cat([part.mask for part in parts]),
        )


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # q, k, v fused
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(
        self, x: Tensor, mask: Tensor, cache: KVCache | None, positions: Tensor, rows: slice, length: int | None
    ) -> Tensor:
        """x [b, T, D] at positions [b, T]; mask [b, 1, T, keys]: which keys each query sees (decoder.forward)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, Dh]
        if cache is not None:
            k, v = cache.update(positions, k, v, rows, length)  # [B, H, keys, Dh]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)  # k, v fused
        self.out = nn.Linear(dim, dim, bias=False)

    def project_text(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """text [B, S, D] -> keys, values [B, H, S, Dh]."""
        B, S, D = text.shape
        k, v = self.kv(text).view(B, S, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class DecoderBlock(nn.Module):
    def __init__(self, config: DecoderConfig, cross_attention: bool = True):
        super().__init__()
        dim, heads = config.hidden_size, config.num_attention_heads
        if config.activation_function not in ("gelu", "relu"):
            raise ValueError(f"unsupported decoder activation '{config.activation_function}' (gelu or relu)")
        self.activation = F.gelu if config.activation_function == "gelu" else F.relu
        self.self_attn_norm = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, heads)
        self.cross_attn_norm = nn.LayerNorm(dim) if cross_attention else None
        self.cross_attn = CrossAttention(dim, heads) if cross_attention else None
        self.ffn_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.ffn_dim, bias=False)
        self.fc2 = nn.Linear(config.ffn_dim, dim, bias=False)

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        cache: KVCache | None,
        positions: Tensor,
        rows: slice,
        length: int | None,
        text_k: Tensor,
        text_v: Tensor,
        text_mask: Tensor,
    ) -> Tensor:
        x = x + self.self_attn(self.self_attn_norm(x), mask, cache, positions, rows, length)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_norm(x), text_k, text_v, text_mask)
        return x + self.fc2(self.activation(self.fc1(self.ffn_norm(x))))


class MusicgenDecoder(nn.Module):
    def __init__(self, config: DecoderConfig, cross_attention: bool = True):
        super().__init__()
        self.config = config
        dim, K = config.hidden_size, config.num_codebooks
        self.embed_tokens = nn.ModuleList([nn.Embedding(config.vocab_size + 1, dim) for _ in range(K)])  # +1: pad
        self.layers = nn.ModuleList([DecoderBlock(config, cross_attention) for _ in range(config.num_hidden_layers)])
        self.final_norm = nn.LayerNorm(dim)
        self.lm_heads = nn.ModuleList([nn.Linear(dim, config.vocab_size, bias=False) for _ in range(K)])
        self.embed_scale = math.sqrt(dim) if config.scale_embedding else 1.0
        self.caches: nn.ModuleList | None = None
        self.cache_dtype: torch.dtype | None = None  # None: the activations' dtype (else the precision plan's)

    def setup_caches(self, rows: int, max_len: int) -> None:
        """Preallocate the self-attention KV cache for `rows` rows of `max_len` positions each."""
        p = self.final_norm.weight
        c = self.config
        dtype = self.cache_dtype or p.dtype
        shape = (rows, c.num_attention_heads, max_len, c.hidden_size // c.num_attention_heads)
        self.caches = nn.ModuleList(KVCache.zeros(len(self.layers), shape, dtype, p.device))

    def free_caches(self) -> None:
        self.caches = None

    def project_text(self, text: Tensor, text_mask: Tensor) -> CrossKV:
        """text [B, S, D] (already in decoder width, zeroed where masked), text_mask [B, S] -> cross-attention K/V.
        A row without text (the null text of guidance and of unconditional music) has zero states, so its keys and
        values are zeros: only the rows with text are projected."""
        with_text = text_mask.bool().any(dim=1)  # [B]
        every_row = bool(with_text.all())
        keys, values = [], []
        for layer in self.layers:
            k, v = layer.cross_attn.project_text(text if every_row else text[with_text])
            if not every_row:
                k, v = (t.new_zeros((text.shape[0], *t.shape[1:])).index_put_((with_text,), t) for t in (k, v))
            keys.append(k)
            values.append(v)
        neg = torch.finfo(text.dtype).min
        mask = torch.where(text_mask.bool(), 0.0, neg).to(text.dtype)[:, None, None, :]  # [B, 1, 1, S]
        return CrossKV(keys, values, mask)

    def forward(
        self,
        tokens: Tensor,
        cross: CrossKV | None,
        positions: Tensor,
        prefix: Tensor | None = None,
        rows: slice = slice(None),
    ) -> Tensor:
        """tokens [b, K, T] -> logits [b, K, L + T, V] (float32 not forced), L = the prefix's length (0 without).

        positions [b, L + T]: each row's positions of its prefix and tokens; every row is its own sequence. With the
        caches set up, these positions' keys/values are written into cache rows `rows` (b of them) and each query
        attends to its row's cached positions up to its own; without, to the given positions up to its own.
        prefix [b, L, D] (melody models, cross None): embeddings put before the tokens.
        cross: the text keys/values of these b rows.
        """
        B, K, T = tokens.shape
        x = sum(self.embed_tokens[k](tokens[:, k]) for k in range(K)) * self.embed_scale  # [B, T, D]
        if prefix is not None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)  # [B, L + T, D]
        x = x + sinusoidal_positions(positions, x.shape[-1]).to(x.dtype)
        length = None
        if self.caches is None:
            keys = positions  # [B, L + T]
        else:
            max_len = self.caches[0].k.shape[2]
            # on the CPU attention reads the cache up to the furthest position (reading it costs no device sync);
            # elsewhere all of it: static shapes, so that a CUDA graph can replay the step at any position
            length = int(positions.max()) + 1 if positions.device.type == "cpu" else max_len
            keys = torch.arange(length, device=positions.device)[None].expand(B, length)
        mask = (keys[:, None, :] <= positions[:, :, None])[:, None]  # [B, 1, L + T, keys]
        for i, layer in enumerate(self.layers):
            cache = self.caches[i] if self.caches is not None else None
            text = (cross.keys[i], cross.values[i], cross.mask) if cross is not None else (None, None, None)
            x = layer(x, mask, cache, positions, rows, length, *text)
        x = self.final_norm(x)
        return torch.stack([head(x) for head in self.lm_heads], dim=1)  # [B, K, T, V]

    def step(self, tokens: Tensor, cross: CrossKV | None, positions: Tensor, first_row: int = 0) -> Tensor:
        """One new position of the cache rows first_row..first_row + n - 1 (the caches set up): tokens [n, K] at
        positions [n] -> logits [n, K, V]. cross: every cache row's (these rows' are taken)."""
        rows = slice(first_row, first_row + tokens.shape[0])
        cross = cross.rows(rows) if cross is not None else None
        return self(tokens[:, :, None], cross, positions.to(tokens.device)[:, None], rows=rows)[:, :, -1]
