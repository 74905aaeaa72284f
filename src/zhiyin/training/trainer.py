"""zhiyin train: LoRA fine-tuning of MusicGen's decoder on a folder of captioned music.

    options = TrainOptions(model="facebook/musicgen-small", data="my-music", output="my-adapter", steps=500)
    train(options)        # -> my-adapter/adapter_model.safetensors + adapter_config.json (PEFT's format)

The loop: AdamW on the adapters' weights, linear warmup then cosine decay, gradient clipping, gradient accumulation,
bfloat16 autocast where the device computes it natively (CUDA), the text replaced by the null text with probability
`cond_dropout` (as MusicGen was trained, so that classifier-free guidance still works), a validation loss on held-out
files every `val_every` steps, and a checkpoint (adapters, optimizer, scheduler, random state, losses) every
`save_every` steps, at the end, and on Ctrl-C. `resume` continues exactly where the checkpoint stopped: which files
and crops each step takes is a function of the seed and the step alone, and the random state is restored, so 20
steps and 20 resumed ones are the 40 steps of one run. At the end, loss.png draws the losses.

Output folder: adapter_model.safetensors, adapter_config.json (written at every checkpoint: a stopped run leaves a
usable adapter), training.json (the options), checkpoint.pt, losses.jsonl, loss.png, cache/ (the codes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import read_json, write_atomic, write_json
from . import data as datasets
from . import lora
from .loss import music_loss

STATE_FILE, OPTIONS_FILE, LOSSES_FILE, PLOT_FILE = "checkpoint.pt", "training.json", "losses.jsonl", "loss.png"
SAME_RUN = (  # the options a resumed run must share with the run it continues
    *("model", "data", "steps", "epochs", "lr", "rank", "alpha", "lora_dropout", "text_projection", "lm_heads"),
    *("batch_size", "grad_accum", "segment_seconds", "warmup", "weight_decay", "clip", "cond_dropout"),
    *("val_fraction", "seed"),
)


@dataclass(frozen=True)
class TrainOptions:
    model: str
    data: str
    output: str
    steps: int | None = None  # optimizer steps; or
    epochs: float | None = None  # passes over the training files (each file one crop per pass)
    lr: float = 1e-4
    rank: int = 16
    alpha: float = 32.0
    lora_dropout: float = 0.0
    text_projection: bool = False  # adapters on the text projection too
    lm_heads: bool = False  # and on the LM heads
    batch_size: int = 1
    grad_accum: int = 1
    segment_seconds: float = 30.0
    warmup: int | None = None  # steps of linear warmup (default: 5 % of the steps, at most 100)
    weight_decay: float = 0.0
    clip: float = 1.0
    cond_dropout: float = 0.1
    val_fraction: float = 0.1
    val_every: int = 50
    save_every: int = 100
    device: str = "cpu"
    dtype: str | None = None  # 'bfloat16' autocast or 'float32'; default bfloat16 where the device has it
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    strict: bool = False

    def __post_init__(self):
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need((self.steps is None) != (self.epochs is None), "give --steps N or --epochs E (one of them)")
        need(self.steps is None or self.steps >= 1, f"--steps must be at least 1, got {self.steps}")
        need(self.epochs is None or self.epochs > 0, f"--epochs must be above 0, got {self.epochs}")
        need(self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}")
        need(self.rank >= 1, f"--rank must be at least 1, got {self.rank}")
        need(self.alpha > 0, f"--alpha must be above 0, got {self.alpha}")
        need(0 <= self.lora_dropout < 1, f"--lora-dropout must be from 0 to below 1, got {self.lora_dropout}")
        need(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        need(self.grad_accum >= 1, f"--grad-accum must be at least 1, got {self.grad_accum}")
        need(
            0 < self.segment_seconds <= 300,
            f"--segment-seconds must be above 0 and at most 300, got {self.segment_seconds}",
        )
        need(0 <= self.cond_dropout <= 1, f"--cond-dropout must be from 0 to 1, got {self.cond_dropout}")
        need(0 <= self.val_fraction < 1, f"--val-fraction must be from 0 to below 1, got {self.val_fraction}")
        need(self.val_every >= 1 and self.save_every >= 1, "--val-every and --save-every must be at least 1")
        need(self.dtype in (None, "float32", "bfloat16"), f"--dtype must be float32 or bfloat16, got {self.dtype}")
        need(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other: give one")


def train(options: TrainOptions, progress: bool = True, after_step=None) -> Path:
    """Train (see the module's docstring); returns the adapter folder. after_step(step): called after each
    optimizer step (tests stop a run with it as Ctrl-C would)."""
    from tqdm.auto import tqdm

    from ..loading.devices import parse_device
    from ..model import MusicgenForConditionalGeneration, model_class_for
    from ..processing.processor import AutoProcessor

    output = Path(options.output)
    _claim(output, options)
    device = parse_device(options.device)
    autocast = _autocast_dtype(options.dtype, device)

    # the model: float weights (an adapter is trained on them), the decoder's layers plain nn.Linear with adapters
    from ..loading import hub

    config = hub.read_config(options.model)
    model_class = model_class_for(config)
    if model_class is not MusicgenForConditionalGeneration:
        raise ValueError("zhiyin train takes text-to-music models (musicgen-small/medium/large, stereo); not melody")
    model = model_class.from_pretrained(options.model, device=device)
    processor = AutoProcessor.from_pretrained(options.model)

    # the data: codes once (cached), captions encoded once
    clips = datasets.find_clips(options.data)
    examples, unreadable = _encode(model, clips, output / "cache", progress)
    if unreadable:
        listed = "; ".join(f"{clip.path.name} ({why})" for clip, why in unreadable)
        if options.strict:
            raise datasets.DataError(f"unreadable audio (--strict): {listed}")
        print(f"zhiyin: skipped {len(unreadable)} unreadable file(s): {listed}", file=sys.stderr)
    if not examples:
        raise datasets.DataError(f"no audio in '{options.data}' could be read")
    held = round(len(examples) * options.val_fraction) if len(examples) >= 2 else 0
    held = max(held, 1) if options.val_fraction > 0 and len(examples) >= 2 else held
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(options.seed)).tolist()
    validation = [examples[i] for i in sorted(order[:held])]
    training = [examples[i] for i in sorted(order[held:])]
    texts = _encode_texts(model, processor, sorted({e.clip.text for e in examples}))

    frame_rate = model.config.audio_encoder.frame_rate
    segment = max(1, round(options.segment_seconds * frame_rate))
    per_epoch = math.ceil(len(training) / options.batch_size)  # micro-batches
    steps = options.steps or max(1, math.ceil(options.epochs * per_epoch / options.grad_accum))
    warmup = options.warmup if options.warmup is not None else min(100, steps // 20)

    torch.manual_seed(options.seed)
    targets = lora.trainable_layers(model, options.text_projection, options.lm_heads)
    lora.add_adapters(model, targets, options.rank, options.alpha, options.lora_dropout)
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _schedule(step, warmup, steps))
    done, history = 0, []
    if options.resume:
        done, history = _restore(output, model, targets, optimizer, scheduler)
        print(f"zhiyin: resuming at step {done} of {steps}", file=sys.stderr)

    pad = model.config.decoder.pad_token_id

    @functools.lru_cache(maxsize=1)
    def epoch_plan(epoch: int):  # the epoch's order of the files and its crop of each
        epoch_random = torch.Generator().manual_seed(options.seed * 1_000_003 + epoch)
        chosen = torch.randperm(len(training), generator=epoch_random).tolist()
        return chosen, datasets.random_segments(training, segment, epoch_random)

    def micro_batch(index: int):  # the index-th micro-batch of the run: a function of the seed and index alone
        epoch, place = divmod(index, per_epoch)
        chosen, crops = epoch_plan(epoch)
        picked = [crops[i] for i in chosen[place * options.batch_size : (place + 1) * options.batch_size]]
        dropped = torch.rand(len(picked), generator=torch.Generator().manual_seed(options.seed * 7919 + index))
        return picked, dropped < options.cond_dropout

    def loss_of(pieces, null, examples_):
        codes, lengths = datasets.batch_codes([codes for codes, _ in pieces], pad)
        condition = _condition(model, texts, [examples_[i].clip.text for _, i in pieces], null)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            cross = model.decoder.project_text(condition.states, condition.mask)
            return music_loss(model.decoder, codes.to(device), cross, lengths)

    def validate() -> float | None:
        if not validation:
            return None
        model.eval()
        with torch.no_grad():
            pieces = [(e.codes[:, :segment], i) for i, e in enumerate(validation)]
            losses = [loss_of([piece], torch.zeros(1, dtype=torch.bool), validation).item() for piece in pieces]
        model.train()
        return sum(losses) / len(losses)

    def save(step: int) -> None:
        write_json(output / OPTIONS_FILE, _recorded(options))
        lora.save_adapter(output, model, targets, options.rank, options.alpha, options.lora_dropout, options.model)
        state = dict(
            step=step,
            adapters=lora.adapter_state(model, targets),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            random=torch.get_rng_state(),
            history=history,
        )
        write_atomic(output / STATE_FILE, lambda path: torch.save(state, path))
        lines = "".join(json.dumps(entry) + "\n" for entry in history)
        write_atomic(output / LOSSES_FILE, lambda path: Path(path).write_text(lines, encoding="utf-8"))

    model.train()
    bar = tqdm(total=steps, initial=done, unit="step", desc="training", disable=not progress)
    started, finished, whole = time.perf_counter(), done, True  # finished: the last step done; whole: no step begun
    try:
        with _stop_between_steps() as stop:
            for step in range(done + 1, steps + 1):
                whole, total = False, 0.0
                for index in range((step - 1) * options.grad_accum, step * options.grad_accum):
                    pieces, null = micro_batch(index)
                    loss = loss_of(pieces, null, training) / options.grad_accum
                    loss.backward()
                    total += loss.item()
                norm = torch.nn.utils.clip_grad_norm_(parameters, options.clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                entry = {"step": step, "loss": total, "lr": scheduler.get_last_lr()[0], "grad_norm": float(norm)}
                if step % options.val_every == 0 or step == steps:
                    entry["val_loss"] = validate()
                history.append(entry)
                finished, whole = step, True
                rate = (step - done) / (time.perf_counter() - started)
                bar.set_postfix_str(f"loss {total:.3f}, {rate:.2f} steps/s")
                bar.update(1)
                if step % options.save_every == 0 or step == steps:
                    save(step)
                if after_step is not None:
                    after_step(step)
                if stop.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        if whole and finished > done:  # (a second Ctrl-C stops in the middle of a step: the last checkpoint stands)
            save(finished)
        print(f"zhiyin: stopped at step {finished} of {steps}; --resume continues from there", file=sys.stderr)
        raise
    bar.close()
    plot_losses(history, output / PLOT_FILE)
    return output


class _Stop:
    requested = False


@contextlib.contextmanager
def _stop_between_steps():
    """While training: Ctrl-C or SIGTERM lets the step in progress finish, then the run stops with a checkpoint; a
    second one stops it at once."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield stop
        return

    def handler(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        print("\nzhiyin: stopping after this step (again to stop at once)", file=sys.stderr)

    before = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for number, old in before.items():
            signal.signal(number, old)


def _schedule(step: int, warmup: int, steps: int) -> float:
    """The learning rate's factor at `step`: linear warmup, then cosine decay to 0 at `steps`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _autocast_dtype(dtype: str | None, device: torch.device) -> torch.dtype | None:
    """bfloat16 autocast where asked, or by default where the device computes bfloat16 natively (CUDA)."""
    if dtype == "float32":
        return None
    native = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if dtype is None:
        return torch.bfloat16 if native else None
    return torch.bfloat16


def _claim(output: Path, options: TrainOptions) -> None:
    """The output folder: new or empty (the code cache aside: a run that failed before its first checkpoint leaves
    only that); or another run's, refused unless --resume (with the same settings) or --overwrite."""
    ours = {f.name for f in output.iterdir()} - {"cache"} if output.is_dir() else set()
    if output.exists() and not output.is_dir():
        raise ValueError(f"-o '{output}' is a file: give a folder for the adapter")
    recorded = _recorded(options)
    if options.resume:
        if not (output / STATE_FILE).is_file():
            raise ValueError(f"--resume: '{output}' holds no checkpoint of a run to continue")
        before = read_json(output / OPTIONS_FILE)
        changed = sorted(k for k in recorded if before.get(k) != recorded[k])
        if changed:
            raise ValueError(
                f"--resume: '{output}' was trained with other settings ({', '.join(changed)}): give the same ones"
            )
        return
    if ours and not options.overwrite:
        raise ValueError(
            f"-o '{output}' already holds files ({', '.join(sorted(ours)[:4])}): --resume continues that run, "
            "--overwrite starts again there"
        )
    if options.overwrite:
        for name in ours:
            path = output / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    output.mkdir(parents=True, exist_ok=True)


def _recorded(options: TrainOptions) -> dict:
    """What training.json records of a run: the options a resumed run must share with it."""
    recorded = {k: v for k, v in dataclasses.asdict(options).items() if k in SAME_RUN}
    recorded["data"] = os.path.abspath(options.data)
    recorded["model"] = os.path.abspath(options.model) if os.path.isdir(options.model) else options.model
    return recorded


def _restore(output: Path, model, targets, optimizer, scheduler) -> tuple[int, list]:
    state = torch.load(output / STATE_FILE, weights_only=True)
    lora.load_adapter_state(model, targets, state["adapters"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["random"])
    return state["step"], list(state["history"])


def _encode(model, clips, cache: Path, progress: bool):
    """Every clip's codes (the codec runs once per file: cached); the unreadable ones with why."""
    from tqdm.auto import tqdm

    examples, unreadable = [], []
    for clip in tqdm(clips, desc="encoding audio", unit="file", disable=not progress):
        try:
            examples.append(datasets.Example(clip, datasets.clip_codes(model, clip, cache)))
        except (ValueError, OSError) as error:
            unreadable.append((clip, str(error)))
    return examples, unreadable


def _encode_texts(model, processor, texts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each caption's T5 states [S, width] and mask [S] (the frozen encoder runs once per caption)."""
    encoded = {}
    for text in texts:
        inputs = processor(text=[text], return_tensors="pt")
        states = model.encode_text(inputs["input_ids"].to(model.device), inputs["attention_mask"].to(model.device))
        encoded[text] = (states[0].clone(), inputs["attention_mask"][0].to(model.device))
    return encoded


def _condition(model, texts: dict, captions: list[str], null: torch.Tensor):
    """The batch's text condition: each caption's states padded to the longest, the null text where `null`."""
    longest = max(texts[c][0].shape[0] for c in captions)
    width = next(iter(texts.values()))[0].shape[-1]
    states = torch.zeros(len(captions), longest, width, device=model.device)
    mask = torch.zeros(len(captions), longest, dtype=torch.long, device=model.device)
    for row, (caption, drop) in enumerate(zip(captions, null.tolist())):
        if not drop:
            s, m = texts[caption]
            states[row, : s.shape[0]], mask[row, : m.shape[0]] = s, m
    return model._text_condition(states, mask)


def plot_losses(history: list[dict], path: Path) -> None:
    """loss.png: the training loss per step and the validation loss where measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    axes.plot([e["step"] for e in history], [e["loss"] for e in history], label="training", linewidth=1)
    measured = [e for e in history if e.get("val_loss") is not None]
    if measured:
        axes.plot([e["step"] for e in measured], [e["val_loss"] for e in measured], "o-", label="validation")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (cross-entropy, mean over codebooks)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    write_atomic(path, lambda temporary: figure.savefig(temporary, format="png"))
    plt.close(figure)
