"""What a generation is conditioned on, as data: a text condition (cross-attention) or a melody condition (a prefix
before the decoder's input). Each holds its rows' tensors already in the decoder's width and knows

    guided()         its rows followed by as many null rows, for classifier-free guidance
    at_frame(frame)  itself for a long-form window whose context begins at `frame` of the music
    cross(decoder)   the decoder's cross-attention keys/values (text), or None
    prefix()         the embeddings put before the decoder's input [rows, L, D] (melody), or None

The model facade (model.py) makes conditions from the processor's inputs; the step loop (loop.py) consumes them
(several requests' cross-attention inputs go into one batch with CrossKV.concat).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..modules.decoder import CrossKV, MusicgenDecoder


@dataclass(frozen=True)
class TextCondition:
    """Text states for cross-attention: states [B, S, D] in the decoder's width and dtype, zero where masked, and
    mask [B, S] (1 valid, 0 padding). Null text (guidance, unconditional music) is zero states with a zero mask."""

    states: Tensor
    mask: Tensor

    @property
    def rows(self) -> int:
        return self.states.shape[0]

    prefix_length = 0

    def guided(self) -> TextCondition:
        return TextCondition(
            torch.cat([self.states, torch.zeros_like(self.states)]), torch.cat([self.mask, torch.zeros_like(self.mask)])
        )

    def at_frame(self, frame: int) -> TextCondition:
        return self  # the same text for every window

    def cross(self, decoder: MusicgenDecoder) -> CrossKV:
        return decoder.project_text(self.states, self.mask)

    def prefix(self) -> None:
        return None


@dataclass(frozen=True)
class MelodyCondition:
    """A melody model's prefix: `length` chroma frames then the text, [B, length + S, D].

    chroma [B, F, D]: the melody's projected chroma (a melody of F frames), taken cyclically from frame `start`, so
    that a shorter melody repeats and each long-form window hears the part of the tune under its own stretch of time
    (see model.py's MusicgenMelodyForConditionalGeneration). null_chroma [B, F, D]: the null melody's (one-hot bin
    0) projected, for guidance. text [B, S, D]: projected text states, zero where masked (padding is zeroed, not
    masked: the decoder attends to every prefix position, as the reference does). frame_rate, chroma_rate: decoder
    frames and chroma frames per second."""

    chroma: Tensor
    null_chroma: Tensor
    text: Tensor
    length: int
    frame_rate: float
    chroma_rate: float
    start: int = 0

    @property
    def rows(self) -> int:
        return self.text.shape[0]

    @property
    def prefix_length(self) -> int:
        return self.length + self.text.shape[1]

    def guided(self) -> MelodyCondition:
        return replace(
            self,
            chroma=torch.cat([self.chroma, self.null_chroma]),
            null_chroma=torch.cat([self.null_chroma, self.null_chroma]),
            text=torch.cat([self.text, torch.zeros_like(self.text)]),
        )

    def at_frame(self, frame: int) -> MelodyCondition:
        return replace(self, start=round(frame / self.frame_rate * self.chroma_rate))

    def cross(self, decoder: MusicgenDecoder) -> None:
        return None

    def prefix(self) -> Tensor:
        frames = self.chroma.shape[1]
        tiled = self.chroma[:, (self.start + torch.arange(self.length, device=self.chroma.device)) % frames]
        return torch.cat([tiled, self.text], dim=1)  # [B, length + S, D]


Condition = TextCondition | MelodyCondition
