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


@pytest.fixture(scope="session")
def shared_audio():
    if not SHARED_AUDIO.is_dir():
        pytest.fail(f"{SHARED_AUDIO} is missing: the tests need ../shared/audio beside the checkout")
    return SHARED_AUDIO


TEXTS = ["80s pop track with bassy drums and synth", "jazz"]


def relative_error(got, want) -> float:
    """Largest difference relative to the largest magnitude of `want`."""
    return float((got - want).abs().max() / want.abs().max())


def trumpet(seconds: float, start: int = 8000):
    """The trumpet clip at 32 kHz, mono: `seconds` of it from sample `start`."""
    from zhiyin.processing.audio_io import read_audio

    return read_audio(SHARED_AUDIO / "sorohanro_solo_trumpet_06.ogg", 32000, 1)[0, start : start + int(seconds * 32000)]


@contextmanager
def recording_decodes(reference):
    """While the block runs, every codes tensor [B, K, frames] the reference's EnCodec decodes (the tokens its
    generate made) is appended to the list this yields; the reference's own decode is back after the block."""
    seen, decode = [], reference.audio_encoder.decode

    def recording(codes, *args, **kwargs):
        seen.append(codes[0])
        return decode(codes, *args, **kwargs)

    reference.audio_encoder.decode = recording
    try:
        yield seen
    finally:
        del reference.audio_encoder.decode  # the instance attribute goes: the class's method again
