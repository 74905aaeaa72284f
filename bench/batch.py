"""`zhiyin batch` four ways on the same jobs: one at a time, the local engine, and Ray with 1 and 2 actors.

    python bench/batch.py [--checkpoint DIR | --shape small] [--quantize int8] [--items 32] [--seconds 5]

Writes a jobs file of `--items` text prompts of `--seconds` each (seeds 0..N-1) and runs `zhiyin batch` on it
into a fresh folder each time, as a user would, each run in its own process: `--max-batch 1` (one at a time),
`--max-batch 8` (the engine), and `--ray` with 1 actor of all the CPUs and with 2 actors of half of them each (a
Ray of this machine, started by the command). Prints the wall time, pieces per minute and seconds of music per
second of each, and whether their files are byte-identical to the engine's (float32 should be; int8's products
do not depend on the rows beside them either).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default bench/checkpoints/<shape>")
    parser.add_argument("--quantize", choices=["int8", "none"], default="int8")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    folder = checkpoint(args.checkpoint, args.shape)
    work = Path(tempfile.mkdtemp(prefix="zhiyin-batch-bench-"))
    jobs = work / "jobs.jsonl"
    lines = [
        {
            "id": f"piece-{i:03d}",
            "prompt": f"piece {i}: lofi hip hop with a warm piano",
            "duration": args.seconds,
            "seed": i,
        }
        for i in range(args.items)
    ]
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cpus = len(os.sched_getaffinity(0))
    arms = {
        "one at a time": ["--max-batch", "1"],
        "engine (8 slots)": ["--max-batch", "8"],
        "Ray, 1 actor": ["--max-batch", "8", "--ray", "--ray-actors", "1", "--ray-num-cpus", str(cpus)],
        "Ray, 2 actors": ["--max-batch", "8", "--ray", "--ray-actors", "2", "--ray-num-cpus", str(cpus / 2)],
    }
    results = {}
    for name, extra in arms.items():
        out = work / name.replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
        command = [sys.executable, "-m", "zhiyin", "batch", str(jobs), "-o", str(out), "--model", str(folder)]
        command += ["--quiet", *extra] + (["--quantize", args.quantize] if args.quantize != "none" else [])
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
        results[name] = (wall, out)
        print(f"{name}: {wall:.1f} s", file=sys.stderr, flush=True)
    reference = results["engine (8 slots)"][1]
    music = args.items * args.seconds
    print(f"\n{args.items} pieces of {args.seconds:g} s, musicgen-{args.shape} shapes, {args.quantize}, {cpus} CPUs\n")
    print(f"{'':20s}{'wall (s)':>10s}{'pieces/min':>12s}{'music s/s':>11s}{'x one':>7s}{'same files':>12s}")
    alone = results["one at a time"][0]
    for name, (wall, out) in results.items():
        same = all(
            (out / f"{line['id']}.wav").read_bytes() == (reference / f"{line['id']}.wav").read_bytes() for line in lines
        )
        print(
            f"{name:20s}{wall:>10.1f}{60 * args.items / wall:>12.2f}{music / wall:>11.2f}{alone / wall:>7.2f}"
            f"{str(same):>12s}"
        )


if __name__ == "__main__":
    main()
