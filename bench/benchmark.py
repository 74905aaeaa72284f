"""zhiyin against transformers on the same random-weight checkpoint of a published MusicGen shape.

    python bench/benchmark.py                      # musicgen-small shapes, all modes, a side-by-side table
    python bench/benchmark.py --shape medium --modes zhiyin-float32 transformers-float32
    python bench/benchmark.py --device cuda --seconds 30   # on a GPU: float32/bfloat16/float16, with CUDA graphs
                                                           # and without (zhiyin-*-eager), 30 s end to end

The checkpoint is made once with zhiyin's own save_pretrained (random weights: speed does not depend on the
values) under bench/checkpoints/<shape>. Every mode runs in its own process so that peak memory is its own.
Measured per mode: load time, T5 ms (one prompt), decoder ms per step (batch 1 with guidance = 2 rows; batch 4
with guidance = 8 rows), EnCodec decode ms per second of audio, end-to-end seconds for 10 s of music (one
prompt, guidance 3, top-k 250, audio decoded), and peak RSS. The floor is the decoder's weight bytes per step
divided by the read bandwidth measured in the same process just before its decoder timings (a shared VM's bandwidth
drifts from minute to minute): at the best of 10 reads, and at their median (a VM's best can be a burst that no
longer read sustains); and the step over its floor with the step timed five more times, each between two reads
(the median of the five ratios: this VM's memory switches between two speeds within seconds). Timings are the best
of 3; EnCodec's of 5 (its 5 s decodes moved by 10-25 % from one to the next in a slow spell of this VM).
transformers is optional: without it, zhiyin's rows alone.
On a GPU (--device cuda) every timing waits for the GPU to finish, the bandwidth is the GPU memory's, and the peak
memory is the GPU's (torch.cuda.max_memory_allocated) beside the process's RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import timed, worker_environment

HERE = Path(__file__).resolve().parent
MODES = [
    "zhiyin-float32",
    "zhiyin-bfloat16",
    "zhiyin-int8",
    "zhiyin-int4",
    "transformers-float32",
    "transformers-bfloat16",
]
# on a GPU: no int8 (its weights have a CPU kernel only); zhiyin with its CUDA graphs and without them (-eager)
CUDA_MODES = [
    "zhiyin-float32",
    "zhiyin-bfloat16",
    "zhiyin-float16",
    "zhiyin-bfloat16-eager",
    "transformers-float32",
    "transformers-bfloat16",
    "transformers-float16",
]
PROMPTS = [
    "80s pop track with bassy drums and synth",
    "90s rock song with loud guitars and heavy drums",
    "lofi slow bpm electro chill with organic samples",
    "a jazz vibraphone solo over a walking bass line",
]


def make_checkpoint(shape: str, folder: Path) -> None:
    from zhiyin.random_checkpoint import write_random_checkpoint

    print(f"making a random musicgen-{shape} checkpoint in {folder} ...", file=sys.stderr)
    write_random_checkpoint(folder, shape)


def bandwidth_probe(device: str):
    """A function n -> the rates (bytes per second) of n reads by torch of the device's memory: a sum over 256 MiB on
    the CPU (8x the L3 cache of the CPUs we use; on huge pages where Linux gives them, as the decoder's weights are:
    read faster than from 4 KB pages), 2 GiB on a GPU. Small enough not to raise a mode's peak memory much."""
    import torch

    from zhiyin import heap

    x = torch.ones(1 << (26 if device == "cpu" else 29), device=device)  # float32
    heap.onto_huge_pages([x])  # (on the CPU)
    run = lambda: x.sum().item()  # noqa: E731  (.item(): waits for the GPU)
    run()
    return lambda n: [x.numel() * 4 / timed(run) for _ in range(n)]


def read_bandwidth(rates) -> tuple[float, float]:
    """The best and the median of 10 reads (bandwidth_probe's). On a shared VM the best catches a burst the median
    does not sustain (BENCHMARKS.md, session 20)."""
    reads = rates(10)
    return max(reads), statistics.median(reads)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def worker(mode: str, folder: Path, steps: int, e2e_seconds: float, device: str) -> dict:
    import torch

    library, dtype = mode.split("-")[:2]
    if mode.endswith("-eager"):
        os.environ["ZHIYIN_CUDA_GRAPHS"] = "0"
    quantize = dtype if dtype in ("int8", "int4") else None
    weights_dtype = {
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "int8": torch.float32,
        "int4": torch.float32,
    }[dtype]
    result: dict = {"mode": mode, "device": device}
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    start = time.perf_counter()
    if library == "zhiyin":
        from zhiyin import MusicgenForConditionalGeneration

        model = MusicgenForConditionalGeneration.from_pretrained(
            folder, dtype=weights_dtype, quantize=quantize, device=device
        )
    else:
        from transformers import MusicgenForConditionalGeneration

        model = MusicgenForConditionalGeneration.from_pretrained(folder, dtype=weights_dtype).eval().to(device)
    result["load_s"] = time.perf_counter() - start
    result["load_rss_gb"] = peak_rss_gb()
    config = model.config  # the sizes below come from it, so that any checkpoint runs (the tests use a tiny one)
    text_vocab, codebook_size = config.text_encoder.vocab_size, config.decoder.vocab_size
    codebooks, rate = config.decoder.num_codebooks, config.audio_encoder.sampling_rate
    frame_rate = config.audio_encoder.frame_rate
    lag = codebooks // config.decoder.audio_channels - 1  # steps the delay pattern's last codebook comes behind
    ids = torch.randint(5, min(30000, text_vocab), (4, 14), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)

    with torch.inference_mode():
        encoder = (
            model.encode_text
            if library == "zhiyin"
            else (lambda i, m: model.text_encoder(input_ids=i, attention_mask=m))
        )
        result["t5_ms"] = timed(lambda: encoder(ids[:1], mask[:1]), repeat=5) * 1e3

        def decoder_seconds(batch: int, n: int, repeat: int = 3) -> float:
            kwargs = dict(
                input_ids=ids[:batch],
                attention_mask=mask[:batch],
                do_sample=True,
                guidance_scale=3.0,
                top_k=250,
                max_new_tokens=n,
            )
            if library == "zhiyin":
                return timed(lambda: model.generate(**kwargs, return_codes=True), repeat=repeat)
            return timed(lambda: model.generate(**kwargs), repeat=repeat)

        if library == "transformers":  # time the token loop alone: skip the audio decoding
            decode = model.audio_encoder.decode
            model.audio_encoder.decode = lambda codes, *a, **k: type("Out", (), {"audio_values": torch.zeros(1)})()
        rates = bandwidth_probe(device)
        result["bandwidth"], result["bandwidth_median"] = read_bandwidth(rates)
        for batch, key in ((1, "step_ms_b1"), (4, "step_ms_b4")):
            decoder_seconds(batch, 8)  # warm up
            short, long = decoder_seconds(batch, 8), decoder_seconds(batch, 8 + steps)
            result[key] = (long - short) / steps * 1e3
            if batch == 1:  # the step again, five times, each between two reads of memory at the time it ran
                result["paired"] = []
                for _ in range(5):
                    before = max(rates(3))
                    step = (decoder_seconds(batch, 8 + steps, repeat=1) - short) / steps
                    result["paired"].append((step, (before + max(rates(3))) / 2))
        if library == "transformers":
            model.audio_encoder.decode = decode

        frames = 5 * frame_rate  # 5 s
        codes = torch.randint(0, codebook_size, (1, codebooks, frames), generator=torch.Generator().manual_seed(1))
        codes = codes.to(device)

        def run():
            if library == "zhiyin":
                return model.decode_audio(codes)
            return model.audio_encoder.decode(codes[None], [None])

        run()
        result["encodec_ms_per_s"] = timed(run, repeat=5) * 1e3 / 5

        frames = round(e2e_seconds * frame_rate)
        kwargs = dict(
            input_ids=ids[:1],
            attention_mask=mask[:1],
            do_sample=True,
            guidance_scale=3.0,
            top_k=250,
            max_new_tokens=frames + lag,
        )
        audio = []
        result["e2e_s"] = timed(lambda: audio.append(model.generate(**kwargs)))
        result["e2e_audio_s"] = audio[0].shape[-1] / rate
    # what one step reads: every decoder weight but the token embeddings (one row each) and the cross-attention
    # key/value projections (applied to the text once per generation)
    once = ("embed_tokens", "embed_positions", "cross_attn.kv", "encoder_attn.k_proj", "encoder_attn.v_proj")
    weight_bytes = sum(
        p.numel() * p.element_size() for name, p in model.decoder.named_parameters() if not any(o in name for o in once)
    )
    result["decoder_weight_bytes"] = weight_bytes
    result["peak_rss_gb"] = peak_rss_gb()
    result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else 0.0
    result["threads"] = torch.get_num_threads()
    result["kernels_march"] = os.environ.get("ZHIYIN_KERNELS_MARCH") or "native"
    result["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    return result


def paired_ratio(result: dict) -> float:
    """A mode's batch-1 step over its floor, each of its paired steps (`paired`: step seconds, the mean rate of the
    reads just before and after it) at its own rate; the median of them. A shared VM's memory can change speed within
    seconds (BENCHMARKS.md, "Two memory speeds"): a read minutes or seconds away may not be the rate the step saw."""
    return statistics.median(step * rate / result["decoder_weight_bytes"] for step, rate in result["paired"])


def print_table(results: list[dict], title: str, seconds: float) -> None:
    base = {r["mode"].split("-")[1]: r for r in results if r["mode"].startswith("transformers")}
    reference = base.get("float32")
    rows = [
        ("load (s)", "load_s", "{:.1f}"),
        ("T5, 1 prompt (ms)", "t5_ms", "{:.0f}"),
        ("decoder, batch 1 + guidance (ms/step)", "step_ms_b1", "{:.2f}"),
        ("decoder, batch 4 + guidance (ms/step)", "step_ms_b4", "{:.2f}"),
        ("EnCodec decode (ms per s of audio)", "encodec_ms_per_s", "{:.0f}"),
        (f"{seconds:g} s of music end to end (s)", "e2e_s", "{:.2f}"),
        ("peak RSS (GB)", "peak_rss_gb", "{:.2f}"),
        ("peak RSS of loading (GB)", "load_rss_gb", "{:.2f}"),
    ]
    on_gpu = results[0]["device"] == "cuda"
    if on_gpu:
        rows.append(("peak GPU memory allocated (GB)", "peak_gpu_gb", "{:.2f}"))
    names = [r["mode"] for r in results]
    width = max(len(n) for n in names) + 2
    first = results[0]
    where = (
        first["gpu"]
        if on_gpu
        else (
            f"CPU, {first['threads']} threads, kernels for -march={first['kernels_march']}, "
            f"PyTorch at {first.get('torch_capability', '?')}"
        )
    )
    print(f"\n{title}; {where}\n")
    print(f"{'':40s}" + "".join(f"{n:>{width}s}" for n in names))
    for label, key, fmt in rows:
        print(f"{label:40s}" + "".join(f"{fmt.format(r[key]):>{width}s}" for r in results))
    for which, key in (("best", "bandwidth"), ("median", "bandwidth_median")):
        print(
            f"{'read bandwidth, ' + which + ' of 10 (GB/s)':40s}"
            + "".join(f"{r[key] / 1e9:>{width}.1f}" for r in results)
        )
    for which, key in (("best", "bandwidth"), ("median", "bandwidth_median")):
        print(
            f"{'floor: weight bytes / ' + which + ' (ms/step)':40s}"
            + "".join(f"{r['decoder_weight_bytes'] / r[key] * 1e3:>{width}.1f}" for r in results)
        )
    print(f"{'step / floor at the reads around it':40s}" + "".join(f"{paired_ratio(r):>{width}.2f}" for r in results))
    if reference:
        for label, key in (("speed-up vs transformers-float32, step", "step_ms_b1"), ("speed-up, end to end", "e2e_s")):
            print(f"{label:40s}" + "".join(f"{reference[key] / r[key]:>{width}.2f}" for r in results))
    fastest = min(
        (r for r in results if r["mode"].startswith("transformers")), key=lambda r: r["step_ms_b1"], default=None
    )
    if fastest and fastest is not reference:  # (the float32 row above otherwise)
        print(
            f"{'speed-up vs ' + fastest['mode'] + ', step':40s}"
            + "".join(f"{fastest['step_ms_b1'] / r['step_ms_b1']:>{width}.2f}" for r in results)
        )
    print(
        f"{'realtime factor (audio s / wall s)':40s}"
        + "".join(f"{r['e2e_audio_s'] / r['e2e_s']:>{width}.2f}" for r in results)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--modes", nargs="+", choices=sorted(set(MODES + CUDA_MODES)), help="default: every mode of the device"
    )
    parser.add_argument("--steps", type=int, default=60, help="decoder steps timed per batch size")
    parser.add_argument("--seconds", type=float, default=10.0, help="music length of the end-to-end run")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default bench/checkpoints/<shape>")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--march",
        default=None,
        help="build zhiyin's CPU kernels for this -march (e.g. x86-64-v3: AVX2) instead of this CPU's; "
        "below AVX-512, PyTorch computes at that level too (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.checkpoint or HERE / "checkpoints" / args.shape

    if args.worker:
        print(json.dumps(worker(args.worker, folder, args.steps, args.seconds, args.device)))
        return
    args.modes = args.modes or (CUDA_MODES if args.device == "cuda" else MODES)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit(
                f"--device cuda: this PyTorch ({torch.__version__}) sees no CUDA GPU; run on a GPU machine with a "
                "CUDA build of torch, or leave --device out for the CPU"
            )
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
        command = [
            sys.executable,
            __file__,
            "--worker",
            mode,
            "--shape",
            args.shape,
            "--steps",
            str(args.steps),
            "--seconds",
            str(args.seconds),
            "--checkpoint",
            str(folder),
            "--device",
            args.device,
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=worker_environment(args.march))
        if done.returncode != 0:
            print(f"{mode} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        got = results[-1]
        print(f"  {mode}: step {got['step_ms_b1']:.2f} ms, end to end {got['e2e_s']:.2f} s", file=sys.stderr)
        if args.json:  # after every mode: a run stopped midway keeps the modes it finished
            args.json.write_text(json.dumps({"results": results}, indent=2))
    if not results:
        sys.exit("no mode ran")
    title = f"checkpoint {folder}" if args.checkpoint else f"musicgen-{args.shape} shapes, random weights"
    print_table(results, title, args.seconds)


if __name__ == "__main__":
    main()
