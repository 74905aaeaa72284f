"""Continuous batching: one decoder loop serves every active request; requests join at a step boundary and leave
when done or cancelled, and each one's music streams out while it is made.

    engine = Engine(model, max_batch=8)
    job = engine.submit(**processor(text=["80s pop"], return_tensors="pt"), duration=10, seed=1, guidance_scale=3)
    for chunk in job.audio_chunks():   # audio [1, channels, samples] as it is made
        ...
    audio = job.audio()                # or wait for the whole: generate_long()'s audio for the same seed

Each job's audio is decoded once, in the engine's thread, as its frames come (generation/streaming.py's chunks):
what every listener hears while it is made, and, joined, the whole. New jobs are heard soon: while they are at most
half of the running ones, their rows step on their own until each has its first chunk (_sound), then with everyone's;
and a job not heard within HEARD_WITHIN of its submission gets the steps before new requests are encoded (_overdue).

The engine owns the decoder's KV cache: `max_batch` slots of two rows each (a request's row and its guidance row).
A request is checked when submitted and encoded then (T5, an audio prompt's codes: in the engine's thread, between
steps), admitted into a free slot at a step boundary (its rows of the cross-attention table written, its window's
prefill into its own cache rows: a text request's start token is simply its rows' part of the next step), and
stepped with all others, each row at its own position (generation/loop.py's rows, select.py's step). When a
request's window is done and it needs more music, its slot is prefilled again with the window's context
(generation/long_form.py's windows) while the others keep their places. Each request samples with its own settings
and its own seeded generator, and its rows' numbers do not depend on the rows beside them, so a request's tokens are
the ones generate_long makes for it alone with the same seed (float32: bitwise; tests/test_engine.py).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Iterator

import torch
from torch import Tensor

from .backends.select import decoder_step
from .generation.conditioning import Condition, TextCondition
from .generation.delay_pattern import DelayPattern
from .generation.long_form import Windows
from .generation.loop import RequestRows
from .generation.options import GenerationOptions
from .generation.streaming import AudioStream
from .modules.decoder import CrossKV

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class Job:
    """One submitted request: its status, its progress, its codes and audio as they are made. Any number of readers
    may follow it (code_blocks, audio_chunks) from any thread."""

    def __init__(
        self,
        engine: Engine,
        id: int,
        condition: Condition,
        prompt: Tensor,
        options: GenerationOptions,
        generator: torch.Generator,
        seed: int | None,
    ):
        self.engine, self.id, self.seed = engine, id, seed
        self.condition, self.prompt, self.options, self.generator = condition, prompt, options, generator
        self.status, self.error = "queued", None
        self.frames_total = prompt.shape[-1] + options.new_frames
        self.created_at, self.started_at, self.finished_at = time.time(), None, None
        self._blocks: list[Tensor] = []  # codes [1, K, n] in order: the prompt's, then each new frame
        self._frames = 0
        model = engine.model
        self._stream = AudioStream(model.audio_encoder, model.config.decoder.audio_channels)
        self._audio: list[Tensor] = []  # audio [1, channels, samples] in order: _stream's chunks
        self._changed = threading.Condition()
        self._cancel = threading.Event()

    @property
    def frames_done(self) -> int:
        return self._frames

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    def cancel(self) -> None:
        """Stop the job: a queued one never starts, a running one leaves its slot at the next step."""
        self._cancel.set()
        self.engine._wake()

    # -- written by the engine's thread --

    def _push(self, block: Tensor) -> None:
        """New codes (their audio is decoded by _decode)."""
        with self._changed:
            self._blocks.append(block)
            self._frames += block.shape[-1]
            self._changed.notify_all()
        self._stream.add(block)

    def _decode(self, final: bool = False) -> None:
        """The audio that can be decoded now (final: all of it)."""
        chunks = self._stream.chunks(final)
        if chunks:
            with self._changed:
                self._audio += chunks
                self._changed.notify_all()

    def _succeed(self) -> None:
        """The last frame is out: the rest of the audio, then done."""
        try:
            self._decode(final=True)
        except Exception as error:
            self._fail(error)
        else:
            self._end("succeeded")

    def _fail(self, error: BaseException) -> None:
        self._end("failed", f"{type(error).__name__}: {error}")

    def _end(self, status: str, error: str | None = None) -> None:
        with self._changed:
            self.status, self.error, self.finished_at = status, error, time.time()
            self._changed.notify_all()

    # -- read by anyone --

    def code_blocks(self, timeout: float | None = None) -> Iterator[Tensor]:
        """The codes [1, K, n] as they are made, from the first; ends when the job ends (raises if it failed or was
        cancelled before the end)."""
        return self._follow(self._blocks, "frame", timeout)

    def audio_chunks(self, timeout: float | None = None) -> Iterator[Tensor]:
        """The audio [1, channels, samples] as it is decoded, from the first chunk (streaming.py's chunks: the first
        frame's, then growing up to 2 s); ends when the job ends (raises if it failed or was cancelled before)."""
        return self._follow(self._audio, "audio", timeout)

    def _follow(self, items: list[Tensor], what: str, timeout: float | None) -> Iterator[Tensor]:
        for index in itertools.count():
            with self._changed:
                if not self._changed.wait_for(lambda: index < len(items) or self.finished, timeout):
                    raise TimeoutError(f"job {self.id}: no new {what} within {timeout} s")
                if index < len(items):
                    item = items[index]
                elif self.status == "succeeded":
                    return
                else:
                    raise RuntimeError(f"job {self.id} {self.status}" + (f": {self.error}" if self.error else ""))
            yield item

    def codes(self, timeout: float | None = None) -> Tensor:
        """Wait for the job; its codes [1, K, P + frames] (generate_long(..., return_codes=True)'s)."""
        return torch.cat(list(self.code_blocks(timeout)), dim=-1)

    def audio(self, timeout: float | None = None) -> Tensor:
        """Wait for the job; its audio [1, channels, samples]: generate_long's for the same seed."""
        return torch.cat(list(self.audio_chunks(timeout)), dim=-1)


class _Slot:
    """A running job in its two cache rows: the window being made (generation/long_form.py's Windows)."""

    def __init__(self, job: Job, first_row: int, pattern: DelayPattern, pad: int):
        self.job, self.first_row, self.pattern, self.pad = job, first_row, pattern, pad
        window, stride = job.options.window_frames
        self.windows = Windows(
            job.condition,
            job.prompt,
            job.options.new_frames,
            window,
            stride,
            job.options.sampling,
            job.generator,
            pattern.max_delay,
        )
        self.rows: RequestRows | None = None
        self.logits: Tensor | None = None
        self.new: list[Tensor] = []

    def cross(self, decoder, null: list) -> list:
        """The cross-attention inputs of this slot's rows: its window's condition's rows, then `null`'s for the rows
        it leaves free."""
        condition = self.rows.condition
        return [condition.cross(decoder)] + null[condition.rows :]

    def open_window(self) -> None:
        """The next window: its request on this slot's rows (to be prefilled)."""
        self.rows, self.new, self.logits = (
            RequestRows(self.windows.request(), self.pattern, self.pad, self.first_row),
            [],
            None,
        )

    def prefill(self, decoder, step) -> None:
        """The window's known positions into the slot's rows; its first logits pending."""
        self.logits = self.rows.prefill(decoder, step)

    def advance(self, decoder, step) -> bool:
        """Choose tokens from the pending logits until a step is needed (True), or the job is done (False)."""
        while True:
            frame = self.rows.choose(self.logits)
            if frame is not None:
                self.new.append(frame)
                self.job._push(frame)
            if not self.rows.done:
                return True
            self.windows.finish(self.new)
            if self.windows.done:
                return False
            self.open_window()
            self.prefill(decoder, step)


class Engine:
    """Serves many requests at once on one model (see the module's docstring)."""

    ROWS_PER_SLOT = 2  # a request's row and its guidance row
    HEARD_WITHIN = 1.0  # seconds from a job's submission to its first audio, beyond which its steps come first

    def __init__(self, model, max_batch: int = 8):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a whole number of at least 1, got {max_batch!r}")
        self.model, self.decoder, self.max_batch = model, model.decoder, max_batch
        self.pattern = DelayPattern.for_decoder(model.config.decoder)
        self.pad = model.config.decoder.pad_token_id
        self._slots: list[_Slot | None] = [None] * max_batch
        self._waiting: deque[Job] = deque()
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._closed = False
        self._admitting = True
        # every computation on the model runs in the engine's thread, between steps: the encoding and decoding that
        # callers ask for too (call()). Two at once would run two thread teams on the same cores, each waiting on
        # the other (BENCHMARKS.md, "zhiyin serve under load")
        self._calls: deque[tuple] = deque()
        self._capacity = 0  # positions of the KV cache set up so far
        self._null_cross: list | None = None  # a slot's rows' cross-attention inputs where no job uses them
        self._table: CrossKV | None = None  # every cache row's cross-attention inputs, each slot's written in place
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name="zhiyin-engine", daemon=True)
        self._thread.start()

    # ---- the caller's side --------------------------------------------------------------------------------------

    @torch.inference_mode()
    def submit(
        self, input_ids=None, *, seed: int | None = None, generator: torch.Generator | None = None, **arguments
    ) -> Job:
        """Queue one piece of music: the processor's inputs for ONE item (or get_unconditional_inputs(1)), and
        generate_long's options (duration required; window, extend_stride, sampling). With `seed` (or a seeded
        generator) the music is generate_long's for that seed. Bad arguments raise here."""
        model = self.model
        arguments.pop("progress_bar", None)
        if arguments.pop("return_codes", None):
            raise ValueError("submit() makes audio and codes both: use job.codes() or job.audio()")
        inputs, options = model._arguments("generate_long", input_ids, arguments)
        if generator is None:
            if seed is None:
                seed = int.from_bytes(os.urandom(4), "little")
            generator = torch.Generator(model.device).manual_seed(seed)

        def encode_and_queue() -> Job:  # in the engine's thread, which admits the job right after (_loop)
            condition, prompt = model._condition(*inputs)
            if condition.rows != 1:
                raise ValueError(f"submit() takes one item per job, got {condition.rows}: submit each on its own")
            options.check_prompt_frames(prompt.shape[-1])
            job = Job(self, next(self._ids), condition, prompt, options, generator, seed)
            with self._lock:
                self._waiting.append(job)
            return job

        return self.call(encode_and_queue)

    def call(self, function, *args):
        """function(*args) in the engine's thread, between two steps; its result (or its exception) here."""
        if threading.current_thread() is self._thread:
            return function(*args)
        done, box = threading.Event(), {}
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._calls.append((function, args, done, box))
            self._lock.notify_all()
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _run_calls(self) -> None:
        """The calls waiting, and those that come meanwhile, until none is left or a running job is overdue (then
        its steps come first)."""
        while not self._overdue():
            with self._lock:
                if not self._calls:
                    return
                function, args, done, box = self._calls.popleft()
            try:
                box["value"] = function(*args)
            except BaseException as error:  # it belongs to the caller
                box["error"] = error
            done.set()

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job to be admitted; None for a job not waiting."""
        with self._lock:
            return next((i + 1 for i, waiting in enumerate(self._waiting) if waiting is job), None)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return sum(slot is not None for slot in self._slots)

    def stop_admitting(self) -> None:
        """Queued jobs stay queued; running ones go on."""
        with self._lock:
            self._admitting = False

    def close(self, timeout: float | None = None) -> None:
        """Stop: queued jobs are cancelled, running ones too; the loop ends."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout)

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    # ---- the engine's thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            try:
                self._loop()
            except BaseException as error:  # a step failed: every job still running fails with it
                for index, slot in enumerate(self._slots):
                    if slot is not None:
                        self._fail(index, error)
                raise
            finally:
                with self._lock:
                    calls, self._calls = list(self._calls), deque()
                for _, _, done, box in calls:
                    box["error"] = RuntimeError("the engine is closed")
                    done.set()
                for job in self._waiting:
                    job._end("cancelled")
                for slot in self._slots:
                    if slot is not None:
                        slot.job._end("cancelled")
                self.decoder.free_caches()

    def _loop(self) -> None:
        self._step, changed = None, False
        while True:
            with self._lock:
                self._lock.wait_for(
                    lambda: self._closed or self._calls or (self._waiting and self._admitting) or self.active
                )
                if self._closed:
                    return
            self._run_calls()  # a job submitted meanwhile is encoded and queued here, to be admitted at once
            with self._lock:
                admitted = self._admit() if self._admitting else []
            changed = self._work(admitted, changed)

    def _work(self, admitted: list[int], changed: bool) -> bool:
        """One round of the loop: start the admitted jobs, drop the cancelled ones, step the rest."""
        starting = [self._slots[index] for index in admitted if self._open(index)]
        changed |= bool(admitted)
        for index, slot in enumerate(self._slots):
            if slot is not None and slot.job._cancel.is_set():
                slot.job._end("cancelled")
                self._slots[index], changed = None, True
        changed |= self._compact()
        if not self.active:
            return changed
        if changed or self._step is None:
            self._step, changed = decoder_step(self.decoder, self._table), False
        ended = False
        for slot in starting:  # their known positions, with the step that knows their rows (compaction moved them)
            if slot in self._slots and not slot.rows.starts_with_a_step:
                ended |= self._start(self._slots.index(slot))
        if ended or self._sound():  # a slot was freed, or a window changed: compact, and a new step, first
            return True
        return self._step_slots([index for index, slot in enumerate(self._slots) if slot is not None])

    def _overdue(self) -> bool:
        """Whether a running job has not been heard within HEARD_WITHIN seconds of its submission: then the loop
        steps the running jobs before it takes another call (the encoding of new requests waits), so that a burst
        of arrivals, each one's encoding and admission between two steps, does not hold back the first ones' audio."""
        oldest = time.time() - self.HEARD_WITHIN
        return any(slot is not None and not slot.job._audio and slot.job.created_at < oldest for slot in self._slots)

    def _sound(self) -> bool:
        """New jobs heard soon: while the jobs not heard yet are at most half of those running, their rows step on
        their own until each has its first chunk of audio (about 8 steps of their rows, where 8 steps of everyone's
        would take several times as long; with more of them, everyone's step costs little more than theirs). The
        encoding of requests that come meanwhile waits until then. True where a job ended, or a window changed."""
        while True:
            running = [index for index, slot in enumerate(self._slots) if slot is not None]
            quiet = [index for index in running if not self._slots[index].job._audio]
            if any(self._decode_slot(index) for index in quiet):
                return True
            quiet = [index for index in quiet if not self._slots[index].job._audio]
            if not quiet or 2 * len(quiet) > len(running):
                return False
            if self._step_slots(quiet, decode=False):
                return True

    def _step_slots(self, indices: list[int], decode: bool = True) -> bool:
        """One step of the rows from the first of these slots' to the last's (any slot between them steps too; free
        rows between step at position 0 of their own cache rows, unused), each slot's next tokens chosen, and (decode)
        the audio that can be decoded then. A row's numbers do not depend on the rows stepped with it. True where a
        job ended, or a window changed."""
        first = min(self._slots[index].first_row for index in indices)
        end = max(self._slots[index].first_row for index in indices) + self.ROWS_PER_SLOT
        slots = [(i, slot) for i, slot in enumerate(self._slots) if slot is not None and first <= slot.first_row < end]
        K = self.model.config.decoder.num_codebooks
        tokens = torch.full((end - first, K), self.pad, dtype=torch.long, device=self.model.device)
        positions = torch.zeros(end - first, dtype=torch.long)
        for _, slot in slots:
            rows = slice(slot.rows.rows.start - first, slot.rows.rows.stop - first)
            tokens[rows], positions[rows] = slot.rows.step_inputs()
        logits = self._step(tokens, positions, first)
        self.steps += 1
        changed = False
        for index, slot in slots:
            slot.logits = logits[slot.rows.rows.start - first : slot.rows.rows.stop - first]
            changed |= self._advance(index)
        if decode:
            for index, _ in slots:
                changed |= self._slots[index] is not None and self._decode_slot(index)
        return changed

    def _decode_slot(self, index: int) -> bool:
        """The slot's audio that can be decoded now; True where that failed (the slot freed)."""
        try:
            self._slots[index].job._decode()
        except Exception as error:
            self._fail(index, error)
            return True
        return False

    def _fail(self, index: int, error: BaseException) -> None:
        """The slot's job failed with `error`: it ends so, and its slot is free."""
        self._slots[index].job._fail(error)
        self._slots[index] = None

    def _compact(self) -> bool:
        """Keep the running jobs in the first slots, so that a step runs only their rows: a job in a later slot moves
        into a free earlier one, its cache rows with it. True where something moved."""
        moved = False
        while True:
            free = next((i for i, slot in enumerate(self._slots) if slot is None), None)
            last = max((i for i, slot in enumerate(self._slots) if slot is not None), default=None)
            if free is None or last is None or last < free:
                return moved
            slot, rows = self._slots[last], self.ROWS_PER_SLOT
            source, target = slice(slot.first_row, slot.first_row + rows), slice(free * rows, free * rows + rows)
            for cache in self.decoder.caches:
                for buffer in cache.buffers():
                    buffer[target] = buffer[source]
            if self._table is not None:
                for buffer in [*self._table.keys, *self._table.values, self._table.mask]:
                    buffer[target] = buffer[source]
            shift = target.start - source.start
            slot.first_row = target.start
            slot.rows.rows = slice(slot.rows.rows.start + shift, slot.rows.rows.stop + shift)
            self._slots[free], self._slots[last], moved = slot, None, True

    def _admit(self) -> list[int]:
        """Move waiting jobs into free slots (under the lock); cancelled ones end here."""
        admitted = []
        for index in range(self.max_batch):
            while self._slots[index] is None and self._waiting:
                job = self._waiting.popleft()
                if job._cancel.is_set():
                    job._end("cancelled")
                    continue
                self._slots[index] = _Slot(job, index * self.ROWS_PER_SLOT, self.pattern, self.pad)
                admitted.append(index)
        return admitted

    def _open(self, index: int) -> bool:
        """A newly admitted job: running, its cache room made, its first window's rows set; False where it failed."""
        slot = self._slots[index]
        slot.job.status, slot.job.started_at = "running", time.time()
        try:
            self._ensure_capacity(slot)
            slot.open_window()
            self._write_cross(slot)
        except Exception as error:
            self._fail(index, error)
            return False
        return True

    def _start(self, index: int) -> bool:
        """Prefill an opened job's first window and choose its first tokens; True where it ended (failed, or done)."""
        slot = self._slots[index]
        try:
            if slot.job.prompt.shape[-1]:
                slot.job._push(slot.job.prompt)
            slot.prefill(self.decoder, self._step)
        except Exception as error:
            self._fail(index, error)
            return True
        self._advance(index)
        return self._slots[index] is None

    def _advance(self, index: int) -> bool:
        """After its logits came: the slot's next tokens; True where the rows' conditions changed."""
        slot = self._slots[index]
        window = slot.rows
        try:
            needs_step = slot.advance(self.decoder, self._step)
        except Exception as error:
            self._fail(index, error)
            return True
        if not needs_step:
            slot.job._succeed()
            self._slots[index] = None
            return True
        if slot.rows is window:
            return False
        self._write_cross(slot)  # a new window: its condition may differ (a melody's chroma moves on)
        return True

    def _ensure_capacity(self, slot: _Slot) -> None:
        """A KV cache that holds the job's longest window (prefix included); grown, its contents kept, if not."""
        job = slot.job
        window = job.options.window_frames[0]
        needed = job.condition.prefix_length + self.pattern.length(window) + 1
        if needed <= self._capacity:
            return
        old = self.decoder.caches
        self.decoder.setup_caches(self.ROWS_PER_SLOT * self.max_batch, needed)
        if old is not None:
            for new, kept in zip(self.decoder.caches, old):
                for name, buffer in kept.named_buffers():
                    getattr(new, name)[:, :, : buffer.shape[2]] = buffer
        self._capacity = needed

    def _write_cross(self, slot: _Slot) -> None:
        """The slot's rows of the cross-attention table: its condition's (guided where it guides), a null text for a
        row it leaves free; the table widened where the text is longer than any before (all rows padded, masked)."""
        if self.decoder.layers[0].cross_attn is None:
            return
        if self._null_cross is None:
            dtype, device = self.decoder.final_norm.weight.dtype, self.model.device
            width = self.model.config.decoder.hidden_size
            null = TextCondition(
                torch.zeros(1, 1, width, dtype=dtype, device=device),
                torch.zeros(1, 1, dtype=torch.long, device=device),
            )
            self._null_cross = [null.cross(self.decoder)] * self.ROWS_PER_SLOT
            self._table = CrossKV.concat(self._null_cross * self.max_batch)
        parts = slot.cross(self.decoder, self._null_cross)
        width = max(part.mask.shape[-1] for part in parts)
        if width > self._table.mask.shape[-1]:
            self._table = self._table.padded(width)
        row = slot.first_row
        for part in parts:
            part.write(self._table, row)
            row += part.mask.shape[0]
