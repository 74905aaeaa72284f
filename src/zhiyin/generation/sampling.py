"""Choosing the next tokens from logits: classifier-free guidance, then temperature, top-k, top-p, as the
reference orders them; greedy takes the argmax."""

from __future__ import annotations

import torch
from torch import Tensor

from .options import SamplingSettings


def apply_guidance(logits: Tensor, scale: float) -> Tensor:
    """[2B, ...] logits, conditional half first -> [B, ...] guided logits."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (cond - uncond) * scale


def filter_top_k(scores: Tensor, k: int) -> Tensor:
    """Keep the k largest scores of each row (ties with the k-th kept), -inf elsewhere. scores [N, V]."""
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def filter_top_p(scores: Tensor, p: float) -> Tensor:
    """Keep the smallest set of top tokens whose probability reaches p (at least one), -inf elsewhere."""
    sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - p)
    drop_sorted[..., -1] = False  # always keep the most likely token
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def next_tokens(logits: Tensor, settings: SamplingSettings, generator: torch.Generator | None = None) -> Tensor:
    """logits [R, K, V] (R = 2B with guidance) -> tokens [B, K]."""
    scores = logits.float()
    if settings.uses_guidance:
        scores = apply_guidance(scores, settings.guidance_scale)
    B, K, V = scores.shape
    scores = scores.reshape(B * K, V)
    if not settings.do_sample:
        return scores.argmax(dim=-1).view(B, K)
    if settings.temperature != 1.0:
        scores = scores / settings.temperature
    if settings.top_k is not None:
        scores = filter_top_k(scores, settings.top_k)
    if settings.top_p is not None and settings.top_p < 1.0:
        scores = filter_top_p(scores, settings.top_p)
    return draw(scores.softmax(dim=-1), generator).view(B, K)


def draw(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token per row of probs [N, V] -> [N]: torch.multinomial(probs, 1)'s own algorithm (the argmax of probs
    over Exp(1) noise), the same random numbers and so the same tokens (the reference samples with multinomial), but
    without multinomial's check of the probabilities, which waits for the GPU at every step."""
    noise = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / noise).argmax(dim=-1)
