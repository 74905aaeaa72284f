"""`zhiyin generate "80s pop track with bassy drums and synth" -o song.wav`, `zhiyin info song.wav`, and
`zhiyin random-checkpoint FOLDER`.

Every argument is checked before torch is imported or a model is loaded (what depends on the model, once its
config.json is read): bad input gets one line on stderr, exit status 2, and no output file.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
import threading
import time

DEFAULT_MODEL = "facebook/musicgen-small"
MAX_DURATION = 3600.0  # seconds of new music one command makes unless --max-duration says otherwise
SEED_LIMIT = 2**63  # seeds are 0 .. 2**63 - 1
FORMATS = ("wav", "flac", "ogg", "mp3")
FLAG_NAMES = {
    "guidance_scale": "--guidance",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "temperature": "--temperature",
    "greedy": "--greedy",
    "duration": "--duration",
    "window": "--window",
    "extend_stride": "--extend-stride",
}


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors, in our one-line form
        raise UsageError(message)


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**63 - 1, got {text}")
    return value


ADAPTER_HELP = "a LoRA adapter folder (PEFT's format: what zhiyin train makes), merged into the weights at load"


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .config import QUANTIZE
    from .processing.audio_io import DEFAULT_MP3_BITRATE, MP3_BITRATES
    from .processing.loudness import DEFAULT_NORMALIZE, STRATEGIES, TARGET_DB

    parser = _Parser(prog="zhiyin", description="Make music with MusicGen.")
    parser.add_argument("--version", action="version", version=f"zhiyin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = commands.add_parser("generate", help="generate music from text, from nothing, or from an audio prompt")
    g.add_argument("prompts", nargs="*", help="text descriptions; several prompts make several files")
    g.add_argument(
        "-o",
        "--output",
        default="music.wav",
        help="output file (default music.wav); with several prompts NAME-1.wav, NAME-2.wav, ...",
    )
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default {DEFAULT_MODEL})")
    g.add_argument(
        "--duration",
        type=_finite,
        default=10.0,
        help="seconds of new music to make (default 10); an audio prompt comes on top of it",
    )
    g.add_argument(
        "--max-duration",
        type=_finite,
        default=MAX_DURATION,
        help=f"the longest --duration accepted (default {MAX_DURATION:g} s), a guard against typos",
    )
    g.add_argument(
        "--window",
        type=_finite,
        default=30.0,
        help="longer music is made in windows of this many seconds (default 30, what the model was trained on)",
    )
    g.add_argument(
        "--extend-stride",
        type=_finite,
        default=18.0,
        help="seconds of new music each window after the first adds; the rest of it continues the last "
        "window's music (default 18)",
    )
    g.add_argument(
        "--stream",
        action="store_true",
        help="write the WAV as the music is made, to NAME.partial.wav (a valid file after every second), "
        "renamed to NAME.wav when done or interrupted",
    )
    g.add_argument("--audio-prompt", metavar="FILE", help="continue this audio (any format and rate soundfile reads)")
    g.add_argument(
        "--prompt-seconds",
        type=_finite,
        default=None,
        metavar="N",
        help="continue only the last N seconds of the audio prompt",
    )
    g.add_argument(
        "--melody",
        metavar="FILE",
        help="follow this tune (melody models such as facebook/musicgen-melody; any audio file)",
    )
    g.add_argument("--unconditional", action="store_true", help="no text: music from nothing (or from --melody)")
    g.add_argument("--num-samples", type=int, default=1, help="how many files to make with --unconditional")
    g.add_argument("--guidance", type=_finite, default=3.0, help="classifier-free guidance scale (default 3, 1 = off)")
    g.add_argument("--top-k", type=int, default=250, help="sample from the k most likely tokens (default 250)")
    g.add_argument("--top-p", type=_finite, default=None, help="nucleus sampling: keep tokens up to this probability")
    g.add_argument("--temperature", type=_finite, default=1.0, help="sampling temperature (default 1)")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token (no sampling)")
    g.add_argument(
        "--seed",
        type=_seed,
        default=None,
        help="random seed, 0 to 2**63 - 1: the same seed gives the same music (default: one is drawn, "
        "printed and stored in the file)",
    )
    g.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="audio format (default: from the output file's extension, else wav)",
    )
    g.add_argument(
        "--bitrate",
        type=int,
        choices=MP3_BITRATES,
        default=None,
        metavar="KBPS",
        help=f"mp3 bitrate in kbit/s (default {DEFAULT_MP3_BITRATE})",
    )
    g.add_argument(
        "--normalize",
        choices=STRATEGIES,
        default=DEFAULT_NORMALIZE,
        help="loudness (default: to --loudness LUFS, never clipping), rms, peak, clip or none",
    )
    g.add_argument(
        "--loudness",
        type=_finite,
        default=TARGET_DB,
        metavar="LUFS",
        help=f"the level --normalize loudness (or rms, in dB FS) brings the music to (default {TARGET_DB:g})",
    )
    g.add_argument(
        "--compress",
        action="store_true",
        help="soften the loudest peaks rather than lower the whole level to keep them under -1 dB FS",
    )
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="weights dtype")
    g.add_argument(
        "--quantize",
        choices=QUANTIZE,
        default=None,
        help="decoder weights as int8 (weight-only; fast on CPU, output differs slightly) or int4 (the fastest; "
        "output differs more: BENCHMARKS.md's precision table)",
    )
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    g.add_argument("--adapter", default=None, metavar="DIR", help=ADAPTER_HELP)
    g.add_argument(
        "--picture", action="store_true", help="also write NAME.png beside each file: its waveform over its spectrogram"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    i = commands.add_parser("info", help="what made a file zhiyin wrote, and the command that makes it again")
    i.add_argument("files", nargs="+", help="audio files written by zhiyin generate")

    r = commands.add_parser(
        "random-checkpoint",
        help="write a complete checkpoint of a published shape with random weights, to try every command offline",
    )
    from .random_checkpoint import SHAPES

    r.add_argument("folder", help="where to write it (a new or empty folder)")
    r.add_argument(
        "--shape", choices=SHAPES, default="small", help="which published checkpoint's shape (default small)"
    )
    r.add_argument("--seed", type=_seed, default=0, help="seed of the random weights (default 0)")

    s = commands.add_parser("serve", help="an HTTP API and a web page that make music for many people at once")
    s.add_argument("--model", default="facebook/musicgen-small", help="hub id or local folder")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--data-dir", default="zhiyin-data", help="where jobs and their audio are kept (default ./zhiyin-data)"
    )
    s.add_argument("--max-batch", type=int, default=8, help="requests stepped together (default 8)")
    s.add_argument("--max-duration", type=_finite, default=300.0, help="longest music one request may ask for (s)")
    s.add_argument("--max-queue", type=int, default=64, help="jobs that may wait; more are answered 429")
    s.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN (or set ZHIYIN_TOKEN)")
    s.add_argument("--grace", type=_finite, default=30.0, help="on SIGTERM, seconds running jobs get to finish")
    s.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    s.add_argument("--quantize", choices=QUANTIZE, default=None)
    s.add_argument("--device", default="cpu")
    s.add_argument("--adapter", default=None, metavar="DIR", help=ADAPTER_HELP)

    b = commands.add_parser(
        "batch", help="make every piece a jobs file lists (JSON Lines or CSV): resumable, here or on a Ray cluster"
    )
    b.add_argument(
        "jobs",
        help="JOBS.jsonl (a JSON object a line) or JOBS.csv (a header row): id, prompt (null: none), duration, seed, "
        "guidance_scale, top_k, top_p, temperature, audio_prompt, melody (paths relative to the file), format",
    )
    b.add_argument("-o", "--output", required=True, help="folder of the files and their manifest.jsonl")
    b.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default {DEFAULT_MODEL})")
    b.add_argument("--max-batch", type=int, default=8, help="pieces made together (default 8)")
    b.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    b.add_argument("--quantize", choices=QUANTIZE, default=None)
    b.add_argument("--device", default="cpu")
    b.add_argument("--adapter", default=None, metavar="DIR", help=ADAPTER_HELP)
    b.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on Ray (pip install 'zhiyin[ray]'): 'auto' joins this machine's cluster, an address another; "
        "alone, a Ray of this machine. -o must be a folder every node sees",
    )
    b.add_argument("--ray-actors", type=int, default=1, help="Ray actors, each with the model loaded (default 1)")
    b.add_argument("--ray-num-cpus", type=float, default=None, help="CPUs each actor takes")
    b.add_argument("--ray-num-gpus", type=float, default=None, help="GPUs each actor takes")
    b.add_argument("--quiet", action="store_true", help="no progress bar")

    t = commands.add_parser(
        "train",
        help="teach a model your music: a LoRA adapter from a folder of captioned audio (pip install 'zhiyin[train]')",
    )
    t.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default {DEFAULT_MODEL})")
    t.add_argument(
        "--data", required=True, help="folder of audio files, each with a caption: NAME.txt beside it or metadata.jsonl"
    )
    t.add_argument("-o", "--output", required=True, help="the adapter's folder (also its checkpoints and code cache)")
    length = t.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="optimizer steps")
    length.add_argument("--epochs", type=_finite, help="passes over the training files (a random crop of each)")
    t.add_argument("--lr", type=_finite, default=1e-4, help="peak learning rate (default 1e-4)")
    t.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    t.add_argument(
        "--alpha", type=_finite, default=32.0, help="LoRA alpha: updates scaled by alpha / rank (default 32)"
    )
    t.add_argument("--lora-dropout", type=_finite, default=0.0, help="dropout on the adapters' input (default 0)")
    t.add_argument("--text-projection", action="store_true", help="an adapter on the text projection too")
    t.add_argument("--lm-heads", action="store_true", help="adapters on the LM heads too")
    t.add_argument("--batch-size", type=int, default=1, help="segments per micro-batch (default 1)")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    t.add_argument("--segment-seconds", type=_finite, default=30.0, help="length of the random crops (default 30)")
    t.add_argument("--warmup", type=int, default=None, help="warmup steps (default 5%% of the steps, at most 100)")
    t.add_argument("--weight-decay", type=_finite, default=0.0)
    t.add_argument("--cond-dropout", type=_finite, default=0.1, help="how often the text is dropped (default 0.1)")
    t.add_argument("--val-fraction", type=_finite, default=0.1, help="files held out for validation (default 0.1)")
    t.add_argument("--val-every", type=int, default=50, help="steps between validation losses (default 50)")
    t.add_argument("--save-every", type=int, default=100, help="steps between checkpoints (default 100)")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    t.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="autocast (default: bfloat16 on GPUs)"
    )
    t.add_argument("--seed", type=_seed, default=0, help="seed of the adapters, crops and dropout (default 0)")
    again = t.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in -o from its last checkpoint")
    again.add_argument("--overwrite", action="store_true", help="start again in an -o that holds another run")
    t.add_argument("--strict", action="store_true", help="stop at unreadable audio instead of skipping it")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# ---------------------------------------------------------------- checks that need no model


def output_paths(output: str, count: int, format: str | None) -> list[str]:
    """The files a run writes, checked: in a folder that exists and takes new files, none of them a folder or
    anything but a regular file."""
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        raise UsageError(f"'{output}' is a folder: give a file name such as '{os.path.join(output, 'music.wav')}'")
    _regular_or_absent(output)
    stem, ext = os.path.splitext(output)
    if format is not None:
        ext = "." + format
    elif not ext:
        ext = ".wav"
    if ext.lower().lstrip(".") not in FORMATS:
        raise UsageError(f"unknown output format '{ext}': use .wav, .flac, .ogg or .mp3 (or --format)")
    paths = [stem + ext] if count == 1 else [f"{stem}-{i + 1}{ext}" for i in range(count)]
    for path in paths:
        if os.path.isdir(path):
            raise UsageError(f"'{path}' is a folder: give a file name such as '{os.path.join(path, 'music.wav')}'")
        _regular_or_absent(path)
    _check_writable(os.path.dirname(os.path.abspath(paths[0])))
    return paths


def _regular_or_absent(path: str) -> None:
    if os.path.exists(path) and not os.path.isfile(path):
        raise UsageError(f"'{path}' exists and is not a regular file (a device or pipe?): choose another -o")


def _check_writable(folder: str) -> None:
    """A new file can be made in `folder` (tried: permissions alone say nothing about /proc, /sys, read-only mounts)."""
    import tempfile

    if not os.path.isdir(folder):
        raise UsageError(f"output folder '{folder}' does not exist: create it or choose another -o")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".zhiyin-", suffix=".probe"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(f"output folder '{folder}' is not writable ({reason}): choose another -o") from None


def check_arguments(args) -> list[str]:
    """Everything that can be checked before torch is imported. Returns the output paths."""
    prompts = list(args.prompts)
    if args.unconditional and prompts:
        raise UsageError("--unconditional takes no text prompt: drop the prompt or drop --unconditional")
    if not args.unconditional and (not prompts or any(not p.strip() for p in prompts)):
        raise UsageError('empty prompt: give a description such as "lofi hip hop with piano", or use --unconditional')
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.max_duration <= 0:
        raise UsageError(f"--max-duration must be more than 0 seconds, got {args.max_duration:g}")
    if args.duration <= 0:
        raise UsageError(f"--duration must be more than 0 seconds, got {args.duration:g}")
    if args.duration > args.max_duration:
        raise UsageError(
            f"--duration {args.duration:g} s is more than --max-duration ({args.max_duration:g} s): "
            "raise --max-duration if you mean it"
        )
    if args.prompt_seconds is not None and args.audio_prompt is None:
        raise UsageError("--prompt-seconds goes with --audio-prompt")
    if args.prompt_seconds is not None and args.prompt_seconds <= 0:
        raise UsageError(f"--prompt-seconds must be more than 0, got {args.prompt_seconds:g}")
    if args.normalize in ("loudness", "rms") and args.loudness > 0:
        raise UsageError(f"--loudness must be at most 0 (a level under full scale), got {args.loudness:g}")
    from .generation.options import SamplingSettings

    settings = SamplingSettings(**_sampling(args))
    try:
        settings.validate(names=FLAG_NAMES)  # the API's checks, worded with the CLI's flags
    except ValueError as error:
        raise UsageError(str(error)) from None
    count = args.num_samples if args.unconditional else len(prompts)
    paths = output_paths(args.output, count, args.format)
    if args.stream and not paths[0].lower().endswith(".wav"):
        raise UsageError("--stream writes WAV files: use -o NAME.wav")
    if args.bitrate is not None and not paths[0].lower().endswith(".mp3"):
        raise UsageError("--bitrate is for mp3 files: use -o NAME.mp3 or --format mp3")
    for flag, path in (("--audio-prompt", args.audio_prompt), ("--melody", args.melody)):
        if path is not None:
            _audio_file_seconds(flag, path)  # exists and has a readable header
    return paths


def _audio_file_seconds(flag: str, path: str) -> float:
    from .processing.audio_io import audio_seconds

    if not os.path.isfile(path):
        what = "audio prompt" if flag == "--audio-prompt" else "melody file"
        raise UsageError(f"{what} '{path}' not found")
    try:
        return audio_seconds(path)
    except ValueError as error:
        raise UsageError(f"{flag}: {error}") from None


def _sampling(args) -> dict:
    """The sampling settings the flags ask for, as generate_long takes them."""
    return dict(
        do_sample=not args.greedy,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance_scale=args.guidance,
    )


def _check_for_model(args, config) -> None:
    """What depends on the model, from its config.json alone: before the weights are read. The length settings go
    through the library's own checks (generation/options.py), worded with the CLI's flags."""
    from .config import GenerationConfig, MusicgenMelodyConfig
    from .generation.options import GenerationOptions, Limits

    melodic = isinstance(config, MusicgenMelodyConfig)
    if args.melody is not None and not melodic:
        raise UsageError(
            f"--melody needs a melody model such as facebook/musicgen-melody: '{args.model}' has no melody input"
        )
    if melodic and args.audio_prompt is not None:
        raise UsageError("melody models continue no --audio-prompt: give the tune with --melody instead")
    if args.unconditional and args.audio_prompt is not None:
        raise UsageError('--audio-prompt needs a text prompt here; give one (it may be short, e.g. "music")')
    lengths = dict(duration=args.duration, window=args.window, extend_stride=args.extend_stride)
    try:
        GenerationOptions.resolve(
            "generate_long", {**lengths, **_sampling(args)}, GenerationConfig(), Limits.of(config), names=FLAG_NAMES
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.audio_prompt is not None:
        seconds = _audio_file_seconds("--audio-prompt", args.audio_prompt)
        if args.prompt_seconds is not None:
            seconds = min(seconds, args.prompt_seconds)
        if seconds >= args.window:
            raise UsageError(
                f"the audio prompt '{args.audio_prompt}' is {seconds:.1f} s; it must be shorter than --window "
                f"({args.window:g} s): continue its last seconds with --prompt-seconds {max(1, int(args.window) // 2)}"
            )


# ---------------------------------------------------------------- generate


def _settings(args) -> dict:
    """What a file records of how it was made (its metadata; `zhiyin info` prints it)."""
    return dict(
        duration=args.duration,
        greedy=args.greedy,
        guidance=args.guidance,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        window=args.window,
        extend_stride=args.extend_stride,
        audio_prompt=_absolute(args.audio_prompt),
        prompt_seconds=args.prompt_seconds,
        melody=_absolute(args.melody),
        dtype=args.dtype,
        quantize=args.quantize,
        adapter=_absolute(args.adapter),
        device=args.device,
        normalize=args.normalize,
        loudness=args.loudness,
        compress=args.compress,
        bitrate=args.bitrate,
    )


def _loading(args) -> dict:
    """How the model is loaded: from_pretrained's options as --dtype, --device, --quantize and --adapter say."""
    return dict(dtype=args.dtype, device=args.device, quantize=args.quantize, adapter=args.adapter)


def _load_model(args):
    """The model --model names, of the class its config asks for, loaded as _loading says."""
    from .model import load_model

    return load_model(args.model, **_loading(args))


def _model_name(model: str) -> str:
    """How a file or a job records the model: a folder as its absolute path (to be found from anywhere)."""
    return os.path.abspath(model) if os.path.isdir(model) else model


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(path)


def remake_command(
    prompts: list[str] | None, num_samples: int, model: str, seed: int, settings: dict, output: str
) -> list[str]:
    """The `zhiyin generate` command line that makes the same files again (every setting spelled out)."""
    s = settings
    argv = (
        ["zhiyin", "generate", *prompts]
        if prompts
        else ["zhiyin", "generate", "--unconditional", "--num-samples", str(num_samples)]
    )
    argv += ["--model", model, "--duration", f"{s['duration']:g}", "--seed", str(seed)]
    argv += ["--greedy"] if s["greedy"] else ["--top-k", str(s["top_k"]), "--temperature", f"{s['temperature']:g}"]
    if s["top_p"] is not None and not s["greedy"]:
        argv += ["--top-p", f"{s['top_p']:g}"]
    argv += [
        "--guidance",
        f"{s['guidance']:g}",
        "--window",
        f"{s['window']:g}",
        "--extend-stride",
        f"{s['extend_stride']:g}",
    ]
    for flag, key in (
        ("--audio-prompt", "audio_prompt"),
        ("--melody", "melody"),
        ("--quantize", "quantize"),
        ("--adapter", "adapter"),
        ("--bitrate", "bitrate"),
    ):
        if s.get(key) is not None:
            argv += [flag, str(s[key])]
    if s["prompt_seconds"] is not None:
        argv += ["--prompt-seconds", f"{s['prompt_seconds']:g}"]
    argv += ["--dtype", s["dtype"], "--device", s["device"], "--normalize", s["normalize"]]
    argv += ["--loudness", f"{s['loudness']:g}"] + (["--compress"] if s["compress"] else [])
    return argv + ["-o", output]


def generate(args) -> int:
    paths = check_arguments(args)
    from .loading.hub import read_config

    config = read_config(args.model)
    _check_for_model(args, config)
    import torch

    from .processing.audio_io import read_audio
    from .processing.processor import AutoProcessor

    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    rate, channels = config.audio_encoder.sampling_rate, config.decoder.audio_channels
    count = len(paths)
    prompt_audio = None
    if args.audio_prompt is not None:
        prompt_audio = read_audio(args.audio_prompt, rate, channels, last_seconds=args.prompt_seconds)

    started = time.perf_counter()
    model = _load_model(args)
    inputs, sampling = {}, _sampling(args)
    if args.unconditional:
        inputs = dict(model.get_unconditional_inputs(count))
        sampling["guidance_scale"] = inputs.pop("guidance_scale", 1.0)  # no text: nothing to guide towards
    if not args.unconditional or args.melody is not None:  # text, or the melody's chroma
        processor = AutoProcessor.from_pretrained(args.model)
        audio = [prompt_audio] * count if prompt_audio is not None else None
        if not args.unconditional:
            inputs = dict(
                processor(
                    text=args.prompts,
                    audio=audio,
                    sampling_rate=rate if audio else None,
                    padding=True,
                    return_tensors="pt",
                )
            )
    if args.melody is not None:  # the tune's chroma, one copy per file, guided against the null chroma
        extractor = processor.feature_extractor
        melody = read_audio(args.melody, extractor.sampling_rate, 1)[0]
        inputs["input_features"] = extractor(
            [melody] * count, sampling_rate=extractor.sampling_rate, return_tensors="pt"
        )["input_features"]
        sampling["guidance_scale"] = args.guidance
    generator = torch.Generator(model.device).manual_seed(seed)
    options = dict(
        duration=args.duration,
        window=args.window,
        extend_stride=args.extend_stride,
        progress_bar=not args.quiet,
        **sampling,
    )

    settings = _settings(args)
    model_name = _model_name(args.model)
    command = remake_command(
        None if args.unconditional else list(args.prompts), count, model_name, seed, settings, args.output
    )
    prompts = [None] * count if args.unconditional else args.prompts
    files = [
        dict(prompt=p, take=i + 1, takes=count, model=model_name, seed=seed, settings=settings, command=command)
        for i, p in enumerate(prompts)
    ]
    writer = dict(
        rate=rate,
        format=args.format,
        normalize=args.normalize,
        loudness_db=args.loudness,
        compress=args.compress,
        bitrate=args.bitrate,
    )
    if args.stream:
        chunks = model.generate_stream(**inputs, generator=generator, **options)
        status = stream_to_files(chunks, paths, files, writer, args.picture)
    else:
        audio_values = model.generate_long(**inputs, generator=generator, **options).cpu().numpy()
        status = 0
        for path, audio, metadata in zip(paths, audio_values, files):
            status |= _finish(path, audio, metadata, writer, args.picture)
    print(
        f"done in {time.perf_counter() - started:.1f} s, seed {seed} (--seed {seed} makes the same music)",
        file=sys.stderr,
    )
    return status


def _finish(path: str, audio, metadata: dict, writer: dict, picture: bool) -> int:
    """Write one finished file (levelled, tagged, atomically) and say so; 1 if it could not be written."""
    from .processing.audio_io import write_audio

    w = writer
    try:
        write_audio(
            path,
            audio,
            w["rate"],
            format=w["format"],
            normalize=w["normalize"],
            loudness_db=w["loudness_db"],
            compress=w["compress"],
            bitrate=w["bitrate"],
            metadata=metadata,
        )
    except (OSError, ValueError) as error:
        print(f"zhiyin: error: could not write {path}: {error}", file=sys.stderr)
        return 1
    kind = "stereo" if audio.shape[0] == 2 else "mono"
    print(f"wrote {path} ({audio.shape[-1] / w['rate']:.2f} s, {w['rate']} Hz, {kind})")
    if picture:
        from .processing.picture import save_picture

        print(f"picture {save_picture(os.path.splitext(path)[0] + '.png', audio, w['rate'])}")
    return 0


def partial_path(path: str) -> str:
    """Where --stream writes `path` while the music is being made."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.partial{ext}"


def stream_to_files(chunks, paths: list[str], files: list[dict], writer: dict, picture: bool = False) -> int:
    """Write audio chunks [B, channels, samples] to B partial WAV files as they come (streaming.write_stream); when
    the music is done or interrupted, each becomes its file (levelled and tagged like any other) and the partial
    file goes. A killed run leaves the partial files, valid WAVs of what was made."""
    import soundfile

    from .processing.audio_io import write_stream

    partials = [partial_path(path) for path in paths]
    written, status = 0, 0
    try:
        for written in write_stream(chunks, partials, writer["rate"]):
            pass
    except KeyboardInterrupt:
        status = 130
        print(
            f"zhiyin: interrupted; keeping the first {written / writer['rate']:.2f} s"
            if written
            else "zhiyin: interrupted; nothing written",
            file=sys.stderr,
        )
    if not written:
        return status or 1
    for path, partial, metadata in zip(paths, partials, files):
        audio = soundfile.read(partial, dtype="float32", always_2d=True)[0].T
        failed = _finish(path, audio, metadata, writer, picture)
        if not failed:
            os.remove(partial)
        status = status or failed
    return status


# ---------------------------------------------------------------- info


def info(args) -> int:
    from .processing.audio_io import audio_seconds, read_metadata

    status = 0
    for path in args.files:
        try:
            metadata = read_metadata(path)
            seconds = audio_seconds(path)
        except (OSError, ValueError) as error:
            raise UsageError(str(error)) from None
        if metadata is None:
            print(
                f"zhiyin: error: '{path}' holds no zhiyin metadata: it was made elsewhere, or by an older zhiyin",
                file=sys.stderr,
            )
            status = 2
            continue
        s = metadata.get("settings", {})
        shown = ", ".join(
            f"{key.replace('_', '-')} {value}" for key, value in s.items() if value is not None and value is not False
        )  # 0 and 0.0 are settings too
        lines = [
            ("file", f"{path} ({seconds:.2f} s)"),
            ("prompt", metadata.get("prompt") if metadata.get("prompt") is not None else "(none: unconditional)"),
            ("model", metadata.get("model")),
            ("seed", metadata.get("seed")),
            ("settings", shown),
            ("made by", f"zhiyin {metadata.get('zhiyin')}"),
            ("remake", shlex.join(metadata.get("command", []))),
        ]
        if metadata.get("takes", 1) > 1:
            lines.append(("", f"(file {metadata['take']} of the {metadata['takes']} that command writes)"))
        print("\n".join(f"{name:<9} {value}" for name, value in lines))
    return status


# ---------------------------------------------------------------- random checkpoint


def random_checkpoint(args) -> int:
    from .random_checkpoint import write_random_checkpoint

    if os.path.exists(args.folder) and (not os.path.isdir(args.folder) or os.listdir(args.folder)):
        raise UsageError(f"'{args.folder}' is not an empty folder: give a new folder to write the checkpoint into")
    _check_writable(os.path.dirname(os.path.abspath(args.folder)) or ".")
    write_random_checkpoint(args.folder, args.shape, seed=args.seed)
    print(
        f'wrote a random musicgen-{args.shape} checkpoint to {args.folder}: zhiyin generate "..." --model {args.folder}'
    )
    return 0


# ---------------------------------------------------------------- serve


def serve(args) -> int:
    token = args.token or os.environ.get("ZHIYIN_TOKEN") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        raise UsageError(
            f"--host {args.host} lets other machines in: give a --token (or set ZHIYIN_TOKEN), "
            "or keep the default --host 127.0.0.1"
        )
    for flag, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue), ("--port", args.port)):
        if value < (0 if flag == "--port" else 1):
            raise UsageError(f"{flag} must be at least {0 if flag == '--port' else 1}, got {value}")
    if args.max_duration <= 0:
        raise UsageError(f"--max-duration must be more than 0 seconds, got {args.max_duration:g}")
    os.makedirs(args.data_dir, exist_ok=True)
    _check_writable(args.data_dir)
    from .loading.hub import read_config

    read_config(args.model)  # a missing or wrong model is said before anything starts
    import uvicorn

    from .processing.processor import AutoProcessor
    from .serving.app import Service, create_app

    model = _load_model(args)
    processor = AutoProcessor.from_pretrained(args.model)
    name = _model_name(args.model)
    service = Service(
        model,
        processor,
        args.data_dir,
        max_batch=args.max_batch,
        max_duration=args.max_duration,
        max_queue=args.max_queue,
        model_name=name,
        loading={**_loading(args), "adapter": _absolute(args.adapter)},
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(service, token), host=args.host, port=args.port, log_level="warning")
    )
    print(
        f"zhiyin: serving {name} on http://{args.host}:{args.port} (the page at /, the API at /docs)",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run()  # until SIGTERM or Ctrl-C: then no new connections (uvicorn raises the signal again at its end)
    except KeyboardInterrupt:
        pass
    finally:
        print(
            f"zhiyin: stopping: running jobs get {args.grace:g} s to finish; queued ones wait for the next start",
            file=sys.stderr,
            flush=True,
        )
        service.drain(args.grace)
    return 0


# ---------------------------------------------------------------- batch


def batch(args) -> int:
    """0: every item made (or made before); 1: some failed (the others made); 2: a bad invocation."""
    from pathlib import Path

    jobs, folder = Path(args.jobs), Path(args.output)
    if not jobs.is_file():
        raise UsageError(f"jobs file '{jobs}' not found")
    for flag, value in (("--max-batch", args.max_batch), ("--ray-actors", args.ray_actors)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"output folder '{folder}' cannot be made ({error.strerror}): choose another -o") from None
    _check_writable(str(folder))
    from .loading.hub import read_config

    read_config(args.model)  # a missing or wrong model is said before anything starts
    from .batch.jobs import Item, Problem, read_jobs
    from .batch.manifest import Manifest
    from .batch.run import entry, make_items, make_items_on_ray

    name = _model_name(args.model)
    adapter = {}
    if args.adapter is not None:  # its weights decide the music too: a new adapter makes the items again
        from .batch.jobs import file_key
        from .loading.adapters import WEIGHTS_FILE

        weights = Path(args.adapter) / WEIGHTS_FILE
        if not weights.is_file():
            raise UsageError(f"--adapter '{args.adapter}' is not an adapter folder: it has no {WEIGHTS_FILE}")
        adapter = {"adapter": file_key(weights.resolve())}
    try:
        items = read_jobs(jobs, run=dict(model=name, dtype=args.dtype, quantize=args.quantize, **adapter))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"jobs file '{jobs}' cannot be read: {error}") from None
    manifest = Manifest(folder)
    before = manifest.read()

    def done(item: Item) -> bool:
        last = before.get(item.id)
        ok = last is not None and last.get("status") == "ok" and last.get("settings") == item.settings
        return ok and (folder / item.file).is_file()

    todo = [item for item in items if isinstance(item, Item) and not done(item)]
    skipped = [item for item in items if isinstance(item, Item) and done(item)]
    listed = {item.id for item in items}
    manifest.keep([before[item.id] for item in skipped] + [e for id, e in before.items() if id not in listed])
    failures: list[dict] = []
    made = {"ok": 0, "seconds": 0.0}

    def report(result: dict) -> None:
        manifest.append(result)
        if result["status"] == "ok":
            made["ok"] += 1
            made["seconds"] += result["seconds"] or 0.0
        else:
            failures.append(result)

    for problem in (item for item in items if isinstance(item, Problem)):
        report(entry(problem, "failed", error=problem.error))
    started = time.perf_counter()
    if todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="piece", desc="making", disable=args.quiet)
        seen = len(failures)

        def progress(result: dict) -> None:
            nonlocal seen
            report(result)
            bar.update(1)
            bar.set_postfix_str(f"{made['seconds']:.0f} s of music, {len(failures) - seen} failed")

        try:
            if args.ray is not None:
                _ray_init(args.ray)
                make_items_on_ray(  # paths absolute: an actor may run in another folder, or on another machine
                    todo,
                    folder.resolve(),
                    progress,
                    model=name,
                    loading={**_loading(args), "adapter": _absolute(args.adapter)},
                    max_batch=args.max_batch,
                    actors=args.ray_actors,
                    cpus=args.ray_num_cpus,
                    gpus=args.ray_num_gpus,
                )
            else:
                from .engine import Engine
                from .processing.loudness import load_meter
                from .processing.processor import AutoProcessor

                engine = Engine(_load_model(args), args.max_batch)
                load_meter()
                try:
                    make_items(engine, AutoProcessor.from_pretrained(args.model), todo, folder, name, progress)
                finally:
                    engine.close()
        except KeyboardInterrupt:
            bar.close()
            print(
                f"zhiyin: interrupted: {made['ok']} of {len(todo)} made; manifest.jsonl says which; the same command "
                "finishes the rest",
                file=sys.stderr,
            )
            return 130
        bar.close()
    wall = time.perf_counter() - started
    print(
        f"{made['ok']} made ({made['seconds']:.1f} s of music in {wall:.1f} s), {len(skipped)} done before, "
        f"{len(failures)} failed; manifest: {manifest.path}",
        file=sys.stderr,
    )
    for failure in failures:
        print(f"  line {failure['line']} ({failure['id']}): {failure['error']}", file=sys.stderr)
    return 1 if failures else 0


def train(args) -> int:
    import importlib.util

    missing = [name for name in ("peft", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:  # (imported only where used: checked here, before any work)
        raise UsageError(f"zhiyin train needs {' and '.join(missing)}: pip install 'zhiyin[train]'")
    from .training.trainer import TrainOptions
    from .training.trainer import train as run_training

    fields = {k: v for k, v in vars(args).items() if k not in ("command", "quiet")}
    options = TrainOptions(**fields)
    try:
        folder = run_training(options, progress=not args.quiet)
    except KeyboardInterrupt:
        return 130
    print(f"zhiyin: adapter written to {folder} (use it: zhiyin generate --adapter {folder} ...)", file=sys.stderr)
    return 0


def _ray_init(address: str) -> None:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'zhiyin[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, log_to_driver=False)


# ---------------------------------------------------------------- main


def _interrupt(signum, frame):  # SIGTERM ends a run as Ctrl-C does: a stream's partial files become its files
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            signal.signal(signal.SIGTERM, _interrupt)
        if args.command == "generate":
            from huggingface_hub.utils import logging as hub_logging

            hub_logging.set_verbosity_error()  # no retry chatter: a failure is reported in one line below
        commands = {
            "generate": generate,
            "info": info,
            "random-checkpoint": random_checkpoint,
            "serve": serve,
            "batch": batch,
            "train": train,
        }
        return commands[args.command](args)
    except UsageError as error:
        print(f"zhiyin: error: {error}", file=sys.stderr)
    except (ValueError, OSError) as error:  # bad checkpoints, files and settings found on the way
        print(f"zhiyin: error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("zhiyin: interrupted; nothing written", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
