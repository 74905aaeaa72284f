"""Choosing the next tokens from logits: classifier-free guidance, then temperature, top-k, top-p, as the
reference orders them; greedy takes the argmax."""

from __future__ import annotations

import torch
from torch import Tensor

from ..backends import kernels
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


class TokenChoice:
    """A request's choice of its next tokens at every step, decided once: logits [R, K, V] (R = 2B with guidance)
    -> tokens [B, K], drawn from `generator` (None: PyTorch's global one) as the settings say. On the CPU one kernel
    call a step does what PyTorch's ops below do (backends/kernels.py's chooser: the same tokens from the same random
    numbers, drawn there from the generator's state, without ~10 small ops a step); top-p, other devices, and logits
    the kernel does not take go through the ops. `device`: the logits'."""

    def __init__(self, settings: SamplingSettings, generator: torch.Generator | None, device: torch.device):
        self.settings, self.generator = settings, generator
        sample = settings.do_sample
        self.top_p = settings.top_p if sample and settings.top_p is not None and settings.top_p < 1.0 else None
        self.kernel = None
        if self.top_p is None and torch.device(device).type == "cpu":  # (a GPU's generation never builds the kernels)
            self.kernel = kernels.chooser(
                settings.guidance_scale if settings.uses_guidance else None,
                settings.temperature if sample else 1.0,
                settings.top_k if sample else None,
                (generator or torch.default_generator) if sample else None,
            )

    def __call__(self, logits: Tensor, out: Tensor | None = None) -> Tensor:
        """The tokens [B, K]; with `out` [copies * B, K] (int64, on the logits' device) they go into each of its
        copies, and out is returned."""
        if self.kernel is not None:
            B = logits.shape[0] // (2 if self.settings.uses_guidance else 1)
            tokens = out if out is not None else torch.empty(B, logits.shape[1], dtype=torch.int64)
            if self.kernel(logits, tokens):
                return tokens
        tokens = _sampled(logits.float(), self.settings, self.top_p, self.generator)
        if out is not None:
            out.view(-1, *tokens.shape).copy_(tokens)  # (broadcast over the copies)
            return out
        return tokens


def next_tokens(logits: Tensor, settings: SamplingSettings, generator: torch.Generator | None = None) -> Tensor:
    """logits [R, K, V] (R = 2B with guidance) -> tokens [B, K]: one step's TokenChoice."""
    return TokenChoice(settings, generator, logits.device)(logits)


def _sampled(
    scores: Tensor, settings: SamplingSettings, top_p: float | None, generator: torch.Generator | None
) -> Tensor:
    """TokenChoice on PyTorch's ops: scores [R, K, V] float32 -> tokens [B, K]."""
    guided = settings.uses_guidance
    B, K, V = scores.shape[0] // (2 if guided else 1), *scores.shape[1:]
    # the filters draw no random numbers, so the noise drawn first is the reference's
    noise = exponential_noise((B * K, V), scores.device, generator) if settings.do_sample else None
    if guided:
        scores = apply_guidance(scores, settings.guidance_scale)
    scores = scores.reshape(B * K, V)
    if not settings.do_sample:
        return scores.argmax(dim=-1).view(B, K)
    if settings.temperature != 1.0:
        scores = scores / settings.temperature
    if settings.top_k is not None:
        scores = filter_top_k(scores, settings.top_k)
    if top_p is not None:
        scores = filter_top_p(scores, top_p)
    return (scores.softmax(dim=-1) / noise).argmax(dim=-1).view(B, K)


def exponential_noise(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """Exp(1) numbers [N, V] for one draw per row: torch.multinomial(probs, 1)'s own algorithm takes the argmax of
    probs / these, so drawing them here gives its tokens from its random numbers (the reference samples with
    multinomial) without its check of the probabilities, which waits for the GPU at every step."""
    return torch.empty(shape, device=device).exponential_(1, generator=generator)
