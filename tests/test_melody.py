"""Melody models (facebook/musicgen-melody and kin) against the transformers oracle: chroma features on real music,
the melody processor, logits, greedy and sampled tokens (text + melody, text only, melody only, unconditional),
save_pretrained, the CLI's --melody, and clear errors.

transformers' melody feature extractor needs torchaudio, which has no CPU wheel for this torch: the oracle runs it
on our stand-in for the two functions it calls (tests/torchaudio_standin.py, written from their definitions).
"""

from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import torch

from zhiyin import (
    AutoProcessor,
    MusicgenForConditionalGeneration,
    MusicgenMelodyFeatureExtractor,
    MusicgenMelodyForConditionalGeneration,
    MusicgenMelodyProcessor,
    MusicgenProcessor,
)
from zhiyin.cli import main

from checkpoints import SHARED_AUDIO, _configs
from conftest import TEXTS, relative_error
from nearest import assert_same_chroma
from tokenizer_fixture import make_t5_like_tokenizer
from torchaudio_standin import reference_feature_extractor_class

MUSIC = "kevin_macleod_sugar_plum_fairy.ogg"  # 22.05 kHz mono, 2 min
CHROMA_LENGTH = 30  # frames the tiny model's prefix holds (the published 235 = 30 s); real melodies here are longer


def make_melody_checkpoint(folder: Path, seed: int = 0, channels: int = 1):
    """A random tiny transformers MusicgenMelodyForConditionalGeneration saved with tokenizer and feature extractor;
    channels=2: as musicgen-stereo-melody, 2 x 4 codebooks (L1, R1, L2, R2, ...) over the mono EnCodec."""
    from transformers import MusicgenMelodyConfig, MusicgenMelodyDecoderConfig
    from transformers import MusicgenMelodyForConditionalGeneration as Reference

    folder.mkdir(parents=True, exist_ok=True)
    t5, codec, mono = _configs("tiny", make_t5_like_tokenizer(folder))
    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "ffn_dim",
        "pad_token_id",
        "bos_token_id",
        "decoder_start_token_id",
    )
    decoder = MusicgenMelodyDecoderConfig(
        **{k: getattr(mono, k) for k in keys}, num_codebooks=4 * channels, audio_channels=channels
    )
    torch.manual_seed(seed)
    config = MusicgenMelodyConfig(text_encoder=t5, audio_encoder=codec, decoder=decoder, chroma_length=CHROMA_LENGTH)
    model = Reference(config)
    with torch.no_grad():
        for layer in model.audio_encoder.quantizer.layers:  # transformers leaves the codebooks at zero
            layer.codebook.embed.normal_()
        # with transformers' init (std 0.02) the tiny decoder ignores its conditioning; make it listen
        for name, p in model.named_parameters():
            if name.startswith(("decoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj.")) and p.dim() == 2:
                p.normal_(0, 1.0 if "embed_tokens" in name else 0.3)
    g = model.generation_config
    g.do_sample, g.guidance_scale, g.max_length = True, 3.0, 1500
    g.pad_token_id = g.bos_token_id = g.decoder_start_token_id = mono.pad_token_id
    model.save_pretrained(folder)
    reference_feature_extractor_class()().save_pretrained(folder)
    return model.eval()


@pytest.fixture(scope="module")
def music():
    """The first 40 s of real music, mono float32: (at 22.05 kHz as stored, resampled to 32 kHz)."""
    data, rate = soundfile.read(SHARED_AUDIO / MUSIC, dtype="float32", frames=40 * 22050)
    assert rate == 22050
    return data, soxr.resample(data, rate, 32000).astype(np.float32)


@pytest.fixture(scope="module")
def melody(tmp_path_factory):
    """(folder, reference model recording the codes it decodes, ours, reference processor)."""
    from transformers import AutoTokenizer
    from transformers.models.musicgen_melody.processing_musicgen_melody import MusicgenMelodyProcessor as RefProcessor

    folder = tmp_path_factory.mktemp("melody")
    reference = make_melody_checkpoint(folder)
    seen, decode = {}, reference.audio_encoder.decode

    def recording_decode(codes, *args, **kwargs):
        seen["codes"] = codes[0]  # [B, K, frames]
        return decode(codes, *args, **kwargs)

    reference.audio_encoder.decode = recording_decode
    reference.seen = seen
    extractor = reference_feature_extractor_class().from_pretrained(folder)
    processor = RefProcessor(feature_extractor=extractor, tokenizer=AutoTokenizer.from_pretrained(folder))
    return folder, reference, MusicgenMelodyForConditionalGeneration.from_pretrained(folder), processor


def melodies(music):
    """Two melodies of different lengths at 32 kHz: 5 s (40 frames, cropped to 30) and 2 s (padded to 5 s)."""
    return [music[1][: 5 * 32000], music[1][20 * 32000 : 22 * 32000]]


def chroma_energies(extractor, audio, rate):
    """Our pitch-class energies behind the one-hot features `extractor` makes of `audio`."""
    return extractor.chroma_energies(extractor.waveforms(audio, rate)[0])


# ------------------------------------------------------------------------------------------- features


def test_chroma_features_equal_the_reference_on_real_music(music):
    from transformers.audio_utils import chroma_filter_bank

    from zhiyin.processing.chroma import chroma_filter_bank as ours_bank

    theirs, ours = reference_feature_extractor_class()(), MusicgenMelodyFeatureExtractor()
    at22, at32 = music
    assert np.array_equal(
        ours_bank(32000, 16384),
        chroma_filter_bank(num_frequency_bins=16384, num_chroma=12, sampling_rate=32000, tuning=0),
    )
    stereo = np.stack([at32[:90000], at32[300000:390000]])  # two different tunes as left and right
    cases = [
        (at32, 32000, 235),  # 40 s: cropped to 30 s = 235 frames
        (torch.from_numpy(at22[: 35 * 22050]), 22050, 235),  # resampled (the reference resamples tensors only)
        ([at32[:100000], at32[300000:360000]], 32000, 25),  # a batch, padded on the right with silence
        (at32[:5000], 32000, 5),  # shorter than n_fft: centred in 16384 samples
        ([stereo], 32000, 22),  # a list of [channels, samples] clips: mixed to mono
        (np.stack([stereo, stereo[::-1]]), 32000, 22),  # [batch, channels, samples]
        (np.stack([at32[:90000], at32[300000:390000]]), 32000, 22),  # a 2-D array is a batch of mono clips
    ]
    for audio, rate, frames in cases:
        want = theirs(audio, sampling_rate=rate, return_tensors="pt")["input_features"]
        got = ours(audio, sampling_rate=rate, return_tensors="pt")["input_features"]
        assert got.shape == want.shape and got.shape[1:] == (frames, 12)
        assert_same_chroma(got, want, chroma_energies(ours, audio, rate))
        assert len(torch.unique(got.argmax(-1))) > 1  # real music moves between chroma bins
    left = reference_feature_extractor_class()(padding_side="left", return_attention_mask=True)
    ours_left = MusicgenMelodyFeatureExtractor(padding_side="left", return_attention_mask=True)
    batch = [at32[:100000], at32[300000:360000]]
    for kwargs in (dict(), dict(return_attention_mask=True)):  # the mask is strided only when asked in the call
        want = left(batch, sampling_rate=32000, return_tensors="pt", **kwargs)
        got = ours_left(batch, sampling_rate=32000, return_tensors="pt", **kwargs)
        assert_same_chroma(got["input_features"], want["input_features"], chroma_energies(ours_left, batch, 32000))
        assert torch.equal(got["attention_mask"], want["attention_mask"].int())


def test_melody_processor_matches_reference(melody, music):
    folder, reference, ours, theirs = melody
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(processor, MusicgenMelodyProcessor)
    assert type(AutoProcessor.from_pretrained(folder).feature_extractor) is MusicgenMelodyFeatureExtractor
    for kwargs in (
        dict(audio=melodies(music), sampling_rate=32000, text=TEXTS),
        dict(text=TEXTS),
        dict(audio=melodies(music), sampling_rate=32000),
    ):
        want = theirs(**kwargs, padding=True, return_tensors="pt")
        got = processor(**kwargs, padding=True, return_tensors="pt")
        assert got.keys() == want.keys()
        for key in want:
            if key == "input_features":
                energies = chroma_energies(processor.feature_extractor, kwargs["audio"], 32000)
                assert_same_chroma(got[key], want[key], energies)
            else:
                assert torch.equal(got[key], want[key]), key
    want, got = theirs.get_unconditional_inputs(2), processor.get_unconditional_inputs(2)
    assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(
        got["attention_mask"], want["attention_mask"]
    )


# ------------------------------------------------------------------------------------------- model


def test_logits_match_reference(melody, music):
    folder, reference, ours, processor = melody
    tokens = torch.randint(0, 64, (2 * 4, 9), generator=torch.Generator().manual_seed(0))
    for inputs in (
        processor(audio=melodies(music), sampling_rate=32000, text=TEXTS, padding=True, return_tensors="pt"),
        processor(text=TEXTS, padding=True, return_tensors="pt"),
    ):
        with torch.no_grad():
            want = reference(**inputs, decoder_input_ids=tokens).logits  # [B*K, C + S + T, V]
        got = ours(**inputs, decoder_input_ids=tokens)
        assert got.shape == (2, 4, CHROMA_LENGTH + inputs["input_ids"].shape[1] + 9, 64)
        assert relative_error(got.reshape(want.shape), want) < 1e-4


@pytest.mark.parametrize("case", ["melody+text", "text", "melody", "unconditional"])
def test_greedy_tokens_identical_to_reference(melody, music, case):
    folder, reference, ours, processor = melody
    if case == "unconditional":  # the reference's processor gives null text; guidance 3 from the generation config
        want_audio = reference.generate(**processor.get_unconditional_inputs(2), do_sample=False, max_new_tokens=20)
        codes = ours.generate(**ours.get_unconditional_inputs(2), do_sample=False, max_new_tokens=20, return_codes=True)
    else:
        kwargs = {
            "melody+text": dict(audio=melodies(music), sampling_rate=32000, text=TEXTS),
            "text": dict(text=TEXTS),
            "melody": dict(audio=melodies(music), sampling_rate=32000),
        }[case]
        inputs = processor(**kwargs, padding=True, return_tensors="pt")
        want_audio = reference.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=20)
        codes = ours.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=20, return_codes=True)
    assert codes.shape == (2, 4, 17)
    assert torch.equal(codes, reference.seen["codes"])
    assert relative_error(ours.decode_audio(codes), want_audio) < 1e-4


def test_stereo_melody_greedy_tokens_identical_to_reference(music, tmp_path):
    reference = make_melody_checkpoint(tmp_path, seed=1, channels=2)
    ours = MusicgenMelodyForConditionalGeneration.from_pretrained(tmp_path)
    seen, decode = [], reference.audio_encoder.decode
    reference.audio_encoder.decode = lambda codes, *a, **k: seen.append(codes[0]) or decode(codes, *a, **k)
    inputs = AutoProcessor.from_pretrained(tmp_path)(
        audio=melodies(music), sampling_rate=32000, text=TEXTS, return_tensors="pt"
    )
    want_audio = reference.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=12)
    codes = ours.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=12, return_codes=True)
    assert codes.shape == (2, 8, 9) and want_audio.shape == (2, 2, 9 * 640)
    assert torch.equal(codes, torch.stack(seen, dim=2).flatten(1, 2))  # the reference decodes left, then right
    audio = ours.decode_audio(codes)
    assert relative_error(audio, want_audio) < 1e-4
    assert not torch.equal(audio[:, 0], audio[:, 1])  # left and right differ


def test_conditioning_reaches_the_tokens(melody, music):
    """The test checkpoint listens: the melody, and each item's own melody, change the greedy tokens."""
    folder, reference, ours, _ = melody
    processor = AutoProcessor.from_pretrained(folder)
    with_melody = processor(audio=melodies(music), sampling_rate=32000, text=TEXTS[:1] * 2, return_tensors="pt")
    a = ours.generate(**with_melody, do_sample=False, guidance_scale=3, max_new_tokens=12, return_codes=True)
    b = ours.generate(
        **processor(text=TEXTS[:1] * 2, return_tensors="pt"),
        do_sample=False,
        guidance_scale=3,
        max_new_tokens=12,
        return_codes=True,
    )
    assert not torch.equal(a[0], a[1]) and not torch.equal(a, b)


def test_sampling_same_seed_same_tokens_as_reference(melody, music):
    folder, reference, ours, processor = melody
    inputs = processor(audio=melodies(music), sampling_rate=32000, text=TEXTS, padding=True, return_tensors="pt")
    torch.manual_seed(3)
    reference.generate(**inputs, do_sample=True, guidance_scale=3, top_k=10, max_new_tokens=15)
    torch.manual_seed(3)
    codes = ours.generate(**inputs, do_sample=True, guidance_scale=3, top_k=10, max_new_tokens=15, return_codes=True)
    assert torch.equal(codes, reference.seen["codes"])


def test_save_pretrained_round_trip_loads_in_reference(melody, music, tmp_path):
    from transformers import MusicgenMelodyForConditionalGeneration as Reference

    folder, reference, ours, processor = melody
    ours.save_pretrained(tmp_path)
    again = MusicgenMelodyForConditionalGeneration.from_pretrained(tmp_path)
    for key, value in ours.state_dict().items():
        assert torch.allclose(value, again.state_dict()[key], rtol=1e-6, atol=1e-6), key
    loaded = Reference.from_pretrained(tmp_path).eval()
    inputs = processor(audio=melodies(music), sampling_rate=32000, text=TEXTS, padding=True, return_tensors="pt")
    tokens = torch.randint(0, 64, (8, 6))
    with torch.no_grad():
        assert (
            relative_error(
                loaded(**inputs, decoder_input_ids=tokens).logits, reference(**inputs, decoder_input_ids=tokens).logits
            )
            < 1e-5
        )


def test_errors_are_clear(melody, music, tiny_checkpoint):
    folder, reference, ours, processor = melody
    mono_folder = tiny_checkpoint[0]
    with pytest.raises(ValueError, match="melody checkpoint.*MusicgenMelodyForConditionalGeneration"):
        MusicgenForConditionalGeneration.from_pretrained(folder)
    with pytest.raises(ValueError, match="not a melody checkpoint.*MusicgenForConditionalGeneration"):
        MusicgenMelodyForConditionalGeneration.from_pretrained(mono_folder)
    with pytest.raises(ValueError, match="melody checkpoint.*AutoProcessor"):
        MusicgenProcessor.from_pretrained(folder)
    mono = MusicgenForConditionalGeneration.from_pretrained(mono_folder)
    inputs = processor(audio=melodies(music), sampling_rate=32000, text=TEXTS, padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match="no melody input.*facebook/musicgen-melody"):
        mono.generate(**inputs, max_new_tokens=8)
    with pytest.raises(ValueError, match="no audio prompt"):
        ours.generate(**inputs, input_values=torch.zeros(2, 1, 3200), max_new_tokens=8)
    with pytest.raises(ValueError, match="one melody per text"):
        ours.generate(input_ids=inputs["input_ids"][:1], input_features=inputs["input_features"], max_new_tokens=8)
    with pytest.raises(ValueError, match=r"input_features must be chroma \[batch, frames, 12\]"):
        ours.generate(input_ids=inputs["input_ids"], input_features=torch.zeros(2, 5), max_new_tokens=8)


# ------------------------------------------------------------------------------------------- long music

LONG = dict(window=1.0, extend_stride=0.6)  # windows of 50 frames; each later one starts 30 frames after the last


def short_melody_inputs(folder, music, texts=TEXTS):
    """Text + a 2 s melody (16 chroma frames, fewer than the 30 a window takes: it is tiled)."""
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(
        audio=[music[1][: 2 * 32000]] * len(texts), sampling_rate=32000, text=texts, padding=True, return_tensors="pt"
    )
    assert inputs["input_features"].shape[1] == 16
    return inputs


def test_long_melody_music_tiles_the_melody_along(melody, music, monkeypatch):
    """Each window is prefixed with the text and the chroma from its start time on, cyclically: the window whose
    context begins at frame f of the music takes melody frames round(f / 50 * 7.8125) + 0, 1, ... mod 16."""
    from zhiyin.generation.conditioning import MelodyCondition

    folder, _, ours, _ = melody
    inputs = short_melody_inputs(folder, music)
    prefixes, real = [], MelodyCondition.prefix

    def recording(condition):  # each window's prefix, as the loop asks for it
        prefix = real(condition)
        prefixes.append(prefix.clone())
        return prefix

    monkeypatch.setattr(MelodyCondition, "prefix", recording)
    torch.manual_seed(0)
    codes = ours.generate_long(**inputs, duration=2.3, **LONG, guidance_scale=3, top_k=10, return_codes=True)
    assert codes.shape == (2, 4, 115)  # exactly 2.3 s: 50 new frames, then 30, 30 and 5
    assert len(prefixes) == 4
    features = inputs["input_features"]
    projection = ours.audio_enc_to_dec_proj
    with torch.no_grad():
        null = projection(torch.eye(12)[:1])  # the guidance half's null chroma: bin 0
        for prefix, window_start in zip(prefixes, [0, 30, 60, 90]):
            start = round(window_start / 50 * 32000 / 4096)  # 0, 5, 9, 14
            want = projection(features[:, (start + torch.arange(CHROMA_LENGTH)) % 16])
            torch.testing.assert_close(prefix[:2, :CHROMA_LENGTH], want, rtol=0, atol=1e-6)
            torch.testing.assert_close(prefix[2:, :CHROMA_LENGTH], null.expand(2, CHROMA_LENGTH, -1), rtol=0, atol=1e-6)
            assert torch.equal(prefix[:, CHROMA_LENGTH:], prefixes[0][:, CHROMA_LENGTH:])  # the same text every window
    assert not torch.equal(prefixes[1], prefixes[0])

    audio = ours.generate_long(**inputs, duration=2.3, **LONG, guidance_scale=3, top_k=10)
    assert audio.shape == (2, 1, 115 * 640) and audio.dtype == torch.float32


@pytest.mark.parametrize("case", ["melody+text", "melody", "text"])
def test_long_melody_music_that_fits_one_window_is_one_generate_pass(melody, music, case):
    folder, _, ours, _ = melody
    inputs = dict(short_melody_inputs(folder, music))
    if case == "melody":
        inputs = dict(input_features=inputs["input_features"])
    elif case == "text":
        inputs.pop("input_features")
    want = ours.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=20 + 3, return_codes=True)
    got = ours.generate_long(**inputs, duration=0.4, **LONG, do_sample=False, guidance_scale=3, return_codes=True)
    assert torch.equal(got, want)  # token-identical
    torch.manual_seed(5)
    want = ours.generate(**inputs, guidance_scale=3, top_k=10, max_new_tokens=20 + 3, return_codes=True)
    torch.manual_seed(5)
    got = ours.generate_long(**inputs, duration=0.4, guidance_scale=3, top_k=10, return_codes=True)  # 30 s window
    assert torch.equal(got, want)


def test_melody_stream_joins_to_generate_long(melody, music):
    folder, _, ours, _ = melody
    inputs = short_melody_inputs(folder, music)
    want = ours.generate_long(**inputs, duration=1.9, **LONG, do_sample=False, guidance_scale=3)
    chunks = list(
        ours.generate_stream(**inputs, duration=1.9, chunk_seconds=0.5, **LONG, do_sample=False, guidance_scale=3)
    )
    assert [c.shape[-1] for c in chunks] == [25 * 640] * 3 + [20 * 640]
    got = torch.cat(chunks, dim=-1)
    assert got.shape == want.shape == (2, 1, 95 * 640)
    snr = 10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum().clamp_min(1e-30))
    assert snr >= 30


def test_long_melody_music_errors_are_clear(melody, music):
    folder, _, ours, _ = melody
    inputs = short_melody_inputs(folder, music)
    for call in (ours.generate_long, ours.generate_stream):
        with pytest.raises(ValueError, match="no audio prompt"):
            call(**inputs, input_values=torch.zeros(2, 1, 3200), duration=2.0, **LONG)
        with pytest.raises(ValueError, match="one melody per text"):
            call(input_ids=inputs["input_ids"][:1], input_features=inputs["input_features"], duration=2.0, **LONG)
        with pytest.raises(ValueError, match="extend_stride"):
            call(**inputs, duration=2.0, window=1.0, extend_stride=1.0)


# ------------------------------------------------------------------------------------------- CLI


def test_cli_melody_writes_the_music(melody, tmp_path, capsys):
    folder = melody[0]
    out = tmp_path / "tune.wav"
    status = main(
        [
            "generate",
            "jazz",
            "--model",
            str(folder),
            "--melody",
            str(SHARED_AUDIO / MUSIC),
            "-o",
            str(out),
            "--duration",
            "0.3",
            "--seed",
            "0",
            "--quiet",
        ]
    )
    assert status == 0, capsys.readouterr().err
    info = soundfile.info(str(out))
    assert (info.samplerate, info.channels, info.frames) == (32000, 1, 15 * 640)
    status = main(
        [
            "generate",
            "--unconditional",
            "--num-samples",
            "2",
            "--model",
            str(folder),
            "--melody",
            str(SHARED_AUDIO / "sorohanro_solo_trumpet_06.ogg"),
            "-o",
            str(tmp_path / "u.wav"),
            "--duration",
            "0.2",
            "--quiet",
        ]
    )
    assert status == 0 and {p.name for p in tmp_path.iterdir()} == {"tune.wav", "u-1.wav", "u-2.wav"}


@pytest.mark.parametrize("stream", [False, True])
def test_cli_melody_longer_than_the_window_writes_the_whole_length(melody, tmp_path, capsys, stream):
    out = tmp_path / "long.wav"
    status = main(
        [
            "generate",
            "jazz",
            "--model",
            str(melody[0]),
            "--melody",
            str(SHARED_AUDIO / MUSIC),
            "-o",
            str(out),
            "--duration",
            "1.3",
            "--window",
            "1",
            "--extend-stride",
            "0.6",
            "--seed",
            "0",
            "--quiet",
            *(["--stream"] if stream else []),
        ]
    )
    assert status == 0, capsys.readouterr().err
    data, rate = soundfile.read(str(out), dtype="float32")
    assert rate == 32000 and data.shape == (65 * 640,)
    assert np.abs(data[-50 * 640 :]).max() > 0


def test_cli_melody_errors(melody, tiny_checkpoint, tmp_path, capsys):
    folder, trumpet = melody[0], str(SHARED_AUDIO / "sorohanro_solo_trumpet_06.ogg")
    for argv, message in [
        (["--model", str(tiny_checkpoint[0]), "--melody", trumpet], "--melody needs a melody model"),
        (["--model", str(folder), "--melody", str(tmp_path / "nope.wav")], "melody file"),
        (["--model", str(folder), "--audio-prompt", trumpet], "melody models continue no --audio-prompt"),
    ]:
        status = main(["generate", "jazz", "-o", str(tmp_path / "x.wav"), "--duration", "0.2", "--quiet", *argv])
        err = capsys.readouterr().err
        assert status == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "x.wav").exists()


def test_readme_melody_example_runs(melody):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    program = readme.split("## Melody", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    program = program.replace('"facebook/musicgen-melody"', repr(str(melody[0])))
    program = program.replace("../shared/audio/", str(SHARED_AUDIO) + "/").replace(
        "max_new_tokens=256", "max_new_tokens=16"
    )
    scope = {}
    exec(compile(program, "README.md", "exec"), scope)
    assert scope["audio_values"].shape == (1, 1, 13 * 640)


def test_int8_melody_model_quantized_while_reading(melody, music):
    """quantize='int8' on a melody checkpoint (a decoder without cross-attention): the same int8 weights and scales
    as quantizing the float model afterwards, so the same music."""
    from zhiyin.backends import kernels

    folder, reference, ours, processor = melody
    quantized = MusicgenMelodyForConditionalGeneration.from_pretrained(folder, quantize="int8")
    model = MusicgenMelodyForConditionalGeneration.from_pretrained(folder)
    kernels.accelerate_decoder(model.decoder, "int8")
    want, got = model.state_dict(), quantized.state_dict()
    assert set(got) == set(want) and any(v.dtype == torch.int8 for v in got.values())
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    inputs = short_melody_inputs(folder, music)
    codes = quantized.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=12, return_codes=True)
    assert codes.shape[-1] == 12 - 3
    assert torch.equal(
        codes, model.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=12, return_codes=True)
    )


def test_engine_melody_jobs_are_generate_longs(melody, music):
    """Melody jobs in the continuous-batching engine: each window's prefix (the melody from its time on) goes into
    its own slot's rows; the music is generate_long's for the same seed."""
    from zhiyin.engine import Engine

    folder, _, ours, _ = melody
    both = short_melody_inputs(folder, music)
    items = [{name: value[i : i + 1] for name, value in both.items()} for i in range(2)]
    settings = [dict(guidance_scale=3, top_k=10, duration=2.3, **LONG), dict(do_sample=False, duration=0.8)]
    want = [
        ours.generate_long(**item, **s, return_codes=True, generator=torch.Generator().manual_seed(5 + i))
        for i, (item, s) in enumerate(zip(items, settings))
    ]
    engine = Engine(ours, max_batch=2)
    try:
        jobs = [engine.submit(**item, **s, seed=5 + i) for i, (item, s) in enumerate(zip(items, settings))]
        for job, codes in zip(jobs, want):
            assert torch.equal(job.codes(timeout=120), codes)
    finally:
        engine.close()


def test_a_batch_melody_item_is_what_zhiyin_generate_makes(melody, tmp_path):
    """`zhiyin batch` reads a job's melody as `zhiyin generate --melody` does: the same file for the same seed."""
    import json

    folder = str(melody[0])
    tune = tmp_path / "tune.ogg"
    tune.write_bytes((SHARED_AUDIO / "sorohanro_solo_trumpet_06.ogg").read_bytes())
    job = {"id": "strings", "prompt": "a string quartet", "melody": "tune.ogg", "duration": 0.8, "seed": 3}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(job) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "jobs.jsonl"), "-o", str(out), "--model", folder, "--quiet"]) == 0
    argv = ["generate", "a string quartet", "--melody", str(tune), "--duration", "0.8", "--seed", "3"]
    assert main(argv + ["--model", folder, "--quiet", "-o", str(tmp_path / "g.wav")]) == 0
    made, _ = soundfile.read(str(out / "strings.wav"), dtype="float32")
    want, _ = soundfile.read(str(tmp_path / "g.wav"), dtype="float32")
    assert made.shape == want.shape and np.array_equal(made, want)
