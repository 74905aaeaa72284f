"""The continuous-batching engine: jobs that join at different steps, with their own lengths (one longer than a
window), settings, seeds and an audio prompt, each make exactly what generate_long makes for them alone; streaming,
cancelling, a full set of slots, and bad input."""

import time

import pytest
import torch

from zhiyin import MusicgenForConditionalGeneration, MusicgenProcessor
from zhiyin.engine import Engine
from zhiyin.generation.streaming import AudioStream

from conftest import trumpet

WINDOW = dict(window=1.0, extend_stride=0.6)  # small windows keep long music fast on the tiny checkpoint


def asks(model, processor):
    """(inputs, options, seed) of four jobs: guided top-k past one window, unguided top-p, greedy continuing an
    audio prompt, unconditional sampling."""
    return [
        (
            processor(text=["80s pop with bassy drums"], return_tensors="pt"),
            dict(duration=2.2, do_sample=True, guidance_scale=3.0, top_k=20, **WINDOW),
            11,
        ),
        (
            processor(text=["a calm piano"], return_tensors="pt"),
            dict(duration=0.5, do_sample=True, guidance_scale=1.0, top_k=None, top_p=0.8, temperature=0.7),
            12,
        ),
        (
            processor(text=["jazz"], audio=[trumpet(0.3)], sampling_rate=32000, return_tensors="pt"),
            dict(duration=0.6, do_sample=False, guidance_scale=2.0),
            13,
        ),
        (model.get_unconditional_inputs(1), dict(duration=0.7, do_sample=True, top_k=50), 14),
    ]


def alone(model, inputs, options, seed, **more):
    return model.generate_long(**inputs, **options, **more, generator=torch.Generator().manual_seed(seed))


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("max_batch", [3, 6])  # 3: the fourth job waits for a free slot; 6: 12 rows in a step
def test_jobs_joining_at_different_steps_make_what_they_make_alone(model, processor, max_batch):
    jobs = asks(model, processor)
    want_codes = [alone(model, *job, return_codes=True) for job in jobs]
    want_audio = alone(model, *jobs[0])
    engine = Engine(model, max_batch=max_batch)
    try:
        first = engine.submit(**jobs[0][0], **jobs[0][1], seed=jobs[0][2])
        wait_for(lambda: first.frames_done >= 15)  # the others join while it runs
        others = [engine.submit(**inputs, **options, seed=seed) for inputs, options, seed in jobs[1:]]
        if max_batch == 3:
            assert others[-1].status == "queued"  # no slot until one of the others is done
        got = [job.codes(timeout=120) for job in [first, *others]]
        for job, codes, want in zip([first, *others], got, want_codes):
            assert job.status == "succeeded" and job.frames_done == job.frames_total == want.shape[-1]
            assert torch.equal(codes, want)
        assert torch.equal(first.audio(), want_audio)
        assert engine.active == 0 and engine.queued == 0
    finally:
        engine.close()


def test_streamed_chunks_are_the_music_as_it_is_made(model, processor):
    """Each job decoded once, in streaming.py's chunks (1, 4, 16, 64, 100 frames): what a listener gets while the
    job runs, and, joined, generate_long's audio bit for bit."""
    inputs, options, seed = asks(model, processor)[0]  # 2.2 s: 110 frames
    want = alone(model, inputs, options, seed)
    engine = Engine(model, max_batch=2)
    try:
        job = engine.submit(**inputs, **options, seed=seed)
        got = list(job.audio_chunks(timeout=120))
        assert [chunk.shape[-1] // 640 for chunk in got] == [1, 4, 16, 64, 25]
        assert torch.equal(torch.cat(got, dim=-1), want) and torch.equal(job.audio(), want)
        long = engine.submit(**inputs, duration=60.0, seed=1, **WINDOW)
        first = next(long.audio_chunks(timeout=120))
        assert first.shape == (1, 1, 640) and not long.finished  # heard long before the end
        long.cancel()
        with pytest.raises(RuntimeError, match="cancelled"):
            long.audio()
    finally:
        engine.close()


def test_a_new_job_steps_alone_until_it_is_heard(model, processor, monkeypatch):
    """A new job's rows step alone until its first chunk of audio is out; then it steps with the others."""
    events = []  # (stream, "codes" | "audio") in the engine's order
    add, chunks = AudioStream.add, AudioStream.chunks
    monkeypatch.setattr(AudioStream, "add", lambda self, codes: events.append((self, "codes")) or add(self, codes))
    monkeypatch.setattr(
        AudioStream, "chunks", lambda *a, **k: [events.append((a[0], "audio")) or c for c in chunks(*a, **k)]
    )
    engine = Engine(model, max_batch=2)
    try:
        inputs = processor(text=["drums"], return_tensors="pt")
        playing = engine.submit(**inputs, duration=20.0, seed=1, **WINDOW)
        wait_for(lambda: len(playing._audio) >= 2)
        new = engine.submit(**inputs, duration=1.0, seed=2)
        new.audio(timeout=120)
        playing.cancel()
    finally:
        engine.close()
    start, heard = events.index((new._stream, "codes")), events.index((new._stream, "audio"))
    assert events[start:heard] == [(new._stream, "codes")] * 5  # frames 0..4 (the chunk's 1 + lookahead), alone
    after = [stream for stream, what in events[heard + 1 :] if what == "codes"]
    assert after[:2] == [playing._stream, new._stream]  # then together


def test_a_job_not_heard_in_time_is_stepped_before_new_requests_are_encoded(model, processor, monkeypatch):
    """A running job not heard within HEARD_WITHIN of its submission gets the steps before the next request is
    encoded (here at once: the second submit returns only once the first job has its first chunk)."""
    monkeypatch.setattr(Engine, "HEARD_WITHIN", 0.0)
    engine = Engine(model, max_batch=2)
    try:
        inputs = processor(text=["drums"], return_tensors="pt")
        first = engine.submit(**inputs, duration=5.0, seed=1)
        wait_for(lambda: first.status == "running")
        second = engine.submit(**inputs, duration=0.3, seed=2)
        assert first._audio  # heard before the second was encoded
        assert second.codes(timeout=60).shape[-1] == 15
        first.cancel()
    finally:
        engine.close()


def test_a_cancelled_job_frees_its_slot(model, processor):
    engine = Engine(model, max_batch=1)
    try:
        inputs = processor(text=["drums"], return_tensors="pt")
        long = engine.submit(**inputs, duration=30.0, seed=1, **WINDOW)
        queued = engine.submit(**inputs, duration=0.3, seed=2)
        wait_for(lambda: long.frames_done >= 5)
        long.cancel()
        assert queued.codes(timeout=60).shape[-1] == 15  # it ran once the slot was free
        assert long.status == "cancelled" and long.frames_done < long.frames_total
        with pytest.raises(RuntimeError, match="cancelled"):
            long.codes()
        never = engine.submit(**inputs, duration=0.3, seed=3)
        never.cancel()
        wait_for(lambda: never.finished)
        assert never.status == "cancelled" and never.frames_done == 0
    finally:
        engine.close()


def test_bad_submissions_raise_at_once(model, processor):
    engine = Engine(model, max_batch=1)
    try:
        inputs = processor(text=["drums"], return_tensors="pt")
        with pytest.raises(ValueError, match="duration"):
            engine.submit(**inputs, duration=0.0)
        with pytest.raises(ValueError, match="top_k"):
            engine.submit(**inputs, duration=1.0, top_k=0)
        with pytest.raises(ValueError, match="num_beams"):
            engine.submit(**inputs, duration=1.0, num_beams=2)
        with pytest.raises(ValueError, match="one item per job"):
            engine.submit(**processor(text=["a", "b"], padding=True, return_tensors="pt"), duration=1.0)
        with pytest.raises(ValueError, match="max_batch"):
            Engine(model, max_batch=0)
    finally:
        engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(**inputs, duration=1.0)


def test_stereo_jobs_are_generate_longs(tiny_stereo_checkpoint):
    folder = tiny_stereo_checkpoint[0]
    model = MusicgenForConditionalGeneration.from_pretrained(folder)
    inputs = MusicgenProcessor.from_pretrained(folder)(text=["strings"], return_tensors="pt")
    options = dict(duration=1.4, guidance_scale=3.0, top_k=10, **WINDOW)
    want = model.generate_long(**inputs, **options, return_codes=True, generator=torch.Generator().manual_seed(4))
    engine = Engine(model, max_batch=2)
    try:
        job = engine.submit(**inputs, **options, seed=4)
        assert torch.equal(job.codes(timeout=120), want)
        assert job.audio().shape == (1, 2, 70 * 640)
    finally:
        engine.close()
