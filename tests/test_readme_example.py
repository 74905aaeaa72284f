"""The README's example program runs unchanged (apart from the checkpoint name) and writes three playable WAVs."""

import re
import subprocess
import sys
from pathlib import Path

import soundfile

from zhiyin.processing.audio_io import read_audio

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_end_to_end(tiny_checkpoint, shared_audio, tmp_path):
    folder, _ = tiny_checkpoint
    program = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert "from zhiyin import MusicgenForConditionalGeneration, AutoProcessor" in program
    program = program.replace('"facebook/musicgen-small"', repr(str(folder)))
    program = program.replace("../shared/audio/", str(shared_audio) + "/")
    (tmp_path / "example.py").write_text(program)
    subprocess.run([sys.executable, "example.py"], cwd=tmp_path, check=True, timeout=300)
    lengths = {}
    for name in ("out_unconditional.wav", "out_text.wav", "out_prompted.wav"):
        audio, rate = soundfile.read(tmp_path / name)
        assert rate == 32000 and audio.ndim == 1 and abs(audio).max() > 0
        lengths[name] = len(audio)
    assert lengths["out_unconditional.wav"] == lengths["out_text.wav"] == 253 * 640  # 256 new tokens -> 253 frames
    prompt = read_audio(shared_audio / "sorohanro_solo_trumpet_06.ogg", 32000, 1)
    prompt_frames = -(-prompt.shape[-1] // 640)
    assert lengths["out_prompted.wav"] == (prompt_frames + 128 - 3) * 640  # the prompt, re-decoded, then the rest
