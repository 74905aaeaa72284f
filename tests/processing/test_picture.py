"""The waveform + spectrogram PNG: a valid file of the documented size, showing where the energy is."""

import struct
import zlib

import numpy as np

from zhiyin.processing.picture import SPEC_HEIGHT, WAVE_HEIGHT, WIDTH, _spectrogram, save_picture


def read_png(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = {}, 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        offset += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    raw = zlib.decompress(chunks[b"IDAT"])
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + width * 3)
    assert (rows[:, 0] == 0).all() and (depth, colour) == (8, 2)
    return rows[:, 1:].reshape(height, width, 3)


def test_picture_of_stereo_audio(tmp_path):
    t = np.arange(32000 * 2) / 32000
    audio = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 3000 * t)]).astype(np.float32)
    path = save_picture(tmp_path / "song.png", audio, 32000)
    image = read_png(path)
    assert image.shape == (2 * (WAVE_HEIGHT + SPEC_HEIGHT), WIDTH, 3)
    # the louder left channel draws a taller waveform envelope
    lit = lambda panel: (panel.sum(-1) > 3 * 16).any(axis=1).sum()  # noqa: E731
    assert lit(image[:WAVE_HEIGHT]) > lit(image[WAVE_HEIGHT + SPEC_HEIGHT : 2 * WAVE_HEIGHT + SPEC_HEIGHT])
    assert not list(tmp_path.glob("*.tmp"))


def test_spectrogram_puts_a_tone_on_its_row():
    t = np.arange(32000) / 32000
    spec = _spectrogram(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 32000)  # [rows, columns], high first
    freqs = np.geomspace(30, 16000, SPEC_HEIGHT)[::-1]
    brightest = spec.mean(axis=1).argmax()
    assert abs(freqs[brightest] - 1000) < 60
