"""Music longer than one pass of the decoder: audiocraft's windowed continuation.

The decoder was trained on 30 s (1500 frames); past that its positions and its music fall apart. So long music is
made in windows of at most `window` frames, each a fresh generation with its own KV cache (memory and cost per
second stay flat however long the music):

    window 1:  [audio prompt P | new ................................]   fills the window: window - P new frames
    window 2:                     [context = last window - stride | new ....... ]   stride new frames
    window 3:                                                  [context | new ....... ]
    ...                                                                     (the last one makes what is left)

Each later window is prompted with the last (window - stride) frames of TOKENS made so far (12 s with the defaults
30 s / 18 s), so it continues the music rather than starting over. The music is the prompt followed by every
window's new frames, decoded as one code sequence (in 30 s pieces that overlap, streaming.decode_stream: the same
audio as one decode up to float rounding on the test checkpoint), so there are no seams between windows.

What conditions a window may depend on where it starts: each window is conditioned on `condition.at_frame(start)`,
with `start` the frame of the music its context begins at (0 for the first). A text condition is the same for every
window; a melody condition takes the melody's chroma from that time on, tiled along as audiocraft does
(conditioning.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..modules.decoder import MusicgenDecoder
from .conditioning import Condition
from .delay_pattern import DelayPattern
from .loop import Request, generate_frames
from .options import SamplingSettings


@torch.inference_mode()
def long_frames(
    decoder: MusicgenDecoder,
    condition: Condition,
    prompt: Tensor,
    new_frames: int,
    window: int,
    stride: int,
    settings: SamplingSettings,
    progress: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Yields the codes [B, K, n] of prompt [B, K, P] (P < window; may be 0) and then of `new_frames` new frames,
    one at a time as the windows make them, in windows of `window` frames that each make `stride` new frames after
    the first. Music that fits one window is exactly one `generate_codes` pass."""
    delay = DelayPattern.for_decoder(decoder.config).max_delay
    if prompt.shape[-1]:
        yield prompt
    context, made = prompt, 0  # context [B, K, c]: the next window's prompt
    with tqdm(total=new_frames, disable=not progress, desc="generating", unit="frame") as bar:
        while made < new_frames:
            n = min(window - context.shape[-1], new_frames - made)
            start = prompt.shape[-1] + made - context.shape[-1]
            request = Request(condition.at_frame(start), context, n + delay, settings, generator)
            new = []
            for frame in generate_frames(decoder, request):
                new.append(frame)  # [B, K, 1]
                bar.update(1)
                yield frame
            context = torch.cat([context, *new], dim=-1)[..., -(window - stride) :]
            made += n
