"""The fused decoder step on this tree's kernels against an earlier revision's, alternating step by step inside the
same generate() calls: on a shared machine whose speed moves between runs (BENCHMARKS.md, session 17) the only
comparison that holds.

    python bench/ab_kernels.py --old HEAD~1 [--modes int4 int8] [--batch 1] [--runs 3] [--steps 100]
                               [--march x86-64-v3] [--checkpoint DIR | --shape small]

Each run is a process of its own per mode (a process's memory layout moves its figures too): generate() twice for
`steps` tokens, the steps alternating between the old and the new library on the same weights, KV cache and tokens,
on a fixed thread count. Printed: each run's median step of either and new/old, then their mean per mode. The old
revision's csrc/ must have this tree's entry points and structures (the ctypes mirrors are checked against both).
What it cannot show: a change whose cost or gain lands on the next step (what a step leaves in the caches, work it
starts between steps) is charged to the other library's step here. Compare such a change over whole generations
in blocks of steps or in alternating processes (BENCHMARKS.md, session 22: reading the next step's weights between
steps looked ~1 ms a step faster alternated step by step, and was ~1 ms slower in blocks of 25 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import checkpoint, worker_environment

REPOSITORY = Path(__file__).resolve().parents[1]
CSRC = "src/zhiyin/backends/csrc"


def old_sources(revision: str, folder: Path) -> Path:
    """csrc/ as it was at `revision` (git), written into folder."""
    names = subprocess.run(
        ["git", "-C", str(REPOSITORY), "ls-tree", "--name-only", f"{revision}:{CSRC}"],
        capture_output=True,
        text=True,
    )
    if names.returncode != 0:
        sys.exit(f"--old {revision}: git knows no {CSRC} there ({names.stderr.strip()})")
    for name in names.stdout.split():
        text = subprocess.run(
            ["git", "-C", str(REPOSITORY), "show", f"{revision}:{CSRC}/{name}"], capture_output=True, check=True
        ).stdout
        (folder / name).write_bytes(text)
    return folder


def worker(mode: str, folder: Path, revision: str, batch: int, steps: int) -> dict:
    import torch

    import zhiyin.backends.fused_step as fused_step
    from zhiyin import MusicgenForConditionalGeneration
    from zhiyin.backends import kernels

    quantize = mode if mode in ("int8", "int4") else None
    dtype = torch.bfloat16 if mode == "bfloat16" else torch.float32
    model = MusicgenForConditionalGeneration.from_pretrained(folder, dtype=dtype, quantize=quantize)
    march = os.environ.get("ZHIYIN_KERNELS_MARCH") or "native"
    with tempfile.TemporaryDirectory() as temporary:
        libraries = {"old": kernels.build(march, old_sources(revision, Path(temporary))), "new": kernels.library()}
    for library in libraries.values():
        kernels.check_mirror(library, fused_step._Layer, 1)
        kernels.check_mirror(library, fused_step._Step, 2)
    threads = kernels.usable_threads()  # both sides on the same count: no probes
    fused_step.ThreadCount.next = lambda self, rows=0: threads
    fused_step.ThreadCount.record = lambda self, count, seconds: None
    times: dict[str, list[float]] = {"old": [], "new": []}
    run = fused_step.FusedStep._run
    turn = [0]

    def alternating(self, *arguments):
        side = "old" if turn[0] % 2 else "new"
        turn[0] += 1
        self.library = libraries[side]
        started = time.perf_counter()
        logits = run(self, *arguments)
        times[side].append(time.perf_counter() - started)
        return logits

    fused_step.FusedStep._run = alternating
    vocabulary = min(30000, model.config.text_encoder.vocab_size)
    ids = torch.randint(5, vocabulary, (batch, 14), generator=torch.Generator().manual_seed(0))
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, guidance_scale=3.0, top_k=250)
    with torch.inference_mode():
        model.generate(**kwargs, max_new_tokens=8, return_codes=True)  # warm up
        for side in times.values():
            side.clear()
        for _ in range(2):
            model.generate(**kwargs, max_new_tokens=steps, return_codes=True)
    old, new = (statistics.median(times[side]) * 1e3 for side in ("old", "new"))
    return {"mode": mode, "march": march, "threads": threads, "old_ms": old, "new_ms": new, "ratio": new / old}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default="HEAD", help="the git revision whose kernels are 'old' (default HEAD)")
    parser.add_argument("--modes", nargs="+", default=["int4"], choices=["float32", "bfloat16", "int8", "int4"])
    parser.add_argument("--batch", type=int, default=1, help="items (each 2 rows with guidance)")
    parser.add_argument("--runs", type=int, default=3, help="processes per mode")
    parser.add_argument("--steps", type=int, default=100, help="tokens per generate() (two per run)")
    parser.add_argument("--march", default=None, help="build both for this -march (PyTorch at that level too)")
    parser.add_argument("--shape", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default bench/checkpoints/<shape>")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = checkpoint(args.checkpoint, args.shape)
    if args.worker:
        print(json.dumps(worker(args.worker, folder, args.old, args.batch, args.steps)))
        return
    with tempfile.TemporaryDirectory() as temporary:
        old_sources(args.old, Path(temporary))  # a revision git does not know fails here, before any model loads
    env = worker_environment(args.march)
    print(f"new: this tree's kernels; old: {args.old}'s. Fused step, {2 * args.batch} rows, median ms")
    print(f"{'mode':10s} {'run':>4s} {'old':>9s} {'new':>9s} {'new/old':>8s}")
    for mode in args.modes:
        ratios = []
        for number in range(1, args.runs + 1):
            command = [sys.executable, __file__, "--worker", mode, "--old", args.old, "--batch", str(args.batch)]
            command += ["--steps", str(args.steps), "--shape", args.shape, "--checkpoint", str(folder)]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.exit(f"{mode}, run {number} failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            ratios.append(result["ratio"])
            print(f"{mode:10s} {number:4d} {result['old_ms']:9.2f} {result['new_ms']:9.2f} {result['ratio']:8.3f}")
        print(f"{mode:10s} mean new/old {statistics.mean(ratios):.3f} ({result['march']}, {result['threads']} threads)")


if __name__ == "__main__":
    main()
