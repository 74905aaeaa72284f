"""Where a GPU's time goes: a generation's step at growing lengths, its audio decoding, and the engine's loop.

    python bench/gpu_profile.py [--checkpoint DIR | --shape small] [--clients 32]

For float32 and bfloat16 (CUDA graphs on): the decoder's ms per step over the steps between 100 and n positions
(n = 500, 1500: does a step slow as the KV cache fills?), EnCodec's decoding of 30 s, and the parts of 30 s of music
end to end. Then one layer's self-attention of a step as the decoder runs it on a GPU (a query per row and head over
the whole cache of 1536 positions, a mask of the written ones) with each of PyTorch's attention kernels, both
dtypes. Then the engine with `--clients` jobs of 10 s at once (bfloat16), as it is and with new jobs never stepping
alone: the wall time of its loop's parts (steps of every slot, steps of new jobs' rows alone, the step rebuilt,
audio decoded, tokens chosen), counted and summed, each one's GPU work finished inside it (a synchronize at its
end), so that the sums say where the time goes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import threading
import time
from pathlib import Path

import torch

from common import checkpoint, synchronize, timed


def generation(folder: Path, dtype: str, device: str) -> None:
    from zhiyin import MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(folder, dtype=dtype, device=device)
    vocab = min(30000, model.config.text_encoder.vocab_size)
    ids = torch.randint(5, vocab, (1, 14), generator=torch.Generator().manual_seed(0)).to(device)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, guidance_scale=3.0, top_k=250)
    with torch.inference_mode():
        model.generate(**kwargs, max_new_tokens=20, return_codes=True)  # warm-up
        codes = {n: timed(lambda: model.generate(**kwargs, max_new_tokens=n, return_codes=True)) for n in (100, 500)}
        kept = []
        codes[1503] = timed(lambda: kept.append(model.generate(**kwargs, max_new_tokens=1503, return_codes=True)))
        for n in (500, 1503):
            print(f"{dtype}: decoder {(codes[n] - codes[100]) / (n - 100) * 1e3:.2f} ms/step from 100 to {n} positions")
        print(f"{dtype}: 1503 steps (30 s) of codes {codes[1503]:.2f} s")
        decode = timed(lambda: model.decode_audio(kept[0]))
        print(f"{dtype}: EnCodec decoding those 30 s {decode * 1e3:.0f} ms")
        whole = timed(lambda: model.generate(**kwargs, max_new_tokens=1503))
        print(f"{dtype}: 30 s of music end to end {whole:.2f} s")


def attention(device: str, positions: int = 1536, written: int = 1503) -> None:
    """One layer's self-attention of a batch-1 step with guidance (2 rows x 16 heads of 64), over the whole cache
    with a mask, as modules/decoder.py calls it on a GPU: us a call, by PyTorch's own choice and by each kernel."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mask = (torch.arange(positions, device=device) < written)[None, None, None].expand(2, 1, 1, positions)
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(2, 16, 1, 64, device=device, dtype=dtype)
        k, v = (torch.randn(2, 16, positions, 64, device=device, dtype=dtype) for _ in range(2))
        times = []
        for name, backends in [("default", None)] + [
            (name.lower(), [getattr(SDPBackend, name)])
            for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
        ]:
            try:
                with sdpa_kernel(backends) if backends else contextlib.nullcontext():
                    F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                    seconds = timed(
                        lambda: [F.scaled_dot_product_attention(q, k, v, attn_mask=mask) for _ in range(100)]
                    )
                times.append(f"{name} {seconds * 1e4:.1f}")
            except RuntimeError:
                times.append(f"{name} -")
        print(
            f"attention over {positions} positions, {str(dtype).removeprefix('torch.')}, us a call: " + ", ".join(times)
        )


def engine(folder: Path, clients: int, device: str) -> None:
    from zhiyin import MusicgenForConditionalGeneration, MusicgenProcessor
    from zhiyin import engine as engine_module
    from zhiyin.backends import cuda_graph

    parts: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])

    def measure(owner, name: str, label=None):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                synchronize()
                key = label(*args) if label else name
                parts[key][0] += 1
                parts[key][1] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    Engine = engine_module.Engine
    # (a step's time includes its slots' _advance and _decode_slot)
    measure(
        Engine, "_step_slots", lambda self, indices, *a: "step, " + ("all" if len(indices) == self.active else "new")
    )
    measure(Engine, "_advance")
    measure(Engine, "_decode_slot")
    measure(Engine, "_start")
    measure(engine_module, "decoder_step")
    measure(cuda_graph.GraphStep, "_record")
    model = MusicgenForConditionalGeneration.from_pretrained(folder, dtype="bfloat16", device=device)
    processor = MusicgenProcessor.from_pretrained(folder)
    running = Engine(model, max_batch=clients)
    sound = Engine._sound
    try:
        for count, way in ((1, "as it is"), (clients, "as it is"), (clients, "new jobs never stepping alone")):
            Engine._sound = sound if way == "as it is" else (lambda self: False)
            parts.clear()
            began, steps = time.perf_counter(), running.steps
            jobs = [
                running.submit(**processor(text=[f"request {i}: lofi"], return_tensors="pt"), duration=10.0, seed=i)
                for i in range(count)
            ]
            threads = [threading.Thread(target=job.audio) for job in jobs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - began
            print(f"\nengine, {count} jobs of 10 s, {way}: {wall:.2f} s, {running.steps - steps} steps")
            for key, (n, seconds) in sorted(parts.items(), key=lambda item: -item[1][1]):
                print(f"  {key:28s} {n:6d} calls {seconds:8.2f} s {seconds / n * 1e3:8.2f} ms each")
    finally:
        Engine._sound = sound
        running.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default bench/checkpoints/<shape>")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--device", default="cuda", help="(cpu: a dry run of the script, slow at real shapes)")
    args = parser.parse_args()
    folder = checkpoint(args.checkpoint, args.shape)
    print(torch.cuda.get_device_name() if args.device == "cuda" else args.device, flush=True)
    for dtype in ("float32", "bfloat16"):
        generation(folder, dtype, args.device)
    attention(args.device)
    engine(folder, args.clients, args.device)


if __name__ == "__main__":
    main()
