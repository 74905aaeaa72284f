"""The codebook delay pattern: codebook k runs `delays[k]` steps behind codebook 0.

Mono (K = 4): delays 0,1,2,3. Stereo (K = 8, ordered L1,R1,L2,R2,...): delays 0,0,1,1,2,2,3,3.
A sequence of `length` decoder positions (position 0 is the start token) carries, for codebook k,
audio frame f at position 1 + delays[k] + f; every other position holds the pad token. So `length`
positions hold `length - 1 - max_delay` whole frames. Example, 4 codebooks, length 8 (P = pad):

    P a0 a1 a2 a3 P  P  P
    P P  b0 b1 b2 b3 P  P
    P P  P  c0 c1 c2 c3 P
    P P  P  P  d0 d1 d2 d3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are made: the command line checks its flags without it
    from torch import Tensor

UNKNOWN = -1  # a position the model has to fill in


@dataclass(frozen=True)
class DelayPattern:
    delays: tuple[int, ...]  # codebook k's: k // channels (`of`)

    def __post_init__(self):
        if self.delays != tuple(k // self.channels for k in range(len(self.delays))):
            raise ValueError(
                f"delays {self.delays}: MusicGen's delay codebook k by k // channels steps (DelayPattern.of)"
            )

    @classmethod
    def of(cls, num_codebooks: int, audio_channels: int = 1) -> DelayPattern:
        """The pattern of a decoder with these codebooks (stereo: the channels' codebooks interleaved)."""
        return cls(tuple(k // audio_channels for k in range(num_codebooks)))

    @classmethod
    def for_decoder(cls, config) -> DelayPattern:
        """The pattern of a DecoderConfig."""
        return cls.of(config.num_codebooks, config.audio_channels)

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    def frames(self, length: int) -> int:
        """How many whole audio frames a delayed sequence of `length` positions holds."""
        return length - 1 - self.max_delay

    def length(self, frames: int) -> int:
        """The positions a delayed sequence needs to hold `frames` whole frames (start token included)."""
        return frames + 1 + self.max_delay

    def build(self, prompt: Tensor, length: int, pad: int) -> Tensor:
        """Lay out known frames prompt [B, K, P] over `length` positions -> [B, K, length]: positions that hold a
        prompt frame or padding are set, the ones left to generate are UNKNOWN."""
        import torch

        B, K, P = prompt.shape
        pattern = torch.full((B, K, length), UNKNOWN, dtype=torch.long, device=prompt.device)
        frames = self.frames(length)
        for k, d in enumerate(self.delays):
            pattern[:, k, : 1 + d] = pad  # before the first frame (and the start token)
            pattern[:, k, 1 + d + frames :] = pad  # after the last frame
            pattern[:, k, 1 + d : 1 + d + P] = prompt[:, k]
        return pattern

    @property
    def channels(self) -> int:
        """Codebooks that share each delay (mono 1, stereo 2)."""
        return len(self.delays) // (self.max_delay + 1)

    def frame(self, tokens: Tensor, frame: int, items: int) -> Tensor:
        """Audio frame `frame` [items, K, 1] of a delayed sequence kept position-major, tokens [length, rows, K] (its
        first `items` rows; contiguous): codebook k's token lies at position 1 + k // channels + frame, so one strided
        view of tokens holds them (mono: the frame is that view; stereo: its copy). The token loop takes each frame
        out so as it completes."""
        length, rows, K = tokens.shape
        C = self.channels
        offset = tokens.storage_offset() + (1 + frame) * rows * K
        view = tokens.as_strided((items, K // C, C), (K, rows * K + C, 1), offset)
        return view.reshape(items, K, 1)

    def frame_completed_at(self, position: int) -> int:
        """The frame whose last codebook sits at `position` (-1 and less: none yet)."""
        return self.frames(position + 1) - 1


def first_unknown(pattern: Tensor) -> int:
    """The first position with something left to generate (codebook 0 has no delay, so look there)."""
    unknown = (pattern[:, 0] == UNKNOWN).any(dim=0).nonzero()
    return int(unknown[0]) if len(unknown) else pattern.shape[-1]
