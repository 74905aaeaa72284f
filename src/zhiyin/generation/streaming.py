"""Codes to audio, in chunks, while the codes are still being made.

Every decode goes through here (modules/encodec.py's ChunkedDecode: the LSTM's state carried from chunk to chunk,
each chunk's audio the one-piece decode's up to float rounding), and with one chunk schedule for the music that is
kept: a first chunk of FIRST_FRAMES, each next one CHUNK_GROWTH times longer, up to CHUNK_FRAMES. So the same codes
give the same samples whether they were decoded at once (decode_audio, generate, generate_long) or while they were
made (the engine's jobs: what a listener hears as it comes is the file written after). A chunk is decoded once its
frames and ChunkedDecode's lookahead (4 frames, 0.08 s) are out: the first sound comes a few frames after the first
frame. generate_stream decodes in chunks of its own chunk_seconds instead.

    codes   | chunk | chunk ... | chunk |  decoded in turn: each chunk's own frames once, with a frame more either side
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from ..heap import large_tensors_from_heap
from ..modules.encodec import ChunkedDecode, EncodecModel

FIRST_FRAMES = 1  # a listener hears the first frame as soon as it is out
CHUNK_GROWTH = 4  # each chunk this many times the one before: 1, 4, 16, 64, 100, 100, ...
CHUNK_FRAMES = 100  # 2 s: the cheapest size per frame (BENCHMARKS.md, "One decode per piece")


class AudioStream:
    """Codes [B, K * channels, n] added in blocks (any n) -> audio chunks [B, channels, samples] float32: chunks()
    decodes those that can be decoded, finish() the rest. Channels are MusicGen's stereo interleaving (codebooks
    L1, R1, L2, R2, ...), each channel decoded on its own. Memory does not grow with the music."""

    def __init__(
        self,
        codec: EncodecModel,
        channels: int = 1,
        chunk_frames: int = CHUNK_FRAMES,
        first_frames: int = FIRST_FRAMES,
    ):
        if chunk_frames < 1 or first_frames < 1:
            raise ValueError(f"chunks must be at least one frame, got {first_frames} growing to {chunk_frames}")
        self.parts = [ChunkedDecode(codec) for _ in range(channels)]
        self.chunk_frames = chunk_frames
        self.size = min(first_frames, chunk_frames)  # the next chunk's frames

    def add(self, codes: Tensor) -> None:
        """Appends frames."""
        channels = len(self.parts)
        for channel, part in enumerate(self.parts):
            part.add(codes[:, channel::channels])

    def finish(self) -> list[Tensor]:
        """No more frames: the chunks left."""
        return self.chunks(final=True)

    def chunks(self, final: bool = False) -> list[Tensor]:
        """The chunks that can be decoded now (final: no more frames will come)."""
        chunks, first = [], self.parts[0]
        with large_tensors_from_heap():  # one trim after them all: each chunk reuses the last one's memory
            while first.done < first.frames:
                end = min(first.done + self.size, first.frames) if final else first.done + self.size
                if not first.ready(end, final):
                    break
                with torch.inference_mode():
                    chunks.append(torch.cat([part.decode(end) for part in self.parts], dim=1).float())
                self.size = min(CHUNK_GROWTH * self.size, self.chunk_frames)
        return chunks


def decode_stream(
    codec: EncodecModel,
    channels: int,
    blocks: Iterable[Tensor],
    chunk_frames: int = CHUNK_FRAMES,
    first_frames: int = FIRST_FRAMES,
) -> Iterator[Tensor]:
    """Codes arriving in blocks [B, K * channels, n] -> audio chunks [B, channels, samples] (AudioStream's)."""
    stream = AudioStream(codec, channels, chunk_frames, first_frames)
    for block in blocks:
        stream.add(block)
        yield from stream.chunks()
    yield from stream.finish()
