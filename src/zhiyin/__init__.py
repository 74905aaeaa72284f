"""zhiyin (知音): fast, faithful MusicGen in plain PyTorch, with the Hugging Face-style API.

    from zhiyin import MusicgenForConditionalGeneration, AutoProcessor

The names below are imported when first used, so that `import zhiyin` (and `zhiyin --help`) does not pay for
importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {  # public name -> the module that defines it
    "AutoProcessor": "processing.processor",
    "Engine": "engine",
    "GenerationConfig": "config",
    "ModelNotFoundError": "loading.hub",
    "MusicgenConfig": "config",
    "MusicgenForConditionalGeneration": "model",
    "MusicgenMelodyConfig": "config",
    "MusicgenMelodyFeatureExtractor": "processing.chroma",
    "MusicgenMelodyForConditionalGeneration": "model",
    "MusicgenMelodyProcessor": "processing.chroma",
    "MusicgenProcessor": "processing.processor",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zhiyin' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
