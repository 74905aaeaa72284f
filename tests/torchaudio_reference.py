"""The two torchaudio functions transformers' MusicgenMelodyFeatureExtractor calls, for the tests' oracle.

transformers runs the melody feature extractor on torchaudio (`transforms.Spectrogram`, `functional.resample`),
but the only torchaudio wheels on PyPI for current torch are CUDA builds whose extension fails to load on a
CPU-only torch. Both functions are plain PyTorch in torchaudio's own source, so this module is that source
(torchaudio 2.11.0, torchaudio/functional/functional.py and transforms/_transforms.py), trimmed to the code paths
the feature extractor takes, with the arithmetic unchanged. `reference_feature_extractor()` plugs it into
transformers' feature-extraction module, using the real torchaudio instead when it imports.

torchaudio is BSD 2-Clause licensed: Copyright (c) 2017 Facebook Inc. (Soumith Chintala). All rights reserved.
"""

from __future__ import annotations

import math
import types

import torch
from torch import Tensor


def spectrogram(waveform, pad, window, n_fft, hop_length, win_length, power, normalized, center=True,
                pad_mode="reflect", onesided=True):
    if pad > 0:
        waveform = torch.nn.functional.pad(waveform, (pad, pad), "constant")
    frame_length_norm, window_norm = (normalized == "frame_length"), (normalized is True or normalized == "window")
    shape = waveform.size()
    waveform = waveform.reshape(-1, shape[-1])
    spec_f = torch.stft(
        input=waveform, n_fft=n_fft, hop_length=hop_length, win_length=win_length, window=window, center=center,
        pad_mode=pad_mode, normalized=frame_length_norm, onesided=onesided, return_complex=True,
    )
    spec_f = spec_f.reshape(shape[:-1] + spec_f.shape[-2:])
    if window_norm:
        spec_f /= window.pow(2.0).sum().sqrt()
    if power is not None:
        if power == 1.0:
            return spec_f.abs()
        return spec_f.abs().pow(power)
    return spec_f


class Spectrogram(torch.nn.Module):
    def __init__(self, n_fft=400, win_length=None, hop_length=None, pad=0, window_fn=torch.hann_window, power=2.0,
                 normalized=False, wkwargs=None, center=True, pad_mode="reflect", onesided=True):
        super().__init__()
        self.n_fft = n_fft
        self.win_length = win_length if win_length is not None else n_fft
        self.hop_length = hop_length if hop_length is not None else self.win_length // 2
        window = window_fn(self.win_length) if wkwargs is None else window_fn(self.win_length, **wkwargs)
        self.register_buffer("window", window)
        self.pad, self.power, self.normalized = pad, power, normalized
        self.center, self.pad_mode, self.onesided = center, pad_mode, onesided

    def forward(self, waveform: Tensor) -> Tensor:
        return spectrogram(waveform, self.pad, self.window, self.n_fft, self.hop_length, self.win_length, self.power,
                           self.normalized, self.center, self.pad_mode, self.onesided)


def _get_sinc_resample_kernel(orig_freq, new_freq, gcd, lowpass_filter_width=6, rolloff=0.99,
                              resampling_method="sinc_interp_hann", beta=None, device=torch.device("cpu"), dtype=None):
    assert resampling_method == "sinc_interp_hann"
    orig_freq = int(orig_freq) // gcd
    new_freq = int(new_freq) // gcd
    base_freq = min(orig_freq, new_freq)
    base_freq *= rolloff
    width = math.ceil(lowpass_filter_width * orig_freq / base_freq)
    idx_dtype = dtype if dtype is not None else torch.float64
    idx = torch.arange(-width, width + orig_freq, dtype=idx_dtype, device=device)[None, None] / orig_freq
    t = torch.arange(0, -new_freq, -1, dtype=dtype, device=device)[:, None, None] / new_freq + idx
    t *= base_freq
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    scale = base_freq / orig_freq
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * scale
    if dtype is None:
        kernels = kernels.to(dtype=torch.float32)
    return kernels, width


def _apply_sinc_resample_kernel(waveform, orig_freq, new_freq, gcd, kernel, width):
    orig_freq = int(orig_freq) // gcd
    new_freq = int(new_freq) // gcd
    shape = waveform.size()
    waveform = waveform.view(-1, shape[-1])
    num_wavs, length = waveform.shape
    waveform = torch.nn.functional.pad(waveform, (width, width + orig_freq))
    resampled = torch.nn.functional.conv1d(waveform[:, None], kernel, stride=orig_freq)
    resampled = resampled.transpose(1, 2).reshape(num_wavs, -1)
    target_length = torch.ceil(torch.as_tensor(new_freq * length / orig_freq)).long()
    resampled = resampled[..., :target_length]
    resampled = resampled.view(shape[:-1] + resampled.shape[-1:])
    return resampled


def resample(waveform, orig_freq, new_freq, lowpass_filter_width=6, rolloff=0.99, resampling_method="sinc_interp_hann",
             beta=None):
    if orig_freq <= 0.0 or new_freq <= 0.0:
        raise ValueError("Original frequency and desired frequecy should be positive")
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(int(orig_freq), int(new_freq))
    kernel, width = _get_sinc_resample_kernel(orig_freq, new_freq, gcd, lowpass_filter_width, rolloff,
                                              resampling_method, beta, waveform.device, waveform.dtype)
    return _apply_sinc_resample_kernel(waveform, orig_freq, new_freq, gcd, kernel, width)


torchaudio = types.SimpleNamespace(
    transforms=types.SimpleNamespace(Spectrogram=Spectrogram),
    functional=types.SimpleNamespace(resample=resample),
)


def reference_feature_extractor_class():
    """transformers' MusicgenMelodyFeatureExtractor, runnable without an importable torchaudio."""
    import importlib

    module = importlib.import_module("transformers.models.musicgen_melody.feature_extraction_musicgen_melody")
    if not hasattr(module, "torchaudio"):
        try:
            import torchaudio as real  # noqa: F401

            module.torchaudio = real
        except (ImportError, OSError):
            module.torchaudio = torchaudio
    return module.MusicgenMelodyFeatureExtractor
