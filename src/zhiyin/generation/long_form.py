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
window's new frames, decoded as one code sequence (in chunks that carry the codec's state, streaming.py: the same
audio as one decode up to float rounding), so there are no seams between windows.

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


class Windows:
    """The windows of one piece of long music: prompt [B, K, P] (P < window; may be 0), then `new_frames` new frames,
    in windows of at most `window` frames, each later one continuing the last (window - stride) frames made.
    `request()` gives the next window's request; `finish(new)` takes that window's new frames [B, K, 1] each."""

    def __init__(
        self,
        condition: Condition,
        prompt: Tensor,
        new_frames: int,
        window: int,
        stride: int,
        settings: SamplingSettings,
        generator: torch.Generator | None,
        max_delay: int,
    ):
        self.condition, self.prompt, self.new_frames = condition, prompt, new_frames
        self.window, self.stride, self.settings, self.generator, self.max_delay = (
            window,
            stride,
            settings,
            generator,
            max_delay,
        )
        self.context, self.made, self.n = prompt, 0, 0  # context [B, K, c]: the next window's prompt

    @property
    def done(self) -> bool:
        return self.made >= self.new_frames

    def request(self) -> Request:
        """The next window: conditioned from the frame of the music its context begins at."""
        self.n = min(self.window - self.context.shape[-1], self.new_frames - self.made)
        start = self.prompt.shape[-1] + self.made - self.context.shape[-1]
        return Request(
            self.condition.at_frame(start), self.context, self.n + self.max_delay, self.settings, self.generator
        )

    def finish(self, new: list[Tensor]) -> None:
        self.context = torch.cat([self.context, *new], dim=-1)[..., -(self.window - self.stride) :]
        self.made += self.n


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
    one at a time as the windows make them (Windows). Music that fits one window is exactly one `generate_codes`
    pass."""
    delay = DelayPattern.for_decoder(decoder.config).max_delay
    windows = Windows(condition, prompt, new_frames, window, stride, settings, generator, delay)
    if prompt.shape[-1]:
        yield prompt
    with tqdm(total=new_frames, disable=not progress, desc="generating", unit="frame") as bar:
        while not windows.done:
            new = []
            for frame in generate_frames(decoder, windows.request()):
                new.append(frame)  # [B, K, 1]
                bar.update(1)
                yield frame
            windows.finish(new)
