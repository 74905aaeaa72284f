"""Text and audio inputs for MusicGen: `MusicgenProcessor` (`AutoProcessor` picks it, or the melody one).

It behaves like transformers' MusicgenProcessor, built from two plain parts:
- `TextTokenizer`: the T5 tokenizer, run by the `tokenizers` library from `tokenizer.json`. Text is padded on the
  right and every sequence ends with `</s>` (the tokenizer.json post-processor adds it).
- `AudioFeatureExtractor`: raw waveforms for the audio prompt, as transformers' EncodecFeatureExtractor prepares
  them. The published MusicGen configs pad audio on the LEFT (`padding_side: "left"`); `padding_mask` is 1 on
  real samples, 0 on padding.

Files read (all from one folder): tokenizer.json, tokenizer_config.json, special_tokens_map.json (optional) and
preprocessor_config.json (or processor_config.json, which may nest the same settings under "feature_extractor").
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from ..files import read_json, write_json
from ..loading.hub import resolve_file as _resolve_file
from .audio_io import resample, to_channels
from .inputs import BatchFeature, check_return_tensors, padding_strategy
from .tokenizer import TextTokenizer, load_tokenizer

logger = logging.getLogger(__name__)

PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"


def _read_json(path: str | None) -> dict:
    return {} if path is None else read_json(path)


class AudioFeatureExtractor:
    """Raw-waveform inputs for the audio codec, as transformers' EncodecFeatureExtractor prepares them.

    Each clip is `[feature_size, samples]` (1-D for mono, `(2, samples)` for stereo); a batch is padded to one
    length on `padding_side` with `padding_value`.
    """

    def __init__(
        self,
        sampling_rate: int = 24000,
        feature_size: int = 1,
        padding_value: float = 0.0,
        padding_side: str = "right",
        config: dict | None = None,
    ):
        # defaults are the reference's for a config that lacks the key; published MusicGen configs set all four
        self.sampling_rate = int(sampling_rate)
        self.feature_size = int(feature_size)
        self.padding_value = float(padding_value)
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.padding_side = padding_side
        self.config = dict(config or {})

    @classmethod
    def from_dict(cls, config: dict) -> "AudioFeatureExtractor":
        names = ("sampling_rate", "feature_size", "padding_value", "padding_side")
        known = {name: config[name] for name in names if config.get(name) is not None}
        return cls(**known, config=config)

    def to_dict(self) -> dict:
        data = {"chunk_length_s": None, "overlap": None, "return_attention_mask": True}
        data.update(self.config)
        data.update(
            feature_extractor_type="EncodecFeatureExtractor",
            feature_size=self.feature_size,
            padding_side=self.padding_side,
            padding_value=self.padding_value,
            processor_class="MusicgenProcessor",
            sampling_rate=self.sampling_rate,
        )
        return data

    def __call__(
        self,
        audio: Any,
        sampling_rate: int | None = None,
        padding: bool | str = True,
        max_length: int | None = None,
        truncation: bool = False,
        return_tensors: str | None = None,
    ) -> BatchFeature:
        """`input_values` `[batch, channels, samples]` and, when padding, `padding_mask` `[batch, samples]`."""
        check_return_tensors(return_tensors)
        rate = self._given_rate(sampling_rate)
        clips = [self._as_clip(clip, rate) for clip in _split_batch(audio)]
        if truncation:
            if max_length is None:
                raise ValueError("truncation=True needs max_length (in samples)")
            clips = [clip[:, :max_length] for clip in clips]

        strategy = padding_strategy(padding)
        out = BatchFeature()
        if strategy != "do_not_pad":
            target = max(clip.shape[-1] for clip in clips)
            if strategy == "max_length":
                if max_length is None:
                    raise ValueError("padding='max_length' needs max_length (in samples)")
                target = max_length
            clips, mask = self._pad(clips, target)
            out["padding_mask"] = torch.from_numpy(mask) if return_tensors == "pt" else mask

        if return_tensors is None:
            out["input_values"] = clips
        else:
            if len({clip.shape[-1] for clip in clips}) > 1:
                raise ValueError("the audio clips have different lengths; pass padding=True to return one tensor")
            values = np.stack(clips)
            out["input_values"] = torch.from_numpy(values) if return_tensors == "pt" else values
        return out

    def _given_rate(self, sampling_rate: int | None) -> int:
        if sampling_rate is None:
            logger.warning(
                "no sampling_rate given with the audio; assuming %d Hz. Pass sampling_rate=%d to be sure",
                self.sampling_rate,
                self.sampling_rate,
            )
            return self.sampling_rate
        if not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
            raise ValueError(f"sampling_rate must be a positive whole number of Hz, got {sampling_rate!r}")
        return int(sampling_rate)

    def _as_clip(self, clip: Any, sampling_rate: int) -> np.ndarray:
        """One clip -> float32 `[feature_size, samples]` at the model's rate: resampled (soxr, as read_audio does)
        and mixed to the model's channels (mono copied to each channel, channels averaged to mono)."""
        clip = _to_numpy(clip).astype(np.float32, copy=False)
        if clip.ndim == 2 and clip.shape[0] > clip.shape[1]:
            raise ValueError(
                f"expected audio of shape (channels, samples), got {tuple(clip.shape)}: "
                "if it is (samples, channels), transpose it"
            )
        if clip.ndim not in (1, 2):
            raise ValueError(f"expected a clip of shape (samples,) or (channels, samples), got {tuple(clip.shape)}")
        return resample(to_channels(clip, self.feature_size), sampling_rate, self.sampling_rate)

    def _pad(self, clips: list[np.ndarray], target: int) -> tuple[list[np.ndarray], np.ndarray]:
        padded, mask = [], np.zeros((len(clips), target), dtype=np.int32)
        for i, clip in enumerate(clips):
            length = clip.shape[-1]
            fill = np.full((clip.shape[0], max(target - length, 0)), self.padding_value, dtype=np.float32)
            if self.padding_side == "left":
                padded.append(np.concatenate([fill, clip], axis=-1))
                mask[i, target - length :] = 1
            else:
                padded.append(np.concatenate([clip, fill], axis=-1))
                mask[i, :length] = 1
        return padded, mask

    def decode(self, audio_values: Any, padding_mask: Any = None) -> list[np.ndarray]:
        """Generated audio `[batch, channels, samples]` -> list of `[channels, samples]` arrays, the prompt's
        padding removed.

        The mask is the one the prompt was prepared with; generated samples past its end are kept (the reference
        extends the mask with ones), and samples where it is 0 (the padding) are dropped.
        """
        audio = _to_numpy(audio_values)
        if audio.ndim != 3:
            raise ValueError(f"expected audio of shape [batch, channels, samples], got shape {tuple(audio.shape)}")
        if padding_mask is None:
            return list(audio)
        mask = _to_numpy(padding_mask)
        if mask.ndim != 2 or mask.shape[0] != audio.shape[0]:
            raise ValueError(
                f"padding_mask of shape {tuple(mask.shape)} does not fit audio of shape {tuple(audio.shape)}"
            )
        extra = audio.shape[-1] - mask.shape[-1]
        if extra < 0:
            raise ValueError(
                f"padding_mask ({mask.shape[-1]} samples) is longer than the audio ({audio.shape[-1]} samples)"
            )
        keep = np.concatenate([mask != 0, np.ones((mask.shape[0], extra), dtype=bool)], axis=-1)
        return [item[:, row] for item, row in zip(audio, keep)]


def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point():
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _is_clip(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor, list, tuple))


def _split_batch(audio: Any) -> list[Any]:
    """The clips of an audio input: a list/tuple of arrays is a batch; a 3-D array is `[batch, channels,
    samples]`; anything else (1-D array, (channels, samples) array, list of numbers) is one clip."""
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise ValueError("audio is an empty list; give at least one clip")
        return list(audio) if _is_clip(audio[0]) else [audio]
    if _is_clip(audio) and np.ndim(audio) == 3:
        return list(audio)
    if not _is_clip(audio):
        raise TypeError(f"audio must be a numpy array, a torch tensor or a list of them, got {type(audio).__name__}")
    return [audio]


# ---------------------------------------------------------------------------------------------- processor


class MusicgenProcessor:
    """Prepares MusicGen's inputs (text, audio prompt) and turns generated audio back into arrays.

    processor = MusicgenProcessor.from_pretrained(folder)
    inputs = processor(text=["80s pop with synths"], padding=True, return_tensors="pt")
    audio_values = model.generate(**inputs, max_new_tokens=256)
    """

    def __init__(self, feature_extractor: AudioFeatureExtractor, tokenizer: TextTokenizer):
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **hub_options: Any
    ) -> "MusicgenProcessor":
        """Load from a checkpoint folder (tokenizer.json, tokenizer_config.json, preprocessor_config.json)."""
        source = pretrained_model_name_or_path
        return cls(_load_feature_extractor(source, hub_options), load_tokenizer(source, hub_options))

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and preprocessor_config.json."""
        folder = os.fspath(save_directory)
        os.makedirs(folder, exist_ok=True)
        written = self.tokenizer.save(folder)
        preprocessor_path = os.path.join(folder, PREPROCESSOR_CONFIG_FILE)
        write_json(preprocessor_path, self.feature_extractor.to_dict())
        return written + [preprocessor_path]

    def __call__(
        self,
        text: str | list[str] | None = None,
        audio: Any = None,
        sampling_rate: int | None = None,
        padding: bool | str = True,
        return_tensors: str | None = None,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> BatchFeature:
        """Text -> `input_ids`, `attention_mask`; audio -> `input_values`, `padding_mask`; or both.

        `truncation` and `max_length` apply to the text. As in transformers, a first positional argument that is
        not text is taken as audio: `processor(waveform, sampling_rate=32000)`.
        """
        if isinstance(text, (list, tuple)) and len(text) == 0:
            raise ValueError(
                "text is an empty list: give at least one description, or use "
                "model.get_unconditional_inputs(num_samples) for music without text"
            )
        if text is not None and audio is None and not _looks_like_text(text):
            text, audio = None, text
        if text is None and audio is None:
            raise ValueError("give text=..., audio=..., or both")
        out = BatchFeature()
        if text is not None:
            out.update(
                self.tokenizer(
                    text,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length,
                    return_tensors=return_tensors,
                    add_special_tokens=add_special_tokens,
                )
            )
        if audio is not None:
            for name, value in self._audio_features(audio, sampling_rate, padding, return_tensors).items():
                out.setdefault(name, value)  # the text's attention_mask wins over a melody's
        return out

    def _audio_features(
        self, audio: Any, sampling_rate: int | None, padding: bool | str, return_tensors: str | None
    ) -> dict:
        return self.feature_extractor(
            audio, sampling_rate=sampling_rate, padding=padding, return_tensors=return_tensors
        )

    def batch_decode(
        self,
        values: Any = None,
        padding_mask: Any = None,
        *,
        audio: Any = None,
        sequences: Any = None,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list:
        """Generated audio `[batch, channels, samples]` -> list of `[channels, samples]` numpy arrays with the
        prompt's padding removed (give the prompt's `padding_mask`); token ids -> list of strings."""
        if audio is None and sequences is None:
            if values is None:
                raise ValueError("give the audio values (or token ids) to decode")
            if _is_token_ids(values):
                sequences = values
            else:
                audio = values
        if audio is not None:
            return self.feature_extractor.decode(audio, padding_mask)
        return self.tokenizer.batch_decode(sequences, skip_special_tokens, clean_up_tokenization_spaces)

    def decode_audio(self, audio_values: Any, padding_mask: Any = None) -> list[np.ndarray]:
        """Same as `batch_decode(audio_values, padding_mask)`."""
        return self.feature_extractor.decode(audio_values, padding_mask)

    def decode(
        self, token_ids: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> str:
        """One sequence of token ids -> text."""
        return self.tokenizer.decode(token_ids, skip_special_tokens, clean_up_tokenization_spaces)


class AutoProcessor:
    """`AutoProcessor.from_pretrained(folder_or_hub_id)`: the processor the checkpoint needs, MusicgenProcessor or,
    for melody checkpoints (MusicgenMelodyFeatureExtractor), zhiyin.chroma.MusicgenMelodyProcessor."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, **hub_options: Any) -> MusicgenProcessor:
        config = _feature_extractor_config(pretrained_model_name_or_path, hub_options)
        if config.get("feature_extractor_type") == MELODY_FEATURE_EXTRACTOR:
            from .chroma import MusicgenMelodyProcessor

            return MusicgenMelodyProcessor.from_pretrained(pretrained_model_name_or_path, **hub_options)
        return MusicgenProcessor.from_pretrained(pretrained_model_name_or_path, **hub_options)


def _looks_like_text(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) for v in value)


def _is_token_ids(values: Any) -> bool:
    """Integer tensors/arrays, or (nested) lists of ints, are token ids; float audio is not."""
    if isinstance(values, torch.Tensor):
        return not values.is_floating_point() and not values.is_complex()
    if isinstance(values, np.ndarray):
        return np.issubdtype(values.dtype, np.integer)
    if isinstance(values, (list, tuple)) and values:
        return all(_is_token_ids(v) if _is_clip(v) else isinstance(v, (int, np.integer)) for v in values)
    return False


MELODY_FEATURE_EXTRACTOR = "MusicgenMelodyFeatureExtractor"


def _feature_extractor_config(source: str | os.PathLike, hub_options: dict) -> dict:
    """The feature extractor's settings: preprocessor_config.json, or processor_config.json (maybe nested)."""
    path = _resolve_file(source, PREPROCESSOR_CONFIG_FILE, required=False, **hub_options)
    if path is not None:
        return _read_json(path)
    path = _resolve_file(source, PROCESSOR_CONFIG_FILE, required=False, **hub_options)
    if path is None:  # neither: asking for the first outright says why, as the model's loader does (e.g. offline)
        _resolve_file(source, PREPROCESSOR_CONFIG_FILE, **hub_options)
    config = _read_json(path)
    return config.get("feature_extractor", config)


def _load_feature_extractor(source: str | os.PathLike, hub_options: dict) -> AudioFeatureExtractor:
    config = _feature_extractor_config(source, hub_options)
    if config.get("feature_extractor_type") == MELODY_FEATURE_EXTRACTOR:
        raise ValueError(
            f"'{os.fspath(source)}' is a melody checkpoint: load its processor with zhiyin.AutoProcessor "
            "(or zhiyin.MusicgenMelodyProcessor)"
        )
    return AudioFeatureExtractor.from_dict(config)
