"""`zhiyin serve` under load: N clients at once, served together (continuous batching) and one at a time.

    python bench/serve.py [--checkpoint DIR | --shape small] [--quantize int8|int4|none] [--clients 8]
                           [--seconds 10 ...]

Starts `zhiyin serve` on a random-weight checkpoint of a published shape (made once, as bench/benchmark.py makes
it) and sends it `--clients` requests from as many threads, their starts spread over the first two seconds,
durations cycling through `--seconds`: first to a server with `--max-batch N` (every request served at once), then
the same requests, arriving the same way, to a server with `--max-batch 1`, which serves them one at a time in
their order of arrival, as the demo apps that exist do. Each request is followed as a listener would: its audio
streamed from the moment it is accepted, so "first audio" is when its first samples arrive. Prints requests per
minute, seconds of music per second of wall time, and p50/p95 of first audio and completion for both, side by
side, with the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from common import checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(url: str, body: dict, delay: float) -> dict:
    """Send one request after `delay` s and stream its audio: (accepted, first audio, done) times from its send."""
    time.sleep(delay)
    with httpx.Client(base_url=url, timeout=None) as client:
        sent = time.perf_counter()
        job = client.post("/v1/generations", json=body)
        job.raise_for_status()
        first, size = None, 0
        with client.stream("GET", job.json()["audio_url"]) as audio:
            for piece in audio.iter_bytes():
                size += len(piece)
                if first is None and size > 44:
                    first = time.perf_counter() - sent
        done = time.perf_counter() - sent
    return {"first": first, "done": done, "seconds": body["duration"], "bytes": size}


def run(url: str, bodies: list[dict]) -> dict:
    """The requests from one thread each, their starts spread over two seconds."""
    started = time.perf_counter()
    results: list[dict] = [None] * len(bodies)

    def work(i: int) -> None:
        results[i] = one(url, bodies[i], 2.0 * i / len(bodies))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"wall": wall, "results": results}


@contextlib.contextmanager
def server(args: argparse.Namespace, folder: Path, max_batch: int):
    """A running `zhiyin serve` on a fresh data dir, warmed up by one request as long as the run's longest (kernels
    built, the KV cache grown to its size: a server's first request that long pays ~0.15 s for it, once): its URL."""
    port, data = free_port(), tempfile.mkdtemp(prefix="zhiyin-serve-bench-")
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "zhiyin.cli", "serve", "--model", str(folder), "--port", str(port)]
    command += ["--data-dir", data, "--max-batch", str(max_batch), "--dtype", args.dtype, "--device", args.device]
    if args.quantize != "none":
        command += ["--quantize", args.quantize]
    process = subprocess.Popen(command, env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        one(url, {"prompt": "warm-up", "duration": max(args.seconds), "seed": 0}, 0.0)
        while any(job["status"] != "succeeded" for job in httpx.get(url + "/v1/generations").json()["generations"]):
            time.sleep(0.1)  # the warm-up's file written: the server is idle when the run starts
        yield url
    finally:
        process.terminate()
        process.wait(120)
        shutil.rmtree(data, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default bench/checkpoints/<shape>")
    parser.add_argument("--quantize", choices=["int8", "int4", "none"], default="int8")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0], help="durations, cycled over requests")
    args = parser.parse_args()
    folder = checkpoint(args.checkpoint, args.shape)

    bodies = [
        {
            "prompt": f"request {i}: lofi hip hop with a warm piano",
            "duration": args.seconds[i % len(args.seconds)],
            "seed": i,
        }
        for i in range(args.clients)
    ]
    with server(args, folder, args.clients) as url:
        together = run(url, bodies)
    with server(args, folder, 1) as url:
        alone = run(url, bodies)

    def row(result: dict) -> dict:
        rs = result["results"]
        audio = sum(r["seconds"] for r in rs)
        return {
            "requests per minute": 60 * len(rs) / result["wall"],
            "music s per wall s": audio / result["wall"],
            "first audio p50 (s)": percentile([r["first"] for r in rs], 0.5),
            "first audio p95 (s)": percentile([r["first"] for r in rs], 0.95),
            "completion p50 (s)": percentile([r["done"] for r in rs], 0.5),
            "completion p95 (s)": percentile([r["done"] for r in rs], 0.95),
            "wall (s)": result["wall"],
        }

    a, b = row(together), row(alone)
    print(
        f"\n{args.clients} requests of {'/'.join(f'{s:g}' for s in args.seconds)} s, musicgen-{args.shape} shapes, "
        f"{args.quantize if args.quantize != 'none' else args.dtype}, {args.device}, "
        f"{statistics.mean(r['bytes'] for r in together['results']) / 1e6:.1f} MB of audio each\n"
    )
    print(f"{'':26s}{'together':>12s}{'one at a time':>15s}{'ratio':>8s}")
    for key in a:
        print(f"{key:26s}{a[key]:>12.2f}{b[key]:>15.2f}{a[key] / b[key]:>8.2f}")


if __name__ == "__main__":
    main()
