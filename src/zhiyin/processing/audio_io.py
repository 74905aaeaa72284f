"""Audio files in and out, plus the two conversions every audio input needs (sample rate, channel count).

Arrays are always laid out as `[channels, samples]`, float32, in [-1, 1].
"""

from __future__ import annotations

import contextlib
import json
import os
import wave
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import soundfile
import soxr

from ..files import write_atomic
from .loudness import TARGET_DB
from .loudness import normalize as level

# format name -> (soundfile format, soundfile subtype)
WRITE_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)  # kbit/s, MPEG-1 layer III
DEFAULT_MP3_BITRATE = 192


@contextlib.contextmanager
def _readable(path: str):
    """Turns soundfile's errors about `path` into one ValueError that names the file and what to give instead."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"audio file not found: '{path}'")
    if os.path.isdir(path):
        raise IsADirectoryError(f"'{path}' is a folder; give an audio file")
    try:
        yield
    except (soundfile.SoundFileError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot read audio from '{path}': {reason}; give a WAV/FLAC/OGG/MP3 file that soundfile can read"
        ) from None


def audio_seconds(path: str | os.PathLike) -> float:
    """How long an audio file is, from its header alone (nothing is decoded)."""
    path = os.fspath(path)
    with _readable(path):
        info = soundfile.info(path)
    return info.frames / info.samplerate


def read_audio(
    path: str | os.PathLike, sampling_rate: int, channels: int, last_seconds: float | None = None
) -> np.ndarray:
    """Read any file soundfile can decode (WAV, FLAC, OGG, MP3, ...) as float32 `[channels, samples]`; with
    `last_seconds`, only that much of its end is decoded.

    The audio is resampled to `sampling_rate` (soxr, high quality) and down-mixed (mean of the channels) or
    up-mixed (mono duplicated) to `channels`.
    """
    path = os.fspath(path)
    with _readable(path):
        start = 0
        if last_seconds is not None:
            info = soundfile.info(path)
            start = max(0, info.frames - round(last_seconds * info.samplerate))
        data, file_rate = soundfile.read(path, start=start, dtype="float32", always_2d=True)
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
    *,
    normalize: str = "none",
    loudness_db: float = TARGET_DB,
    compress: bool = False,
    bitrate: int | None = None,
    metadata: dict | None = None,
) -> str:
    """Write `[channels, samples]` (or 1-D mono) audio, a numpy array or torch tensor, to `path`.

    Formats: "wav" (16-bit PCM), "flac" (16-bit PCM), "ogg" (Vorbis) and "mp3" (`bitrate` kbit/s, constant;
    default 192); taken from `format`, else from the file's extension. `normalize` levels the audio first
    (loudness.py: "loudness" to `loudness_db` LUFS, "rms", "peak", "clip" or "none", the default; `compress`
    softens peaks instead of lowering the gain). Float audio is clipped to [-1, 1] (NaN becomes 0).
    `metadata` (prompt, model, seed, settings, ...) is stored in the file's own tags (WAV INFO, FLAC/Ogg comments,
    MP3 ID3) as JSON in the comment, the prompt as the title; `read_metadata` gives it back.
    The file is written atomically: to a hidden temporary file in the same folder, then renamed over `path`, so a
    half-written file never appears and an existing file at `path` stays intact if anything fails. Returns the path.
    """
    path = os.fspath(path)
    name = _pick_format(path, format)
    file_format, subtype = WRITE_FORMATS[name]
    options = _mp3_options(bitrate) if name == "mp3" else {}
    if bitrate is not None and name != "mp3":
        raise ValueError(f"bitrate applies to mp3 files only, not {name}")
    if int(sampling_rate) <= 0:
        raise ValueError(f"sampling_rate must be a positive number of Hz, got {sampling_rate}")
    samples = _as_samples_by_channels(audio, clip=False).T  # [channels, samples], its shape checked
    samples = _as_samples_by_channels(level(samples, int(sampling_rate), normalize, loudness_db, compress=compress))

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"output folder '{folder}' does not exist; create it first or choose another path")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write to folder '{folder}': permission denied; choose a writable folder")
    if os.path.isdir(path):
        raise IsADirectoryError(f"'{path}' is a folder; give a file name such as '{os.path.join(path, 'out.wav')}'")

    def write(temporary: str) -> None:
        with soundfile.SoundFile(
            temporary, "w", int(sampling_rate), samples.shape[1], subtype, format=file_format, **options
        ) as f:
            if metadata is not None:
                _tag(f, metadata, ascii_title=name == "mp3")
            f.write(samples)

    return write_atomic(path, write)


def _mp3_options(bitrate: int | None) -> dict:
    """soundfile's options for a constant `bitrate` (kbit/s): libsndfile maps compression_level 0..1 linearly onto
    320..32 kbit/s and LAME takes the nearest standard rate (measured)."""
    bitrate = DEFAULT_MP3_BITRATE if bitrate is None else bitrate
    if bitrate not in MP3_BITRATES:
        raise ValueError(f"mp3 bitrate must be one of {', '.join(map(str, MP3_BITRATES))} kbit/s, got {bitrate}")
    level = min((320 - bitrate) / (320 - 32), 0.999)  # 1.0 itself is refused by libsndfile
    return dict(compression_level=level, bitrate_mode="CONSTANT")


METADATA_KEY = "zhiyin"  # the metadata JSON holds zhiyin's version under this key; read_metadata looks for it


def _tag(f: soundfile.SoundFile, metadata: dict, ascii_title: bool) -> None:
    from .. import __version__

    metadata = {METADATA_KEY: __version__, **metadata}
    f.comment = json.dumps(metadata, ensure_ascii=True, sort_keys=True)
    f.software = f"zhiyin {__version__}"  # no date: the same command writes the same bytes
    title = metadata.get("prompt")
    if isinstance(title, str) and (title.isascii() or not ascii_title):  # ID3 titles from libsndfile are Latin-1
        f.title = title


def read_metadata(path: str | os.PathLike) -> dict | None:
    """What `write_audio(..., metadata=...)` stored in a file (with zhiyin's version under "zhiyin"), or None for
    a file zhiyin did not write."""
    path = os.fspath(path)
    with _readable(path), soundfile.SoundFile(path) as f:
        comment = f.comment
    try:
        metadata = json.loads(comment) if comment else None
    except ValueError:
        return None
    return metadata if isinstance(metadata, dict) and METADATA_KEY in metadata else None


def _pick_format(path: str, format: str | None) -> str:
    name = format if format is not None else os.path.splitext(path)[1]
    name = name.lower().lstrip(".")
    if name not in WRITE_FORMATS:
        choices = ", ".join(WRITE_FORMATS)
        given = f"format '{format}'" if format is not None else f"file extension of '{path}'"
        raise ValueError(f"unknown audio format from the {given}; choose one of: {choices}")
    return name


def _as_samples_by_channels(audio: Any, clip: bool = True) -> np.ndarray:
    """numpy/torch `[channels, samples]` or 1-D -> numpy `[samples, channels]`, as soundfile wants; float audio
    clipped to [-1, 1] (NaN -> 0) unless `clip` is False."""
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
        audio = audio.astype(np.float32)
        if clip:
            audio = np.clip(np.nan_to_num(audio, nan=0.0), -1.0, 1.0)
    return np.ascontiguousarray(audio.T)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def pcm16(audio: Any) -> bytes:
    """Audio [channels, samples] (numpy or torch) as interleaved little-endian 16-bit PCM, converted as
    `write_audio` (libsndfile) converts it: clipped, floor(x * 32768)."""
    samples = _as_samples_by_channels(audio)  # [samples, channels] float32 in [-1, 1]
    return np.clip(np.floor(samples * 32768), -32768, 32767).astype("<i2").tobytes()


class WavWriter:
    """A 16-bit PCM WAV file that grows chunk by chunk and is a valid WAV after every chunk: the header's sizes
    are rewritten and the file flushed each time, so a run killed at any point leaves a playable, shorter file.
    Samples are converted by `pcm16`, as `write_audio` converts them."""

    def __init__(self, path: str, sampling_rate: int, channels: int):
        self.file = open(path, "wb")
        self.wav = wave.open(self.file, "wb")
        self.wav.setnchannels(channels)
        self.wav.setsampwidth(2)
        self.wav.setframerate(sampling_rate)

    def write(self, audio: Any) -> None:  # [channels, samples], numpy or torch
        self.wav.writeframes(pcm16(audio))  # and patches the header's sizes
        self.file.flush()

    def close(self) -> None:
        self.wav.close()
        self.file.close()


def write_stream(chunks: Iterable[Any], paths: list[str], sampling_rate: int) -> Iterator[int]:
    """Append each chunk [B, channels, samples] to B WAV files (item i to paths[i]) as it arrives; yields the
    samples per file written so far after each chunk, when every file is a valid WAV of that length. The files
    are created at the first chunk, so an error before any audio leaves nothing behind."""
    writers: list[WavWriter] = []
    written = 0
    try:
        for audio in chunks:
            audio = audio.cpu()
            if not writers:
                writers = [WavWriter(path, sampling_rate, audio.shape[1]) for path in paths]
            for writer, item in zip(writers, audio):
                writer.write(item)
            written += audio.shape[-1]
            yield written
    finally:
        for writer in writers:
            writer.close()
