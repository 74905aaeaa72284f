"""A picture of generated audio: the waveform's envelope over a log-frequency spectrogram, as a PNG.

No plotting library: the spectrogram comes from torch.stft, colours from a small palette, and the PNG is written
by hand (zlib + the chunk layout). One picture per channel, stacked: [channels, samples] -> height = channels x 320.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import torch

from ..files import write_atomic

WIDTH, WAVE_HEIGHT, SPEC_HEIGHT = 1000, 80, 240
# dark blue -> purple -> orange -> pale yellow (a magma-like ramp), for dB from -80 to 0
_PALETTE = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def _colours(values: np.ndarray) -> np.ndarray:
    """values in [0, 1] -> RGB uint8, interpolated along the palette."""
    position = np.clip(values, 0, 1) * (len(_PALETTE) - 1)
    low = np.floor(position).astype(int).clip(0, len(_PALETTE) - 2)
    frac = (position - low)[..., None]
    return (_PALETTE[low] * (1 - frac) + _PALETTE[low + 1] * frac).astype(np.uint8)


def _spectrogram(audio: np.ndarray, sampling_rate: int) -> np.ndarray:
    """[samples] -> [SPEC_HEIGHT, WIDTH] in [0, 1]: dB over 80 dB of range, log-spaced rows (low at the bottom)."""
    n_fft = 2048
    signal = torch.from_numpy(np.pad(audio, (0, max(0, n_fft - len(audio)))))
    hop = max(1, len(signal) // WIDTH)
    power = torch.stft(signal, n_fft, hop_length=hop, window=torch.hann_window(n_fft), return_complex=True).abs() ** 2
    db = 10 * torch.log10(power + 1e-10)
    db = (db - db.max() + 80) / 80  # [bins, frames]
    freqs = np.geomspace(30, sampling_rate / 2, SPEC_HEIGHT)[::-1]
    rows = np.clip(np.round(freqs / (sampling_rate / n_fft)).astype(int), 0, db.shape[0] - 1)
    columns = np.linspace(0, db.shape[1] - 1, WIDTH).round().astype(int)
    return db.numpy()[rows][:, columns]


def _waveform(audio: np.ndarray) -> np.ndarray:
    """[samples] -> [WAVE_HEIGHT, WIDTH, 3]: the min/max envelope of each column, light on dark."""
    image = np.full((WAVE_HEIGHT, WIDTH, 3), 16, dtype=np.uint8)
    chunks = np.array_split(np.clip(audio, -1, 1), WIDTH)
    middle = (WAVE_HEIGHT - 1) / 2
    for x, chunk in enumerate(chunks):
        if len(chunk):
            top = int(round(middle - chunk.max() * middle))
            bottom = int(round(middle - chunk.min() * middle))
            image[top : bottom + 1, x] = (120, 200, 255)
    return image


def _write_png(path: str, image: np.ndarray) -> None:
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(height))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")

    def write(temporary: str) -> None:
        with open(temporary, "wb") as f:
            f.write(data)

    write_atomic(path, write)


def save_picture(path: str | os.PathLike, audio, sampling_rate: int) -> str:
    """Write a PNG of `audio` ([channels, samples] or [samples], numpy or torch): per channel, the waveform above
    its spectrogram (30 Hz to Nyquist, log scale). Written atomically. Returns the path."""
    audio = audio.detach().cpu().float().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio, np.float32)
    audio = audio[None] if audio.ndim == 1 else audio
    panels = []
    for channel in audio:
        panels += [_waveform(channel), _colours(_spectrogram(channel, sampling_rate))]
    path = os.fspath(path)
    _write_png(path, np.concatenate(panels, axis=0))
    return path
