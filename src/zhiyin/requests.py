"""One piece of music asked for by a service or a batch job: its fields, checked once (GenerationRequest), how it
becomes a job of the engine (submit), and how its file is written (write_music: `zhiyin generate`'s writer with the
CLI's defaults). `zhiyin serve` (serving/app.py) and `zhiyin batch` (batch/) both go through here, so that a request
makes the music and the file that `zhiyin generate` makes with the same model, prompt, settings and seed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .engine import Engine, Job
from .processing.audio_io import read_audio, write_audio
from .processing.loudness import DEFAULT_NORMALIZE, TARGET_DB

MAX_SEED = 2**63 - 1


class GenerationRequest(BaseModel):
    """A request's fields; every one checked (unknown fields refused). The defaults are the CLI's."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(description="what the music should be; null for music from nothing")
    duration: float = Field(10.0, gt=0, description="seconds of music")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the same seed makes the same music")
    guidance_scale: float = Field(3.0, ge=1, description="classifier-free guidance (1: off)")
    top_k: int | None = Field(250, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)
    format: Literal["wav", "flac", "ogg", "mp3"] = "wav"


class FieldError(ValueError):
    """A request's field is wrong: `field` names it, `message` says what is wrong and what to do."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field, self.message = field, message


def new_seed() -> int:
    """A seed for a request that gave none (recorded with it, so that it can be made again)."""
    return int.from_bytes(os.urandom(4), "little")


def check(request: GenerationRequest, max_duration: float | None = None) -> None:
    """What the schema cannot say: a prompt of only spaces, a duration over a limit."""
    if request.prompt is not None and not request.prompt.strip():
        raise FieldError("prompt", 'is empty: give a description, or "prompt": null for music from nothing')
    if max_duration is not None and request.duration > max_duration:
        raise FieldError("duration", f"is {request.duration:g} s, more than this server makes ({max_duration:g} s)")


def submit(
    engine: Engine,
    processor,
    request: GenerationRequest | dict[str, Any],
    seed: int,
    audio_prompt: str | os.PathLike | None = None,
    melody: str | os.PathLike | None = None,
) -> Job:
    """The request as a job of the engine: its text (or none), an audio prompt to continue and a melody's chroma
    read from their files, as `zhiyin generate` reads them; sampled with its settings and `seed`. Raises FieldError
    (or the library's ValueError) for what cannot be made."""
    data = request.model_dump() if isinstance(request, GenerationRequest) else request
    model = engine.model
    melodic = hasattr(model.config, "chroma_length")
    if melody is not None and not melodic:
        raise FieldError(
            "melody", "needs a melody model such as facebook/musicgen-melody: this model has no melody input"
        )
    if audio_prompt is not None and melodic:
        raise FieldError("audio_prompt", "melody models continue no audio prompt: give the tune as a melody instead")
    rate = model.config.audio_encoder.sampling_rate
    audio = None
    if audio_prompt is not None:
        audio = [_read("audio_prompt", audio_prompt, rate, model.config.decoder.audio_channels)]
    if data["prompt"] is None:
        if audio is not None:
            raise FieldError("audio_prompt", 'needs a prompt to go with it (it may be short, e.g. "music")')
        inputs = dict(model.get_unconditional_inputs(1))
        inputs.pop("guidance_scale")  # the request's own goes along (it guides nothing without text)
    else:
        inputs = dict(
            processor(text=[data["prompt"]], audio=audio, sampling_rate=rate if audio else None, return_tensors="pt")
        )
        most = getattr(processor.tokenizer, "model_max_length", None)
        if most is not None and inputs["input_ids"].shape[-1] > most:
            raise FieldError(
                "prompt", f"has {inputs['input_ids'].shape[-1]} tokens, more than the model reads ({most}): shorten it"
            )
    if melody is not None:  # the tune's chroma, as the CLI's --melody makes it
        extractor = processor.feature_extractor
        tune = _read("melody", melody, extractor.sampling_rate, 1)[0]
        inputs["input_features"] = extractor([tune], sampling_rate=extractor.sampling_rate, return_tensors="pt")[
            "input_features"
        ]
    try:
        return engine.submit(
            **inputs,
            duration=data["duration"],
            seed=seed,
            do_sample=True,
            guidance_scale=data["guidance_scale"],
            top_k=data["top_k"],
            top_p=data["top_p"],
            temperature=data["temperature"],
        )
    except ValueError as error:
        if "audio prompt" in str(error):
            raise FieldError("audio_prompt", str(error)) from None
        raise


def _read(field: str, path: str | os.PathLike, rate: int, channels: int) -> np.ndarray:
    if not Path(path).is_file():
        raise FieldError(field, f"file '{path}' not found")
    try:
        return read_audio(path, rate, channels)
    except (OSError, ValueError, RuntimeError) as error:
        raise FieldError(field, f"file '{path}' is not audio soundfile reads (WAV, FLAC, OGG, MP3): {error}") from None


def write_music(path: str | os.PathLike, audio: np.ndarray, rate: int, format: str, metadata: dict) -> None:
    """A finished piece [channels, samples] written as `zhiyin generate` writes it by default (levelled to the
    CLI's loudness, tagged with `metadata`, atomically)."""
    write_audio(path, audio, rate, format, normalize=DEFAULT_NORMALIZE, loudness_db=TARGET_DB, metadata=metadata)
