"""What reduced precision does to the output: each mode against float32 on the same random checkpoint.

    python bench/precision.py [--shape small] [--steps 200]

For bfloat16, float16, int8 and int4 it reports the decoder logits' relative error against float32 (max |diff| / max
|fp32| and the median over positions of the per-position relative L2 error), teacher-forced on float32's own greedy
continuation of a text prompt with guidance 3, and the share of those positions where the mode's greedy choice
(argmax of the guided logits) equals float32's. The logits come step by step through the KV cache, as in generation
(the fused CPU step where it applies), so the cache's precision (bfloat16 / int8 in those modes) counts too.
Random weights make flat logits, whose top two are often a hair apart, so that any rounding flips some greedy
choices; agreement is also given for the half of the positions where float32's top two stand further apart than at
the median, to show how much it depends on that margin (trained weights can't be downloaded here to measure theirs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def guided_logits(model, ids, codes) -> torch.Tensor:
    """Teacher-forced guided logits [K, T, V] for the delayed token sequence `codes` [1, K, T]."""
    from zhiyin.backends.select import decoder_step

    decoder, rows, T = model.decoder, codes.repeat(2, 1, 1), codes.shape[-1]
    with torch.inference_mode():
        condition, _ = model._condition(input_ids=ids)
        cross = condition.guided().cross(model.decoder)  # rows: the text, then the null text
        decoder.setup_caches(2, T)
        try:
            steps = [decoder(rows[:, :, :1], cross, torch.zeros(2, 1, dtype=torch.long))[:, :, -1].float()]
            step = decoder_step(decoder, cross)
            at = lambda position: torch.full((2,), position)  # noqa: E731
            steps += [step(rows[:, :, position], at(position)).float() for position in range(1, T)]
        finally:
            decoder.free_caches()
    logits = torch.stack(steps, dim=2)  # [2, K, T, V]
    return logits[1] + 3.0 * (logits[0] - logits[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--checkpoint", type=Path, default=None)
    args = parser.parse_args()
    folder = args.checkpoint or HERE / "checkpoints" / args.shape
    if not (folder / "model.safetensors").exists():
        from benchmark import make_checkpoint

        make_checkpoint(args.shape, folder)

    from zhiyin import MusicgenForConditionalGeneration
    from zhiyin.generation.delay_pattern import DelayPattern

    ids = torch.randint(5, 30000, (1, 14), generator=torch.Generator().manual_seed(0))
    reference = MusicgenForConditionalGeneration.from_pretrained(folder)
    codes = reference.generate(
        input_ids=ids, do_sample=False, guidance_scale=3.0, max_new_tokens=args.steps, return_codes=True
    )  # [1, K, frames]
    K = codes.shape[1]
    pattern = DelayPattern.for_decoder(reference.config.decoder)  # (stereo shapes interleave their channels)
    sequence = pattern.build(codes, pattern.length(codes.shape[-1]), pad=reference.config.decoder.pad_token_id)
    want = guided_logits(reference, ids, sequence)
    del reference

    # how far float32's greedy choice stands above the next one, in units of the logits' spread at that position
    top2 = want.topk(2, dim=-1).values
    margin = (top2[..., 0] - top2[..., 1]) / want.std(dim=-1)
    clear = margin > margin.median()
    print(f"\nmusicgen-{args.shape} shapes, random weights, {want.shape[1]} teacher-forced positions x {K} codebooks")
    print(f"float32's margin between its top two logits: median {float(margin.median()):.3f} standard deviations")
    print("(agreement, clear half: at the half of the positions where that margin is above its median)\n")
    print(f"{'mode':12s}{'max rel err':>14s}{'median rel L2':>16s}{'greedy agreement':>19s}{'clear half':>12s}")
    for name, options in [
        ("bfloat16", dict(dtype="bfloat16")),
        ("float16", dict(dtype="float16")),
        ("int8", dict(quantize="int8")),
        ("int4", dict(quantize="int4")),
    ]:
        model = MusicgenForConditionalGeneration.from_pretrained(folder, **options)
        got = guided_logits(model, ids, sequence)
        max_rel = float((got - want).abs().max() / want.abs().max())
        l2 = ((got - want).norm(dim=-1) / want.norm(dim=-1)).median()
        same = got.argmax(-1) == want.argmax(-1)
        agree, agree_clear = float(same.float().mean()), float(same[clear].float().mean())
        print(f"{name:12s}{max_rel:>14.2e}{float(l2):>16.2e}{agree:>18.1%}{agree_clear:>12.1%}")
        del model


if __name__ == "__main__":
    main()
