"""The autoregressive loop over the delay pattern, separate from the model.

One call: prefill the known positions (start token, audio prompt), then one decoder step per position,
each step choosing K tokens (guided and sampled as `SamplingSettings` says) and keeping the pattern's known
values where it has them. `generate_frames` yields each new audio frame [B, K, 1] as soon as all K codebooks
of it are out (streaming); `generate_codes` collects them behind the prompt: aligned codes [B, K, frames].
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .decoder import CrossKV, MusicgenDecoder
from .delay_pattern import UNKNOWN, build_pattern, codebook_delays, first_unknown, num_frames, undelay
from .sampling import next_tokens
from .sampling_settings import SamplingSettings


@torch.inference_mode()
def generate_codes(
    decoder: MusicgenDecoder,
    cross: CrossKV,
    prompt: Tensor,
    max_new_tokens: int,
    settings: SamplingSettings,
    progress: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """prompt [B, K, P] audio codes (P may be 0); cross holds 2B rows with guidance, B without.

    The sequence is 1 (start token) + P + max_new_tokens positions long, as in the reference, so it holds
    P + max_new_tokens - max_delay frames: returns them all, [B, K, frames], the prompt's first.
    """
    new = generate_frames(decoder, cross, prompt, max_new_tokens, settings, progress, generator)
    return torch.cat([prompt, *new], dim=-1)


@torch.inference_mode()
def generate_frames(
    decoder: MusicgenDecoder,
    cross: CrossKV,
    prompt: Tensor,
    max_new_tokens: int,
    settings: SamplingSettings,
    progress: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """The step loop of `generate_codes`: yields its new frames (after the prompt's) one at a time, [B, K, 1],
    each as soon as its last codebook is chosen (the first after max_delay warm-up steps).

    The decoder's KV cache lives while the iterator runs: one generation at a time per decoder.
    """
    config = decoder.config
    delays = codebook_delays(config.num_codebooks, config.audio_channels)
    B, P = prompt.shape[0], prompt.shape[-1]
    length = 1 + P + max_new_tokens
    pattern = build_pattern(prompt, length, delays, pad=config.pad_token_id)  # [B, K, length]
    sequence = pattern.clone()
    start = first_unknown(pattern)
    rows = 2 * B if settings.uses_guidance else B

    def inputs(columns: Tensor) -> Tensor:  # [B, K, ...] -> decoder rows
        return torch.cat([columns, columns]) if settings.uses_guidance else columns

    decoder.setup_caches(rows, length)
    try:
        logits = decoder(inputs(sequence[:, :, :start]), cross, start=0)[:, :, -1]  # [rows, K, V]
        step = decoder.stepper(cross)
        for position in tqdm(range(start, length), disable=not progress, desc="generating", unit="step"):
            tokens = next_tokens(logits, settings, generator)  # [B, K]
            known = pattern[:, :, position]
            sequence[:, :, position] = torch.where(known == UNKNOWN, tokens, known)
            frame = num_frames(position + 1, delays) - 1  # the frame whose last codebook this position holds
            if frame >= P:
                yield undelay(sequence, delays, frame, frame + 1)  # [B, K, 1]
            if position + 1 < length:
                logits = step(inputs(sequence[:, :, position]), position)
    finally:
        decoder.free_caches()
