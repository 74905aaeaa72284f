"""Fixtures and helpers shared by the tests: the tiny checkpoint, the clips, the texts, relative error, and a
recorder of the codes the reference decodes (its generated tokens), patched in only for a block."""

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkpoints import SHARED_AUDIO, make_checkpoint  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels():
    """Build the C++ kernels before any test runs, so that their one-time build notice on stderr never lands in a
    test that checks what a command printed there."""
    from zhiyin.backends import kernels

    kernels.library()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(folder, transformers model) for the tiny shape in the current safetensors layout."""
    folder = tmp_path_factory.mktemp("tiny")
    return folder, make_checkpoint(folder, "tiny", "safetensors")


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    """Ours, loaded from the tiny checkpoint (once per test module)."""
    from zhiyin import MusicgenForConditionalGeneration

    return MusicgenForConditionalGeneration.from_pretrained(tiny_checkpoint[0])


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from zhiyin import MusicgenProcessor

    return MusicgenProcessor.from_pretrained(tiny_checkpoint[0])


@pytest.fixture(scope="session")
def tiny_stereo_checkpoint(tmp_path_factory):
    """(folder, transformers model) for the tiny stereo shape (8 codebooks, L1 R1 L2 R2 ...)."""
    folder = tmp_path_factory.mktemp("tiny-stereo")
    return folder, make_checkpoint(folder, "tiny-stereo", "safetensors")


@pytest.fixture(scope="session")
def shared_audio():
    if not SHARED_AUDIO.is_dir():
        pytest.fail(f"{SHARED_AUDIO} is missing: the tests need ../shared/audio beside the checkout")
    return SHARED_AUDIO


TEXTS = ["80s pop track with bassy drums and synth", "jazz"]


def relative_error(got, want) -> float:
    """Largest difference relative to the largest magnitude of `want`."""
    return float((got - want).abs().max() / want.abs().max())


def trumpet(seconds: float, start: int = 0, channels: int = 1):
    """The trumpet clip at 32 kHz: `seconds` of it from sample `start`, [samples] for mono; for stereo [2, samples],
    the mono trumpet on the left, a 25 ms late, half-loud copy on the right."""
    import numpy as np

    from zhiyin.processing.audio_io import read_audio

    mono = read_audio(SHARED_AUDIO / "sorohanro_solo_trumpet_06.ogg", 32000, 1)[0, start : start + int(seconds * 32000)]
    if channels == 1:
        return mono
    late = 800
    return np.stack([mono, 0.5 * np.concatenate([np.zeros(late, np.float32), mono[:-late]])])


class DecodedCodes(list):
    """The codes the reference's EnCodec decoded, one entry per decode (a stereo model decodes each channel)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def last(self):
        """The codes [B, K, frames] of the last generation, in the decoder's codebook order (stereo: L1, R1, ...)."""
        import torch

        if self.channels == 1:
            return self[-1]
        return torch.stack(self[-self.channels :], dim=2).flatten(1, 2)


@contextmanager
def recording_decodes(reference):
    """While the block runs, every codes tensor [B, K', frames] the reference's EnCodec decodes (the tokens its
    generate made) is appended to the DecodedCodes this yields; the reference's own decode is back after the
    block."""
    seen, decode = DecodedCodes(reference.config.decoder.audio_channels), reference.audio_encoder.decode

    def recording(codes, *args, **kwargs):
        seen.append(codes[0])
        return decode(codes, *args, **kwargs)

    codec = reference.audio_encoder
    before = vars(codec).get("decode")  # a recorder of an enclosing block, or None: the class's method
    codec.decode = recording
    try:
        yield seen
    finally:
        if before is None:
            del codec.decode
        else:
            codec.decode = before


def reference_generate(reference, seen: DecodedCodes, **kwargs):
    """(audio, codes [B, K, frames] in the decoder's codebook order) of one reference.generate call, while
    `seen` records (recording_decodes)."""
    seen.clear()
    audio = reference.generate(**kwargs)
    return audio, seen.last()
