"""zhiyin against transformers on the same random-weight checkpoint of a published MusicGen shape.

    python bench/benchmark.py                      # musicgen-small shapes, all modes, a side-by-side table
    python bench/benchmark.py --shape medium --modes zhiyin-float32 transformers-float32

The checkpoint is made once with zhiyin's own save_pretrained (random weights: speed does not depend on the
values) under bench/checkpoints/<shape>. Every mode runs in its own process so that peak memory is its own.
Measured per mode: load time, T5 ms (one prompt), decoder ms per step (batch 1 with guidance = 2 rows; batch 4
with guidance = 8 rows), EnCodec decode ms per second of audio, end-to-end seconds for 10 s of music (one
prompt, guidance 3, top-k 250, audio decoded), and peak RSS. The floor is the decoder's weight bytes per step
divided by the read bandwidth measured in the same process just before its decoder timings (a shared VM's bandwidth
drifts from minute to minute). Timings are the best of 3. transformers is optional: without it, zhiyin's rows alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ["zhiyin-float32", "zhiyin-bfloat16", "zhiyin-int8", "transformers-float32", "transformers-bfloat16"]
PROMPTS = ["80s pop track with bassy drums and synth", "90s rock song with loud guitars and heavy drums",
           "lofi slow bpm electro chill with organic samples", "a jazz vibraphone solo over a walking bass line"]


def make_checkpoint(shape: str, folder: Path) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from shapes import GENERATION_CONFIG, published_config

    from zhiyin.config import GenerationConfig, MusicgenConfig
    from zhiyin.model import MusicgenForConditionalGeneration

    print(f"making a random musicgen-{shape} checkpoint in {folder} ...", file=sys.stderr)
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(
        MusicgenConfig.from_dict(published_config(shape)), GenerationConfig.from_dict(GENERATION_CONFIG)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
    model.save_pretrained(folder)


def read_bandwidth() -> float:
    """Bytes per second that torch reads from memory (sum over 256 MiB, 8x the L3 cache of the CPUs we use; best of
    10). Small enough not to raise a mode's peak memory."""
    import torch

    x = torch.ones(1 << 26)  # 256 MiB of float32
    x.sum()
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def worker(mode: str, folder: Path, steps: int, e2e_seconds: float) -> dict:
    import torch

    library, dtype = mode.split("-")
    quantize = "int8" if dtype == "int8" else None
    weights_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.float32}[dtype]
    result: dict = {"mode": mode}
    start = time.perf_counter()
    if library == "zhiyin":
        from zhiyin import AutoProcessor, MusicgenForConditionalGeneration

        model = MusicgenForConditionalGeneration.from_pretrained(folder, dtype=weights_dtype, quantize=quantize)
    else:
        from transformers import MusicgenForConditionalGeneration

        model = MusicgenForConditionalGeneration.from_pretrained(folder, dtype=weights_dtype).eval()
    result["load_s"] = time.perf_counter() - start
    result["load_rss_gb"] = peak_rss_gb()
    ids = torch.randint(5, 30000, (4, 14), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)

    with torch.inference_mode():
        encoder = model.encode_text if library == "zhiyin" else (lambda i, m: model.text_encoder(input_ids=i, attention_mask=m))
        result["t5_ms"] = timed(lambda: encoder(ids[:1], mask[:1]), repeat=5) * 1e3

        def decoder_seconds(batch: int, n: int) -> float:
            kwargs = dict(input_ids=ids[:batch], attention_mask=mask[:batch], do_sample=True, guidance_scale=3.0,
                          top_k=250, max_new_tokens=n)
            if library == "zhiyin":
                return timed(lambda: model.generate(**kwargs, return_codes=True), repeat=3)
            return timed(lambda: model.generate(**kwargs), repeat=3)

        if library == "transformers":  # time the token loop alone: skip the audio decoding
            decode = model.audio_encoder.decode
            model.audio_encoder.decode = lambda codes, *a, **k: type("Out", (), {"audio_values": torch.zeros(1)})()
        result["bandwidth"] = read_bandwidth()
        for batch, key in ((1, "step_ms_b1"), (4, "step_ms_b4")):
            decoder_seconds(batch, 8)  # warm up
            short, long = decoder_seconds(batch, 8), decoder_seconds(batch, 8 + steps)
            result[key] = (long - short) / steps * 1e3
        if library == "transformers":
            model.audio_encoder.decode = decode

        codes = torch.randint(0, 2048, (1, 4, 250), generator=torch.Generator().manual_seed(1))  # 5 s of audio
        if library == "zhiyin":
            run = lambda: model.decode_audio(codes)
        else:
            run = lambda: model.audio_encoder.decode(codes[None], [None])
        run()
        result["encodec_ms_per_s"] = timed(run, repeat=2) * 1e3 / 5

        frames = round(e2e_seconds * 50)
        kwargs = dict(input_ids=ids[:1], attention_mask=mask[:1], do_sample=True, guidance_scale=3.0, top_k=250,
                      max_new_tokens=frames + 3)
        start = time.perf_counter()
        audio = model.generate(**kwargs)
        result["e2e_s"] = time.perf_counter() - start
        result["e2e_audio_s"] = audio.shape[-1] / 32000
    # what one step reads: every decoder weight but the token embeddings (one row each) and the cross-attention
    # key/value projections (applied to the text once per generation)
    once = ("embed_tokens", "embed_positions", "cross_attn.kv", "encoder_attn.k_proj", "encoder_attn.v_proj")
    weight_bytes = sum(
        p.numel() * p.element_size() for name, p in model.decoder.named_parameters() if not any(o in name for o in once)
    )
    result["decoder_weight_bytes"] = weight_bytes
    result["peak_rss_gb"] = peak_rss_gb()
    result["threads"] = torch.get_num_threads()
    return result


def print_table(results: list[dict], shape: str) -> None:
    base = {r["mode"].split("-")[1]: r for r in results if r["mode"].startswith("transformers")}
    reference = base.get("float32")
    rows = [
        ("load (s)", "load_s", "{:.1f}"),
        ("T5, 1 prompt (ms)", "t5_ms", "{:.0f}"),
        ("decoder, batch 1 + guidance (ms/step)", "step_ms_b1", "{:.1f}"),
        ("decoder, batch 4 + guidance (ms/step)", "step_ms_b4", "{:.1f}"),
        ("EnCodec decode (ms per s of audio)", "encodec_ms_per_s", "{:.0f}"),
        ("10 s of music end to end (s)", "e2e_s", "{:.1f}"),
        ("peak RSS (GB)", "peak_rss_gb", "{:.2f}"),
        ("peak RSS of loading (GB)", "load_rss_gb", "{:.2f}"),
    ]
    names = [r["mode"] for r in results]
    width = max(len(n) for n in names) + 2
    print(f"\nmusicgen-{shape} shapes, random weights; {results[0]['threads']} threads\n")
    print(f"{'':40s}" + "".join(f"{n:>{width}s}" for n in names))
    for label, key, fmt in rows:
        print(f"{label:40s}" + "".join(f"{fmt.format(r[key]):>{width}s}" for r in results))
    print(f"{'read bandwidth in this run (GB/s)':40s}" + "".join(f"{r['bandwidth'] / 1e9:>{width}.1f}" for r in results))
    print(f"{'floor: weight bytes / bandwidth (ms/step)':40s}"
          + "".join(f"{r['decoder_weight_bytes'] / r['bandwidth'] * 1e3:>{width}.1f}" for r in results))
    if reference:
        for label, key in (("speed-up vs transformers-float32, step", "step_ms_b1"), ("speed-up, 10 s end to end", "e2e_s")):
            print(f"{label:40s}" + "".join(f"{reference[key] / r[key]:>{width}.2f}" for r in results))
    print(f"{'realtime factor (audio s / wall s)':40s}" + "".join(f"{r['e2e_audio_s'] / r['e2e_s']:>{width}.2f}" for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--steps", type=int, default=60, help="decoder steps timed per batch size")
    parser.add_argument("--seconds", type=float, default=10.0, help="music length of the end-to-end run")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default bench/checkpoints/<shape>")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.checkpoint or HERE / "checkpoints" / args.shape

    if args.worker:
        print(json.dumps(worker(args.worker, folder, args.steps, args.seconds)))
        return
    if not (folder / "model.safetensors").exists():
        make_checkpoint(args.shape, folder)
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("transformers is not installed: zhiyin's rows only", file=sys.stderr)
        args.modes = [m for m in args.modes if m.startswith("zhiyin")]
    results = []
    for mode in args.modes:
        print(f"running {mode} ...", file=sys.stderr)
        command = [sys.executable, __file__, "--worker", mode, "--shape", args.shape, "--steps", str(args.steps),
                   "--seconds", str(args.seconds), "--checkpoint", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if done.returncode != 0:
            print(f"{mode} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if not results:
        sys.exit("no mode ran")
    print_table(results, args.shape)
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=2))


if __name__ == "__main__":
    main()
