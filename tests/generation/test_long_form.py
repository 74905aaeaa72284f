"""Long music (long_form.py): windows of at most `window` seconds, each later one prompted with the last
(window - extend_stride) seconds of the codes so far. Small windows (1 s, stride 0.6 s) keep it fast."""

import numpy as np
import pytest
import soundfile
import torch

import zhiyin.generation.long_form as long_form
from zhiyin.cli import main
from zhiyin.processing.audio_io import read_audio

from conftest import TEXTS

HOP, RATE = 640, 50  # samples per frame, frames per second
WINDOW, STRIDE, CONTEXT = 50, 30, 20  # frames: window=1.0 s, extend_stride=0.6 s


@pytest.fixture
def windows(monkeypatch):
    """Records every window long_form runs: (prompt codes [B, K, c], max_new_tokens, new frames [B, K, n])."""
    calls = []
    real = long_form.generate_frames

    def recording(decoder, request, *args):
        new = []
        calls.append((request.prompt.clone(), request.max_new_tokens, new))
        for frame in real(decoder, request, *args):
            new.append(frame)
            yield frame

    monkeypatch.setattr(long_form, "generate_frames", recording)
    return calls


def trumpet(shared_audio, seconds):
    return read_audio(shared_audio / "sorohanro_solo_trumpet_06.ogg", 32000, 1)[0, 8000 : 8000 + int(seconds * 32000)]


def check_windows(calls, codes, prompt, new_frames):
    """Each window continues the last CONTEXT frames of the one before; the output is the prompt + every new frame."""
    new = [torch.cat(frames, dim=-1) for _, _, frames in calls]
    assert torch.equal(calls[0][0], prompt)  # the audio prompt (or nothing) starts the first window
    assert new[0].shape[-1] == min(WINDOW - prompt.shape[-1], new_frames)  # which it fills
    for (before, _, _), made, (context, max_new_tokens, _) in zip(calls, new, calls[1:]):
        assert torch.equal(context, torch.cat([before, made], dim=-1)[..., -CONTEXT:])
    for (context, max_new_tokens, _), made in zip(calls, new):
        assert made.shape[-1] == max_new_tokens - 3  # every frame a window makes is kept: none dropped
        assert context.shape[-1] + made.shape[-1] <= WINDOW  # KV cache and cost per window stay bounded
    for made in new[1:-1]:
        assert made.shape[-1] == STRIDE
    assert torch.equal(codes, torch.cat([prompt, *new], dim=-1))  # nothing duplicated or dropped at the joins
    assert codes.shape[-1] == prompt.shape[-1] + new_frames


def test_long_music_from_text_is_exact_and_continues_each_window(model, processor, windows):
    inputs = processor(text=TEXTS, padding=True, return_tensors="pt")
    torch.manual_seed(0)
    codes = model.generate_long(
        **inputs, duration=2.3, window=1.0, extend_stride=0.6, guidance_scale=3, top_k=10, return_codes=True
    )
    assert codes.shape == (2, 4, 115)
    assert len(windows) == 4  # 50 new frames, then 30, 30 and the last 5
    check_windows(windows, codes, codes[..., :0], 115)
    assert len(windows[-1][2]) == 5

    torch.manual_seed(0)
    audio = model.generate_long(**inputs, duration=2.3, window=1.0, extend_stride=0.6, guidance_scale=3, top_k=10)
    assert audio.shape == (2, 1, 115 * HOP) and audio.dtype == torch.float32
    torch.testing.assert_close(audio, model.decode_audio(codes), rtol=0, atol=1e-5)  # same tokens, one decode


def test_audio_prompt_starts_the_first_window(model, processor, shared_audio, windows):
    clip = trumpet(shared_audio, 0.3)  # 15 frames
    inputs = processor(audio=[clip, clip], sampling_rate=32000, text=TEXTS, padding=True, return_tensors="pt")
    prompt = model.encode_audio(inputs["input_values"], inputs["padding_mask"])
    assert prompt.shape == (2, 4, 15)
    codes = model.generate_long(
        **inputs, duration=1.5, window=1.0, extend_stride=0.6, do_sample=False, guidance_scale=3, return_codes=True
    )
    check_windows(windows, codes, prompt, 75)
    assert [len(made) for _, _, made in windows] == [35, 30, 10]
    audio = model.generate_long(
        **inputs, duration=1.5, window=1.0, extend_stride=0.6, do_sample=False, guidance_scale=3
    )
    assert audio.shape == (2, 1, (15 + 75) * HOP)


@pytest.mark.parametrize("with_prompt", [False, True], ids=["text", "text+audio"])
def test_music_that_fits_one_window_is_one_generate_pass(model, processor, shared_audio, with_prompt):
    audio = [trumpet(shared_audio, 0.3)] * 2 if with_prompt else None
    inputs = processor(
        audio=audio, sampling_rate=32000 if audio else None, text=TEXTS, padding=True, return_tensors="pt"
    )
    want = model.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=20 + 3, return_codes=True)
    got = model.generate_long(
        **inputs, duration=0.4, window=1.0, extend_stride=0.6, do_sample=False, guidance_scale=3, return_codes=True
    )
    assert torch.equal(got, want)  # token-identical
    want_audio = model.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=20 + 3)
    got_audio = model.generate_long(**inputs, duration=0.4, do_sample=False, guidance_scale=3)  # default 30 s window
    assert torch.equal(got_audio, want_audio)


def test_long_music_past_one_pass_of_the_model(model):
    """More than max_frames (2044 frames here): generate() refuses, generate_long makes it with the default windows."""
    inputs = model.get_unconditional_inputs(1)
    with pytest.raises(ValueError, match="generate_long"):
        model.generate(**inputs, max_new_tokens=2100)
    audio = model.generate_long(**inputs, duration=42.0, do_sample=True, top_k=5)  # windows of 1500 and 600 new frames
    assert audio.shape == (1, 1, 42 * RATE * HOP)  # decoded in two overlapping 30 s pieces
    assert audio[..., -RATE * HOP :].abs().max() > 0


def test_long_music_errors_are_clear(model, processor, shared_audio):
    inputs = processor(text=TEXTS, padding=True, return_tensors="pt")
    for bad, message in [
        (dict(duration=0.0), "duration"),
        (dict(duration=-3.0), "duration"),
        (dict(duration=5.0, window=60.0), "window"),
        (dict(duration=5.0, window=1.0, extend_stride=1.0), "extend_stride"),
        (dict(duration=5.0, extend_stride=0.0), "extend_stride"),
        (dict(duration=5.0, num_beams=2), "num_beams"),
        (dict(duration=5.0, top_k=0), "top_k"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.generate_long(**inputs, **bad)
        with pytest.raises(ValueError, match=message):
            model.generate_stream(**inputs, **bad)  # raised at the call, before any chunk
    clip = trumpet(shared_audio, 1.2)
    inputs = processor(audio=[clip, clip], sampling_rate=32000, text=TEXTS, padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match="audio prompt"):
        model.generate_long(**inputs, duration=2.0, window=1.0, extend_stride=0.6)


def test_cli_long_duration_writes_the_whole_length(capsys, tiny_checkpoint, tmp_path):
    out_path = tmp_path / "long.wav"
    status = main(
        [
            "generate",
            "techno",
            "--model",
            str(tiny_checkpoint[0]),
            "--duration",
            "2.5",
            "--window",
            "1",
            "--extend-stride",
            "0.6",
            "--seed",
            "1",
            "--quiet",
            "-o",
            str(out_path),
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    data, rate = soundfile.read(str(out_path), dtype="float32")
    assert rate == 32000 and data.shape == (125 * HOP,)
    assert np.abs(data[-RATE * HOP :]).max() > 0
    assert out.strip() == f"wrote {out_path} (2.50 s, 32000 Hz, mono)"
