"""Streaming (streaming.py): audio chunks while the codes are being made, decoded in chunks that carry the codec's
state, so that the joined chunks are a one-piece decode's audio, and WAV files that are valid after every chunk."""

import os
import signal
import subprocess
import sys
import time
import wave

import numpy as np
import pytest
import soundfile
import torch

import zhiyin.generation.loop as generation
from zhiyin import MusicgenForConditionalGeneration, MusicgenProcessor
from zhiyin.cli import main
from zhiyin.generation.streaming import CHUNK_FRAMES, decode_stream
from zhiyin.modules.encodec import ChunkedDecode
from zhiyin.processing.audio_io import read_metadata, write_audio, write_stream

from checkpoints import make_checkpoint
from conftest import TEXTS

HOP = 640


@pytest.fixture(scope="module")
def inputs(tiny_checkpoint):
    return MusicgenProcessor.from_pretrained(tiny_checkpoint[0])(text=TEXTS, padding=True, return_tensors="pt")


@pytest.mark.parametrize("long", [False, True], ids=["one-window", "windows"])
def test_joined_stream_matches_one_shot_decode(model, inputs, long):
    windows = dict(window=1.0, extend_stride=0.6) if long else {}
    settings = dict(do_sample=False, guidance_scale=3, **windows)
    codes = model.generate_long(**inputs, duration=4.1, return_codes=True, **settings)
    want = model.decode_audio(codes)  # [2, 1, 205 * 640]
    chunks = list(model.generate_stream(**inputs, duration=4.1, chunk_seconds=0.5, **settings))
    assert [c.shape for c in chunks] == [(2, 1, 25 * HOP)] * 8 + [(2, 1, 5 * HOP)]
    torch.testing.assert_close(torch.cat(chunks, dim=-1), want, rtol=0, atol=1e-6)  # other chunks: float rounding


def test_stereo_long_music_streams(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-stereo")
    make_checkpoint(folder, "tiny-stereo")
    stereo = MusicgenForConditionalGeneration.from_pretrained(folder)
    settings = dict(duration=1.5, window=1.0, extend_stride=0.6, do_sample=False)
    inputs = stereo.get_unconditional_inputs(1)
    codes = stereo.generate_long(**inputs, return_codes=True, **settings)
    assert codes.shape == (1, 8, 75)
    chunks = list(stereo.generate_stream(**inputs, chunk_seconds=0.5, **settings))
    assert [c.shape for c in chunks] == [(1, 2, 25 * HOP)] * 3
    torch.testing.assert_close(torch.cat(chunks, dim=-1), stereo.decode_audio(codes), rtol=0, atol=1e-6)


@torch.inference_mode()
def test_decode_stream_takes_any_blocks(model):
    codec = model.audio_encoder
    codes = torch.randint(0, 64, (1, 4, 333), generator=torch.Generator().manual_seed(0))
    one_piece = codec.decode(codes)
    sizes = [1, 7, 50, 3, 100, 1, 171]
    blocks = torch.split(codes, sizes, dim=-1)
    for chunk, first in ((7, 7), (50, 50), (64, 3)):
        got = list(decode_stream(codec, 1, blocks, chunk, first))
        if first == 3:  # growing: 3, 12, 48, 64, ...
            assert [c.shape[-1] // HOP for c in got] == [3, 12, 48, 64, 64, 64, 64, 14]
        else:
            assert all(c.shape[-1] == chunk * HOP for c in got[:-1])
        joined = torch.cat(got, dim=-1)
        torch.testing.assert_close(joined, one_piece, rtol=0, atol=1e-6)
        assert torch.equal(joined, torch.cat(list(decode_stream(codec, 1, [codes], chunk, first)), dim=-1))
    # the default chunks (1, 4, 16, 64, then CHUNK_FRAMES) are decode_audio's, bit for bit
    got = list(decode_stream(codec, 1, blocks))
    assert [c.shape[-1] // HOP for c in got] == [1, 4, 16, 64, CHUNK_FRAMES, CHUNK_FRAMES, 48]
    assert torch.equal(torch.cat(got, dim=-1), model.decode_audio(codes))
    assert list(decode_stream(codec, 1, [])) == []
    assert model.decode_audio(codes[..., :0]).shape == (1, 1, 0)


def test_chunks_arrive_while_the_codes_are_made(model, inputs, monkeypatch):
    """The first chunk needs its 25 frames + the lookahead + the codebook delay: a fraction of the steps."""
    steps = []
    real = generation.TokenChoice.__call__
    monkeypatch.setattr(generation.TokenChoice, "__call__", lambda *a, **k: steps.append(1) or real(*a, **k))
    started, arrivals, when = time.perf_counter(), [], []
    for chunk in model.generate_stream(**inputs, duration=3.0, chunk_seconds=0.5, do_sample=False, guidance_scale=3):
        arrivals.append(len(steps))
        when.append(time.perf_counter() - started)
    lookahead = ChunkedDecode(model.audio_encoder).lookahead
    assert lookahead == 4  # a frame of the LSTM's outputs + the first convolution's 3
    assert arrivals[:-1] == [25 * (i + 1) + lookahead + 3 for i in range(len(arrivals) - 1)]
    assert len(steps) == 150 + 3
    print(f"first chunk after {when[0]:.3f} s of {when[-1]:.3f} s")


def test_stream_file_is_valid_after_every_chunk(model, inputs, tmp_path):
    paths = [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    chunks = []
    stream = model.generate_stream(**inputs, duration=3.0, chunk_seconds=0.5, do_sample=False, guidance_scale=3)
    writing = write_stream((chunks.append(c) or c for c in stream), paths, 32000)
    assert not os.path.exists(paths[0])  # nothing until the first chunk
    for i, written in enumerate(writing):
        assert written == (i + 1) * 25 * HOP
        if i == 1:
            break
    # interrupted after 2 chunks, the files still open: each is already a valid WAV of those 2 chunks
    for path, item in zip(paths, torch.cat(chunks, dim=-1)):
        data, rate = soundfile.read(path, dtype="float32")
        assert rate == 32000 and data.shape == (50 * HOP,)
        np.testing.assert_allclose(data, item[0].numpy(), atol=1 / 32767)
        with wave.open(path) as w:  # the header's own sizes are right (soundfile forgives a zero data size)
            assert w.getnframes() == 50 * HOP
    writing.close()
    assert soundfile.info(paths[0]).frames == 50 * HOP
    # the samples are converted exactly as write_audio converts them
    write_audio(tmp_path / "same.wav", torch.cat(chunks, dim=-1)[0], 32000)
    assert (
        soundfile.read(tmp_path / "same.wav", dtype="int16")[0].tolist()
        == soundfile.read(paths[0], dtype="int16")[0].tolist()
    )


def test_cli_stream_writes_the_music(capsys, tiny_checkpoint, tmp_path):
    model = str(tiny_checkpoint[0])
    argv = ["generate", "organ", "--model", model, "--duration", "2.2", "--greedy", "--quiet"]
    assert main([*argv, "-o", str(tmp_path / "whole.wav")]) == 0
    assert main([*argv, "--stream", "-o", str(tmp_path / "streamed.wav")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'streamed.wav'} (2.20 s, 32000 Hz, mono)" in out
    whole, _ = soundfile.read(tmp_path / "whole.wav", dtype="float32")
    streamed, _ = soundfile.read(tmp_path / "streamed.wav", dtype="float32")
    assert streamed.shape == whole.shape == (110 * HOP,)
    # the same music; the level differs by a hair (the whole file's loudness is measured on all of it at once)
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=2e-4)


def _stream_until_three_seconds(model_folder, path):
    """A --stream run of 600 s, once its partial file holds 3 s: (the process, the partial file's path)."""
    partial = path.with_name(path.stem + ".partial.wav")
    argv = [
        "generate",
        "techno",
        "--model",
        str(model_folder),
        "--duration",
        "600",
        "--window",
        "1",
        "--extend-stride",
        "0.6",
        "--stream",
        "--quiet",
        "--seed",
        "1",
        "-o",
        str(path),
    ]
    run = subprocess.Popen([sys.executable, "-m", "zhiyin", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size > 44 + 3 * 50 * HOP * 2):  # 3 chunks of 1 s, 16-bit
        if run.poll() is not None or time.monotonic() > deadline:
            run.kill()
            raise AssertionError(f"no partial audio within 120 s: {run.communicate()[1].decode()}")
        time.sleep(0.01)
    return run, partial


def _whole_seconds(path) -> int:
    with wave.open(str(path)) as w:
        frames = w.getnframes()
    data, rate = soundfile.read(str(path), dtype="float32")
    assert rate == 32000 and len(data) == frames >= 3 * 50 * HOP
    assert len(data) % (50 * HOP) == 0  # whole 1 s chunks
    assert len(data) < 600 * 32000
    return len(data) // 32000


def test_killed_stream_leaves_a_valid_partial_file_and_the_old_one_intact(tiny_checkpoint, tmp_path):
    path = tmp_path / "live.wav"
    path.write_bytes(b"the last take, kept")
    run, partial = _stream_until_three_seconds(tiny_checkpoint[0], path)
    run.kill()
    run.wait()
    _whole_seconds(partial)
    assert path.read_bytes() == b"the last take, kept"


def test_terminated_stream_puts_its_file_in_place(tiny_checkpoint, tmp_path):
    path = tmp_path / "live.wav"
    run, partial = _stream_until_three_seconds(tiny_checkpoint[0], path)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, err.decode()
    assert "interrupted; keeping the first" in err.decode()
    assert not partial.exists()
    seconds = _whole_seconds(path)
    assert f"wrote {path} ({seconds}.00 s" in out.decode()
    assert read_metadata(path)["seed"] == 1  # tagged like any finished file


@torch.inference_mode()
def test_the_chunked_decode_is_the_same_at_any_thread_count(model):
    codes = torch.randint(0, 64, (1, 4, 160), generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = model.decode_audio(codes)
        torch.set_num_threads(2)
        assert torch.equal(model.decode_audio(codes), one)
    finally:
        torch.set_num_threads(threads)
