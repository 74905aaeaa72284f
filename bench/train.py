"""zhiyin train's cost: seconds per optimizer step and peak memory, for a model of published shapes.

    python bench/train.py [--shape small] [--segment-seconds 10] [--steps 6] [--device cpu|cuda]

Trains LoRA adapters (rank 16, attention and FFN) on two of ../shared/audio's clips (45-49 s each, captioned),
batch 1, crops of --segment-seconds, for --steps steps, and prints: the time to encode the clips (once: the codes are
cached), the mean time of the steps after the first, and the process's peak memory (resident set; on a GPU also the
peak GPU memory torch allocated). The checkpoint's weights are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import checkpoint

HERE = Path(__file__).resolve().parent
CLIPS = {
    "brahms_hungarian_dance_5_strings.ogg": "Brahms, Hungarian Dance no. 5, string orchestra, lively",
    "setuniman_sweet_waltz.ogg": "a sweet slow waltz on piano and strings",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default bench/checkpoints/<shape>")
    parser.add_argument("--segment-seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=6, help="at least 2 (the first is not timed)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bfloat16 on GPUs")
    parser.add_argument("--encode", nargs=3, metavar=("MODEL", "DATA", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.encode:  # (the subprocess above)
        from zhiyin import MusicgenForConditionalGeneration
        from zhiyin.training import data as datasets

        model = MusicgenForConditionalGeneration.from_pretrained(args.encode[0], device=args.device)
        for clip in datasets.find_clips(args.encode[1]):
            datasets.clip_codes(model, clip, Path(args.encode[2]))
        return
    folder = checkpoint(args.checkpoint, args.shape)
    from zhiyin.training.trainer import TrainOptions, train

    shared = HERE.parent.parent / "shared" / "audio"
    work = Path(tempfile.mkdtemp(prefix="zhiyin-train-bench-"))
    try:
        data = work / "music"
        data.mkdir()
        for name, caption in CLIPS.items():
            shutil.copy(shared / name, data / name)
            (data / name).with_suffix(".txt").write_text(caption)
        # the codec's share, once, in a process of its own (its memory is not training's): train finds the codes
        command = [sys.executable, __file__, "--encode", str(folder), str(data), str(work / "adapter" / "cache")]
        began = time.perf_counter()
        subprocess.run(command + ["--device", args.device], check=True)
        encode_seconds = time.perf_counter() - began
        options = TrainOptions(
            model=str(folder),
            data=str(data),
            output=str(work / "adapter"),
            steps=args.steps,
            segment_seconds=args.segment_seconds,
            val_fraction=0.0,
            save_every=10**9,
            device=args.device,
            dtype=args.dtype,
        )
        stamps = [time.perf_counter()]
        train(options, progress=False, after_step=lambda step: stamps.append(time.perf_counter()))
        wall = time.perf_counter() - began
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steps = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # the first (model loading and setup) left out
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"\nzhiyin train, musicgen-{args.shape} shapes, {args.device}, batch 1, {args.segment_seconds:g} s crops")
    print(f"{'encoding 2 clips (95 s of audio, once; loading too)':44s}{encode_seconds:10.1f} s")
    print(f"{'each step after the first (mean of ' + str(len(steps)) + ')':44s}{statistics.mean(steps):10.2f} s")
    print(f"{'peak resident memory':44s}{peak_rss:10.2f} GiB")
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        print(f"{'peak GPU memory (torch)':44s}{torch.cuda.max_memory_allocated() / 2**30:10.2f} GiB")
    print(f"{'wall, all included':44s}{wall:10.1f} s")


if __name__ == "__main__":
    sys.exit(main())
