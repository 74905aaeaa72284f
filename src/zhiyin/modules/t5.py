"""The T5 text encoder that conditions MusicGen (t5-base in the published checkpoints).

Only the encoder stack, in eval mode (no dropout). T5 particulars:
  - token embedding without scaling, and no absolute positions: a learned relative position bias,
    computed once by block 0 and added to the attention scores of every block;
  - attention scores are not scaled by 1/sqrt(d_kv) (T5 folds that into the initialisation);
  - an RMS norm (no mean subtraction, no bias) before each sublayer, and once after the last block;
  - a ReLU feed-forward (wi, wo), or a gated one (wi_0, wi_1, wo) for 'gated-*' configs.

Module and parameter names follow the Hugging Face `T5EncoderModel` so that its state dict loads as is
(less the tied `encoder.embed_tokens.weight`, which here is `shared.weight`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import T5Config

_ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact (erf)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def relative_position_bucket(relative_position: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Bidirectional T5 bucketing of `key_pos - query_pos`.

    Half the buckets are for keys to the right of the query, half for keys to the left. Within each half,
    the first half of the buckets are exact distances, the rest grow logarithmically up to `max_distance`,
    beyond which everything shares the last bucket.
    """
    num_buckets //= 2
    buckets = (relative_position > 0).long() * num_buckets
    distance = relative_position.abs()
    max_exact = num_buckets // 2
    # clamp before the log so that small distances (which take the exact branch anyway) never see log(0)
    log_ratio = torch.log(distance.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class T5LayerNorm(nn.Module):
    """RMS norm: x / rms(x) * weight, with the statistics in float32 and the result in the weight's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)  # [B, L, 1]
        x = x * torch.rsqrt(variance + self.eps)  # float32
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


class T5Attention(nn.Module):
    """Bidirectional multi-head self-attention; the additive bias carries position bias and padding mask."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False):
        super().__init__()
        self.n_heads = config.num_heads
        self.d_kv = config.d_kv
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        inner = config.num_heads * config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(self.num_buckets, self.n_heads)

    def compute_bias(self, length: int, device: torch.device) -> Tensor:
        """Relative position bias [1, H, L, L]; only block 0 owns the table."""
        pos = torch.arange(length, dtype=torch.long, device=device)
        relative = pos[None, :] - pos[:, None]  # [Lq, Lk] = key - query
        buckets = relative_position_bucket(relative, self.num_buckets, self.max_distance)
        bias = self.relative_attention_bias(buckets)  # [Lq, Lk, H]
        return bias.permute(2, 0, 1).unsqueeze(0)  # [1, H, Lq, Lk]

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        B, L, _ = x.shape
        q = self.q(x).view(B, L, self.n_heads, self.d_kv).transpose(1, 2)  # [B, H, L, d_kv]
        k = self.k(x).view(B, L, self.n_heads, self.d_kv).transpose(1, 2)
        v = self.v(x).view(B, L, self.n_heads, self.d_kv).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # [B, H, L, d_kv]
        out = out.transpose(1, 2).reshape(B, L, self.n_heads * self.d_kv)  # [B, L, H * d_kv]
        return self.o(out)  # [B, L, D]


class T5DenseReluDense(nn.Module):
    """wo(act(wi(x))), the non-gated feed-forward."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.act = _ACTIVATIONS[config.dense_act_fn]

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.wi(x))  # [B, L, d_ff]
        return self.wo(h.to(self.wo.weight.dtype))  # wo may be kept in float32 under half weights


class T5DenseGatedActDense(nn.Module):
    """wo(act(wi_0(x)) * wi_1(x)), the gated feed-forward of 'gated-*' configs (T5 v1.1, flan-t5)."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.act = _ACTIVATIONS[config.dense_act_fn]

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.wi_0(x)) * self.wi_1(x)  # [B, L, d_ff]
        return self.wo(h.to(self.wo.weight.dtype))


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5LayerFF(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        ff = T5DenseGatedActDense if config.is_gated_act else T5DenseReluDense
        self.DenseReluDense = ff(config)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


def _clamp_fp16(x: Tensor) -> Tensor:
    """Keep float16 activations finite, as the reference does (T5 overflows float16 in places)."""
    if x.dtype != torch.float16:
        return x
    big = torch.finfo(torch.float16).max
    limit = torch.where(torch.isinf(x).any(), big - 1000, big)
    return x.clamp(min=-limit, max=limit)


class T5Block(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(config, has_relative_attention_bias), T5LayerFF(config)])

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = _clamp_fp16(self.layer[0](x, bias))
        return _clamp_fp16(self.layer[1](x))


class T5Stack(nn.Module):
    """The blocks and the final norm (the `encoder.` prefix of the checkpoint keys)."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.block = nn.ModuleList([T5Block(config, i == 0) for i in range(config.num_layers)])  # block 0 owns the bias
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)


class T5Encoder(nn.Module):
    """T5 encoder: token ids [B, L] (+ padding mask) -> last hidden state [B, L, d_model]."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        B, L = input_ids.shape
        x = self.shared(input_ids)  # [B, L, D], no scaling

        # one additive bias for every block: relative positions [1, H, L, L] + padded keys [B, 1, 1, L]
        first = self.encoder.block[0].layer[0].SelfAttention
        dtype = first.q.weight.dtype  # attention runs in this dtype
        bias = first.compute_bias(L, input_ids.device).to(dtype)  # [1, H, L, L]
        if attention_mask is not None:
            keep = attention_mask[:, None, None, :].to(torch.bool)  # [B, 1, 1, L]
            hidden = torch.finfo(dtype).min  # finite, so an all-padding row gives no NaN
            bias = bias + torch.zeros_like(keep, dtype=dtype).masked_fill(~keep, hidden)  # [B, H, L, L]

        for block in self.encoder.block:
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)  # [B, L, D]
