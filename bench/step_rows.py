"""A decoder step's time by its number of rows (the engine steps 2 per request), int8 products on the vector units
and, where the CPU has them, on AMX tiles: both built from the same weights and alternated in one process.

    python bench/step_rows.py [--checkpoint DIR | --shape small] [--quantize int8] [--rows 2 6 8 16 32]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from common import checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default bench/checkpoints/<shape>")
    parser.add_argument("--quantize", choices=["int8", "int4", "none"], default="int8")
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 6, 8, 16, 32])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--position", type=int, default=250, help="the KV cache's length at the steps")
    args = parser.parse_args()

    from zhiyin import MusicgenForConditionalGeneration
    from zhiyin.backends.kernels import amx_rows
    from zhiyin.backends.select import decoder_step
    from zhiyin.modules.decoder import CrossKV

    folder = checkpoint(args.checkpoint, args.shape)
    quantize = None if args.quantize == "none" else args.quantize
    model = MusicgenForConditionalGeneration.from_pretrained(folder, quantize=quantize)
    decoder, config = model.decoder, model.config.decoder
    heads, width = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    kinds = {"vector units": "0"} | ({"AMX tiles": "1"} if amx_rows() else {})
    shapes = f"musicgen-{args.shape} shapes" if args.checkpoint is None else str(folder)
    print(f"\n{shapes}, {args.quantize}, {torch.get_num_threads()} threads: ms per step, best / median")
    print(f"{'rows':>6s}" + "".join(f"{kind:>22s}" for kind in kinds))
    for rows in args.rows:
        decoder.setup_caches(rows, args.position + args.steps + 1)
        text = [torch.randn(rows, heads, 12, width) for _ in decoder.layers]
        cross = CrossKV(text, [t.clone() for t in text], torch.zeros(rows, 1, 1, 12))
        steps = {}
        for kind, flag in kinds.items():
            os.environ["ZHIYIN_AMX"] = flag
            steps[kind] = decoder_step(decoder, cross)
        os.environ.pop("ZHIYIN_AMX")
        tokens = torch.randint(0, config.vocab_size, (rows, config.num_codebooks))
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        with torch.inference_mode():
            for i in range(args.steps):
                for kind, step in steps.items():
                    started = time.perf_counter()
                    step(tokens, torch.full((rows,), args.position + i))
                    times[kind].append(1000 * (time.perf_counter() - started))
        cells = [sorted(t) for t in times.values()]
        print(f"{rows:6d}" + "".join(f"{t[0]:>12.1f} / {t[len(t) // 2]:>7.1f}" for t in cells))


if __name__ == "__main__":
    main()
