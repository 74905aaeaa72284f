"""zhiyin (知音): fast, faithful MusicGen in plain PyTorch, with the Hugging Face-style API.

    from zhiyin import MusicgenForConditionalGeneration, AutoProcessor
"""

from .config import GenerationConfig, MusicgenConfig
from . import kernels
from .hub import ModelNotFoundError
from .model import MusicgenForConditionalGeneration
from .processor import AutoProcessor, MusicgenProcessor

__all__ = [
    "AutoProcessor",
    "GenerationConfig",
    "ModelNotFoundError",
    "MusicgenConfig",
    "MusicgenForConditionalGeneration",
    "MusicgenProcessor",
]
__version__ = "0.1.0"
