"""zhiyin (知音): fast, faithful MusicGen in plain PyTorch, with the Hugging Face-style API.

    from zhiyin import MusicgenForConditionalGeneration, AutoProcessor
"""

from .config import GenerationConfig, MusicgenConfig
from . import kernels
from .chroma import MusicgenMelodyFeatureExtractor, MusicgenMelodyProcessor
from .hub import ModelNotFoundError
from .melody import MusicgenMelodyConfig, MusicgenMelodyForConditionalGeneration
from .model import MusicgenForConditionalGeneration
from .processor import AutoProcessor, MusicgenProcessor

__all__ = [
    "AutoProcessor",
    "GenerationConfig",
    "ModelNotFoundError",
    "MusicgenConfig",
    "MusicgenForConditionalGeneration",
    "MusicgenMelodyConfig",
    "MusicgenMelodyFeatureExtractor",
    "MusicgenMelodyForConditionalGeneration",
    "MusicgenMelodyProcessor",
    "MusicgenProcessor",
]
__version__ = "0.1.0"
