"""The `zhiyin generate` command: files it writes, and one clean error line (exit 2, no file) for bad input."""

from __future__ import annotations

import math
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import zhiyin
from zhiyin.cli import main
from zhiyin.processing.audio_io import read_audio

from checkpoints import SHARED_AUDIO

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
    done = _command(
        "generate", "bassy drums", "--model", model, "--duration", 0.5, "--quiet", "-o", "out.wav", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "wrote out.wav (0.50 s, 32000 Hz, mono)"
    assert "Traceback" not in done.stderr
    assert len(read(tmp_path / "out.wav")) == frames_for(0.5) * HOP


def test_hub_id_offline_and_not_cached(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"))
    done = _command(
        "generate",
        "piano",
        "--model",
        "facebook/musicgen-small",
        "--duration",
        0.5,
        "--quiet",
        "-o",
        "out.wav",
        cwd=tmp_path,
        env=env,
    )
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
    "duration past the maximum": (["piano", "--duration", "1e9"], ["--duration", "--max-duration"]),
    "duration inf": (["piano", "--duration", "inf"], ["--duration", "finite"]),
    "duration nan": (["piano", "--duration", "nan"], ["--duration", "finite"]),
    "duration under a frame": (["piano", "--duration", "0.001"], ["--duration", "one audio frame"]),
    "duration not a number": (["piano", "--duration", "ten"], ["--duration", "'ten'"]),
    "seed 2**70": (["piano", "--seed", str(2**70)], ["--seed", "2**63"]),
    "seed -1": (["piano", "--seed", "-1"], ["--seed", "from 0"]),
    "temperature nan": (["piano", "--temperature", "nan"], ["--temperature", "finite"]),
    "guidance nan": (["piano", "--guidance", "nan"], ["--guidance", "finite"]),
    "top-p inf": (["piano", "--top-p", "inf"], ["--top-p", "finite"]),
    "window nan": (["piano", "--window", "nan"], ["--window", "finite"]),
    "window past one pass": (["piano", "--window", "60", "--extend-stride", "30"], ["--window 60", "one pass"]),
    "output in /proc": (["piano", "-o", "/proc/o.wav"], ["/proc", "not writable"]),
    "output in /sys": (["piano", "-o", "/sys/o.wav"], ["/sys", "not writable"]),
    "output a folder with a slash": (["piano", "-o", "{tmp}/adir/"], ["adir/", "is a folder", "music.wav"]),
    "output an existing folder": (["piano", "-o", "{tmp}/adir"], ["adir", "is a folder", "music.wav"]),
    "output a device": (["piano", "-o", "/dev/full"], ["/dev/full", "not a regular file"]),
    "bitrate for a wav": (["piano", "--bitrate", "128"], ["--bitrate", "mp3"]),
    "bitrate not standard": (["piano", "-o", "{tmp}/out.mp3", "--bitrate", "100"], ["--bitrate", "100"]),
    "prompt-seconds alone": (["piano", "--prompt-seconds", "3"], ["--prompt-seconds", "--audio-prompt"]),
    "loudness above full scale": (["piano", "--loudness", "3"], ["--loudness"]),
    "unknown normalize": (["piano", "--normalize", "loud"], ["--normalize", "'loud'"]),
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
    (tmp_path / "adir").mkdir()
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


@pytest.mark.parametrize(
    "bad", [["--top-k", "0"], ["--duration", "50", "--window", "45"]], ids=["before-loading", "after-loading"]
)
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
    argv = [
        "generate",
        "a calm piano",
        "--model",
        str(folder),
        "--duration",
        "0.5",
        "--quiet",
        "--picture",
        "-o",
        str(out),
    ]
    assert main(argv + (["--stream"] if stream else [])) == 0
    picture = tmp_path / "song.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"picture {picture}" in capsys.readouterr().out


def test_flags_are_checked_before_torch_is_imported(tmp_path):
    """--help, --version and bad flags answer without importing torch (or reading a model)."""
    script = """
import contextlib, io, sys
from zhiyin.cli import main
for argv in (["generate", "x", "--duration", "nan"], ["generate", "x", "--seed", "-1"],
             ["generate", "x", "-o", "/proc/x.wav"], ["generate", "x", "--top-k", "0"],
             ["generate", "--unconditional", "--duration", "1e9"]):
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(argv) == 2, argv
    assert err.getvalue().startswith("zhiyin: error:"), err.getvalue()
for argv in (["--help"], ["generate", "--help"], ["--version"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as done:
            assert done.code == 0
assert "torch" not in sys.modules, "torch was imported"
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_long_audio_prompt_is_refused_from_its_header(capsys, model, tmp_path, monkeypatch):
    """A 10-minute prompt is refused before it is decoded, with advice a CLI user can follow; --prompt-seconds
    continues its end."""
    long = tmp_path / "ten-minutes.wav"
    soundfile.write(str(long), np.zeros(8000 * 600, dtype=np.int16), 8000)
    tail = np.sin(np.arange(8000 * 2) * 0.05).astype(np.float32) * 0.5
    with soundfile.SoundFile(str(long), "r+") as f:  # a tone in its last 2 s
        f.seek(8000 * 598)
        f.write(tail)
    import zhiyin.processing.audio_io as audio_io

    real_read = audio_io.read_audio
    monkeypatch.setattr(audio_io, "read_audio", lambda *a, **k: pytest.fail("decoded a prompt it must refuse"))
    status, out, err = generate(capsys, model, "piano", "--audio-prompt", long, "-o", tmp_path / "x.wav")
    assert_usage_error(status, out, err, "600.0 s", "--window", "--prompt-seconds")
    assert "generate_long" not in err
    monkeypatch.setattr(audio_io, "read_audio", real_read)
    status, out, err = generate(
        capsys,
        model,
        "piano",
        "--audio-prompt",
        long,
        "--prompt-seconds",
        2,
        "-o",
        tmp_path / "x.wav",
        "--normalize",
        "none",
        "--greedy",
    )
    assert status == 0, err
    assert len(read(tmp_path / "x.wav")) == (100 + frames_for(0.5)) * HOP  # 2 s of prompt + 0.5 s


@pytest.mark.parametrize(
    "damage", ["truncated safetensors", "pickle with code", "not a pickle", "bad config.json", "bad tokenizer.json"]
)
def test_damaged_checkpoints_get_one_line(capsys, tiny_checkpoint, tmp_path, damage):
    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint[0], folder)
    weights = folder / "model.safetensors"
    if damage == "truncated safetensors":
        os.truncate(weights, weights.stat().st_size - 1000)
        phrases = ["model.safetensors", "damaged or incomplete", "download it again"]
    elif damage in ("pickle with code", "not a pickle"):
        weights.unlink()
        bad = folder / "pytorch_model.bin"
        if damage == "pickle with code":
            torch.save({"x": _RunsCode(str(tmp_path / "ran"))}, bad)
            phrases = ["pytorch_model.bin", "code", "never runs"]
        else:
            bad.write_bytes(b"PK\x03\x04 half a zip file")
            phrases = ["pytorch_model.bin", "damaged or incomplete"]
    elif damage == "bad config.json":
        (folder / "config.json").write_text('{"decoder": {"hidden_size": 48,}\n')
        phrases = ["config.json", "not valid JSON", "line 1"]
    else:
        (folder / "tokenizer.json").write_text("{ not json")
        phrases = ["tokenizer.json", "download it again"]
    status, out, err = generate(capsys, str(folder), "piano", "-o", tmp_path / "out.wav")
    assert_usage_error(status, out, err, *phrases)
    assert "weights_only" not in err  # never the advice to let a file run code
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out.wav").exists()


class _RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # would create a file if it ran


# ---------------------------------------------------------------- what a file says about itself


def test_drawn_seed_is_printed_stored_and_remakes_the_file(capsys, model, tmp_path):
    first = tmp_path / "first.wav"
    status, out, err = generate(capsys, model, "lofi piano", 'it\'s "quoted"', "-o", first, "--top-k", 20)
    assert status == 0, err
    seed = int(err.strip().splitlines()[-1].split("seed ")[1].split(" ")[0])
    assert f"--seed {seed} makes the same music" in err
    for take, prompt in ((1, "lofi piano"), (2, 'it\'s "quoted"')):
        status, out, err = run(capsys, "info", tmp_path / f"first-{take}.wav")
        assert status == 0, err
        lines = {line[:9].strip(): line[10:] for line in out.splitlines() if line[:9].strip()}
        assert lines["prompt"] == prompt and lines["seed"] == str(seed) and lines["model"] == model
        assert "top-k 20" in lines["settings"] and lines["made by"] == f"zhiyin {zhiyin.__version__}"
        assert f"(file {take} of the 2 that command writes)" in out
    command = shlex.split(lines["remake"])
    assert command[:2] == ["zhiyin", "generate"] and command[-2:] == ["-o", str(first)]
    again = tmp_path / "again.wav"
    status, _, err = run(capsys, *command[1:-2], "--quiet", "-o", again)
    assert status == 0, err
    for take in (1, 2):  # the same samples, to the bit
        assert np.array_equal(read(tmp_path / f"again-{take}.wav"), read(tmp_path / f"first-{take}.wav"))


def test_info_on_a_file_zhiyin_did_not_write(capsys, tmp_path):
    soundfile.write(str(tmp_path / "other.wav"), np.zeros(320, np.float32), 32000)
    status, out, err = run(capsys, "info", tmp_path / "other.wav")
    assert_usage_error(status, out, err, "other.wav", "no zhiyin metadata")
    status, out, err = run(capsys, "info", tmp_path / "missing.wav")
    assert_usage_error(status, out, err, "missing.wav", "not found")


def test_mp3_with_a_bitrate_and_its_metadata(capsys, model, tmp_path):
    status, out, err = generate(
        capsys, model, "jazz", "-o", tmp_path / "x.mp3", "--bitrate", 128, "--seed", 4, duration=2.0
    )
    assert status == 0, err
    info = soundfile.info(str(tmp_path / "x.mp3"))
    assert (info.format, info.samplerate, info.channels) == ("MP3", RATE, 1)
    assert abs(info.frames - frames_for(2.0) * HOP) <= 2 * 1152  # whole MPEG frames
    assert "--bitrate 128" in run(capsys, "info", tmp_path / "x.mp3")[1]


def test_info_shows_zero_valued_settings(capsys, model, tmp_path):
    assert generate(capsys, model, "jazz", "--loudness", 0, "--seed", 2, "-o", tmp_path / "x.wav")[0] == 0
    settings = next(
        line for line in run(capsys, "info", tmp_path / "x.wav")[1].splitlines() if line.startswith("settings")
    )
    assert "loudness 0.0" in settings and "compress" not in settings  # a 0 level shown; a flag left off is not


def test_levels_loudness_by_default_and_none_keeps_the_models_samples(capsys, model, tmp_path):
    from zhiyin.processing.loudness import measure_loudness

    runs = {
        "default.wav": [],
        "explicit.wav": ["--normalize", "loudness", "--loudness", "-14"],
        "quiet.wav": ["--loudness", "-20"],
        "raw.wav": ["--normalize", "none"],
    }
    for name, level in runs.items():
        assert generate(capsys, model, "drums", "--seed", 9, "-o", tmp_path / name, *level, duration=2.0)[0] == 0
    assert np.array_equal(read(tmp_path / "default.wav"), read(tmp_path / "explicit.wav"))
    quiet, raw = read(tmp_path / "quiet.wav"), read(tmp_path / "raw.wav")
    assert abs(measure_loudness(quiet[None], RATE) + 20) < 0.1
    np.testing.assert_allclose(quiet, raw * (np.abs(quiet).max() / np.abs(raw).max()), atol=2 / 32768)  # one gain
    loud = read(tmp_path / "default.wav")  # these drums would peak over -1 dB FS at -14 LUFS: the ceiling wins
    assert np.abs(loud).max() <= 10 ** (-1 / 20) + 1 / 32768 and measure_loudness(loud[None], RATE) < -14


@pytest.mark.parametrize(
    "quantize", [[], ["--quantize", "int8"], ["--quantize", "int4"]], ids=["float32", "int8", "int4"]
)
def test_same_seed_same_samples_at_one_and_two_threads(capsys, model, tmp_path, quantize):
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            status, _, err = generate(
                capsys,
                model,
                "techno",
                "--audio-prompt",
                SHARED_AUDIO / TRUMPET,
                "--seed",
                11,
                "-o",
                tmp_path / f"t{count}.wav",
                *quantize,
                duration=1.5,
            )
            assert status == 0, err
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(read(tmp_path / "t1.wav"), read(tmp_path / "t2.wav"))


def test_unconditional_needs_no_tokenizer(capsys, tiny_checkpoint, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint[0], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"):
        (folder / name).unlink()
    status, out, err = generate(capsys, str(folder), "--unconditional", "-o", tmp_path / "free.wav")
    assert status == 0, err
    assert len(read(tmp_path / "free.wav")) == frames_for(0.5) * HOP
