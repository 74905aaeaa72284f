"""Audio while the codes are still being made: chunked EnCodec decoding.

EnCodec's decoder is not causal: its convolutions look a few frames both ways and its LSTM carries state from
the start. So each chunk of frames is decoded together with up to CONTEXT_FRAMES frames before it (to warm up
the LSTM) and LOOKAHEAD_FRAMES after it (for the convolutions), and only the chunk's own samples are kept:

    codes  ... | context | chunk | lookahead | ...      decode all three, keep the chunk's samples
                         ^ previous chunks end here

The context and lookahead are measured (BENCHMARKS.md, "Audio as it is made"): a frame's codes change samples up to
3.75 frames before it (the convolutions), the LSTM forgets within 10-25 frames, and 50 frames (1 s) of context leave
a margin; joined, the chunks match one decode to float32 rounding on the test checkpoint. The lookahead delays each
chunk by 0.08 s. The same decoder, with 30 s chunks, decodes long music in bounded memory.

Chunks may start small and grow (`first_frames`, each CHUNK_GROWTH times the one before, up to `chunk_frames`): the
first sound comes after a frame or two, and later chunks, each decoded with its context, cost little more than their
own frames (a listener of a busy server, whose music comes slower than it plays, and whose every decode call
delays everyone's next step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

CONTEXT_FRAMES = 50  # 1 s of codes before each chunk, decoded and dropped
LOOKAHEAD_FRAMES = 4  # 0.08 s after it: a frame reaches 3.75 frames back (measured, 32 kHz EnCodec)
CHUNK_GROWTH = 4  # growing chunks: each this many times the one before


def decode_stream(
    decode: Callable[[Tensor], Tensor],
    blocks: Iterable[Tensor],
    chunk_frames: int,
    hop: int,
    context: int = CONTEXT_FRAMES,
    lookahead: int = LOOKAHEAD_FRAMES,
    first_frames: int | None = None,
) -> Iterator[Tensor]:
    """Codes arriving in blocks [B, K, n] (any n) -> audio chunks [B, channels, samples]: chunks of chunk_frames
    frames (from first_frames, growing CHUNK_GROWTH-fold, when given), the last one shorter; each chunk as soon as
    its frames and `lookahead` more are in. decode: codes -> audio, hop: samples per frame. Keeps only the frames it
    still needs (memory does not grow with the music). A sequence of at most chunk_frames frames (first_frames, when
    given) is decoded in one piece, exactly as `decode` would."""
    codes, base, done = None, 0, 0  # codes [B, K, n] holds frames base..base+n-1; frames before `done` are out
    size = min(first_frames or chunk_frames, chunk_frames)  # the next chunk's frames

    def chunk(end: int) -> Tensor:  # audio of frames done..end-1
        lo, hi = max(done - context, base), min(end + lookahead, base + codes.shape[-1])
        audio = decode(codes[..., lo - base : hi - base])  # [B, C, (hi - lo) * hop]
        return audio[..., (done - lo) * hop : (end - lo) * hop]

    for block in blocks:
        codes = block if codes is None else torch.cat([codes, block], dim=-1)
        while base + codes.shape[-1] >= done + size + lookahead:
            yield chunk(done + size)
            done, size = done + size, min(CHUNK_GROWTH * size, chunk_frames)
            keep = max(done - context, base)
            codes, base = codes[..., keep - base :], keep
    end = base + codes.shape[-1] if codes is not None else 0
    while done < end:
        yield chunk(min(done + size, end))
        done, size = min(done + size, end), min(CHUNK_GROWTH * size, chunk_frames)
