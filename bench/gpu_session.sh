#!/usr/bin/env bash
# The GPU figures in one call on a lent GPU machine (the `device` tool's `run`), so that its short time goes to
# measuring: the packages its image lacks, the CUDA tests (and the CPU kernels' on its Xeon, which has AMX), the
# benchmark with 30 s of music (issue 3's H100 target), then bench/gpu_profile.py (steps at growing lengths, EnCodec,
# the engine with 32 jobs at once): at most 9.5 minutes of the 15 a session has, and a minute for the machine's start.
#
# That machine has no network and its image has torch, transformers 5.17, safetensors, tokenizers, huggingface_hub
# and tqdm, but not soundfile / soxr / cffi / pycparser / pyloudnorm nor transformers 5.24 (the tests' oracle). So
# first, here, fetch their wheels for its Python (3.12) into .whl/ (15 MB), and copy the clips the tests read from
# ../shared/audio into .shared/audio (1.5 MB: ../shared does not travel); both ignored by git:
#   echo /.whl/ >> .git/info/exclude; echo /.shared/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl soundfile soxr cffi pycparser pyloudnorm transformers==5.24.0
#   mkdir -p .shared && cp -r ../shared/audio .shared/
# then: run(command="bash bench/gpu_session.sh", carry=[".whl", ".shared"], timeout_s=600). Everything it prints is
# also kept under $OUT (bench/gpu-results without one), each stage as it ends: nvidia-smi.txt, tests.txt,
# benchmark.txt, results-small-gpu.json (written after every mode), profile.txt. Each stage has its own time limit,
# so that a stage that hangs leaves the others their time.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/gpu-results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/zhiyin-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/zhiyin-site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ ! -d ../shared/audio ] && [ -d .shared/audio ]; then
    mkdir -p ../shared && ln -sfn "$PWD/.shared/audio" ../shared/audio
fi
nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt"
# the tests of the CUDA graph (4 run only on a GPU), of sampling, of requests stepped together, and of the kernels
timeout 130 python3 -m pytest -q -p no:cacheprovider -rs tests/backends/test_cuda_graph.py \
    tests/backends/test_kernels.py tests/generation/test_sampling.py tests/generation/test_together.py 2>&1 \
    | tee "$out/tests.txt"
# every mode, the most telling first (a mode the time limit cuts off is missing from the table and the JSON)
timeout 300 python3 bench/benchmark.py --device cuda --seconds 30 --json "$out/results-small-gpu.json" --modes \
    zhiyin-bfloat16 transformers-bfloat16 zhiyin-float32 transformers-float32 zhiyin-bfloat16-eager zhiyin-float16 \
    2>&1 | tee "$out/benchmark.txt"
timeout 130 python3 bench/gpu_profile.py 2>&1 | tee "$out/profile.txt"
