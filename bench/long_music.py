"""Long music and streaming at a published shape: cost per second and memory as the duration grows, and when
the first streamed chunk arrives.

    python bench/long_music.py [--shape small] [--mode int8] [--durations 30 60 120]

Each duration runs in its own process (peak RSS is its own): generate_long with the default windows (30 s,
extend_stride 18 s), one prompt, guidance 3, top-k 250. Then generate_stream of 30 s in 1 s chunks.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(folder: Path, mode: str):
    from zhiyin import MusicgenForConditionalGeneration

    options = dict(quantize="int8") if mode == "int8" else dict(dtype=mode)
    return MusicgenForConditionalGeneration.from_pretrained(folder, **options)


def worker(kind: str, seconds: float, folder: Path, mode: str) -> dict:
    import torch

    model = load(folder, mode)
    ids = torch.randint(5, 30000, (1, 14), generator=torch.Generator().manual_seed(0))
    kwargs = dict(input_ids=ids, do_sample=True, guidance_scale=3.0, top_k=250)
    start = time.perf_counter()
    if kind == "long":
        audio = model.generate_long(**kwargs, duration=seconds)
        wall = time.perf_counter() - start
        return {
            "kind": kind,
            "seconds": seconds,
            "wall_s": wall,
            "audio_s": audio.shape[-1] / 32000,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        }
    first, total = None, 0
    for chunk in model.generate_stream(**kwargs, duration=seconds, chunk_seconds=1.0):
        first = first or time.perf_counter() - start
        total += chunk.shape[-1]
    wall = time.perf_counter() - start
    return {
        "kind": kind,
        "seconds": seconds,
        "wall_s": wall,
        "first_chunk_s": first,
        "audio_s": total / 32000,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--mode", default="int8", choices=["float32", "bfloat16", "int8"])
    parser.add_argument("--durations", type=float, nargs="+", default=[30, 60, 120])
    parser.add_argument("--stream-seconds", type=float, default=30)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = HERE / "checkpoints" / args.shape
    if args.worker:
        print(json.dumps(worker(args.worker[0], float(args.worker[1]), folder, args.mode)))
        return
    if not (folder / "model.safetensors").exists():
        sys.path.insert(0, str(HERE))
        from benchmark import make_checkpoint

        make_checkpoint(args.shape, folder)
    jobs = [("long", d) for d in args.durations] + [("stream", args.stream_seconds)]
    print(f"musicgen-{args.shape} shapes, random weights, {args.mode}\n")
    print(
        f"{'run':22s}{'audio (s)':>10s}{'wall (s)':>10s}{'wall per audio s':>18s}"
        f"{'first chunk (s)':>17s}{'peak RSS (GB)':>15s}"
    )
    for kind, seconds in jobs:
        done = subprocess.run(
            [sys.executable, __file__, "--shape", args.shape, "--mode", args.mode, "--worker", kind, str(seconds)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            print(f"{kind} {seconds} failed: {done.stderr[-1500:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        first = f"{r['first_chunk_s']:.2f}" if "first_chunk_s" in r else "-"
        label = f"{'generate_long' if kind == 'long' else 'generate_stream'} {seconds:g} s"
        print(
            f"{label:22s}{r['audio_s']:>10.1f}{r['wall_s']:>10.1f}{r['wall_s'] / r['audio_s']:>18.2f}"
            f"{first:>17s}{r['peak_rss_gb']:>15.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
