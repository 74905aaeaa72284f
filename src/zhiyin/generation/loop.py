"""The autoregressive loop over the delay pattern, separate from the model.

A generation is one or more requests stepped together, each its own group of decoder rows: its own condition, its
own audio prompt and length, its own sampling settings and random generator, and so its own positions. Each request
is prefilled on its own (start token, audio prompt; a melody's prefix before them) into its rows of the KV cache;
then every step runs all rows at once (the step select.py chooses), and each request chooses its K tokens from its
own rows' logits (guided and sampled as its settings say), keeping the pattern's known values where it has them.
A request's tokens do not depend on the others beside it.

`generate_frames` yields each new audio frame [B, K, 1] of one request as soon as all K codebooks of it are out
(streaming); `generate_codes` collects them behind the prompt: aligned codes [B, K, frames].
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..backends.select import decoder_step
from ..modules.decoder import CrossKV, MusicgenDecoder
from .conditioning import Condition
from .delay_pattern import UNKNOWN, DelayPattern, first_unknown
from .options import SamplingSettings
from .sampling import TokenChoice


@dataclass
class Request:
    """One request's part of a generation: B items conditioned on `condition` (not yet guided), continuing
    `prompt` [B, K, P] (P may be 0) for `max_new_tokens` positions, as the reference counts them: the sequence is
    1 (start token) + P + max_new_tokens positions, so it holds P + max_new_tokens - max_delay frames."""

    condition: Condition
    prompt: Tensor
    max_new_tokens: int
    settings: SamplingSettings
    generator: torch.Generator | None = None


class RequestRows:
    """A request's rows in the batch and its place in its sequence. Its tokens are kept position-major, every
    decoder row's (guidance's copy too): a position's tokens are the step's input as they lie, and the choice writes
    them there in place (between two steps every tensor made costs ~25 us, the caches being cold: BENCHMARKS.md,
    session 25)."""

    def __init__(self, request: Request, pattern: DelayPattern, pad: int, first_row: int):
        self.request, self.pattern = request, pattern
        guided = request.settings.uses_guidance
        self.condition = request.condition.guided() if guided else request.condition
        self.copies = 2 if guided else 1  # the decoder sees each item's tokens once per half
        self.rows = slice(first_row, first_row + self.condition.rows)
        self.length = 1 + request.prompt.shape[-1] + request.max_new_tokens
        self.known = pattern.build(request.prompt, self.length, pad)  # [B, K, length]
        self.items = self.known.shape[0]
        self.tokens = self.inputs(self.known).permute(2, 0, 1).contiguous()  # [length, rows, K]
        # the positions with a value known beforehand (the pattern's pads, the prompt's frames): choose keeps those
        self.partly_known = (self.known != UNKNOWN).flatten(0, 1).any(dim=0).tolist()
        self.position = first_unknown(self.known)  # the next position to choose tokens for
        self.offset = self.condition.prefix_length  # the decoder's position of sequence position 0
        self.choice = TokenChoice(request.settings, request.generator, self.known.device)
        rows = self.condition.rows  # each row's decoder position at each sequence position (on the CPU)
        self.positions = (self.offset + torch.arange(self.length))[:, None].expand(-1, rows).contiguous()

    def inputs(self, columns: Tensor) -> Tensor:  # [B, K, ...] -> the decoder's rows
        return torch.cat([columns] * self.copies) if self.copies > 1 else columns

    @property
    def done(self) -> bool:
        return self.position >= self.length

    @property
    def starts_with_a_step(self) -> bool:
        """Its only known position is the start token (no audio prompt, no prefix): a step of its rows is its
        prefill."""
        return self.offset + self.position == 1

    def prefill(self, decoder: MusicgenDecoder, step) -> Tensor:
        """Its known positions into its cache rows -> the logits of its first position to choose [rows, K, V]. The
        start token alone (no audio prompt, no prefix) is one step of its rows; more go through the decoder's
        forward, all at once."""
        if self.starts_with_a_step:
            return step(*self.step_inputs(), first_row=self.rows.start)
        tokens = self.tokens[: self.position].permute(1, 2, 0)  # [rows, K, position]
        prefix = self.condition.prefix()
        total = self.offset + self.position
        positions = torch.arange(total, device=tokens.device)[None].expand(tokens.shape[0], total)
        logits = decoder(tokens, self.condition.cross(decoder), positions, prefix=prefix, rows=self.rows)
        return logits[:, :, -1]

    def choose(self, logits: Tensor) -> Tensor | None:
        """Tokens for this position from its rows' logits; returns the frame [B, K, 1] this position completes
        after the prompt's, if any."""
        column = self.tokens[self.position]  # [rows, K]: each item's tokens, once per copy
        self.choice(logits, out=column)
        if self.partly_known[self.position]:
            known = self.inputs(self.known[:, :, self.position])
            column.copy_(torch.where(known == UNKNOWN, column, known))
        frame = self.pattern.frame_completed_at(self.position)
        self.position += 1
        if frame >= self.request.prompt.shape[-1]:
            return self.pattern.frame(self.tokens, frame, self.items)
        return None

    def step_inputs(self) -> tuple[Tensor, Tensor]:
        """The decoder's inputs for the next step: the last chosen tokens [rows, K] at their positions [rows] (views of
        its own). A finished request repeats its last position (its rows are stepped, their logits unused)."""
        at = min(self.position, self.length) - 1
        return self.tokens[at], self.positions[at]


@torch.inference_mode()
def generate_together(
    decoder: MusicgenDecoder, requests: list[Request], progress: bool = False
) -> Iterator[list[Tensor | None]]:
    """Step several requests together; after each step yields, per request, the frame [B, K, 1] it completed, or
    None. Ends when every request is done. The KV cache lives while the iterator runs: one generation at a time per
    decoder."""
    pattern = DelayPattern.for_decoder(decoder.config)
    groups, row = [], 0
    for request in requests:
        groups.append(RequestRows(request, pattern, decoder.config.pad_token_id, row))
        row = groups[-1].rows.stop
    decoder.setup_caches(row, max(g.offset + g.length for g in groups))
    try:
        step = decoder_step(decoder, _cross(decoder, [g.condition for g in groups]))
        logits = [g.prefill(decoder, step) for g in groups]
        total = max(g.length - g.position for g in groups)
        for _ in tqdm(range(total), disable=not progress, desc="generating", unit="step"):
            yield [g.choose(out) if not g.done else None for g, out in zip(groups, logits)]
            if all(g.done for g in groups):
                break
            tokens, positions = zip(*(g.step_inputs() for g in groups))
            out = step(*(parts[0] if len(parts) == 1 else torch.cat(parts) for parts in (tokens, positions)))
            logits = [out] if len(groups) == 1 else [out[g.rows] for g in groups]
    finally:
        decoder.free_caches()


def _cross(decoder: MusicgenDecoder, conditions: list[Condition]) -> CrossKV | None:
    """The cross-attention inputs of every row: each request's projected on its own (so its numbers are the ones
    it gets alone), padded to the longest text."""
    parts = [condition.cross(decoder) for condition in conditions]
    return None if parts[0] is None else CrossKV.concat(parts)


@torch.inference_mode()
def generate_frames(decoder: MusicgenDecoder, request: Request, progress: bool = False) -> Iterator[Tensor]:
    """One request's new frames (after its prompt's) one at a time, [B, K, 1], each as soon as its last codebook is
    chosen (the first after max_delay warm-up steps)."""
    for (frame,) in generate_together(decoder, [request], progress):
        if frame is not None:
            yield frame


@torch.inference_mode()
def generate_codes(decoder: MusicgenDecoder, request: Request, progress: bool = False) -> Tensor:
    """One request's codes [B, K, frames]: its prompt's frames, then every new one."""
    return torch.cat([request.prompt, *generate_frames(decoder, request, progress)], dim=-1)
