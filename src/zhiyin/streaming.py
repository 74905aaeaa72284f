"""Audio while the codes are still being made: chunked EnCodec decoding, and WAV files written as they grow.

EnCodec's decoder is not causal: its convolutions look a few frames both ways and its LSTM carries state from
the start. So each chunk of frames is decoded together with up to CONTEXT_FRAMES frames before it (to warm up
the LSTM) and LOOKAHEAD_FRAMES after it (for the convolutions), and only the chunk's own samples are kept:

    codes  ... | context | chunk | lookahead | ...      decode all three, keep the chunk's samples
                         ^ previous chunks end here

Measured SNR of the joined chunks against a one-shot decode of the whole sequence (0.5-1 s chunks):

    EnCodec (random weights)          context 0, lookahead 0   context 10, lookahead 4   context 50, lookahead 5
    tiny test checkpoint              50-54 dB                 120-124 dB                141 dB (float32 rounding)
    published 32 kHz shape            28 dB                    90 dB                     130 dB

tests/test_streaming.py asserts >= 30 dB. The convolutions need a lookahead of 4 frames; the LSTM forgets within
10-25 frames here, and 50 (1 s) leaves a margin for trained weights, whose memory could not be measured offline.
The lookahead delays each chunk by 0.1 s; the first chunk comes after chunk + lookahead + 3 (delay) decoder steps
(tiny checkpoint, CPU, 1 s chunks: 0.05-0.08 s, for 10 s of music made in 0.6 s; a random model of
musicgen-small's shape on 2 CPU cores: 3.9 s, for 4 s of music made in 15 s). Decoding the overlap costs
about (context + lookahead) / chunk more EnCodec time: 0.1 s per 1 s chunk on 2 CPU cores for the 32 kHz codec.
The same decoder, with 30 s chunks, decodes long music in bounded memory.
"""

from __future__ import annotations

import wave
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from .audio_io import _as_samples_by_channels

CONTEXT_FRAMES = 50  # 1 s of codes before each chunk, decoded and dropped
LOOKAHEAD_FRAMES = 5  # 0.1 s after it: the convolutions reach 4 frames ahead (measured), one spare


def decode_stream(
    decode: Callable[[Tensor], Tensor],
    blocks: Iterable[Tensor],
    chunk_frames: int,
    hop: int,
    context: int = CONTEXT_FRAMES,
    lookahead: int = LOOKAHEAD_FRAMES,
) -> Iterator[Tensor]:
    """Codes arriving in blocks [B, K, n] (any n) -> audio chunks [B, channels, chunk_frames * hop], the last one
    shorter; each chunk as soon as its frames and `lookahead` more are in. decode: codes -> audio, hop: samples
    per frame. Keeps only the frames it still needs (memory does not grow with the music). A sequence of at most
    chunk_frames frames is decoded in one piece, exactly as `decode` would."""
    codes, base, done = None, 0, 0  # codes [B, K, n] holds frames base..base+n-1; frames before `done` are out

    def chunk(end: int) -> Tensor:  # audio of frames done..end-1
        lo, hi = max(done - context, base), min(end + lookahead, base + codes.shape[-1])
        audio = decode(codes[..., lo - base : hi - base])  # [B, C, (hi - lo) * hop]
        return audio[..., (done - lo) * hop : (end - lo) * hop]

    for block in blocks:
        codes = block if codes is None else torch.cat([codes, block], dim=-1)
        while base + codes.shape[-1] >= done + chunk_frames + lookahead:
            yield chunk(done + chunk_frames)
            done += chunk_frames
            keep = max(done - context, base)
            codes, base = codes[..., keep - base :], keep
    end = base + codes.shape[-1] if codes is not None else 0
    while done < end:
        yield chunk(min(done + chunk_frames, end))
        done = min(done + chunk_frames, end)


class WavWriter:
    """A 16-bit PCM WAV file that grows chunk by chunk and is a valid WAV after every chunk: the header's sizes
    are rewritten and the file flushed each time, so a run killed at any point leaves a playable, shorter file.
    Samples are converted as `audio_io.write_audio` (libsndfile) converts them: clipped, floor(x * 32768)."""

    def __init__(self, path: str, sampling_rate: int, channels: int):
        self.file = open(path, "wb")
        self.wav = wave.open(self.file, "wb")
        self.wav.setnchannels(channels)
        self.wav.setsampwidth(2)
        self.wav.setframerate(sampling_rate)

    def write(self, audio: Tensor | np.ndarray) -> None:  # [channels, samples]
        samples = _as_samples_by_channels(audio)  # [samples, channels] float32 in [-1, 1]
        pcm = np.clip(np.floor(samples * 32768), -32768, 32767).astype("<i2")
        self.wav.writeframes(pcm.tobytes())  # and patches the header's sizes
        self.file.flush()

    def close(self) -> None:
        self.wav.close()
        self.file.close()


def write_stream(chunks: Iterable[Tensor], paths: list[str], sampling_rate: int) -> Iterator[int]:
    """Append each chunk [B, channels, samples] to B WAV files (item i to paths[i]) as it arrives; yields the
    samples per file written so far after each chunk, when every file is a valid WAV of that length. The files
    are created at the first chunk, so an error before any audio leaves nothing behind."""
    writers: list[WavWriter] = []
    written = 0
    try:
        for audio in chunks:
            audio = audio.cpu()
            if not writers:
                writers = [WavWriter(path, sampling_rate, audio.shape[1]) for path in paths]
            for writer, item in zip(writers, audio):
                writer.write(item)
            written += audio.shape[-1]
            yield written
    finally:
        for writer in writers:
            writer.close()
