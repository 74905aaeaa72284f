"""The engine alone (no server): N jobs of the same length submitted at once and followed as listeners follow them,
against one such job alone, in one run.

    python bench/engine.py [--checkpoint DIR | --shape small] [--quantize int8|int4|none] [--clients 8] [--seconds 10]
    python bench/engine.py --device cuda --dtype bfloat16 --quantize none --clients 32   # on a GPU

Prints, for both: wall time, decoder steps, the time spent decoding audio (EnCodec, in the engine's thread) and in
how many chunks, and the latest first chunk; and the ratio of N jobs one after another (N x the one alone) to N
together. Then a request joining N - 1 running jobs: its first chunk with its rows stepping on their own until it is
heard (the engine's way) and with everyone's steps, alternating, 3 times each. bench/serve.py measures the same
through the server.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import torch

from common import checkpoint


def run(engine, processor, clients: int, seconds: float, decoding: dict) -> dict:
    decoding.update(seconds=0.0, chunks=0)
    steps, started, firsts = engine.steps, time.perf_counter(), []
    jobs = [
        engine.submit(**processor(text=[f"request {i}: lofi hip hop"], return_tensors="pt"), duration=seconds, seed=i)
        for i in range(clients)
    ]

    def listen(job) -> None:
        for index, _ in enumerate(job.audio_chunks()):
            if index == 0:
                firsts.append(time.perf_counter() - started)

    threads = [threading.Thread(target=listen, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "wall (s)": time.perf_counter() - started,
        "steps": engine.steps - steps,
        "decoding audio (s)": decoding["seconds"],
        "chunks decoded": decoding["chunks"],
        "latest first chunk (s)": max(firsts),
    }


def joining(engine, processor, clients: int) -> dict:
    """First chunk of a 1 s request joining clients - 1 running jobs: stepping alone until heard, or with everyone."""
    from zhiyin.engine import Engine

    sound, times = Engine._sound, {"stepping alone until heard": [], "with everyone": []}
    busy = [
        engine.submit(**processor(text=[f"busy {i}"], return_tensors="pt"), duration=300.0, seed=i)
        for i in range(clients - 1)
    ]
    try:
        for job in busy:
            next(job.audio_chunks())
        for trial in range(3):
            for way in times:
                Engine._sound = sound if way == "stepping alone until heard" else (lambda self: False)
                began = time.perf_counter()
                job = engine.submit(**processor(text=[f"new {trial}"], return_tensors="pt"), duration=1.0, seed=trial)
                next(job.audio_chunks())
                times[way].append(time.perf_counter() - began)
                job.audio()
    finally:
        Engine._sound = sound
        for job in busy:
            job.cancel()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default bench/checkpoints/<shape>")
    parser.add_argument("--quantize", choices=["int8", "int4", "none"], default="int8")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (int8 and int4 run on the CPU only)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = parser.parse_args()
    folder = checkpoint(args.checkpoint, args.shape)

    from zhiyin import MusicgenForConditionalGeneration, MusicgenProcessor
    from zhiyin.engine import Engine
    from zhiyin.modules.encodec import ChunkedDecode

    quantize = None if args.quantize == "none" else args.quantize
    model = MusicgenForConditionalGeneration.from_pretrained(
        folder, quantize=quantize, dtype=args.dtype, device=args.device
    )
    processor = MusicgenProcessor.from_pretrained(folder)
    decoding, decode = {}, ChunkedDecode.decode

    def timed(self, end):  # the engine's thread decodes every chunk
        began = time.perf_counter()
        audio = decode(self, end)
        decoding["seconds"] += time.perf_counter() - began
        decoding["chunks"] += 1
        return audio

    ChunkedDecode.decode = timed
    engine = Engine(model, max_batch=args.clients)
    try:
        run(engine, processor, 1, 1.0, decoding)  # warm-up: kernels built, caches touched
        alone = run(engine, processor, 1, args.seconds, decoding)
        together = run(engine, processor, args.clients, args.seconds, decoding)
        joined = joining(engine, processor, args.clients) if args.clients > 1 else {}
    finally:
        engine.close()
    print(
        f"\n{args.clients} jobs of {args.seconds:g} s, musicgen-{args.shape} shapes, {args.dtype}, {args.quantize}, "
        + (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU")
        + f", {torch.get_num_threads()} threads\n"
    )
    print(f"{'':26s}{'one alone':>12s}{'together':>12s}")
    for key in alone:
        print(f"{key:26s}{alone[key]:>12.2f}{together[key]:>12.2f}")
    ratio = args.clients * alone["wall (s)"] / together["wall (s)"]
    print(f"\n{args.clients} one after another / {args.clients} together: {ratio:.2f}x")
    for way, seconds in joined.items():
        print(
            f"a request joining {args.clients - 1} running jobs, {way}: first chunk after "
            + " / ".join(f"{s:.2f}" for s in seconds)
            + " s"
        )


if __name__ == "__main__":
    main()
