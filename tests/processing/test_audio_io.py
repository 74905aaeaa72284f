"""zhiyin.audio_io: reading, resampling, channel mixing and atomic writing of audio files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile
import torch

import zhiyin
from zhiyin.processing import audio_io
from zhiyin.processing.audio_io import read_audio, read_metadata, resample, to_channels, write_audio
from zhiyin.processing.loudness import measure_loudness, normalize

from checkpoints import SHARED_AUDIO as AUDIO_DIR  # noqa: E402

TRUMPET = AUDIO_DIR / "sorohanro_solo_trumpet_06.ogg"  # 22.05 kHz mono, 5.3 s


def _stereo_tone(seconds: float = 0.5, rate: int = 32000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)


@pytest.mark.parametrize("extension", ["wav", "flac", "ogg"])
def test_round_trip_keeps_length_channels_and_rate(tmp_path, extension):
    audio = _stereo_tone()
    path = tmp_path / f"tone.{extension}"
    assert write_audio(path, audio, 32000) == str(path)

    info = soundfile.info(str(path))
    assert (info.samplerate, info.channels, info.frames) == (32000, 2, audio.shape[1])
    back = read_audio(path, 32000, 2)
    assert back.dtype == np.float32 and back.shape == audio.shape
    if extension == "ogg":  # lossy: the waveform is only close
        assert np.corrcoef(back[0], audio[0])[0, 1] > 0.99
    else:  # 16-bit PCM
        np.testing.assert_allclose(back, audio, atol=1e-4)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_format_argument_overrides_the_extension(tmp_path):
    path = tmp_path / "tone.audio"
    write_audio(path, _stereo_tone(), 32000, format="flac")
    info = soundfile.info(str(path))
    assert (info.format, info.subtype) == ("FLAC", "PCM_16")


def test_unknown_format_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="wav, flac, ogg"):
        write_audio(tmp_path / "tone.mp4", _stereo_tone(), 32000)
    with pytest.raises(ValueError, match="wav, flac, ogg"):
        write_audio(tmp_path / "tone.wav", _stereo_tone(), 32000, format="aiff")


def test_write_accepts_tensors_and_mono_and_clips(tmp_path):
    path = tmp_path / "loud.wav"
    write_audio(path, torch.tensor([[2.0, -3.0, 0.5, float("nan")]]), 16000)
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert rate == 16000 and data.shape == (4, 1)
    np.testing.assert_allclose(data[:, 0], [1.0, -1.0, 0.5, 0.0], atol=1e-4)

    write_audio(path, np.zeros(100, dtype=np.float32), 16000)  # 1-D = mono
    assert soundfile.info(str(path)).channels == 1


def test_write_rejects_batches_and_transposed_audio(tmp_path):
    with pytest.raises(ValueError, match=r"audio\[0\]"):
        write_audio(tmp_path / "a.wav", np.zeros((1, 1, 100)), 32000)
    with pytest.raises(ValueError, match="transpose"):
        write_audio(tmp_path / "a.wav", np.zeros((1000, 2)), 32000)


def test_missing_output_folder(tmp_path):
    target = tmp_path / "no" / "such" / "out.wav"
    with pytest.raises(FileNotFoundError, match="does not exist; create it"):
        write_audio(target, _stereo_tone(), 32000)


def test_unwritable_output_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_io.os, "access", lambda path, mode: False)  # root may write anywhere
    with pytest.raises(PermissionError, match="choose a writable folder"):
        write_audio(tmp_path / "out.wav", _stereo_tone(), 32000)


def test_failed_write_leaves_no_half_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "song.wav"
    old = _stereo_tone(0.1)
    write_audio(target, old, 32000)
    old_bytes = target.read_bytes()
    real_write = soundfile.SoundFile.write

    def write_half_then_fail(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(audio_io.soundfile.SoundFile, "write", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_audio(target, _stereo_tone(1.0), 32000)
    assert target.read_bytes() == old_bytes
    with pytest.raises(OSError, match="disk full"):
        write_audio(tmp_path / "new.flac", _stereo_tone(1.0), 32000)
    assert sorted(os.listdir(tmp_path)) == ["song.wav"]


def test_read_resamples_real_music_to_32k():
    frames = soundfile.info(str(TRUMPET)).frames
    audio = read_audio(TRUMPET, 32000, 1)
    assert audio.dtype == np.float32 and audio.shape[0] == 1
    assert abs(audio.shape[1] - frames * 32000 / 22050) <= 1
    assert 0.01 < np.abs(audio).max() <= 1.5


def test_read_up_mixes_mono_to_stereo():
    stereo = read_audio(TRUMPET, 22050, 2)
    mono, _ = soundfile.read(str(TRUMPET), dtype="float32")
    assert stereo.shape == (2, mono.shape[0])
    np.testing.assert_array_equal(stereo[0], mono)
    np.testing.assert_array_equal(stereo[1], mono)


def test_read_down_mixes_stereo_to_mono(tmp_path):
    path = tmp_path / "stereo.flac"
    tone = _stereo_tone()
    write_audio(path, tone, 32000)
    mono = read_audio(path, 32000, 1)
    assert mono.shape == (1, tone.shape[1])
    np.testing.assert_allclose(mono[0], tone.mean(axis=0), atol=1e-4)


def test_channel_and_rate_helpers():
    tone = _stereo_tone()
    np.testing.assert_array_equal(to_channels(tone, 2), tone)
    np.testing.assert_allclose(to_channels(tone, 1)[0], tone.mean(axis=0))
    np.testing.assert_array_equal(to_channels(tone[0], 2), np.stack([tone[0], tone[0]]))
    with pytest.raises(ValueError, match="down-mix it to mono first"):
        to_channels(np.zeros((6, 10)), 2)

    assert resample(tone, 32000, 32000).shape == tone.shape
    assert resample(tone, 32000, 16000).shape == (2, tone.shape[1] // 2)
    assert resample(tone[0], 32000, 16000).shape == (tone.shape[1] // 2,)


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nothing_here.wav"
    with pytest.raises(FileNotFoundError, match="nothing_here.wav"):
        read_audio(missing, 32000, 1)


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10])
def test_corrupt_or_empty_file_is_a_value_error(tmp_path, content):
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"cannot read audio from '.*broken.wav'.*soundfile can read"):
        read_audio(path, 32000, 1)


def test_file_without_samples_is_a_value_error(tmp_path):
    path = tmp_path / "silent.wav"
    soundfile.write(str(path), np.zeros((0, 1), dtype=np.float32), 32000)
    with pytest.raises(ValueError, match="no samples"):
        read_audio(path, 32000, 1)


# ---------------------------------------------------------------- levels, mp3, metadata


def _music(shared_audio, gain: float) -> np.ndarray:
    return gain * read_audio(shared_audio / "kevin_macleod_vibe_ace.ogg", 32000, 1)[:, : 32000 * 4]


def _written(tmp_path, audio, name="x.wav", **options) -> np.ndarray:
    path = write_audio(tmp_path / name, audio, 32000, **options)
    return soundfile.read(path, dtype="float32", always_2d=True)[0].T


def test_loudness_reaches_its_target_without_clipping(tmp_path, shared_audio):
    quiet = _music(shared_audio, 0.05)
    out = _written(tmp_path, quiet, normalize="loudness", loudness_db=-20.0)
    assert abs(measure_loudness(out, 32000) + 20.0) < 0.1
    assert np.abs(out).max() <= 10 ** (-1 / 20) + 1e-4  # under the -1 dB FS ceiling
    assert np.allclose(out, quiet * (out.std() / quiet.std()), atol=2e-4)  # one gain, nothing bent


def test_loud_targets_stop_at_the_ceiling_or_are_compressed(tmp_path, shared_audio):
    music = _music(shared_audio, 0.05)
    music[0, 1000] = 0.05  # one sharp peak far above the music's level
    ceiling = 10 ** (-1 / 20)
    plain = _written(tmp_path, music, normalize="loudness", loudness_db=-8.0)
    assert abs(np.abs(plain).max() - ceiling) < 1e-3  # gain lowered to the ceiling: never clipped
    squeezed = _written(tmp_path, music, "y.wav", normalize="loudness", loudness_db=-8.0, compress=True)
    assert np.abs(squeezed).max() < ceiling
    assert abs(measure_loudness(squeezed, 32000) + 8) < abs(measure_loudness(plain, 32000) + 8)


@pytest.mark.parametrize("strategy", ["peak", "rms", "clip", "none"])
def test_other_levels(tmp_path, shared_audio, strategy):
    music = _music(shared_audio, 0.05)
    out = normalize(music, 32000, strategy, target_db=-20.0)
    if strategy == "peak":
        assert abs(np.abs(out).max() - 10 ** (-1 / 20)) < 1e-6
    elif strategy == "rms":
        assert abs(20 * np.log10(np.sqrt(np.mean(out.astype(np.float64) ** 2))) + 20) < 1e-3
    else:
        np.testing.assert_array_equal(out, music)  # already within +-1
    assert np.array_equal(normalize(np.zeros((1, 320), np.float32), 32000, strategy), np.zeros((1, 320)))
    with pytest.raises(ValueError, match="unknown normalize strategy 'loud'"):
        normalize(music, 32000, "loud")


@pytest.mark.parametrize("name", ["x.wav", "x.flac", "x.ogg", "x.mp3"])
def test_metadata_is_stored_in_every_format(tmp_path, name):
    metadata = {"prompt": 'lofi 知音 "piano"', "seed": 2**62 + 1, "settings": {"top_k": 250, "top_p": None}}
    write_audio(tmp_path / name, _stereo_tone(), 32000, metadata=metadata)
    got = read_metadata(tmp_path / name)
    assert got == {"zhiyin": zhiyin.__version__, **metadata}
    write_audio(tmp_path / name, _stereo_tone(), 32000)
    assert read_metadata(tmp_path / name) is None


def test_mp3_at_the_asked_bitrate(tmp_path):
    noise = 0.3 * np.random.default_rng(0).standard_normal((1, 32000 * 4)).astype(np.float32)
    for kbps in (96, 192, 320):
        path = write_audio(tmp_path / f"n{kbps}.mp3", noise, 32000, bitrate=kbps)
        assert soundfile.info(path).format == "MP3"
        assert abs(os.path.getsize(path) * 8 / 4 / 1000 - kbps) < 0.05 * kbps
    with pytest.raises(ValueError, match="bitrate must be one of"):
        write_audio(tmp_path / "x.mp3", noise, 32000, bitrate=100)
    with pytest.raises(ValueError, match="mp3 files only"):
        write_audio(tmp_path / "x.wav", noise, 32000, bitrate=192)
