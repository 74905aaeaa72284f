"""`zhiyin generate "80s pop track with bassy drums and synth" -o song.wav` and friends.

Bad input gets one line on stderr and exit status 2, and no output file is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_MODEL = "facebook/musicgen-small"


FLAG_NAMES = {"guidance_scale": "--guidance", "top_k": "--top-k", "top_p": "--top-p", "temperature": "--temperature",
              "greedy": "--greedy"}


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zhiyin", description="Make music with MusicGen.")
    commands = parser.add_subparsers(dest="command", required=True)
    g = commands.add_parser("generate", help="generate music from text, from nothing, or from an audio prompt")
    g.add_argument("prompts", nargs="*", help="text descriptions; several prompts make several files")
    g.add_argument("-o", "--output", default="music.wav",
                   help="output file (default music.wav); with several prompts NAME-1.wav, NAME-2.wav, ...")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default {DEFAULT_MODEL})")
    g.add_argument("--duration", type=float, default=10.0,
                   help="seconds of new music to make (default 10); an audio prompt comes on top of it")
    g.add_argument("--window", type=float, default=30.0,
                   help="longer music is made in windows of this many seconds (default 30, what the model was trained on)")
    g.add_argument("--extend-stride", type=float, default=18.0,
                   help="seconds of new music each window after the first adds; the rest of it continues the last "
                        "window's music (default 18)")
    g.add_argument("--stream", action="store_true",
                   help="write the WAV as the music is made: a valid file after every second, even if interrupted")
    g.add_argument("--audio-prompt", metavar="FILE", help="continue this audio (any format and rate soundfile reads)")
    g.add_argument("--melody", metavar="FILE",
                   help="follow this tune (melody models such as facebook/musicgen-melody; any audio file)")
    g.add_argument("--unconditional", action="store_true", help="no text: music from nothing (or from --melody)")
    g.add_argument("--num-samples", type=int, default=1, help="how many files to make with --unconditional")
    g.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default 3, 1 = off)")
    g.add_argument("--top-k", type=int, default=250, help="sample from the k most likely tokens (default 250)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep tokens up to this probability")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token (no sampling)")
    g.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same music")
    g.add_argument("--format", choices=["wav", "flac", "ogg"], default=None,
                   help="audio format (default: from the output file's extension, else wav)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="weights dtype")
    g.add_argument("--quantize", choices=["int8"], default=None,
                   help="int8: decoder weights as int8 (weight-only; fastest on CPU, output differs slightly)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    g.add_argument("--picture", action="store_true",
                   help="also write NAME.png beside each file: its waveform over its spectrogram")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def output_paths(output: str, count: int, format: str | None) -> list[str]:
    stem, ext = os.path.splitext(output)
    if format is not None:
        ext = "." + format
    elif not ext:
        ext = ".wav"
    if ext.lower().lstrip(".") not in ("wav", "flac", "ogg"):
        raise UsageError(f"unknown output format '{ext}': use .wav, .flac or .ogg (or --format)")
    if count == 1:
        return [stem + ext]
    return [f"{stem}-{i + 1}{ext}" for i in range(count)]


def check_arguments(args) -> list[str]:
    """Everything that can be checked before loading a model. Returns the output paths."""
    prompts = [p for p in args.prompts]
    if args.unconditional and prompts:
        raise UsageError("--unconditional takes no text prompt: drop the prompt or drop --unconditional")
    if not args.unconditional and (not prompts or any(not p.strip() for p in prompts)):
        raise UsageError('empty prompt: give a description such as "lofi hip hop with piano", or use --unconditional')
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.duration <= 0:
        raise UsageError(f"--duration must be more than 0 seconds, got {args.duration:g}")
    if not 0 < args.extend_stride < args.window:
        raise UsageError(f"--extend-stride must be more than 0 and less than --window ({args.window:g} s), got {args.extend_stride:g}")
    from .sampling import SamplingSettings

    settings = SamplingSettings(do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, guidance_scale=args.guidance)
    try:
        settings.validate(names=FLAG_NAMES)  # the API's checks, worded with the CLI's flags
    except ValueError as error:
        raise UsageError(str(error)) from None
    count = args.num_samples if args.unconditional else len(prompts)
    paths = output_paths(args.output, count, args.format)
    if args.stream and not paths[0].lower().endswith(".wav"):
        raise UsageError("--stream writes WAV files: use -o NAME.wav")
    folder = os.path.dirname(os.path.abspath(paths[0]))
    if not os.path.isdir(folder):
        raise UsageError(f"output folder '{folder}' does not exist: create it or choose another -o")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"output folder '{folder}' is not writable: choose another -o")
    for path in paths:
        if os.path.isdir(path):
            raise UsageError(f"'{path}' is a folder: give a file name such as '{os.path.join(path, 'music.wav')}'")
    if args.audio_prompt is not None and not os.path.isfile(args.audio_prompt):
        raise UsageError(f"audio prompt '{args.audio_prompt}' not found")
    if args.melody is not None and not os.path.isfile(args.melody):
        raise UsageError(f"melody file '{args.melody}' not found")
    return paths


def generate(args) -> int:
    paths = check_arguments(args)
    import torch

    from .audio_io import read_audio, write_audio
    from .config import MusicgenConfig
    from .delay_pattern import codebook_delays
    from .hub import resolve_file
    from .melody import MusicgenMelodyForConditionalGeneration
    from .model import MusicgenForConditionalGeneration
    from .processor import AutoProcessor

    config = MusicgenConfig.from_json_file(resolve_file(args.model, "config.json"))
    rate, channels = config.audio_encoder.sampling_rate, config.decoder.audio_channels
    melodic = config.extra.get("model_type") == "musicgen_melody"
    if args.melody is not None and not melodic:
        raise UsageError(f"--melody needs a melody model such as facebook/musicgen-melody: '{args.model}' has no melody input")
    if melodic and args.audio_prompt is not None:
        raise UsageError("melody models continue no --audio-prompt: give the tune with --melody instead")
    features = None
    if args.melody is not None:  # the tune's chroma, one copy per sample
        extractor = AutoProcessor.from_pretrained(args.model).feature_extractor
        melody = read_audio(args.melody, extractor.sampling_rate, 1)[0]
        count = args.num_samples if args.unconditional else len(args.prompts)
        features = extractor([melody] * count, sampling_rate=extractor.sampling_rate, return_tensors="pt")["input_features"]
    prompt_audio = None
    if args.audio_prompt is not None:
        prompt_audio = read_audio(args.audio_prompt, rate, channels)  # [channels, samples]

    started = time.perf_counter()
    model_class = MusicgenMelodyForConditionalGeneration if melodic else MusicgenForConditionalGeneration
    model = model_class.from_pretrained(
        args.model, dtype=args.dtype, device=args.device, quantize=args.quantize
    )
    frame_rate = config.audio_encoder.frame_rate
    delay = max(codebook_delays(config.decoder.num_codebooks, channels))
    new_frames = round(args.duration * frame_rate)
    if new_frames < 1:
        raise UsageError(f"--duration {args.duration:g} s is shorter than one audio frame (1/{frame_rate} s)")

    if args.unconditional:
        inputs = dict(model.get_unconditional_inputs(args.num_samples))
        guidance = inputs.pop("guidance_scale", 1.0)  # generate() takes it as its own argument
        if prompt_audio is not None:
            raise UsageError("--audio-prompt needs a text prompt here; give one (it may be short, e.g. \"music\")")
    else:
        processor = AutoProcessor.from_pretrained(args.model)
        audio = [prompt_audio] * len(args.prompts) if prompt_audio is not None else None
        inputs = processor(text=args.prompts, audio=audio, sampling_rate=rate if audio else None, padding=True, return_tensors="pt")
        guidance = args.guidance
    if features is not None:
        inputs["input_features"], guidance = features, args.guidance  # guided against the null chroma
    if args.seed is not None:
        torch.manual_seed(args.seed)
    sampling = dict(do_sample=not args.greedy, guidance_scale=guidance, top_k=args.top_k, top_p=args.top_p,
                    temperature=args.temperature, progress_bar=not args.quiet)
    long_music = dict(duration=args.duration, window=args.window, extend_stride=args.extend_stride)
    if args.stream:
        status = stream_to_files(model.generate_stream(**inputs, **long_music, **sampling), paths, rate, channels, args.picture)
        print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        return status
    prompt_seconds = prompt_audio.shape[-1] / rate if prompt_audio is not None else 0.0
    if prompt_seconds + args.duration > args.window:  # audiocraft's windowed continuation (melody tiled along)
        audio_values = model.generate_long(**inputs, **long_music, **sampling)
    else:
        audio_values = model.generate(**inputs, max_new_tokens=new_frames + delay, **sampling)
    audio_values = audio_values.cpu().numpy()
    failed = 0
    for path, audio in zip(paths, audio_values):
        try:
            write_audio(path, audio, rate, format=args.format)
        except (OSError, ValueError) as error:
            failed += 1
            print(f"zhiyin: error: could not write {path}: {error}", file=sys.stderr)
            continue
        kind = "stereo" if audio.shape[0] == 2 else "mono"
        print(f"wrote {path} ({audio.shape[-1] / rate:.2f} s, {rate} Hz, {kind})")
        if args.picture:
            write_picture(path, audio, rate)
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 1 if failed else 0


def stream_to_files(chunks, paths: list[str], rate: int, channels: int, picture: bool = False) -> int:
    """Write audio chunks [B, channels, samples] to the B WAV files as they come (streaming.write_stream)."""
    from .streaming import write_stream

    written = 0
    try:
        for written in write_stream(chunks, paths, rate):
            pass
    except KeyboardInterrupt:
        kept = f"{', '.join(paths)} hold the first {written / rate:.2f} s" if written else "nothing written"
        print(f"zhiyin: interrupted; {kept}", file=sys.stderr)
        return 130
    for path in paths:
        print(f"wrote {path} ({written / rate:.2f} s, {rate} Hz, {'stereo' if channels == 2 else 'mono'})")
        if picture:
            import soundfile

            write_picture(path, soundfile.read(path, dtype="float32", always_2d=True)[0].T, rate)
    return 0


def write_picture(audio_path: str, audio, rate: int) -> None:
    from .picture import save_picture

    picture = os.path.splitext(audio_path)[0] + ".png"
    print(f"picture {save_picture(picture, audio, rate)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # no retry chatter: a failure is reported in one line below
    try:
        return generate(args)
    except UsageError as error:
        print(f"zhiyin: error: {error}", file=sys.stderr)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as error:
        print(f"zhiyin: error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("zhiyin: interrupted; nothing written", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
