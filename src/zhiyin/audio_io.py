"""Audio files in and out, plus the two conversions every audio input needs (sample rate, channel count).

Arrays are always laid out as `[channels, samples]`, float32, in [-1, 1].
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import numpy as np
import soundfile
import soxr

# format name -> (soundfile format, soundfile subtype)
WRITE_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
}


def read_audio(path: str | os.PathLike, sampling_rate: int, channels: int) -> np.ndarray:
    """Read any file soundfile can decode (WAV, FLAC, OGG, MP3, ...) as float32 `[channels, samples]`.

    The audio is resampled to `sampling_rate` (soxr, high quality) and down-mixed (mean of the channels) or
    up-mixed (mono duplicated) to `channels`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"audio file not found: '{path}'")
    if os.path.isdir(path):
        raise IsADirectoryError(f"'{path}' is a folder; give an audio file")
    try:
        data, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot read audio from '{path}': {reason}; give a WAV/FLAC/OGG/MP3 file that soundfile can read"
        ) from None
    if data.shape[0] == 0:
        raise ValueError(f"cannot read audio from '{path}': the file holds no samples")
    audio = to_channels(data.T, channels)
    return resample(audio, file_rate, sampling_rate)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample `[channels, samples]` (or 1-D mono) audio from `from_rate` to `to_rate` Hz with soxr (HQ)."""
    audio = np.asarray(audio, dtype=np.float32)
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate or audio.shape[-1] == 0:
        return audio
    # soxr wants [samples, channels]
    resampled = soxr.resample(audio.T, from_rate, to_rate, quality="HQ")
    return np.ascontiguousarray(resampled.T, dtype=np.float32)


def to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Give `[channels, samples]` audio (or 1-D mono) the wanted channel count.

    Several channels -> mono: their mean. Mono -> several: the one channel copied. Other changes (say 6 -> 2)
    have no single right answer and raise ValueError.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2:
        raise ValueError(f"expected audio of shape [channels, samples], got shape {tuple(audio.shape)}")
    have = audio.shape[0]
    if have == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    if have == 1:
        return np.repeat(audio, channels, axis=0)
    raise ValueError(f"cannot turn {have}-channel audio into {channels} channels; down-mix it to mono first")


def write_audio(
    path: str | os.PathLike,
    audio: Any,
    sampling_rate: int,
    format: str | None = None,
) -> str:
    """Write `[channels, samples]` (or 1-D mono) audio, a numpy array or torch tensor, to `path`.

    Formats: "wav" (16-bit PCM), "flac" (16-bit PCM) and "ogg" (Vorbis); taken from `format`, else from the
    file's extension. Float audio is clipped to [-1, 1] (NaN becomes 0). The file is written atomically: to a
    hidden temporary file in the same folder, then renamed over `path`, so a half-written file never appears
    and an existing file at `path` stays intact if anything fails. Returns the path written.
    """
    path = os.fspath(path)
    file_format, subtype = WRITE_FORMATS[_pick_format(path, format)]
    samples = _as_samples_by_channels(audio)
    if int(sampling_rate) <= 0:
        raise ValueError(f"sampling_rate must be a positive number of Hz, got {sampling_rate}")

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"output folder '{folder}' does not exist; create it first or choose another path")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write to folder '{folder}': permission denied; choose a writable folder")
    if os.path.isdir(path):
        raise IsADirectoryError(f"'{path}' is a folder; give a file name such as '{os.path.join(path, 'out.wav')}'")

    temp_path = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        soundfile.write(temp_path, samples, int(sampling_rate), format=file_format, subtype=subtype)
        os.replace(temp_path, path)
    except BaseException:
        _remove_quietly(temp_path)
        raise
    return path


def _pick_format(path: str, format: str | None) -> str:
    name = format if format is not None else os.path.splitext(path)[1]
    name = name.lower().lstrip(".")
    if name not in WRITE_FORMATS:
        choices = ", ".join(WRITE_FORMATS)
        given = f"format '{format}'" if format is not None else f"file extension of '{path}'"
        raise ValueError(f"unknown audio format from the {given}; choose one of: {choices}")
    return name


def _as_samples_by_channels(audio: Any) -> np.ndarray:
    """numpy/torch `[channels, samples]` or 1-D -> numpy `[samples, channels]`, as soundfile wants."""
    if hasattr(audio, "detach"):  # a torch tensor
        audio = audio.detach().cpu()
        if audio.is_floating_point():
            audio = audio.float()
        audio = audio.numpy()
    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2:
        raise ValueError(
            f"expected audio of shape [channels, samples], got shape {tuple(audio.shape)}; "
            "for a batch [batch, channels, samples] write each item, e.g. audio[0]"
        )
    if audio.shape[0] > 16:
        raise ValueError(
            f"expected audio of shape [channels, samples], got shape {tuple(audio.shape)} "
            f"({audio.shape[0]} channels?); if it is [samples, channels], transpose it"
        )
    if np.issubdtype(audio.dtype, np.floating):
        audio = np.clip(np.nan_to_num(audio.astype(np.float32), nan=0.0), -1.0, 1.0)
    return np.ascontiguousarray(audio.T)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
