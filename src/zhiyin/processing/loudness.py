"""How loud a written file is: the level strategies of `zhiyin generate --normalize` and `audio_io.write_audio`.

    loudness  integrated loudness (ITU-R BS.1770, measured by pyloudnorm) brought to `target` LUFS (default -14,
              what streaming services play at)
    rms       the RMS level brought to `target` dB FS
    peak      the highest sample brought to the ceiling
    clip      samples cut at +-1 (what every format here does anyway: none of them holds more)
    none      the samples as the model made them

loudness and rms never clip: where the gain would lift a peak over the ceiling (default -1 dB FS), the gain is
lowered to meet it, or, with `compress`, the peaks above 6 dB under the ceiling are bent smoothly towards it
(a tanh knee, as audiocraft's writer softens them), which keeps the loudness nearer its target.
"""

from __future__ import annotations

import math

import numpy as np

STRATEGIES = ("loudness", "rms", "peak", "clip", "none")
TARGET_DB = -14.0
DEFAULT_NORMALIZE = "loudness"  # how a finished piece is levelled unless asked otherwise (CLI, server)
CEILING_DB = -1.0
KNEE_DB = 6.0  # the compressor bends peaks from this far under the ceiling
_BLOCK_SECONDS = 0.4  # BS.1770's gating block


def load_meter() -> None:
    """Import the loudness meter (scipy: about a second, holding Python's lock), which measure_loudness otherwise
    does on its first call: a server does it before its first job, not while other jobs' threads run."""
    import pyloudnorm  # noqa: F401


def measure_loudness(audio: np.ndarray, rate: int) -> float:
    """Integrated loudness in LUFS of float audio [channels, samples]; -inf for silence. Clips shorter than one
    400 ms block are measured as one block of their own length."""
    import pyloudnorm

    seconds = audio.shape[-1] / rate
    meter = pyloudnorm.Meter(rate, block_size=min(_BLOCK_SECONDS, seconds))
    return float(meter.integrated_loudness(np.ascontiguousarray(audio.T, dtype=np.float64)))


def normalize(
    audio: np.ndarray,
    rate: int,
    strategy: str = "loudness",
    target_db: float = TARGET_DB,
    ceiling_db: float = CEILING_DB,
    compress: bool = False,
) -> np.ndarray:
    """float32 audio [channels, samples] at `rate` Hz, levelled as `strategy` says (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown normalize strategy '{strategy}': use one of {', '.join(STRATEGIES)}")
    for name, value in (("target_db", target_db), ("ceiling_db", ceiling_db)):
        if not math.isfinite(value) or value > 0:
            raise ValueError(f"{name} must be a finite level of at most 0 dB, got {value!r}")
    audio = np.nan_to_num(np.asarray(audio, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    if strategy == "none" or audio.size == 0:
        return audio
    if strategy == "clip":
        return np.clip(audio, -1.0, 1.0)
    ceiling = 10 ** (ceiling_db / 20)
    peak = float(np.abs(audio).max())
    if peak == 0.0:
        return audio  # silence stays silence
    if strategy == "peak":
        return audio * np.float32(ceiling / peak)
    if strategy == "rms":
        level = 20 * math.log10(float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))))
    else:
        level = measure_loudness(audio, rate)
        if not math.isfinite(level):  # too quiet for the meter's gate: leave it
            return audio
    gain = 10 ** ((target_db - level) / 20)
    if peak * gain <= ceiling:
        return audio * np.float32(gain)
    if not compress:
        return audio * np.float32(ceiling / peak)
    return soft_limit(audio * np.float32(gain), ceiling)


def soft_limit(audio: np.ndarray, ceiling: float) -> np.ndarray:
    """Samples under the knee (KNEE_DB below `ceiling`) unchanged; above it bent along a tanh that starts with slope
    1 and never reaches the ceiling."""
    knee = ceiling * 10 ** (-KNEE_DB / 20)
    magnitude = np.abs(audio)
    over = magnitude > knee
    bent = knee + (ceiling - knee) * np.tanh((magnitude[over] - knee) / (ceiling - knee))
    out = audio.copy()
    out[over] = np.sign(audio[over]) * bent
    return out
