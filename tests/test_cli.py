"""The `zhiyin generate` command: files it writes, and one clean error line (exit 2, no file) for bad input."""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from zhiyin.audio_io import read_audio
from zhiyin.cli import main

RATE = 32000  # the tiny checkpoint's EnCodec: 32 kHz, 50 frames/s, 640 samples per frame
HOP = 640
TRUMPET = "sorohanro_solo_trumpet_06.ogg"  # 22.05 kHz mono, 5.3 s


def frames_for(seconds: float) -> int:
    return round(seconds * 50)


@pytest.fixture
def model(tiny_checkpoint):
    return str(tiny_checkpoint[0])


def run(capsys, *argv):
    """main(argv) in-process -> (exit status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def generate(capsys, model, *argv, duration=0.5):
    return run(capsys, "generate", "--model", model, "--duration", duration, "--quiet", *argv)  # argv may override


def read(path) -> np.ndarray:
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert rate == RATE
    assert data.shape[1] == 1  # mono
    return data[:, 0]


def assert_usage_error(status, out, err, *phrases):
    assert status == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("zhiyin: error:"), err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase.lower() in lines[0].lower(), lines[0]


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---------------------------------------------------------------- what it makes


def test_text_prompt_writes_32k_mono_wav_of_the_asked_length(capsys, model, tmp_path):
    out_path = tmp_path / "song.wav"
    status, out, err = generate(capsys, model, "lofi hip hop with piano", "-o", out_path, "--seed", 0, duration=0.5)
    assert status == 0, err
    info = soundfile.info(str(out_path))
    assert (info.samplerate, info.channels, info.format) == (RATE, 1, "WAV")
    assert info.frames == frames_for(0.5) * HOP == 16000
    audio = read(out_path)
    assert np.abs(audio).max() > 0  # not silence
    assert out.strip().splitlines() == [f"wrote {out_path} (0.50 s, 32000 Hz, mono)"]
    assert "Traceback" not in err and "error" not in err
    assert files_in(tmp_path) == {"song.wav"}  # no temporary files left behind


def test_several_prompts_make_numbered_files(capsys, model, tmp_path):
    status, out, err = generate(capsys, model, "calm piano", "loud drums", "-o", tmp_path / "mix.wav", duration=0.4)
    assert status == 0, err
    assert files_in(tmp_path) == {"mix-1.wav", "mix-2.wav"}
    for name in ("mix-1.wav", "mix-2.wav"):
        assert len(read(tmp_path / name)) == frames_for(0.4) * HOP
        assert f"wrote {tmp_path / name} (0.40 s" in out
    assert len(out.strip().splitlines()) == 2


@pytest.mark.parametrize("argv, name", [(["-o", "x.wav", "--format", "flac"], "x.flac"), (["-o", "x.ogg"], "x.ogg")])
def test_flac_and_ogg_outputs(capsys, model, tmp_path, argv, name):
    argv = [tmp_path / a if a.startswith("x.") else a for a in argv]
    status, out, err = generate(capsys, model, "jazz", *argv, duration=0.5)
    assert status == 0, err
    assert files_in(tmp_path) == {name}
    info = soundfile.info(str(tmp_path / name))
    assert info.format == name.split(".")[1].upper()
    assert (info.samplerate, info.channels) == (RATE, 1)
    assert abs(info.frames - frames_for(0.5) * HOP) <= (0 if name.endswith("flac") else HOP)
    assert str(tmp_path / name) in out


def test_unconditional_num_samples(capsys, model, tmp_path):
    status, out, err = generate(capsys, model, "--unconditional", "--num-samples", 2, "-o", tmp_path / "free.wav")
    assert status == 0, err
    assert files_in(tmp_path) == {"free-1.wav", "free-2.wav"}
    for name in ("free-1.wav", "free-2.wav"):
        assert len(read(tmp_path / name)) == frames_for(0.5) * HOP


def test_audio_prompt_is_resampled_and_continued(capsys, model, tmp_path, shared_audio):
    clip = shared_audio / TRUMPET
    assert soundfile.info(str(clip)).samplerate == 22050
    prompt = read_audio(clip, RATE, 1)
    expected_samples = soundfile.info(str(clip)).frames * RATE / 22050
    assert abs(prompt.shape[1] - expected_samples) <= 1  # resampled to 32 kHz
    prompt_frames = math.ceil(prompt.shape[1] / HOP)

    out_path = tmp_path / "more.wav"
    status, out, err = generate(capsys, model, "trumpet solo", "--audio-prompt", clip, "-o", out_path, duration=0.5)
    assert status == 0, err
    assert len(read(out_path)) == (prompt_frames + frames_for(0.5)) * HOP
    assert f"({(prompt_frames + frames_for(0.5)) * HOP / RATE:.2f} s, 32000 Hz, mono)" in out


def test_greedy_is_repeatable(capsys, model, tmp_path):
    for name in ("a.wav", "b.wav"):
        assert generate(capsys, model, "organ", "--greedy", "-o", tmp_path / name)[0] == 0
    assert np.array_equal(read(tmp_path / "a.wav"), read(tmp_path / "b.wav"))


def test_seed_is_repeatable_and_seeds_differ(capsys, model, tmp_path):
    for name, seed in (("a.wav", 3), ("b.wav", 3), ("c.wav", 4)):
        assert generate(capsys, model, "techno", "--seed", seed, "-o", tmp_path / name)[0] == 0
    assert np.array_equal(read(tmp_path / "a.wav"), read(tmp_path / "b.wav"))
    assert not np.array_equal(read(tmp_path / "a.wav"), read(tmp_path / "c.wav"))


# ---------------------------------------------------------------- the real command


def _command(*argv, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "zhiyin", *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_python_dash_m_zhiyin_generates(model, tmp_path):
    done = _command("generate", "bassy drums", "--model", model, "--duration", 0.5, "--quiet", "-o", "out.wav", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "wrote out.wav (0.50 s, 32000 Hz, mono)"
    assert "Traceback" not in done.stderr
    assert len(read(tmp_path / "out.wav")) == frames_for(0.5) * HOP


def test_hub_id_offline_and_not_cached(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"))
    done = _command("generate", "piano", "--model", "facebook/musicgen-small", "--duration", 0.5, "--quiet",
                    "-o", "out.wav", cwd=tmp_path, env=env)
    assert_usage_error(done.returncode, done.stdout, done.stderr, "facebook/musicgen-small", "offline", "cache")
    assert "hf download" in done.stderr or "local checkpoint folder" in done.stderr  # how to fix it
    assert not (tmp_path / "out.wav").exists()


def test_bad_input_from_the_real_command(tmp_path):
    done = _command("generate", "piano", "--top-k", 0, "-o", "out.wav", cwd=tmp_path)
    assert_usage_error(done.returncode, done.stdout, done.stderr, "--top-k")
    assert files_in(tmp_path) == set()


# ---------------------------------------------------------------- bad input: one line, exit 2, no file

BAD = {
    "empty prompt": (['""'], ["prompt"]),
    "blank prompt": (["   "], ["prompt"]),
    "no prompt": ([], ["prompt", "--unconditional"]),
    "prompt and unconditional": (["piano", "--unconditional"], ["--unconditional"]),
    "num-samples 0": (["--unconditional", "--num-samples", "0"], ["--num-samples"]),
    "duration 0": (["piano", "--duration", "0"], ["--duration"]),
    "duration -1": (["piano", "--duration", "-1"], ["--duration"]),
    "extend-stride past window": (["piano", "--extend-stride", "30"], ["--extend-stride", "--window"]),
    "stream to flac": (["piano", "--stream", "-o", "{tmp}/out.flac"], ["--stream", ".wav"]),
    "top-k 0": (["piano", "--top-k", "0"], ["--top-k"]),
    "top-p 0": (["piano", "--top-p", "0"], ["--top-p"]),
    "top-p 1.5": (["piano", "--top-p", "1.5"], ["--top-p"]),
    "temperature 0": (["piano", "--temperature", "0"], ["--temperature", "--greedy"]),
    "guidance 0.5": (["piano", "--guidance", "0.5"], ["--guidance"]),
    "unknown extension": (["piano", "-o", "{tmp}/out.mp4"], ["format", ".mp4"]),
    "output folder missing": (["piano", "-o", "{tmp}/nowhere/out.wav"], ["nowhere", "does not exist"]),
    "output is a folder": (["piano", "-o", "{tmp}/folder.wav"], ["folder.wav", "is a folder"]),
    "missing audio prompt": (["piano", "--audio-prompt", "{tmp}/absent.wav"], ["absent.wav", "not found"]),
    "corrupt audio prompt": (["piano", "--audio-prompt", "{tmp}/garbage.wav"], ["garbage.wav", "cannot read audio"]),
    "missing model folder": (["piano", "--model", "{tmp}/no-such-model"], ["no-such-model", "does not exist"]),
    "unknown device": (["piano", "--device", "gpu"], ["device 'gpu'", "cuda"]),
    "absent GPU": (["piano", "--device", "cuda:99"], ["cuda:99"]),
}
if not torch.cuda.is_available():
    BAD["no CUDA here"] = (["piano", "--device", "cuda"], ["device 'cuda'", "no CUDA GPU", "use cpu"])


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(capsys, model, tmp_path, case):
    argv, phrases = BAD[case]
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x01garbage, not audio" * 50)
    (tmp_path / "folder.wav").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) if a != '""' else "" for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out.wav")]
    before = files_in(tmp_path)
    status, out, err = run(capsys, "generate", "--model", model, "--duration", "0.5", "--quiet", *argv)
    assert_usage_error(status, out, err, *phrases)
    assert files_in(tmp_path) == before  # nothing written, no temporary files left
    assert not list(tmp_path.glob("out*"))


def test_output_folder_not_writable(capsys, model, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("chmod does not stop this user (root?) from writing")
        status, out, err = generate(capsys, model, "piano", "-o", locked / "out.wav")
        assert_usage_error(status, out, err, "not writable")
        assert files_in(locked) == set()
    finally:
        locked.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("bad", [["--top-k", "0"], ["--duration", "50", "--window", "45"]], ids=["before-loading", "after-loading"])
def test_failed_run_leaves_an_existing_file_intact(capsys, model, tmp_path, bad):
    out_path = tmp_path / "keep.wav"
    out_path.write_bytes(b"precious bytes")
    status, out, err = generate(capsys, model, "piano", "-o", out_path, *bad)
    assert_usage_error(status, out, err)
    assert out_path.read_bytes() == b"precious bytes"
    assert files_in(tmp_path) == {"keep.wav"}


@pytest.mark.parametrize("stream", [False, True])
def test_picture_beside_the_audio(tiny_checkpoint, tmp_path, capsys, stream):
    folder, _ = tiny_checkpoint
    out = tmp_path / "song.wav"
    argv = ["generate", "a calm piano", "--model", str(folder), "--duration", "0.5", "--quiet", "--picture", "-o", str(out)]
    assert main(argv + (["--stream"] if stream else [])) == 0
    picture = tmp_path / "song.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"picture {picture}" in capsys.readouterr().out
