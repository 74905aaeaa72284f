#!/usr/bin/env bash
# Issue 3's GPU half in one call on a lent GPU machine (the `device` tool's `run`), so that its short time goes to
# measuring: the packages its image lacks, the CUDA tests, then the benchmark with 30 s of music (the H100 target).
#
# That machine has no network and its image has torch, transformers 5.17, safetensors, tokenizers, huggingface_hub
# and tqdm, but not soundfile / soxr / cffi / pycparser nor transformers 5.24 (the tests' oracle). So first, here,
# fetch their wheels for its Python (3.12) into .whl/ (ignored by git, 15 MB):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl soundfile soxr cffi pycparser pyloudnorm transformers==5.24.0
# (pyloudnorm, with scipy, is only imported when a file is written with loudness levelling: not by this script)
# then: run(command="bash bench/gpu_session.sh", carry=[".whl"]). Everything it prints is also kept under $OUT
# (bench/gpu-results without one): nvidia-smi.txt, tests.txt, benchmark.txt, results-small-gpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/gpu-results}"
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/zhiyin-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/zhiyin-site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt"
# the CUDA graph's own tests, then the model tests (those that need ../shared/audio fail where it is missing)
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py tests/test_sampling.py tests/test_model.py 2>&1 \
    | tee "$out/tests.txt"
python3 bench/benchmark.py --device cuda --seconds 30 --json "$out/results-small-gpu.json" 2>&1 \
    | tee "$out/benchmark.txt"
