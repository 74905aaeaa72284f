"""zhiyin.encodec against the transformers EncodecModel (the test oracle), on random weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from zhiyin.config import EncodecConfig  # noqa: E402
from zhiyin.loading.weights import fold_weight_norm  # noqa: E402
from zhiyin.modules.encodec import IGNORED_CHECKPOINT_SUFFIXES, ChunkedDecode, EncodecModel, reach  # noqa: E402
from zhiyin.random_checkpoint import ENCODEC_32KHZ  # noqa: E402

from checkpoints import SHARED_AUDIO as AUDIO_DIR  # noqa: E402
from nearest import assert_same_codes  # noqa: E402

TINY = dict(
    sampling_rate=32_000,
    upsampling_ratios=[8, 5, 4, 4],
    num_filters=8,
    hidden_size=16,
    codebook_size=64,
    target_bandwidths=[2.2],
    use_causal_conv=False,
    use_conv_shortcut=False,
)
CAUSAL_24K: dict = {}  # the transformers defaults: 24 kHz, causal, conv shortcut, 32 codebooks of 1024
# the rarer options: time_group_norm, trim_right_ratio, stereo, 2 residual layers, zero padding
VARIANTS = dict(
    TINY,
    use_causal_conv=True,
    trim_right_ratio=0.5,
    norm_type="time_group_norm",
    num_residual_layers=2,
    dilation_growth_rate=3,
    audio_channels=2,
    pad_mode="constant",
    use_conv_shortcut=True,
)
MUSICGEN_32K = ENCODEC_32KHZ  # the published checkpoints' codec


def load_music(seconds: float, sr: int = 32_000, offset_s: float = 1.0) -> torch.Tensor:
    """About `seconds` of real music, mono, resampled to `sr`: [T]."""
    sf = pytest.importorskip("soundfile")
    soxr = pytest.importorskip("soxr")
    files = sorted(AUDIO_DIR.glob("*.ogg"))
    if not files:
        pytest.skip(f"no .ogg files in {AUDIO_DIR}")
    data, file_sr = sf.read(str(files[0]), dtype="float32", always_2d=True)
    data = data.mean(axis=1)
    data = data[int(offset_s * file_sr) : int((offset_s + seconds) * file_sr) + 1]
    data = soxr.resample(data, file_sr, sr).astype(np.float32)
    return torch.from_numpy(data[: int(seconds * sr)].copy())


def build_pair(kwargs: dict, probe: torch.Tensor, seed: int = 0):
    """A random transformers EncodecModel and ours loaded from its (folded) checkpoint.

    The reference initialises the codebooks to zeros, so we fill them with random vectors at the scale
    of the encoder's latents on `probe` (each residual codebook a bit smaller), to get meaningful codes.
    """
    torch.manual_seed(seed)
    ref = transformers.EncodecModel(transformers.EncodecConfig(**kwargs)).eval()
    with torch.no_grad():
        latents = ref.encoder(probe.reshape(1, ref.config.audio_channels, -1))  # [1, D, frames]
        mean, std = latents.mean(dim=(0, 2)), latents.std(dim=(0, 2))
        for k, layer in enumerate(ref.quantizer.layers):
            embed = layer.codebook.embed
            embed.copy_(torch.randn_like(embed) * std * 0.5**k + (mean if k == 0 else 0))
    ours = EncodecModel(EncodecConfig.from_dict(kwargs)).eval()
    missing, unexpected = ours.load_state_dict(fold_weight_norm(ref.state_dict()), strict=False)
    assert missing == []
    assert unexpected and all(k.endswith(IGNORED_CHECKPOINT_SUFFIXES) for k in unexpected)
    return ref, ours


def ref_encode(ref, x, mask=None) -> torch.Tensor:
    out = ref.encode(x, mask)
    assert out.audio_codes.shape[0] == 1 and out.audio_scales == [None]
    return out.audio_codes[0]  # [B, K, frames]


def ref_decode(ref, codes) -> torch.Tensor:
    return ref.decode(codes[None], [None]).audio_values


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.fixture(scope="module")
def music_2s() -> torch.Tensor:
    return load_music(2.0)


def test_state_dict_keys_both_spellings():
    torch.manual_seed(0)
    ref = transformers.EncodecModel(transformers.EncodecConfig(**TINY))
    new = ref.state_dict()
    old = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in new.items()
    }
    assert any(k.endswith(".weight_g") for k in old)
    folded_new, folded_old = fold_weight_norm(new), fold_weight_norm(old)
    assert folded_new.keys() == folded_old.keys()
    for k in folded_new:
        torch.testing.assert_close(folded_new[k], folded_old[k], rtol=0, atol=0)

    ours = EncodecModel(EncodecConfig.from_dict(TINY))
    expected = {k for k in folded_new if not k.endswith(IGNORED_CHECKPOINT_SUFFIXES)}
    assert set(ours.state_dict()) == expected
    for sd in (folded_new, folded_old):
        missing, unexpected = ours.load_state_dict(sd, strict=False)
        assert missing == []
        assert sorted(unexpected) == sorted(set(sd) - expected)
    for key in (
        "encoder.layers.0.conv.weight",
        "encoder.layers.1.block.1.conv.weight",
        "encoder.layers.13.lstm.weight_ih_l0",
        "quantizer.layers.0.codebook.embed",
    ):
        assert key in expected


@pytest.mark.parametrize("kwargs", [TINY, CAUSAL_24K, VARIANTS], ids=["tiny", "causal_24k", "variants"])
@torch.inference_mode()
def test_matches_reference_random_audio(kwargs):
    cfg = transformers.EncodecConfig(**kwargs)
    torch.manual_seed(1)
    x = 0.3 * torch.randn(2, cfg.audio_channels, cfg.sampling_rate // 2 + 123)
    ref, ours = build_pair(kwargs, x[0])

    codes = ours.encode(x)
    expected = ref_encode(ref, x)
    assert codes.dtype == torch.long
    assert codes.shape == (
        2,
        ref.quantizer.get_num_quantizers_for_bandwidth(cfg.target_bandwidths[0]),
        math.ceil(x.shape[-1] / cfg.hop_length),
    )
    assert_same_codes(ours, x, codes, expected)
    assert len(codes.unique()) > 4  # the codebooks are actually used

    audio = ours.decode(expected)
    expected_audio = ref_decode(ref, expected)
    assert audio.shape == expected_audio.shape == (2, cfg.audio_channels, codes.shape[-1] * cfg.hop_length)
    assert rel_err(audio, expected_audio) < 1e-4

    # decode any number of codebooks, not only the encode bandwidth's
    random_codes = torch.randint(0, cfg.codebook_size, (2, len(ref.quantizer.layers), 7))
    assert rel_err(ours.decode(random_codes), ref_decode(ref, random_codes)) < 1e-4


@torch.inference_mode()
def test_frames_and_short_inputs():
    """ceil(T / 640) frames, including inputs shorter than the reflect padding (the small-input workaround)."""
    x = 0.3 * torch.randn(1, 1, 2000)
    ref, ours = build_pair(TINY, x[0, 0])
    for length in (1, 5, 639, 640, 641, 1280, 1999):
        codes = ours.encode(x[..., :length])
        assert codes.shape[-1] == math.ceil(length / 640)
        assert_same_codes(ours, x[..., :length], codes, ref_encode(ref, x[..., :length]))


@torch.inference_mode()
def test_padded_batch_with_mask():
    torch.manual_seed(2)
    lengths = (3000, 1900)
    x = torch.zeros(2, 1, max(lengths))
    mask = torch.zeros(2, max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, 0, :n] = 0.3 * torch.randn(n)
        mask[i, :n] = 1
    x[1, 0, lengths[1] :] = 0.5  # garbage in the padding: the mask must zero it
    ref, ours = build_pair(TINY, x[0, 0])

    codes = ours.encode(x, mask)
    assert_same_codes(ours, x, codes, ref_encode(ref, x, mask), mask)
    assert codes.shape[-1] == math.ceil(max(lengths) / 640)  # padding is not trimmed from the codes
    clean = x.clone()
    clean[1, 0, lengths[1] :] = 0
    assert torch.equal(codes, ours.encode(clean))  # masking == zeroing the padded samples
    assert not torch.equal(codes, ours.encode(x))
    # a [B, C, T] mask works the same
    assert torch.equal(codes, ours.encode(x, mask[:, None, :]))


@torch.inference_mode()
def test_musicgen_32k_on_real_music(music_2s):
    x = music_2s.reshape(1, 1, -1)
    ref, ours = build_pair(MUSICGEN_32K, music_2s)
    codes = ours.encode(x)
    expected = ref_encode(ref, x)
    assert codes.shape == (1, 4, math.ceil(x.shape[-1] / 640)) == (1, 4, 100)
    assert_same_codes(ours, x, codes, expected)

    audio = ours.decode(expected)
    expected_audio = ref_decode(ref, expected)
    assert audio.shape == expected_audio.shape == (1, 1, 64_000)
    assert rel_err(audio, expected_audio) < 1e-4


def decode_in_chunks(codec: EncodecModel, blocks, ends: list[int]) -> list[torch.Tensor]:
    """ChunkedDecode fed `blocks` one by one, each chunk (up to each of `ends`) decoded as soon as it is ready."""
    decode, ends, chunks = ChunkedDecode(codec), list(ends), []
    for block in blocks:
        decode.add(block)
        while ends and decode.ready(ends[0], final=False):
            chunks.append(decode.decode(ends.pop(0)))
    chunks += [decode.decode(end) for end in ends]  # the codes are complete
    return chunks


@pytest.mark.parametrize("kwargs", [MUSICGEN_32K, CAUSAL_24K], ids=["musicgen_32k", "causal_24k"])
@torch.inference_mode()
def test_chunked_decode_is_the_one_piece_decode(kwargs):
    """Chunks of any size, the LSTM's state carried between them: joined, the one-piece decode up to float rounding
    (and the reference's); the same chunk ends give the same bits however the codes arrived."""
    cfg = transformers.EncodecConfig(**kwargs)
    ref, ours = build_pair(kwargs, 0.3 * torch.randn(cfg.sampling_rate // 2))
    codes = torch.randint(0, cfg.codebook_size, (1, 4, 240), generator=torch.Generator().manual_seed(3))
    whole, hop = ours.decode(codes), cfg.hop_length
    assert rel_err(whole, ref_decode(ref, codes)) < 1e-4
    blocks = torch.split(codes, [1, 6, 50, 2, 100, 1, 80], dim=-1)
    for ends in ([1, 5, 21, 85, 185, 240], [7, 8, 9, 60, 239, 240], [240]):
        chunks = decode_in_chunks(ours, [codes], ends)
        assert [c.shape[-1] // hop for c in chunks] == [b - a for a, b in zip([0, *ends], ends)]
        assert rel_err(torch.cat(chunks, dim=-1), whole) < 1e-5
        arriving = decode_in_chunks(ours, blocks, ends)
        assert all(torch.equal(a, b) for a, b in zip(chunks, arriving))
    decode = ChunkedDecode(ours)
    decode.add(codes[..., :30])
    assert (decode.head, decode.body) == (((3, 3), (1, 1)) if kwargs is MUSICGEN_32K else ((6, 6), (2, 1)))
    assert decode.lookahead == decode.head[1] + decode.body[1]
    assert decode.ready(30 - decode.lookahead, final=False) and not decode.ready(31 - decode.lookahead, final=False)
    assert decode.ready(30, final=True) and not decode.ready(31, final=True)
    decode.decode(20)
    with pytest.raises(ValueError, match="cannot decode frames 20..30 of 30"):
        decode.decode(31)
    assert decode.codes.shape[-1] < 30  # the frames no later chunk reads are gone


@torch.inference_mode()
def test_reach_is_what_the_layers_read():
    """reach() by interval arithmetic == the samples a change in one frame of the LSTM's output moves."""
    _, ours = build_pair(MUSICGEN_32K, 0.3 * torch.randn(16000))
    body, hop = ours.decoder.layers[2:], 640
    x = torch.randn(1, body[1].conv.in_channels, 12)

    def run(x):
        for layer in body:
            x = layer(x)
        return x

    moved = (run(x.clone()) - run(x.clone().index_add_(2, torch.tensor([6]), torch.ones(1, x.shape[1], 1)))).abs()
    samples = moved[0, 0].nonzero().flatten()
    before, after = 6 * hop - int(samples.min()), int(samples.max()) - (7 * hop - 1)
    assert 0 < before < hop and 0 < after < hop  # 482 and 466 samples: under a frame either way
    assert reach(body, hop) == (1, 1)


def test_chunked_decode_refuses_a_codec_normalized_over_time():
    with pytest.raises(NotImplementedError, match="time_group_norm"):
        ChunkedDecode(EncodecModel(EncodecConfig.from_dict(VARIANTS)))


@torch.inference_mode()
def test_bfloat16_follows_weights():
    torch.manual_seed(0)
    x = 0.3 * torch.randn(1, 1, 6400)
    ref, ours = build_pair(TINY, x[0, 0])
    codes = ours.encode(x)
    audio32, latents32, reference32 = ours.decode(codes), ours.encoder(x), ref.encoder(x)
    ours = ours.to(torch.bfloat16)
    audio16 = ours.decode(codes)
    assert audio16.dtype == torch.bfloat16
    assert rel_err(audio16, audio32) < 0.05
    codes16 = ours.encode(x)  # float32 input is cast to the weights' dtype
    assert codes16.shape == codes.shape and codes16.dtype == torch.long
    # this small random encoder drifts far in bfloat16 (its latents ~19% off, more than they lie apart, so the codes
    # differ): ours drifts as the reference does in bfloat16, no further
    drift = rel_err(ours.encoder(x.bfloat16()).float(), latents32)
    reference_drift = rel_err(ref.to(torch.bfloat16).encoder(x.bfloat16()).float(), reference32)
    assert drift <= 1.1 * reference_drift


def test_normalize_not_supported():
    cfg = EncodecConfig.from_dict({**TINY, "normalize": True})
    with pytest.raises(NotImplementedError):
        EncodecModel(cfg).encode(torch.zeros(1, 1, 640))


@pytest.mark.parametrize("c_out, kernel, dilation", [(1, 7, 1), (2, 7, 1), (1, 3, 2), (2, 1, 1)])
def test_few_output_channels_conv_is_conv1d(c_out, kernel, dilation):
    from zhiyin.modules.encodec import _few_outputs_conv

    x, weight, bias = torch.randn(2, 16, 300), torch.randn(c_out, 16, kernel), torch.randn(c_out)
    pad = (kernel - 1) * dilation // 2
    for b in (bias, None):
        want = torch.nn.functional.conv1d(x, weight, b, padding=pad, dilation=dilation)
        got = _few_outputs_conv(x, weight, b, pad, dilation)
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@torch.inference_mode()
def test_tie_aware_comparison_still_refuses_wrong_codes():
    """assert_same_codes forgives a pick between tied entries, nothing else: a code moved to another entry fails."""
    torch.manual_seed(3)
    x = 0.3 * torch.randn(1, 1, 3200)
    _, ours = build_pair(TINY, x[0, 0])
    codes = ours.encode(x)
    assert_same_codes(ours, x, codes, codes.clone())
    wrong = codes.clone()
    wrong[0, 1, 2] = (wrong[0, 1, 2] + 1) % TINY["codebook_size"]
    with pytest.raises(AssertionError, match="frame 2 codebook 1"):
        assert_same_codes(ours, x, codes, wrong)
