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

from .config import DecoderConfig
from .cuda_graph import GraphStep
from .quantization import dequantize_int8, quantize_int8


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """[T] integer positions -> [T, dim] float32, cos half then sin half (the tensor2tensor layout)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = positions.float()[:, None] * freqs[None, :]  # [T, half]
    table = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table


class KVCache(nn.Module):
    """Preallocated self-attention keys/values for one layer: [B, H, max_len, Dh] each, in float, or in int8 with a
    scale per vector ([B, H, max_len]; quantization.py)."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        if dtype == torch.int8:
            self.register_buffer("k_scale", torch.ones(shape[:3], device=device), persistent=False)
            self.register_buffer("v_scale", torch.ones(shape[:3], device=device), persistent=False)

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, T, Dh] at positions start..start+T-1; return all keys/values so far, in k's dtype."""
        end = start + k.shape[2]
        if self.k.dtype == torch.int8:
            self.k[:, :, start:end], self.k_scale[:, :, start:end] = quantize_int8(k)
            self.v[:, :, start:end], self.v_scale[:, :, start:end] = quantize_int8(v)
            keys = dequantize_int8(self.k[:, :, :end], self.k_scale[:, :, :end])
            values = dequantize_int8(self.v[:, :, :end], self.v_scale[:, :, :end])
            return keys.to(k.dtype), values.to(v.dtype)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end].to(k.dtype), self.v[:, :, :end].to(v.dtype)  # the cache may be narrower

    def write_at(self, position: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The static-shape step's update (cuda_graph.py): write k, v [B, H, 1, Dh] at `position`, a device tensor [1]
        (so one captured graph serves every position); return the whole cache [B, H, max_len, Dh] in k's dtype."""
        if self.k.dtype == torch.int8:
            for cache, scales, new in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
                values, scale = quantize_int8(new)
                cache.index_copy_(2, position, values)
                scales.index_copy_(2, position, scale)
            return dequantize_int8(self.k, self.k_scale).to(k.dtype), dequantize_int8(self.v, self.v_scale).to(v.dtype)
        self.k.index_copy_(2, position, k.to(self.k.dtype))
        self.v.index_copy_(2, position, v.to(self.v.dtype))
        return self.k.to(k.dtype), self.v.to(v.dtype)


@dataclass
class CrossKV:
    """Text keys/values of every layer, computed once per generation, and the additive text mask."""

    keys: list[Tensor]  # per layer [B, H, S, Dh]
    values: list[Tensor]  # per layer [B, H, S, Dh]
    mask: Tensor  # [B, 1, 1, S], 0 where the text is valid, a large negative number where it is padding


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # q, k, v fused
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, cache: KVCache | None, start: int | Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, Dh]
        mask = None
        if isinstance(start, Tensor):  # static shapes: one new position, a device tensor [1]; the whole cache
            k, v = cache.write_at(start, k, v)  # [B, H, max_len, Dh]
            mask = (torch.arange(k.shape[2], device=x.device) <= start)[None]  # [1, max_len]: positions written
        elif cache is not None:
            k, v = cache.update(start, k, v)  # [B, H, start+T, Dh]
        if T > 1 and start > 0:  # a block of T new positions after `start` cached ones
            S = k.shape[2]
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=T > 1 and start == 0)
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

    def forward(self, x: Tensor, cache: KVCache | None, start: int | Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        x = x + self.self_attn(self.self_attn_norm(x), cache, start)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_norm(x), k, v, mask)
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
        self.cache_dtype: torch.dtype | None = None  # None: the activations' dtype; also bfloat16 or int8
        # kernels.accelerate_decoder installs the C++ step here: (decoder, cross, offset) -> step function or None
        self.fused_stepper = None

    def setup_caches(self, batch: int, max_len: int) -> None:
        """Preallocate the self-attention KV cache for `batch` rows and `max_len` positions."""
        p = self.final_norm.weight
        c = self.config
        dtype = self.cache_dtype or p.dtype
        self.caches = nn.ModuleList(
            KVCache(batch, c.num_attention_heads, max_len, c.hidden_size // c.num_attention_heads, dtype, p.device)
            for _ in self.layers
        )

    def free_caches(self) -> None:
        self.caches = None

    def stepper(self, cross: CrossKV | None, offset: int = 0):
        """The step function of one generation, once the caches are set up and the prefill is done:
        (tokens [B, K], position) -> logits [B, K, V] for one new position per row, at position + offset.
        The fused C++ step where kernels.accelerate_decoder installed it and it applies (CPU), a CUDA graph of the
        step on a GPU (cuda_graph.py), else forward()."""
        fused = self.fused_stepper(self, cross, offset) if self.fused_stepper is not None else None
        if fused is None:
            fused = GraphStep.build(self, cross, offset)
        if fused is not None:
            return fused
        return lambda tokens, position: self(tokens[:, :, None], cross, start=position + offset)[:, :, -1]

    def project_text(self, text: Tensor, text_mask: Tensor) -> CrossKV:
        """text [B, S, D] (already in decoder width, zeroed where masked), text_mask [B, S] -> cross-attention K/V."""
        keys, values = [], []
        for layer in self.layers:
            k, v = layer.cross_attn.project_text(text)
            keys.append(k)
            values.append(v)
        neg = torch.finfo(text.dtype).min
        mask = torch.where(text_mask.bool(), 0.0, neg).to(text.dtype)[:, None, None, :]  # [B, 1, 1, S]
        return CrossKV(keys, values, mask)

    def forward(
        self, tokens: Tensor, cross: CrossKV | None, start: int | Tensor = 0, prefix: Tensor | None = None
    ) -> Tensor:
        """tokens [B, K, T] at positions start..start+T-1 -> logits [B, K, T, V] (float32 not forced).

        start as a device tensor [1] (T = 1, caches set up): the static-shape step that cuda_graph.py captures.

        prefix [B, L, D] (melody models, cross None): embeddings put before the tokens, at positions start..;
        the logits then cover them too: [B, K, L + T, V].
        """
        B, K, T = tokens.shape
        x = sum(self.embed_tokens[k](tokens[:, k]) for k in range(K)) * self.embed_scale  # [B, T, D]
        if prefix is not None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)  # [B, L + T, D]
        positions = start + torch.arange(x.shape[1], device=tokens.device)  # [L + T]
        x = x + sinusoidal_positions(positions, x.shape[-1]).to(x.dtype)
        for i, layer in enumerate(self.layers):
            cache = self.caches[i] if self.caches is not None else None
            k, v, mask = (cross.keys[i], cross.values[i], cross.mask) if cross is not None else (None, None, None)
            x = layer(x, cache, start, k, v, mask)
        x = self.final_norm(x)
        return torch.stack([head(x) for head in self.lm_heads], dim=1)  # [B, K, T, V]
