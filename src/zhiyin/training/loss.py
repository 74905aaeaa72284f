"""MusicGen's training loss: for each codebook, the cross-entropy of the decoder's predictions over the positions
the delay pattern makes valid, averaged over the codebooks (what transformers' MusicGen returns for the same inputs
and `labels`, and audiocraft's solver computes).

The codes [B, K, T] are laid out with the delay pattern after the start token (generation/delay_pattern.py); the
decoder reads positions 0..L-2 and predicts 1..L-1. A position that holds the pad token (before a codebook's first
frame, after its last, or past a shorter item's end) is not predicted, nor is a frame of an audio prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..generation.delay_pattern import DelayPattern
from ..modules.decoder import CrossKV, MusicgenDecoder

IGNORED = -100


def delayed_inputs_and_labels(
    decoder: MusicgenDecoder, codes: Tensor, frames: Tensor | None = None, prompt_frames: int = 0
) -> tuple[Tensor, Tensor]:
    """codes [B, K, T] (each item's first `frames[b]` frames real, default all) -> the decoder's input tokens
    [B, K, L - 1] and the labels [B, K, L - 1] it should predict (IGNORED where nothing is to be predicted)."""
    config = decoder.config
    pattern, pad = DelayPattern.for_decoder(config), config.pad_token_id
    B, K, T = codes.shape
    if frames is not None:  # past an item's end: pad, as a sequence that ends there has
        past = torch.arange(T, device=codes.device)[None, None] >= frames.to(codes.device)[:, None, None]
        codes = codes.masked_fill(past, pad)
    sequence = pattern.build(codes, pattern.length(T), pad)  # [B, K, L]
    inputs, labels = sequence[..., :-1], sequence[..., 1:].clone()
    for k, delay in enumerate(pattern.delays):
        labels[:, k, delay : delay + prompt_frames] = IGNORED  # frame f of codebook k sits at label d + f
    return inputs, labels.masked_fill(labels == pad, IGNORED)


def codebook_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """logits [B, K, L, V], labels [B, K, L] -> the mean over codebooks of each one's cross-entropy (float32)."""
    K, V = logits.shape[1], logits.shape[-1]
    losses = [F.cross_entropy(logits[:, k].reshape(-1, V).float(), labels[:, k].reshape(-1)) for k in range(K)]
    return torch.stack(losses).mean()


def music_loss(
    decoder: MusicgenDecoder,
    codes: Tensor,
    cross: CrossKV | None,
    frames: Tensor | None = None,
    prompt_frames: int = 0,
) -> Tensor:
    """The loss of the decoder on codes [B, K, T] under the text keys/values `cross` (decoder.project_text's)."""
    inputs, labels = delayed_inputs_and_labels(decoder, codes, frames, prompt_frames)
    B, _, L = inputs.shape
    positions = torch.arange(L, device=inputs.device)[None].expand(B, L)
    return codebook_loss(decoder(inputs, cross, positions), labels)
