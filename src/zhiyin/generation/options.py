"""What a generation call asks for, resolved once from the checkpoint's generation_config.json and the call's
arguments, and checked once: `GenerationOptions`. No torch here: the command line checks its flags with these same
rules before it imports torch.

    argument          generate   generate_long   generate_stream   default
    do_sample            x             x               x           generation_config.json, then the reference's:
    guidance_scale       x             x               x           greedy, top_k 50, temperature 1, no guidance
    temperature, top_k, top_p
    max_new_tokens       x                                         generation_config.json's, else from max_length
    max_length           x                                         (20 positions, the reference's default)
    duration                           x               x           required: seconds of new music
    window                             x               x           30 s (MusicGen's training length)
    extend_stride                      x               x           18 s (each later window keeps 12 s of context)
    chunk_seconds                                      x           1 s
    progress_bar         x             x               x           off
    return_codes         x             x                           off: audio
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..config import GenerationConfig, MusicgenConfig
from .delay_pattern import DelayPattern

WINDOW_SECONDS = 30.0  # MusicGen's training length, audiocraft's max_duration
EXTEND_STRIDE_SECONDS = 18.0  # audiocraft's default: each later window keeps 12 s of context

_SAMPLING = ("do_sample", "guidance_scale", "temperature", "top_k", "top_p")
ARGUMENTS = {
    "generate": {*_SAMPLING, "max_new_tokens", "max_length", "progress_bar", "return_codes"},
    "generate_long": {*_SAMPLING, "duration", "window", "extend_stride", "progress_bar", "return_codes"},
    "generate_stream": {*_SAMPLING, "duration", "chunk_seconds", "window", "extend_stride", "progress_bar"},
}


@dataclass(frozen=True)
class SamplingSettings:
    """How the next tokens are chosen (sampling.py applies them)."""

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = None
    guidance_scale: float | None = None

    def validate(self, names: dict[str, str] | None = None) -> None:
        """Raise ValueError for settings outside their range. `names` renames the settings in the messages (the
        CLI's flags: {"top_k": "--top-k", ...}), so the API and the CLI say the same thing in their own words."""
        name = lambda key: (names or {}).get(key, key)  # noqa: E731
        for key in ("guidance_scale", "temperature", "top_p"):
            value = getattr(self, key)
            if value is not None and not _is_finite(value):
                raise ValueError(f"{name(key)} must be a finite number, got {value!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)):
            raise ValueError(f"{name('top_k')} must be a whole number, got {self.top_k!r}")
        if self.guidance_scale is not None and self.guidance_scale < 1:
            raise ValueError(
                f"{name('guidance_scale')} must be >= 1 (1 turns guidance off), got {self.guidance_scale:g}"
            )
        if not self.do_sample:
            return
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"{name('top_k')} must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"{name('top_p')} must be in (0, 1], got {self.top_p:g}")
        if self.temperature is None or self.temperature <= 0:
            raise ValueError(
                f"{name('temperature')} must be > 0 when sampling, got {self.temperature} "
                f"(use {name('greedy')} instead)"
            )

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale is not None and self.guidance_scale > 1


@dataclass(frozen=True)
class Limits:
    """What one pass of a model can make, from its config alone (no weights needed)."""

    frame_rate: int  # audio frames (decoder positions) per second
    hop_length: int  # audio samples per frame
    pattern: DelayPattern
    max_frames: int  # the most frames one pass makes: the decoder's positions less the start token and delays

    @classmethod
    def of(cls, config: MusicgenConfig) -> Limits:
        pattern = DelayPattern.for_decoder(config.decoder)
        return cls(
            config.audio_encoder.frame_rate,
            config.audio_encoder.hop_length,
            pattern,
            pattern.frames(config.decoder.max_position_embeddings),
        )

    @property
    def max_seconds(self) -> float:
        return self.max_frames / self.frame_rate

    def check_prompt_samples(self, samples: int, sampling_rate: int) -> None:
        """An audio prompt of `samples` samples must leave room in one pass for what follows it."""
        if math.ceil(samples / self.hop_length) >= self.max_frames:
            raise ValueError(
                f"the audio prompt is {samples / sampling_rate:.1f} s long, and one pass of this model holds at most "
                f"{self.max_seconds:.1f} s with what follows it: keep only its last seconds, e.g. "
                f"input_values[..., -{10 * sampling_rate}:] for 10 s"
            )


@dataclass(frozen=True)
class GenerationOptions:
    """One call's options, every one resolved (the table in the module's docstring) and checked."""

    caller: str
    sampling: SamplingSettings
    max_new_tokens: int | None = None  # generate: as given or from generation_config.json; new_tokens() resolves it
    max_length: int = 20
    duration: float | None = None  # generate_long, generate_stream
    window: float = WINDOW_SECONDS
    extend_stride: float = EXTEND_STRIDE_SECONDS
    chunk_seconds: float = 1.0
    progress_bar: bool = False
    return_codes: bool = False
    limits: Limits | None = field(default=None, repr=False)

    @classmethod
    def resolve(
        cls,
        caller: str,
        arguments: dict[str, Any],
        defaults: GenerationConfig,
        limits: Limits,
        names: dict[str, str] | None = None,
    ) -> GenerationOptions:
        """The options of a call to `caller` (generate, generate_long, generate_stream) with these keyword
        arguments (None: not given), over the checkpoint's defaults. Raises ValueError, naming the argument (as
        `names` spells it, for the CLI's flags), for any argument the caller does not take or out of its range."""
        unknown = arguments.keys() - ARGUMENTS[caller]
        if unknown:
            raise ValueError(
                f"{caller}() got arguments it does not know: {', '.join(sorted(unknown))} "
                f"(it takes {', '.join(sorted(ARGUMENTS[caller]))})"
            )
        given = {k: v for k, v in arguments.items() if v is not None}

        def pick(key):
            return given.get(key, getattr(defaults, key))

        sampling = SamplingSettings(
            do_sample=bool(pick("do_sample")),
            temperature=pick("temperature"),
            top_k=pick("top_k"),
            top_p=pick("top_p"),
            guidance_scale=pick("guidance_scale"),
        )
        sampling.validate(names)
        options = cls(
            caller,
            sampling,
            max_new_tokens=given.get("max_new_tokens", defaults.max_new_tokens),
            max_length=given.get("max_length", defaults.max_length),
            limits=limits,
            **{
                k: given[k]
                for k in ("duration", "window", "extend_stride", "chunk_seconds", "progress_bar", "return_codes")
                if k in given
            },
        )
        options._check(names or {})
        return options

    def _check(self, names: dict[str, str]) -> None:
        name = lambda key: names.get(key, key)  # noqa: E731
        if self.caller == "generate":
            return  # its length is checked with the prompt's (new_tokens)
        rate = self.limits.frame_rate
        if self.duration is None:
            raise ValueError(f"{self.caller}() needs duration=seconds of music")
        for key in ("duration", "window", "extend_stride", "chunk_seconds"):
            if not _is_finite(getattr(self, key)):
                raise ValueError(f"{name(key)} must be a finite number of seconds, got {getattr(self, key)!r}")
        if self.duration <= 0:
            raise ValueError(f"{name('duration')} must be more than 0 seconds, got {self.duration:g}")
        if self.new_frames < 1:
            raise ValueError(f"{name('duration')} {self.duration:g} s is shorter than one audio frame (1/{rate} s)")
        window, stride = self.window_frames
        if window < 1:
            raise ValueError(f"{name('window')} must be at least one audio frame (1/{rate} s), got {self.window:g}")
        if window > self.limits.max_frames:
            raise ValueError(
                f"{name('window')} {self.window:g} s is more than one pass of this model makes "
                f"({self.limits.max_seconds:.1f} s): give a smaller {name('window')}"
            )
        if not 0 < stride < window:
            raise ValueError(
                f"{name('extend_stride')} must be more than 0 and less than {name('window')} "
                f"({self.window:g} s), got {self.extend_stride:g}"
            )
        if self.caller == "generate_stream" and self.chunk_frames < 1:
            raise ValueError(
                f"{name('chunk_seconds')} must be at least one frame (1/{rate} s), got {self.chunk_seconds:g}"
            )

    @property
    def new_frames(self) -> int:
        """generate_long, generate_stream: the frames of new music asked for."""
        return round(self.duration * self.limits.frame_rate)

    @property
    def window_frames(self) -> tuple[int, int]:
        """generate_long, generate_stream: (window, extend_stride) in frames."""
        rate = self.limits.frame_rate
        return round(self.window * rate), round(self.extend_stride * rate)

    @property
    def chunk_frames(self) -> int:
        return round(self.chunk_seconds * self.limits.frame_rate)

    def check_prompt_frames(self, prompt_frames: int) -> None:
        """generate_long, generate_stream: the audio prompt must leave room in the first window."""
        if prompt_frames >= self.window_frames[0]:
            rate = self.limits.frame_rate
            raise ValueError(
                f"the audio prompt ({prompt_frames / rate:g} s) must be shorter than the window "
                f"({self.window:g} s): keep only its last seconds"
            )

    def new_tokens(self, prompt_frames: int) -> int:
        """generate: the decoder positions to generate after a prompt of `prompt_frames` frames, as the reference
        resolves them (max_new_tokens, else max_length - 1 - prompt), checked against one pass of the model."""
        tokens = self.max_new_tokens
        if tokens is None:
            tokens = self.max_length - 1 - prompt_frames
        pattern, limits = self.limits.pattern, self.limits
        if tokens <= pattern.max_delay:
            raise ValueError(
                f"max_new_tokens must be more than {pattern.max_delay} (the codebook delay) to make any "
                f"audio, got {tokens}"
            )
        frames = pattern.frames(1 + prompt_frames + tokens)
        if frames > limits.max_frames:
            raise ValueError(
                f"{frames / limits.frame_rate:.1f} s of audio (prompt included) is longer than one pass of this model "
                f"can make (at most {limits.max_seconds:.1f} s): for longer music use "
                "generate_long(..., duration=seconds)"
            )
        return tokens


def _is_finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
