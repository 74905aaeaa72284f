"""A folder of music with captions -> what `zhiyin train` learns from.

Each audio file soundfile reads (any rate, any channels) has a caption: a .txt of the same name beside it, or a
line {"file": ..., "text": ...} of a metadata.jsonl in the folder (a .txt wins where both exist). Files are read at
the model's rate and channel count and encoded with EnCodec once: the codes are cached (cache/ in the adapter
folder, one file per audio file, named by a digest of its path, size, modification time and the codec), so the
codec does not run every epoch, nor again on --resume. Each epoch takes a random crop of every file (audiocraft's
random segments): `segment` frames, or the whole file when it is shorter.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..files import write_atomic

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")
ENCODE_SECONDS = 30  # long files are encoded in pieces of this many seconds (EnCodec's memory grows with length)


class DataError(ValueError):
    """A training folder that cannot be used as it is, and what to do."""


@dataclass(frozen=True)
class Clip:
    path: Path
    text: str


def find_clips(folder: str | os.PathLike) -> list[Clip]:
    """The audio files of `folder` (not its subfolders) with their captions; a DataError for an empty folder,
    audio without a caption (all of them listed), or a metadata.jsonl that names missing files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--data '{folder}' is not a folder: give a folder of audio files with captions")
    audio = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    captions = _metadata(folder)
    missing = sorted(name for name in captions if not (folder / name).is_file())
    if missing:
        raise DataError(f"{folder / 'metadata.jsonl'} names files that are not in the folder: {', '.join(missing)}")
    if not audio:
        raise DataError(
            f"--data '{folder}' holds no audio files ({', '.join(AUDIO_SUFFIXES)}): put the music to learn there, "
            "each with a caption"
        )
    clips, uncaptioned = [], []
    for path in audio:
        text_file = path.with_suffix(".txt")
        text = text_file.read_text(encoding="utf-8").strip() if text_file.is_file() else captions.get(path.name)
        if text:
            clips.append(Clip(path, text))
        else:
            uncaptioned.append(path.name)
    if uncaptioned:
        raise DataError(
            f"{len(uncaptioned)} audio file(s) in '{folder}' have no caption: {', '.join(uncaptioned)}. Give each a "
            '.txt of the same name, or a line {"file": ..., "text": ...} in metadata.jsonl'
        )
    return clips


def _metadata(folder: Path) -> dict[str, str]:
    path = folder / "metadata.jsonl"
    if not path.is_file():
        return {}
    captions = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            file, text = entry["file"], entry["text"]
            if not isinstance(file, str) or not isinstance(text, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise DataError(f'{path}, line {number}: expected {{"file": "name.wav", "text": "caption"}}') from None
        captions[os.path.basename(file)] = text.strip()
    return captions


def codec_digest(model) -> str:
    """What the cached codes depend on besides the file: the codec's config and the decoder's codebook layout."""
    config = model.config
    described = json.dumps([config.audio_encoder.__dict__, config.decoder.num_codebooks], sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def clip_codes(model, clip: Clip, cache: Path) -> Tensor:
    """The clip's codes [K, frames] (cached; see the module's docstring). Raises ValueError for unreadable audio."""
    from ..processing.audio_io import read_audio

    stat = clip.path.stat()
    key = f"{clip.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{codec_digest(model)}"
    cached = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
    if cached.is_file():
        return torch.load(cached, weights_only=True)
    rate = model.config.audio_encoder.sampling_rate
    audio = torch.from_numpy(read_audio(clip.path, rate, model.config.decoder.audio_channels))
    hop, piece = model.config.audio_encoder.hop_length, ENCODE_SECONDS * rate
    pieces = [audio[:, start : start + piece] for start in range(0, audio.shape[-1], piece)]
    pieces = [p for p in pieces if p.shape[-1] >= hop]  # a sliver shorter than one frame makes no code
    if not pieces:
        raise ValueError(f"'{clip.path}' is shorter than one frame of codes ({hop / rate * 1000:.0f} ms)")
    codes = torch.cat([model.encode_audio(p[None].to(model.device))[0].cpu() for p in pieces], dim=-1)
    cache.mkdir(parents=True, exist_ok=True)
    write_atomic(cached, lambda path: torch.save(codes, path))
    return codes


@dataclass
class Example:
    clip: Clip
    codes: Tensor  # [K, frames]


def random_segments(examples: list[Example], frames: int, generator: torch.Generator) -> list[tuple[Tensor, int]]:
    """One random crop of `frames` frames from each example (the whole of a shorter one): (codes [K, frames'], its
    index in `examples`)."""
    crops = []
    for index, example in enumerate(examples):
        total = example.codes.shape[-1]
        start = int(torch.randint(0, total - frames + 1, (1,), generator=generator)) if total > frames else 0
        crops.append((example.codes[:, start : start + frames], index))
    return crops


def batch_codes(segments: list[Tensor], pad: int) -> tuple[Tensor, Tensor]:
    """Segments [K, n_i] -> codes [B, K, max n] (the shorter ones filled with `pad`) and their lengths [B]."""
    longest = max(s.shape[-1] for s in segments)
    codes = torch.full((len(segments), segments[0].shape[0], longest), pad, dtype=torch.long)
    for row, segment in enumerate(segments):
        codes[row, :, : segment.shape[-1]] = segment
    return codes, torch.tensor([s.shape[-1] for s in segments])
