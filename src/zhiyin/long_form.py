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

What conditions a window may depend on where it starts: `long_frames` asks `condition(start)` for each window's
(decoder, cross) with `start` the frame of the music its context begins at (0 for the first). Text-only models
return the same pair every time; melody models (melody.py) put the melody's chroma from that time on before the
decoder's input, the melody tiled along as audiocraft does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .decoder import CrossKV, MusicgenDecoder
from .delay_pattern import codebook_delays
from .generation import generate_frames
from .sampling_settings import SamplingSettings

WINDOW_SECONDS = 30.0  # MusicGen's training length, audiocraft's max_duration
EXTEND_STRIDE_SECONDS = 18.0  # audiocraft's default: each later window keeps 12 s of context


def plan_windows(
    window: float, extend_stride: float, frame_rate: int, max_frames: int, prompt_frames: int
) -> tuple[int, int]:
    """Seconds -> (window, stride) in frames, checked: 0 < stride < window <= max_frames (one pass of the model),
    and the audio prompt leaves room in the first window."""
    for name, value in (("window", window), ("extend_stride", extend_stride)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    W, S = round(window * frame_rate), round(extend_stride * frame_rate)
    if not 0 < W <= max_frames:
        limit = f"{max_frames / frame_rate:g} s (one pass of this model)"
        raise ValueError(f"window must be more than 0 and at most {limit}, got {window:g}")
    if not 0 < S < W:
        raise ValueError(f"extend_stride must be more than 0 and less than the window ({window:g} s), got {extend_stride:g}")
    if prompt_frames >= W:
        raise ValueError(
            f"the audio prompt ({prompt_frames / frame_rate:g} s) must be shorter than the window ({window:g} s): "
            "keep only its last seconds"
        )
    return W, S


@torch.inference_mode()
def long_frames(
    condition: Callable[[int], tuple[MusicgenDecoder, CrossKV]],
    prompt: Tensor,
    new_frames: int,
    window: int,
    stride: int,
    settings: SamplingSettings,
    progress: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Yields the codes [B, K, n] of prompt [B, K, P] (P < window; may be 0) and then of `new_frames` new frames,
    one at a time as the windows make them. condition(start) -> (decoder, cross) of the window whose context begins
    at frame `start` of the music (prompt included). Music that fits one window is exactly one `generate_codes` pass."""
    if prompt.shape[-1]:
        yield prompt
    context, made = prompt, 0  # context [B, K, c]: the next window's prompt
    with tqdm(total=new_frames, disable=not progress, desc="generating", unit="frame") as bar:
        while made < new_frames:
            n = min(window - context.shape[-1], new_frames - made)
            decoder, cross = condition(prompt.shape[-1] + made - context.shape[-1])
            delay = max(codebook_delays(decoder.config.num_codebooks, decoder.config.audio_channels))
            new = []
            for frame in generate_frames(decoder, cross, context, n + delay, settings, False, generator):
                new.append(frame)  # [B, K, 1]
                bar.update(1)
                yield frame
            context = torch.cat([context, *new], dim=-1)[..., -(window - stride) :]
            made += n
