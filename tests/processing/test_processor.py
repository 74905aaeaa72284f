"""zhiyin.processor against transformers' MusicgenProcessor (the oracle): small T5-like tokenizer, real music."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from zhiyin.processing.audio_io import read_audio, resample  # noqa: E402
from zhiyin.processing.processor import AutoProcessor, BatchFeature, MusicgenProcessor  # noqa: E402

from checkpoints import SHARED_AUDIO as AUDIO_DIR  # noqa: E402
from tokenizer_fixture import make_t5_like_tokenizer  # noqa: E402

TEXTS = ["80s pop track with bassy drums and synth", "90s rock song"]


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()


def _make_folder(folder: Path, feature_size: int = 1, padding_side: str | None = "left") -> Path:
    make_t5_like_tokenizer(folder)
    options = {} if padding_side is None else {"padding_side": padding_side}
    extractor = transformers.EncodecFeatureExtractor(
        feature_size=feature_size, sampling_rate=32000, padding_value=0.0, **options
    )
    extractor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mono_folder(tmp_path_factory):
    # the published MusicGen layout: preprocessor_config.json with padding_side "left"
    return _make_folder(tmp_path_factory.mktemp("mono"))


@pytest.fixture(scope="module")
def processors(mono_folder):
    return MusicgenProcessor.from_pretrained(mono_folder), transformers.MusicgenProcessor.from_pretrained(mono_folder)


@pytest.fixture(scope="module")
def clips():
    """Two real music clips of different lengths, 32 kHz mono."""
    trumpet = read_audio(AUDIO_DIR / "sorohanro_solo_trumpet_06.ogg", 32000, 1)[0]
    strings = read_audio(AUDIO_DIR / "brahms_hungarian_dance_5_strings.ogg", 32000, 1)[0]
    return [trumpet[: 32000 * 2], strings[32000 : 32000 + 24000]]


def _assert_same(ours, reference):
    assert list(ours) == list(reference)
    for name in reference:
        a, b = ours[name], reference[name]
        if isinstance(b, torch.Tensor):
            assert isinstance(a, torch.Tensor) and a.dtype == b.dtype, name
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        elif isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b)
        elif isinstance(b, list) and b and isinstance(b[0], np.ndarray):
            assert len(a) == len(b)
            for x, y in zip(a, b):
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y)
        else:
            assert a == b, name


@pytest.mark.parametrize("return_tensors", ["pt", "np", None])
def test_text_matches_reference(processors, return_tensors):
    ours, reference = processors
    out = ours(text=TEXTS, padding=True, return_tensors=return_tensors)
    assert isinstance(out, BatchFeature)
    _assert_same(out, reference(text=TEXTS, padding=True, return_tensors=return_tensors))
    # right padding with <pad> = 0, and every text ends with </s> = 1
    ids, mask = np.asarray(out["input_ids"]), np.asarray(out["attention_mask"])
    assert ids[1, mask[1].sum() - 1] == 1 and ids[1, -1] == 0 and mask[1, -1] == 0
    assert out.input_ids is out["input_ids"]


def test_single_text_and_truncation_match_reference(processors):
    ours, reference = processors
    _assert_same(ours(text=TEXTS[0]), reference(text=TEXTS[0], padding=True))
    _assert_same(
        ours(text=TEXTS, truncation=True, max_length=6, return_tensors="pt"),
        reference(text=TEXTS, padding=True, truncation=True, max_length=6, return_tensors="pt"),
    )
    _assert_same(
        ours(text=TEXTS, padding="max_length", max_length=30, return_tensors="np"),
        reference(text=TEXTS, padding="max_length", max_length=30, return_tensors="np"),
    )


@pytest.mark.parametrize("return_tensors", ["pt", "np", None])
def test_audio_matches_reference(processors, clips, return_tensors):
    ours, reference = processors
    out = ours(audio=clips, sampling_rate=32000, return_tensors=return_tensors)
    _assert_same(out, reference(audio=clips, sampling_rate=32000, return_tensors=return_tensors))
    # left padding: the shorter clip starts with zeros
    mask = np.asarray(out["padding_mask"])
    assert mask.shape == (2, len(clips[0])) and mask[1, 0] == 0 and mask[1, -1] == 1


def test_audio_as_torch_and_single_clip(processors, clips):
    ours, reference = processors
    _assert_same(
        ours(audio=[torch.from_numpy(c) for c in clips], sampling_rate=32000, return_tensors="pt"),
        reference(audio=clips, sampling_rate=32000, return_tensors="pt"),
    )
    _assert_same(
        ours(audio=clips[1], sampling_rate=32000, return_tensors="pt"),
        reference(audio=clips[1], sampling_rate=32000, return_tensors="pt"),
    )
    # as in transformers, a positional argument that is not text is audio
    _assert_same(
        ours(clips[1], sampling_rate=32000, return_tensors="np"),
        reference(audio=clips[1], sampling_rate=32000, return_tensors="np"),
    )


def test_text_and_audio_together(processors, clips):
    ours, reference = processors
    _assert_same(
        ours(text=TEXTS, audio=clips, sampling_rate=32000, padding=True, return_tensors="pt"),
        reference(text=TEXTS, audio=clips, sampling_rate=32000, padding=True, return_tensors="pt"),
    )


def test_right_padding_extractor_matches_reference(tmp_path, clips):
    folder = _make_folder(tmp_path, padding_side=None)  # EncodecFeatureExtractor's own default: right
    ours = MusicgenProcessor.from_pretrained(folder)
    reference = transformers.MusicgenProcessor.from_pretrained(folder)
    assert ours.feature_extractor.padding_side == "right"
    _assert_same(
        ours(audio=clips, sampling_rate=32000, return_tensors="pt"),
        reference(audio=clips, sampling_rate=32000, return_tensors="pt"),
    )


def test_stereo_matches_reference(tmp_path, clips):
    folder = _make_folder(tmp_path, feature_size=2)
    ours = MusicgenProcessor.from_pretrained(folder)
    reference = transformers.MusicgenProcessor.from_pretrained(folder)
    n = len(clips[1])
    stereo = [np.stack([clips[0][:n], clips[1]]), np.stack([clips[1][: n // 2], clips[0][: n // 2]])]
    for return_tensors in ("pt", "np"):
        out = ours(audio=stereo, sampling_rate=32000, return_tensors=return_tensors)
        _assert_same(out, reference(audio=stereo, sampling_rate=32000, return_tensors=return_tensors))
        assert tuple(out["input_values"].shape) == (2, 2, n)
    _assert_same(
        ours(audio=stereo[0], sampling_rate=32000, return_tensors="pt"),
        reference(audio=stereo[0], sampling_rate=32000, return_tensors="pt"),
    )
    # a mono clip is copied to both channels
    _assert_same(
        ours(audio=clips[0], sampling_rate=32000, return_tensors="pt"),
        reference(audio=np.stack([clips[0], clips[0]]), sampling_rate=32000, return_tensors="pt"),
    )


def test_batch_decode_audio_matches_reference(processors, clips):
    ours, reference = processors
    inputs = ours(audio=clips, sampling_rate=32000, return_tensors="pt")
    extra = 1000
    generated = torch.randn(2, 1, inputs["padding_mask"].shape[-1] + extra)
    expected = reference.batch_decode(generated, padding_mask=inputs["padding_mask"])
    for decoded in (
        ours.batch_decode(generated, padding_mask=inputs["padding_mask"]),
        ours.batch_decode(audio=generated, padding_mask=inputs["padding_mask"]),
        ours.decode_audio(generated.numpy(), inputs["padding_mask"].numpy()),
    ):
        assert [d.shape for d in decoded] == [e.shape for e in expected]
        assert decoded[1].shape == (1, len(clips[1]) + extra)
        for d, e in zip(decoded, expected):
            np.testing.assert_allclose(d, e, rtol=0, atol=0)

    without_mask = ours.batch_decode(generated)
    for d, e in zip(without_mask, reference.batch_decode(generated)):
        np.testing.assert_array_equal(d, e)
    with pytest.raises(ValueError, match="longer than the audio"):
        ours.batch_decode(generated[..., :100], padding_mask=inputs["padding_mask"])


def test_batch_decode_text_matches_reference_tokenizer(processors):
    ours, reference = processors
    ids = ours(text=TEXTS, return_tensors="pt")["input_ids"]
    for skip in (False, True):
        expected = reference.tokenizer.batch_decode(ids, skip_special_tokens=skip)
        assert ours.batch_decode(ids, skip_special_tokens=skip) == expected
        assert ours.batch_decode(ids.tolist(), skip_special_tokens=skip) == expected
        expected_one = reference.tokenizer.decode(ids[0], skip_special_tokens=skip)
        assert ours.decode(ids[0], skip_special_tokens=skip) == expected_one


def test_save_pretrained_round_trip(processors, clips, tmp_path):
    ours, _ = processors
    written = ours.save_pretrained(tmp_path / "saved")
    names = sorted(Path(p).name for p in written)
    assert names == ["preprocessor_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tmp_path / "saved" / "preprocessor_config.json").read_text())
    assert config["feature_extractor_type"] == "EncodecFeatureExtractor"
    assert (config["sampling_rate"], config["feature_size"], config["padding_side"]) == (32000, 1, "left")

    again = MusicgenProcessor.from_pretrained(tmp_path / "saved")
    reference = transformers.MusicgenProcessor.from_pretrained(tmp_path / "saved")
    kwargs = dict(text=TEXTS, audio=clips, sampling_rate=32000, padding=True, return_tensors="pt")
    _assert_same(again(**kwargs), reference(**kwargs))
    _assert_same(again(**kwargs), ours(**kwargs))


def test_reads_transformers_processor_config_layout(processors, clips, tmp_path):
    _, reference = processors
    reference.save_pretrained(tmp_path)  # processor_config.json with a nested "feature_extractor"
    assert not (tmp_path / "preprocessor_config.json").exists()
    ours = MusicgenProcessor.from_pretrained(tmp_path)
    assert ours.feature_extractor.sampling_rate == 32000 and ours.feature_extractor.padding_side == "left"
    kwargs = dict(audio=clips, sampling_rate=32000, return_tensors="np")
    _assert_same(ours(**kwargs), reference(**kwargs))


def test_batch_feature_to_moves_only_float_tensors_for_a_dtype(processors, clips):
    ours, _ = processors
    out = ours(text=TEXTS, audio=clips, sampling_rate=32000, return_tensors="pt").to(torch.float16)
    assert out.input_values.dtype == torch.float16 and out.input_ids.dtype == torch.long
    assert out.to("cpu").padding_mask.device.type == "cpu"
    with pytest.raises(AttributeError, match="no input named"):
        out.decoder_input_ids


def test_other_sampling_rates_are_resampled(processors, clips):
    """The reference refuses audio at another rate; ours resamples it (soxr, as read_audio does), so the seed's
    example (a 22.05 kHz data set sample with its own rate) runs as written."""
    ours, reference = processors
    with pytest.raises(ValueError):
        reference(audio=clips, sampling_rate=22050)
    got = ours(audio=clips, sampling_rate=22050, return_tensors="pt")
    resampled = [resample(clip, 22050, 32000) for clip in clips]
    assert got["input_values"].shape[-1] == max(len(c) for c in resampled) == round(len(clips[0]) * 32000 / 22050)
    _assert_same(got, reference(audio=resampled, sampling_rate=32000, return_tensors="pt"))
    with pytest.raises(ValueError, match="sampling_rate must be a positive"):
        ours(audio=clips, sampling_rate=0)


def test_missing_sampling_rate_warns(processors, clips, caplog):
    ours, _ = processors
    with caplog.at_level(logging.WARNING, logger="zhiyin.processor"):
        ours(audio=clips)
    assert "sampling_rate" in caplog.text


def test_mono_extractor_mixes_channels_down(processors, clips):
    ours, reference = processors
    n = len(clips[1])
    stereo = np.stack([clips[0][:n], clips[1]])
    _assert_same(
        ours(audio=stereo, sampling_rate=32000, return_tensors="pt"),
        reference(audio=stereo.mean(axis=0), sampling_rate=32000, return_tensors="pt"),
    )
    with pytest.raises(ValueError, match="transpose"):  # [samples, channels] is not taken for many channels
        ours(audio=stereo.T, sampling_rate=32000)


def test_only_spiece_model_asks_for_tokenizer_json(mono_folder, tmp_path):
    for name in ("tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"):
        shutil.copy(mono_folder / name, tmp_path / name)
    (tmp_path / "spiece.model").write_bytes(b"\x00")
    with pytest.raises(FileNotFoundError, match="spiece.model but no tokenizer.json"):
        MusicgenProcessor.from_pretrained(tmp_path)


def test_missing_folder_and_missing_audio_settings(mono_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.* does not exist"):
        AutoProcessor.from_pretrained(tmp_path / "nowhere")
    shutil.copy(mono_folder / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        MusicgenProcessor.from_pretrained(tmp_path)


def test_nothing_to_process(processors):
    ours, _ = processors
    with pytest.raises(ValueError, match="text=..., audio=..."):
        ours()


def test_empty_text_list_is_named(processors, caplog):
    ours, _ = processors
    with caplog.at_level(logging.WARNING, logger="zhiyin.processor"):
        with pytest.raises(ValueError, match="text is an empty list"):
            ours(text=[])
    assert caplog.text == ""  # no word about audio that was never given


def test_offline_hub_id_says_what_the_model_loader_says(tmp_path, monkeypatch):
    """Offline and not cached: the processor's message is the model's (the hub is unreachable, how to fix it)."""
    from huggingface_hub import constants

    from zhiyin import MusicgenForConditionalGeneration

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    messages = []
    for load in (AutoProcessor.from_pretrained, MusicgenForConditionalGeneration.from_pretrained):
        with pytest.raises(FileNotFoundError) as error:
            load("facebook/musicgen-small", cache_dir=tmp_path)
        messages.append(str(error.value).split(" is not in the local cache")[0].rsplit(" and ", 1)[0])
    assert "unreachable" in messages[0] and messages[0] == messages[1]
