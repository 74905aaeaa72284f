"""The oracle's torchaudio stand-in (torchaudio_standin.py) held to the definitions it is written from, without
zhiyin's chroma code: a pure tone's energy lands in its bin with the magnitude the window predicts, Parseval's
relation holds for noise, and a band-limited tone resamples to itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchaudio_standin import Spectrogram, resample

N, HOP = 4096, 1024  # the melody extractor's proportions (16384 / 4096), smaller


def spectrogram() -> Spectrogram:
    return Spectrogram(n_fft=N, win_length=N, hop_length=HOP, power=2, center=True, pad=0, normalized=True)


def test_a_pure_tone_lands_in_its_bin_with_the_predicted_energy():
    """A tone of amplitude A on bin k, under a periodic Hann window normalised by its norm: |X_k|^2 = A^2 N / 6,
    its neighbours A^2 N / 24 (sum w = N / 2, sum w^2 = 3N / 8), nothing two bins away."""
    A, k = 0.5, 200
    tone = A * torch.cos(2 * torch.pi * k * torch.arange(8 * N) / N)
    power = spectrogram()(tone[None])[0]  # [N/2 + 1, frames]
    assert power.shape == (N // 2 + 1, 8 * N // HOP + 1)
    middle = power[:, 4:-4]  # frames that the reflect padding at the ends does not reach
    expected = A**2 * N / 6
    torch.testing.assert_close(middle[k], torch.full_like(middle[k], expected), rtol=1e-4, atol=0)
    for neighbour in (k - 1, k + 1):
        torch.testing.assert_close(middle[neighbour], torch.full_like(middle[k], expected / 4), rtol=1e-3, atol=0)
    others = torch.cat([middle[: k - 1], middle[k + 2 :]])
    assert others.max() < 1e-6 * expected


def test_parseval_holds_for_noise():
    """Per frame: the one-sided bins, doubled where the two-sided spectrum has a mirror, sum to N times the energy
    of the windowed frame over the window's energy."""
    x = torch.randn(2, 6 * N, generator=torch.Generator().manual_seed(0))
    power = spectrogram()(x).double()  # [2, N/2 + 1, frames]
    padded = torch.nn.functional.pad(x[:, None], (N // 2, N // 2), mode="reflect")[:, 0].double()
    window = torch.hann_window(N, dtype=torch.float64)
    for frame in range(power.shape[-1]):
        segment = padded[:, frame * HOP : frame * HOP + N] * window
        want = N * segment.pow(2).sum(-1) / window.pow(2).sum()
        p = power[..., frame]
        got = p[:, 0] + p[:, -1] + 2 * p[:, 1:-1].sum(-1)
        torch.testing.assert_close(got, want, rtol=2e-5, atol=0)


def test_a_band_limited_tone_resamples_to_itself():
    seconds, f = 1.0, 1234.5

    def tone(rate):  # phases in float64: float32 would be off by ~5e-4 at 7,000 radians
        return torch.sin(2 * torch.pi * f * torch.arange(int(rate * seconds), dtype=torch.float64) / rate).float()

    at22 = tone(22050)
    at32 = resample(at22[None], 22050, 32000, lowpass_filter_width=24, rolloff=0.945)[0]
    assert at32.shape == (32000,) and at32.dtype == torch.float32
    exact = tone(32000)
    inner = slice(1000, -1000)  # the windowed sinc reaches ~25 samples past each end: the edges are cut there
    assert (at32[inner] - exact[inner]).abs().max() < 1e-4
    assert torch.equal(resample(at22, 32000, 32000), at22)


def test_other_arguments_are_refused():
    with pytest.raises(NotImplementedError, match="Spectrogram"):
        Spectrogram(n_fft=N, power=1)
    with pytest.raises(NotImplementedError, match="sinc_interp_hann"):
        resample(torch.zeros(100), 22050, 32000, resampling_method="sinc_interp_kaiser")


def test_zhiyins_resampler_computes_the_same_definition(shared_audio):
    """The melody extractor's own resampler (a polyphase convolution in float32) against the definition."""
    import soundfile

    from zhiyin.processing.chroma import resample as ours

    data, rate = soundfile.read(shared_audio / "kevin_macleod_sugar_plum_fairy.ogg", dtype="float32", frames=3 * 22050)
    clip = torch.from_numpy(np.ascontiguousarray(data if data.ndim == 1 else data.mean(1)))
    want = resample(clip, rate, 32000, lowpass_filter_width=24, rolloff=0.945)
    got = ours(clip, rate, 32000)
    assert got.shape == want.shape
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4
