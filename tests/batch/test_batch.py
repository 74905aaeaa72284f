"""`zhiyin batch` on the tiny checkpoint: a mixed jobs file gives the right files, lengths and manifest; bad lines
are reported and the rest go on; runs made again skip what is done and finish the rest; each file is `zhiyin
generate`'s for the same settings and seed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from zhiyin.batch.jobs import seed_of
from zhiyin.cli import main

SHARED = Path(__file__).resolve().parents[3] / "shared" / "audio"
TRUMPET = "sorohanro_solo_trumpet_06.ogg"
RATE, HOP = 32000, 640

JOBS = [
    {"id": "pop", "prompt": "80s pop track with bassy drums and synth", "duration": 1.0, "seed": 3},
    {"prompt": None, "duration": 0.5, "seed": 4},  # unconditional, id from its line: 00002
    {"id": "cont", "prompt": "jazz", "duration": 0.6, "audio_prompt": "trumpet.ogg", "seed": 5, "temperature": 0.8},
    "this line is not JSON",
    {"id": "lost", "prompt": "rock", "duration": 0.5, "audio_prompt": "missing.wav"},
    {"id": "calm", "prompt": "ambient pads", "duration": 0.7, "top_k": 50, "guidance_scale": 1.5, "format": "flac"},
]


def write_jobs(folder: Path, jobs=JOBS) -> Path:
    shutil.copy(SHARED / TRUMPET, folder / "trumpet.ogg")
    path = folder / "jobs.jsonl"
    path.write_text("".join((j if isinstance(j, str) else json.dumps(j)) + "\n" for j in jobs))
    return path


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def batch(capsys, model, jobs, out, *argv):
    return run(capsys, "batch", jobs, "-o", out, "--model", model, "--quiet", "--max-batch", 3, *argv)


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def samples(path: Path) -> np.ndarray:
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert rate == RATE
    return data


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return str(tiny_checkpoint[0])


@pytest.fixture(scope="module")
def first_run(model, tmp_path_factory):
    """The mixed jobs file, run once: (folder, status, stderr)."""
    folder = tmp_path_factory.mktemp("batch")
    jobs = write_jobs(folder)
    status = main(["batch", str(jobs), "-o", str(folder / "out"), "--model", model, "--quiet", "--max-batch", "3"])
    return folder, status


def test_a_mixed_jobs_file(first_run, capsys, model):
    folder, status = first_run
    out = folder / "out"
    assert status == 1  # two lines failed, the others were made
    entries = {e["id"]: e for e in manifest(out)}
    assert len(manifest(out)) == len(entries) == 6
    assert sorted(os.listdir(out)) == ["00002.wav", "calm.flac", "cont.wav", "manifest.jsonl", "pop.wav"]
    # lengths: the new music, and an audio prompt's continuation on top of its prompt
    assert samples(out / "pop.wav").shape == (50 * HOP, 1)
    assert samples(out / "00002.wav").shape == (25 * HOP, 1)
    assert samples(out / "calm.flac").shape == (35 * HOP, 1)
    prompt_frames = round(5.3 * 50)  # the trumpet clip, whole
    assert abs(samples(out / "cont.wav").shape[0] - (prompt_frames + 30) * HOP) <= 2 * HOP
    for id, seconds in (("pop", 1.0), ("00002", 0.5), ("calm", 0.7)):
        e = entries[id]
        assert e["status"] == "ok" and e["file"].startswith(id) and e["seconds"] == seconds and e["wall"] > 0
    assert entries["pop"]["seed"] == 3
    assert entries["calm"]["seed"] == seed_of("calm")  # none given: made from its id
    assert entries["00004"]["status"] == "failed" and "not JSON" in entries["00004"]["error"]
    assert entries["00004"]["line"] == 4
    assert entries["lost"]["status"] == "failed" and "missing.wav" in entries["lost"]["error"]


def test_the_summary_names_the_failures(model, tmp_path, capsys):
    jobs = write_jobs(tmp_path, [JOBS[0], JOBS[3], JOBS[4]])
    status, out, err = batch(capsys, model, jobs, tmp_path / "out")
    assert status == 1 and out == ""
    assert "1 made" in err and "2 failed" in err
    assert "line 2 (00002): is not JSON" in err
    assert "line 3 (lost): audio_prompt file 'missing.wav' not found" in err


def test_a_run_made_again_makes_nothing_new(first_run, model, capsys):
    folder, _ = first_run
    out = folder / "out"
    before = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out) if name != "manifest.jsonl"}
    entries = manifest(out)
    status, _, err = batch(capsys, model, folder / "jobs.jsonl", out)
    assert status == 1  # the same two lines fail again
    assert "0 made" in err and "4 done before" in err
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before
    again = manifest(out)
    assert len(again) == 6 and sorted(e["id"] for e in again) == sorted(e["id"] for e in entries)
    ok = {e["id"]: e for e in entries if e["status"] == "ok"}
    assert all(e == ok[e["id"]] for e in again if e["status"] == "ok")


def test_a_deleted_file_or_a_changed_line_is_made_again(model, tmp_path, capsys):
    jobs = write_jobs(tmp_path, JOBS[:2])
    out = tmp_path / "out"
    assert batch(capsys, model, jobs, out)[0] == 0
    pop = samples(out / "pop.wav")
    other = (out / "00002.wav").stat().st_mtime_ns
    (out / "pop.wav").unlink()
    status, _, err = batch(capsys, model, jobs, out)
    assert status == 0 and "1 made" in err and "1 done before" in err
    assert np.array_equal(samples(out / "pop.wav"), pop)  # the same seed: the same music
    assert (out / "00002.wav").stat().st_mtime_ns == other
    changed = [{**JOBS[0], "seed": 9}, JOBS[1]]
    write_jobs(tmp_path, changed)
    status, _, err = batch(capsys, model, jobs, out)
    assert status == 0 and "1 made" in err
    assert not np.array_equal(samples(out / "pop.wav"), pop)
    entries = manifest(out)
    assert len(entries) == 2 and {e["id"]: e["seed"] for e in entries} == {"pop": 9, "00002": 4}


def test_csv_jobs(model, tmp_path, capsys):
    (tmp_path / "jobs.csv").write_text(
        "id,prompt,duration,seed,top_k\nfirst,lofi hip hop,0.5,1,\nsecond,null,0.5,2,20\nthird,,0.5,3,\n"
    )
    status, _, err = batch(capsys, model, tmp_path / "jobs.csv", tmp_path / "out")
    assert status == 1
    entries = {e["id"]: e for e in manifest(tmp_path / "out")}
    assert entries["first"]["status"] == entries["second"]["status"] == "ok"
    assert entries["third"]["status"] == "failed" and "prompt is required" in entries["third"]["error"]
    assert entries["third"]["line"] == 4


def test_each_file_is_what_zhiyin_generate_makes(first_run, model, tmp_path, capsys):
    folder, _ = first_run
    out = folder / "out"
    made = [
        ("pop", ["80s pop track with bassy drums and synth", "--duration", 1.0, "--seed", 3]),
        ("calm", ["ambient pads", "--duration", 0.7, "--top-k", 50, "--guidance", 1.5, "--seed", seed_of("calm")]),
        ("cont", ["jazz", "--duration", 0.6, "--audio-prompt", folder / "trumpet.ogg", "--seed", 5]),
    ]
    for id, argv in made:
        extra = ["--temperature", 0.8] if id == "cont" else []
        file = next(out.glob(f"{id}.*"))  # the same format: the same writer
        status, _, err = run(capsys, "generate", *argv, *extra, "--model", model, "--quiet", "-o", tmp_path / file.name)
        assert status == 0, err
        assert np.array_equal(samples(tmp_path / file.name), samples(file)), id
    status, _, err = run(
        capsys, "generate", "--unconditional", "--duration", 0.5, "--seed", 4, "--model", model, "--quiet",
        "-o", tmp_path / "u.wav",
    )  # fmt: skip
    assert status == 0, err
    assert np.array_equal(samples(tmp_path / "u.wav"), samples(out / "00002.wav"))


def start_after_first_item(model: str, folder: Path, count: int) -> subprocess.Popen:
    """`zhiyin batch` of `count` pieces of 1.5 s one at a time into folder/out, as a process of its own, once its
    first piece is in the manifest."""
    jobs = [{"id": f"p{i}", "prompt": f"piece {i}", "duration": 1.5, "seed": i} for i in range(count)]
    path, out = write_jobs(folder, jobs), folder / "out"
    command = [sys.executable, "-m", "zhiyin", "batch", str(path), "-o", str(out), "--model", model, "--quiet"]
    # Ctrl-C at its default in the run (a shell's background job starts with SIGINT ignored: a run started from one
    # keeps ignoring it, as it should, but this test is about Ctrl-C)
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(
        command + ["--max-batch", "1"], stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 120
    while not (out / "manifest.jsonl").exists() or not (out / "manifest.jsonl").read_text().strip():
        assert process.poll() is None and time.monotonic() < deadline, "the first item never finished"
        time.sleep(0.05)
    return process


def test_a_killed_run_is_finished_by_the_next(model, tmp_path, capsys):
    """kill -9 in the middle: no half file, and the next run finishes the rest, each item once in the manifest."""
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    process = start_after_first_item(model, tmp_path, 8)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = manifest(out)
    assert 1 <= len(done) < 8
    assert all(name.endswith(".wav") or name == "manifest.jsonl" for name in os.listdir(out))  # no temporary left
    status, _, err = batch(capsys, model, jobs, out)
    assert status == 0, err
    entries = manifest(out)
    assert sorted(e["id"] for e in entries) == [f"p{i}" for i in range(8)]  # each once
    assert all(e["status"] == "ok" for e in entries)
    assert all(samples(out / f"p{i}.wav").shape == (75 * HOP, 1) for i in range(8))


def test_bad_invocations_exit_2(model, tmp_path, capsys):
    status, _, err = batch(capsys, model, tmp_path / "nope.jsonl", tmp_path / "out")
    assert status == 2 and "jobs file" in err and "not found" in err
    jobs = write_jobs(tmp_path, JOBS[:1])
    (tmp_path / "file").write_text("")
    status, _, err = batch(capsys, model, jobs, tmp_path / "file" / "out")
    assert status == 2 and "output folder" in err
    status, _, err = run(capsys, "batch", jobs, "-o", tmp_path / "out", "--model", tmp_path / "no-model")
    assert status == 2 and "no-model" in err
    status, _, err = batch(capsys, model, jobs, tmp_path / "out", "--max-batch", 0)
    assert status == 2 and "--max-batch" in err


def test_ctrl_c_leaves_whole_files_and_a_manifest_of_them(model, tmp_path):
    out = tmp_path / "out"
    process = start_after_first_item(model, tmp_path, 6)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and "the same command finishes the rest" in err
    entries = manifest(out)
    assert all(e["status"] == "ok" for e in entries) and len(entries) < 6
    files = sorted(name for name in os.listdir(out) if name != "manifest.jsonl")
    assert files == sorted(e["file"] for e in entries)  # every file whole and in the manifest, nothing else
