"""bench/benchmark.py end to end on a tiny checkpoint: its machinery (modes in their own processes, the JSON, the
table), not its figures, which come from the published shapes and live in BENCHMARKS.md."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARK = Path(__file__).resolve().parents[1] / "bench" / "benchmark.py"
AB_KERNELS = BENCHMARK.with_name("ab_kernels.py")


def test_benchmark_runs_zhiyin_and_transformers_side_by_side(tiny_checkpoint, tmp_path):
    folder, _ = tiny_checkpoint
    out = tmp_path / "results.json"
    modes = ["zhiyin-float32", "zhiyin-int8", "zhiyin-int4", "transformers-float32"]
    command = [
        sys.executable,
        str(BENCHMARK),
        "--checkpoint",
        str(folder),
        "--steps",
        "2",
        "--seconds",
        "0.5",
        "--modes",
        *modes,
        "--json",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert list(results) == modes
    for mode, r in results.items():
        for key in ("load_s", "t5_ms", "encodec_ms_per_s", "e2e_s", "peak_rss_gb"):  # timings of whole calls
            assert r[key] > 0, (mode, key)
        for key in ("step_ms_b1", "step_ms_b4"):  # differences of two timings: a tiny model's can come out negative
            assert math.isfinite(r[key]), (mode, key)
        assert r["e2e_audio_s"] == pytest.approx(0.5, abs=0.02), mode  # music of the length asked for
        assert r["bandwidth"] >= r["bandwidth_median"] > 1e8 and r["decoder_weight_bytes"] > 0, mode
        assert len(r["paired"]) == 5 and all(math.isfinite(step) and rate > 1e8 for step, rate in r["paired"]), mode
    # the floor counts what a step reads: int8 weights are a quarter of float32's, int4 about half of int8's (less
    # at the tiny widths, padded to 64 columns)
    assert results["zhiyin-int8"]["decoder_weight_bytes"] < results["zhiyin-float32"]["decoder_weight_bytes"] / 3
    assert results["zhiyin-int4"]["decoder_weight_bytes"] < results["zhiyin-int8"]["decoder_weight_bytes"] * 0.8
    table = done.stdout
    assert f"checkpoint {folder}" in table and all(mode in table for mode in modes)
    assert table.count("speed-up vs transformers-float32, step") == 1
    assert "floor: weight bytes / best" in table and "floor: weight bytes / median" in table
    assert table.count("step / floor at the reads around it") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without a GPU")
def test_benchmark_on_cuda_without_a_gpu_says_so(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--device", "cuda", "--checkpoint", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "sees no CUDA GPU" in done.stderr
    assert not any(tmp_path.iterdir())  # nothing made


def test_ab_kernels_alternates_this_trees_kernels_with_a_revisions(tiny_checkpoint):
    in_git = subprocess.run(["git", "-C", str(BENCHMARK.parent), "rev-parse", "HEAD"], capture_output=True)
    if in_git.returncode != 0:
        pytest.skip("not a git checkout: there is no earlier revision to build")
    folder, _ = tiny_checkpoint
    command = [sys.executable, str(AB_KERNELS), "--checkpoint", str(folder), "--old", "HEAD", "--runs", "2"]
    done = subprocess.run([*command, "--steps", "6", "--modes", "int4"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("int4 ")]
    assert [row[1] for row in rows] == ["1", "2", "mean"]
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows[:2])  # old and new ms, each run
    assert math.isfinite(float(rows[2][3]))
    done = subprocess.run([*command[:4], "--old", "no-such-revision"], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "--old no-such-revision" in done.stderr


def test_the_gpu_session_script_names_files_and_modes_that_exist():
    """bench/gpu_session.sh runs on a lent GPU machine, rarely: what it names must still be there when it does (its
    first run found test paths that had moved)."""
    import re

    sys.path.insert(0, str(BENCHMARK.parent))
    try:
        import benchmark
    finally:
        sys.path.pop(0)
    script = BENCHMARK.with_name("gpu_session.sh").read_text()
    paths = re.findall(r"\b((?:tests|bench)/[\w/]+\.py)\b", script)
    assert len(paths) >= 6
    for path in paths:
        assert (BENCHMARK.parents[1] / path).is_file(), path
    modes = script.split("--modes", 1)[1].split("2>&1", 1)[0].replace("\\", " ").split()
    assert modes and set(modes) <= set(benchmark.CUDA_MODES), modes


def test_gpu_profile_runs_on_the_cpu_as_a_dry_run(tiny_checkpoint):
    """bench/gpu_profile.py's machinery (generations at growing lengths, the attention kernels, the engine timed part
    by part) on the CPU, so that the GPU's few minutes are not spent finding its bugs."""
    folder, _ = tiny_checkpoint
    command = [sys.executable, str(BENCHMARK.with_name("gpu_profile.py")), "--checkpoint", str(folder)]
    done = subprocess.run([*command, "--device", "cpu", "--clients", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for line in (
        "float32: decoder",
        "bfloat16: 30 s of music end to end",
        "attention over 1536 positions, float32",
        "engine, 2 jobs of 10 s, new jobs never stepping alone",
        "_advance",
    ):
        assert line in done.stdout, line
