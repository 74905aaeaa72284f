"""The melody input of melody models: chroma features, as transformers' MusicgenMelodyFeatureExtractor makes them,
and `MusicgenMelodyProcessor` (text + melody).

    audio ──(resample to 32 kHz)──(mix to mono)──(crop to 30 s, pad the batch)──> [B, T]
      ──STFT: n_fft 16384, hop 4096, Hann, centred, power 2, divided by the window's norm──> [B, 8193, frames]
      ──chroma filter bank [12, 8193]──> [B, 12, frames] ──one-hot of the largest bin──> input_features [B, frames, 12]

frames = T // 4096 + 1 (30 s give 235, the model's `chroma_length`). How the reference reads `audio`, kept here:
a 1-D array is one mono clip; a 2-D array [N, T] (or a list of 1-D arrays) is a batch of N mono clips, so one
stereo clip must come as [clip] or [1, 2, T]; a 3-D array [B, C, T] (or a list of [C, T]) is a batch of
multichannel clips, averaged to mono; a 4-D torch tensor [B, stems, C, T] is Demucs output, whose `stem_indices`
stems are summed. Clips are resampled with torchaudio's windowed-sinc algorithm (rolloff 0.945, 24 zero
crossings), cropped to 30 s and padded with silence (right by default), and silent frames come out as bin 0.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .inputs import BatchFeature, check_return_tensors, padding_strategy
from .processor import MusicgenProcessor, _feature_extractor_config
from .tokenizer import load_tokenizer

logger = logging.getLogger(__name__)


def chroma_filter_bank(sampling_rate: int, n_fft: int, num_chroma: int = 12) -> np.ndarray:
    """[num_chroma, n_fft // 2 + 1] float64: librosa's chroma filters (A440 tuning, Gaussian octave weighting centred
    on octave 5, rows starting at C), as transformers.audio_utils.chroma_filter_bank builds them."""
    frequencies = np.linspace(0, sampling_rate, n_fft, endpoint=False)[1:]
    bins = num_chroma * np.log2(frequencies / (440.0 / 16))  # fractional chroma bin of each FFT bin
    bins = np.concatenate(([bins[0] - 1.5 * num_chroma], bins))  # 0 Hz: 1.5 octaves below the first bin
    widths = np.concatenate((np.maximum(bins[1:] - bins[:-1], 1.0), [1]))
    filters = np.subtract.outer(bins, np.arange(0, num_chroma, dtype="d")).T  # [C, n_fft]
    half = np.round(float(num_chroma) / 2)
    filters = np.remainder(filters + half + 10 * num_chroma, num_chroma) - half
    filters = np.exp(-0.5 * (2 * filters / np.tile(widths, (num_chroma, 1))) ** 2)
    filters = filters / np.sum(filters**2, axis=0, keepdims=True) ** (1.0 / 2)
    filters *= np.tile(np.exp(-0.5 * (((bins / num_chroma - 5.0) / 2.0) ** 2)), (num_chroma, 1))
    filters = np.roll(filters, -3 * (num_chroma // 12), axis=0)
    return np.ascontiguousarray(filters[:, : int(1 + n_fft / 2)])


def resample(waveform: Tensor, orig_freq: int, new_freq: int, zeros: int = 24, rolloff: float = 0.945) -> Tensor:
    """[..., T] -> [..., ceil(T * new / orig)] in the waveform's dtype: windowed-sinc (Hann) resampling, the
    arithmetic of torchaudio.functional.resample, with the melody feature extractor's settings as defaults."""
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // gcd, int(new_freq) // gcd
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    dtype, device = waveform.dtype, waveform.device
    idx = torch.arange(-width, width + orig, dtype=dtype, device=device)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new + idx  # [new, 1, 2 width + orig]
    t = (t * base).clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t) * (window * (base / orig))

    shape = waveform.shape
    x = F.pad(waveform.reshape(-1, shape[-1]), (width, width + orig))  # [N, T + 2 width + orig]
    y = F.conv1d(x[:, None], kernel, stride=orig)  # [N, new, T / orig + 1]: phase j of each output block
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : math.ceil(new * shape[-1] / orig)]
    return y.reshape(*shape[:-1], -1)


class MusicgenMelodyFeatureExtractor:
    """Melody audio -> chroma `input_features` [B, frames, 12], one-hot, as the reference computes them (see the
    module docstring for the audio layouts it reads)."""

    def __init__(
        self,
        feature_size: int = 12,
        sampling_rate: int = 32000,
        hop_length: int = 4096,
        chunk_length: int = 30,
        n_fft: int = 16384,
        num_chroma: int = 12,
        padding_value: float = 0.0,
        return_attention_mask: bool = False,
        stem_indices: list | tuple = (3, 2),
        padding_side: str = "right",
        config: dict | None = None,
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.feature_size, self.sampling_rate, self.hop_length = int(feature_size), int(sampling_rate), int(hop_length)
        self.chunk_length, self.n_fft, self.num_chroma = int(chunk_length), int(n_fft), int(num_chroma)
        self.padding_value, self.padding_side = float(padding_value), padding_side
        self.return_attention_mask, self.stem_indices = bool(return_attention_mask), list(stem_indices)
        self.n_samples = self.chunk_length * self.sampling_rate  # longest melody: 30 s
        self.config = dict(config or {})
        self.filters = torch.from_numpy(chroma_filter_bank(self.sampling_rate, self.n_fft, self.num_chroma)).float()
        self.window = torch.hann_window(self.n_fft)

    @classmethod
    def from_dict(cls, config: dict) -> "MusicgenMelodyFeatureExtractor":
        names = (
            "feature_size",
            "sampling_rate",
            "hop_length",
            "chunk_length",
            "n_fft",
            "num_chroma",
            "padding_value",
            "return_attention_mask",
            "stem_indices",
            "padding_side",
        )
        return cls(**{name: config[name] for name in names if config.get(name) is not None}, config=config)

    def to_dict(self) -> dict:
        data = dict(self.config)
        data.update(
            feature_extractor_type="MusicgenMelodyFeatureExtractor",
            processor_class="MusicgenMelodyProcessor",
            feature_size=self.feature_size,
            sampling_rate=self.sampling_rate,
            hop_length=self.hop_length,
            chunk_length=self.chunk_length,
            n_fft=self.n_fft,
            num_chroma=self.num_chroma,
            n_samples=self.n_samples,
            padding_value=self.padding_value,
            padding_side=self.padding_side,
            return_attention_mask=self.return_attention_mask,
            stem_indices=self.stem_indices,
        )
        return data

    def __call__(
        self,
        audio: Any,
        sampling_rate: int | None = None,
        padding: bool | str = True,
        max_length: int | None = None,
        truncation: bool = True,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
    ) -> BatchFeature:
        """`input_features` [B, frames, 12]; with `return_attention_mask`, also the padding mask [B, samples]
        (1 = audio), taken every hop_length samples when asked for in the call (the reference's rule)."""
        check_return_tensors(return_tensors)
        waveforms, mask = self.waveforms(audio, sampling_rate, padding, max_length, truncation)
        out = BatchFeature(input_features=self.chroma(waveforms))
        if return_attention_mask or (return_attention_mask is None and self.return_attention_mask):
            out["attention_mask"] = mask[:, :: self.hop_length] if return_attention_mask else mask
        if return_tensors == "np":
            out = BatchFeature({name: value.numpy() for name, value in out.items()})
        return out

    def waveforms(
        self,
        audio: Any,
        sampling_rate: int | None = None,
        padding: bool | str = True,
        max_length: int | None = None,
        truncation: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """The mono clips of `audio` at the model's rate, cropped and padded into one batch [B, T], and the mask of
        their samples (1 = audio, 0 = padding): what `chroma` is computed from."""
        if sampling_rate is None:
            logger.warning("no sampling_rate given with the melody; assuming %d Hz", self.sampling_rate)
        clips = self._mono_clips(audio, sampling_rate)
        limit = max_length or self.n_samples
        if truncation:
            clips = [clip[:limit] for clip in clips]
        strategy, longest = padding_strategy(padding), max(len(clip) for clip in clips)
        if strategy == "do_not_pad" and any(len(clip) != longest for clip in clips):
            raise ValueError("the melody clips have different lengths; pass padding=True to pad them")
        width = max(limit, longest) if strategy == "max_length" else longest
        mask = torch.zeros(len(clips), width, dtype=torch.int32)  # 1 = audio, 0 = padding
        padded = []
        for i, clip in enumerate(clips):
            fill = clip.new_full((width - len(clip),), self.padding_value)
            if self.padding_side == "left":
                padded.append(torch.cat([fill, clip]))
                mask[i, len(fill) :] = 1
            else:
                padded.append(torch.cat([clip, fill]))
                mask[i, : len(clip)] = 1
        return torch.stack(padded), mask

    def chroma(self, waveform: Tensor) -> Tensor:
        """Mono audio [B, T] at `sampling_rate` -> one-hot chroma [B, T // hop + 1, 12] (at least 5 frames): the
        loudest pitch class of each frame."""
        energies = self.chroma_energies(waveform)
        return torch.zeros_like(energies).scatter_(-1, energies.argmax(-1, keepdim=True), 1.0)

    def chroma_energies(self, waveform: Tensor) -> Tensor:
        """What `chroma` takes the loudest of: each frame's 12 pitch-class energies over their largest,
        [B, frames, 12]."""
        if waveform.shape[-1] < self.n_fft:  # too short to reflect-pad: centre it in n_fft samples of silence
            pad = self.n_fft - waveform.shape[-1]
            waveform = F.pad(waveform, (pad // 2, pad // 2 + pad % 2))
        spec = torch.stft(
            waveform,
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = (spec / self.window.pow(2.0).sum().sqrt()).abs().pow(2.0)  # [B, n_fft/2 + 1, frames]
        raw = torch.einsum("cf, ...ft->...ct", self.filters, power)  # [B, 12, frames]
        return F.normalize(raw, p=float("inf"), dim=-2, eps=1e-6).transpose(1, 2)  # [B, frames, 12]

    def _mono_clips(self, audio: Any, sampling_rate: int | None) -> list[Tensor]:
        """The clips of `audio` as the reference reads them, each mono float32 [T] at `sampling_rate`."""
        if isinstance(audio, Tensor) and audio.dim() == 4:  # Demucs output [B, stems, C, T]
            stems = audio[:, torch.tensor(self.stem_indices)].sum(1).mean(dim=1, keepdim=True)  # [B, 1, T]
            audio = resample(stems, sampling_rate or 44000, self.sampling_rate).squeeze(1)
            sampling_rate = self.sampling_rate
        batched = (isinstance(audio, (np.ndarray, Tensor)) and audio.ndim > 1) or (
            isinstance(audio, (list, tuple))
            and len(audio) > 0
            and isinstance(audio[0], (np.ndarray, Tensor, list, tuple))
        )
        clips = []
        for clip in audio if batched else [audio]:
            clip = clip if isinstance(clip, Tensor) else torch.as_tensor(np.asarray(clip, dtype=np.float32))
            if not clip.is_floating_point():
                clip = clip.float()
            if sampling_rate is not None and int(sampling_rate) != self.sampling_rate:
                clip = resample(clip, int(sampling_rate), self.sampling_rate)
            clip = clip.float()
            if clip.dim() == 2:  # [C, T]: mix to mono
                clip = clip.mean(dim=0)
            if clip.dim() != 1 or clip.shape[0] == 0:
                raise ValueError(
                    f"expected melody audio as [samples], [channels, samples] inside a batch, or a batch of them; "
                    f"got a clip of shape {tuple(clip.shape)}"
                )
            clips.append(clip)
        if not clips:
            raise ValueError("no melody audio given")
        return clips


class MusicgenMelodyProcessor(MusicgenProcessor):
    """Text (T5 tokenizer) and melody (chroma) inputs of melody models, like transformers' MusicgenMelodyProcessor.

    inputs = processor(audio=melody, sampling_rate=32000, text=["80s blues"], padding=True, return_tensors="pt")
    audio_values = model.generate(**inputs, max_new_tokens=256)
    """

    feature_extractor: MusicgenMelodyFeatureExtractor

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **hub_options: Any
    ) -> "MusicgenMelodyProcessor":
        source = pretrained_model_name_or_path
        config = _feature_extractor_config(source, hub_options)
        return cls(MusicgenMelodyFeatureExtractor.from_dict(config), load_tokenizer(source, hub_options))

    def _audio_features(
        self, audio: Any, sampling_rate: int | None, padding: bool | str, return_tensors: str | None
    ) -> dict:
        """Melody audio -> chroma `input_features`. `padding`, `truncation` and `max_length` apply to the text only
        (as in the reference: the melody is always cropped to 30 s and padded to the longest clip)."""
        return self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors=return_tensors)

    def get_unconditional_inputs(self, num_samples: int = 1, return_tensors: str = "pt") -> BatchFeature:
        """Null text inputs (one `</s>` per sample, attention mask 0), as the reference's processor gives them."""
        inputs = self.tokenizer([""] * num_samples, return_tensors=return_tensors)
        inputs["attention_mask"][:] = 0
        return inputs
