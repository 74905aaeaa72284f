"""Stereo checkpoints (musicgen-stereo-*) against the transformers oracle on a random "tiny-stereo" checkpoint:
8 decoder codebooks interleaved L1,R1,L2,R2,... with delays 0,0,1,1,2,2,3,3 over the mono 4-codebook EnCodec,
each channel encoded and decoded on its own; output [batch, 2, samples]. Also what happens when the prompt's
channel count is not the model's, and the command line with a stereo model."""

import math

import numpy as np
import pytest
import soundfile
import torch

from zhiyin import MusicgenForConditionalGeneration, MusicgenProcessor
from zhiyin.cli import main
from zhiyin.generation.delay_pattern import DelayPattern
from zhiyin.processing.loudness import normalize

from conftest import TEXTS, recording_decodes, reference_generate, trumpet
from nearest import reference_takes_our_prompt_codes

HOP = 640


@pytest.fixture(scope="module")
def stereo(tiny_stereo_checkpoint):
    """(folder, reference, its decoded codes while this module runs, ours, reference processor)."""
    from transformers import AutoProcessor

    folder, reference = tiny_stereo_checkpoint
    ours = MusicgenForConditionalGeneration.from_pretrained(folder)
    with recording_decodes(reference) as seen:
        yield folder, reference, seen, ours, AutoProcessor.from_pretrained(folder)


def stereo_clip(shared_audio, seconds=0.75):
    """A real clip made stereo (conftest.trumpet): the trumpet left, a late, half-loud copy of it right."""
    return trumpet(seconds, channels=2)


def test_stereo_checkpoint_layout(stereo):
    import json

    folder, reference, calls, ours, processor = stereo
    config = json.loads((folder / "config.json").read_text())
    assert (config["decoder"]["num_codebooks"], config["decoder"]["audio_channels"]) == (8, 2)
    assert config["audio_encoder"]["audio_channels"] == 1  # EnCodec stays mono, as in the published repos
    assert json.loads((folder / "preprocessor_config.json").read_text())["feature_size"] == 2
    assert ours.config.decoder.audio_channels == 2 and ours.config.audio_encoder.num_quantizers == 4
    assert DelayPattern.for_decoder(ours.config.decoder).delays == (0, 0, 1, 1, 2, 2, 3, 3)
    assert MusicgenProcessor.from_pretrained(folder).feature_extractor.feature_size == 2


def test_mono_prompt_to_stereo_model_is_copied_to_both_channels(stereo, shared_audio):
    """The reference's generate() refuses a 1-channel prompt (ValueError: 'Expected stereo audio'), and its
    forward() turns mono codes into stereo by repeating each codebook (L = R). We do the same in generate():
    a [B, 1, T] (or [B, T]) prompt is up-mixed by copying it to both channels, so its codes are L = R and the
    result is the reference's for that prompt copied to both channels. The processor, like the reference's,
    refuses a mono clip for a stereo checkpoint; ours copies it to both channels."""
    folder, reference, calls, ours, processor = stereo
    mono = stereo_clip(shared_audio)[0]
    with pytest.raises(ValueError, match="Expected stereo audio"):
        processor(audio=mono, sampling_rate=32000, return_tensors="pt")
    copied = MusicgenProcessor.from_pretrained(folder)(audio=mono, sampling_rate=32000, return_tensors="pt")
    assert torch.equal(copied["input_values"], torch.from_numpy(np.stack([mono, mono]))[None])

    text = processor(text=TEXTS[:1], return_tensors="pt")
    mono_values = torch.from_numpy(mono)[None, None]  # [1, 1, T]
    with pytest.raises(ValueError, match="Expected stereo audio"):
        reference.generate(**text, input_values=mono_values, do_sample=False, max_new_tokens=8)
    with reference_takes_our_prompt_codes(reference, ours.audio_encoder):
        _, want = reference_generate(
            reference,
            calls,
            **text,
            input_values=mono_values.repeat(1, 2, 1),
            do_sample=False,
            guidance_scale=3,
            max_new_tokens=8,
        )
    for values in (mono_values, mono_values[:, 0]):
        codes = ours.generate(
            **text, input_values=values, do_sample=False, guidance_scale=3, max_new_tokens=8, return_codes=True
        )
        assert torch.equal(codes, want)
    prompt_frames = math.ceil(len(mono) / HOP)
    assert torch.equal(codes[:, 0::2, :prompt_frames], codes[:, 1::2, :prompt_frames])


def test_stereo_prompt_to_mono_model_is_mixed_down(tiny_checkpoint, shared_audio, monkeypatch):
    """The reference crashes inside EnCodec on a 2-channel prompt for a mono model (RuntimeError from conv1d).
    We mix it down (mean of the channels, as zhiyin.audio_io.read_audio does) and continue that."""
    from transformers import AutoProcessor

    folder, reference = tiny_checkpoint
    ours = MusicgenForConditionalGeneration.from_pretrained(folder)
    text = AutoProcessor.from_pretrained(folder)(text=TEXTS[:1], return_tensors="pt")
    stereo_values = torch.from_numpy(stereo_clip(shared_audio))[None]  # [1, 2, T]
    with pytest.raises(RuntimeError):
        reference.generate(**text, input_values=stereo_values, do_sample=False, max_new_tokens=8)
    with reference_takes_our_prompt_codes(reference, ours.audio_encoder), recording_decodes(reference) as calls:
        _, want = reference_generate(
            reference,
            calls,
            **text,
            input_values=stereo_values.mean(1, keepdim=True),
            do_sample=False,
            guidance_scale=3,
            max_new_tokens=8,
        )
    codes = ours.generate(
        **text, input_values=stereo_values, do_sample=False, guidance_scale=3, max_new_tokens=8, return_codes=True
    )
    assert torch.equal(codes, want)
    with pytest.raises(ValueError, match="1-channel audio prompts, got 3 channels"):
        ours.generate(**text, input_values=torch.zeros(1, 3, 6400), max_new_tokens=8)


def test_three_channel_prompt_to_stereo_model_is_refused(stereo):
    folder, reference, calls, ours, processor = stereo
    text = processor(text=TEXTS[:1], return_tensors="pt")
    with pytest.raises(ValueError, match="2-channel audio prompts, got 3 channels"):
        ours.generate(**text, input_values=torch.zeros(1, 3, 6400), max_new_tokens=8)


# ---- the command line -------------------------------------------------------------------------------------


def cli(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


def test_cli_stereo_model_writes_a_two_channel_wav(capsys, stereo, tmp_path):
    folder, reference, calls, ours, processor = stereo
    path = tmp_path / "x.wav"
    out = cli(
        capsys,
        "generate",
        "lofi hip hop with piano",
        "--model",
        folder,
        "-o",
        path,
        "--duration",
        0.5,
        "--greedy",
        "--quiet",
    )
    assert "32000 Hz, stereo" in out
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert rate == 32000 and data.shape == (25 * HOP, 2)
    # the same music as the Python API makes (greedy, guidance 3, 25 frames + the 3-frame delay), levelled to
    # -14 LUFS as the CLI does by default
    want = ours.generate(
        **processor(text=["lofi hip hop with piano"], return_tensors="pt"),
        do_sample=False,
        guidance_scale=3,
        max_new_tokens=25 + 3,
    )[0].numpy()
    np.testing.assert_allclose(data.T, np.clip(normalize(want, 32000, "loudness"), -1, 1), atol=1e-4)
    assert not np.allclose(data[:, 0], data[:, 1])


def test_cli_audio_prompt_is_read_with_the_models_channel_count(
    capsys, stereo, tiny_checkpoint, tmp_path, shared_audio
):
    folder, reference, calls, ours, processor = stereo
    clip = stereo_clip(shared_audio)
    stereo_file = tmp_path / "prompt.wav"
    soundfile.write(str(stereo_file), clip.T, 32000, subtype="FLOAT")
    prompt_frames = math.ceil(clip.shape[1] / HOP)

    # a stereo file continued by the stereo model: both channels kept, the same as the Python API
    path = tmp_path / "stereo.wav"
    cli(
        capsys,
        "generate",
        "trumpet",
        "--model",
        folder,
        "--audio-prompt",
        stereo_file,
        "-o",
        path,
        "--duration",
        0.5,
        "--greedy",
        "--quiet",
        "--normalize",
        "none",
    )
    data, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert data.shape == ((prompt_frames + 25) * HOP, 2)
    inputs = processor(audio=clip, sampling_rate=32000, text=["trumpet"], return_tensors="pt")
    want = ours.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=25 + 3)[0].numpy()
    np.testing.assert_allclose(data.T, np.clip(want, -1, 1), atol=1e-4)

    # a mono file for the stereo model: up-mixed on reading, so it gets a stereo continuation
    mono_path = tmp_path / "from-mono.wav"
    trumpet = shared_audio / "sorohanro_solo_trumpet_06.ogg"
    out = cli(
        capsys,
        "generate",
        "trumpet",
        "--model",
        folder,
        "--audio-prompt",
        trumpet,
        "-o",
        mono_path,
        "--duration",
        0.5,
        "--greedy",
        "--quiet",
    )
    assert "stereo" in out
    assert soundfile.info(str(mono_path)).channels == 2

    # the stereo file for a mono model: mixed down on reading, a mono continuation
    down_path = tmp_path / "down.wav"
    out = cli(
        capsys,
        "generate",
        "trumpet",
        "--model",
        tiny_checkpoint[0],
        "--audio-prompt",
        stereo_file,
        "-o",
        down_path,
        "--duration",
        0.5,
        "--greedy",
        "--quiet",
    )
    assert "mono" in out
    data, _ = soundfile.read(str(down_path), dtype="float32", always_2d=True)
    assert data.shape == ((prompt_frames + 25) * HOP, 1)
