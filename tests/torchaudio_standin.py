"""What transformers' melody feature extractor needs of torchaudio, for the tests' oracle, written from the
documented definitions (torchaudio has no CPU wheel that loads beside this torch; the real one is used when it
imports). The extractor calls exactly two things:

- `transforms.Spectrogram(n_fft=N, win_length=N, hop_length=H, power=2, center=True, pad=0, normalized=True)`:
  frames of the signal reflect-padded by N/2 at both ends, every H samples, times a periodic Hann window of N,
  their one-sided DFT divided by the window's norm sqrt(sum w^2) ("window" normalisation), squared in magnitude.
  [..., T] -> [..., N/2 + 1, T // H + 1]
- `functional.resample(x, orig, new, rolloff=0.945, lowpass_filter_width=24)`, for audio given at another rate:
  band-limited interpolation with a Hann-windowed sinc ("sinc_interp_hann"). With orig and new divided by their gcd
  and the cutoff base = min(orig, new) * rolloff, output sample n is
      y[n] = sum_k x[k] * (base / orig) * sinc(t) * cos^2(pi t / (2 W)),   t = base * (k / orig - n / new),
  over |t| <= W (W = lowpass_filter_width, sinc(t) = sin(pi t) / (pi t)), x zero outside the signal;
  ceil(T * new / orig) samples. Evaluated here sample by sample in float64, not as torchaudio's polyphase
  convolution, so it also checks zhiyin's own resampler (zhiyin.chroma.resample) independently.

Any other argument raises NotImplementedError rather than computing something else.
"""

from __future__ import annotations

import math
import types

import numpy as np
import torch
from torch import Tensor


class Spectrogram:
    def __init__(
        self,
        n_fft: int,
        win_length: int | None = None,
        hop_length: int | None = None,
        pad: int = 0,
        power: float = 2.0,
        normalized: bool | str = False,
        center: bool = True,
        **unsupported,
    ):
        given = dict(win_length=win_length, pad=pad, power=power, normalized=normalized, center=center, **unsupported)
        wanted = dict(win_length=n_fft, pad=0, power=2, normalized=True, center=True)
        if given != wanted:
            raise NotImplementedError(f"this stand-in computes Spectrogram({wanted}) only, got {given}")
        self.n_fft, self.hop_length = n_fft, hop_length if hop_length is not None else n_fft // 2
        self.window = torch.hann_window(n_fft)  # periodic, torchaudio's default window_fn

    def __call__(self, waveform: Tensor) -> Tensor:
        shape = waveform.shape
        spec = torch.stft(
            waveform.reshape(-1, shape[-1]),
            self.n_fft,
            hop_length=self.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        spec = spec / self.window.pow(2).sum().sqrt()
        return spec.abs().pow(2).reshape(*shape[:-1], *spec.shape[-2:])


def resample(
    waveform: Tensor,
    orig_freq: int,
    new_freq: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
    resampling_method: str = "sinc_interp_hann",
    beta: float | None = None,
) -> Tensor:
    if resampling_method != "sinc_interp_hann" or beta is not None:
        raise NotImplementedError(f"this stand-in resamples with sinc_interp_hann only, not {resampling_method}")
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // gcd, int(new_freq) // gcd
    base, W = min(orig, new) * rolloff, lowpass_filter_width
    x = waveform.reshape(-1, waveform.shape[-1]).double().numpy()
    T = x.shape[-1]
    outputs = math.ceil(T * new / orig)
    reach = math.ceil(W * orig / base)  # input samples on each side of an output's position that the window reaches
    y = np.zeros((x.shape[0], outputs))
    for start in range(0, outputs, 4096):  # a block of outputs at a time
        n = np.arange(start, min(start + 4096, outputs))
        centre = np.floor(n * orig / new).astype(np.int64)
        k = centre[:, None] + np.arange(-reach, reach + 2)[None]  # [n, taps]
        t = base * (k / orig - n[:, None] / new)
        taps = np.where(np.abs(t) <= W, (base / orig) * np.sinc(t) * np.cos(np.pi * t / (2 * W)) ** 2, 0.0)
        inside = (k >= 0) & (k < T)
        samples = np.where(inside[None], x[:, np.clip(k, 0, T - 1)], 0.0)  # [batch, n, taps]
        y[:, n] = (samples * taps[None]).sum(-1)
    return torch.from_numpy(y).to(waveform.dtype).reshape(*waveform.shape[:-1], outputs)


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
