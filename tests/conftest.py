import sys
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
