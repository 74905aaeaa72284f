"""Each request its own group of rows: rows at their own positions and with their own text lengths, stepped
together, give each the logits it gets alone, in every step (plain PyTorch, the fused C++ step, the CUDA graph's step
on the CPU); requests with their own sampling settings and seeds, stepped together, get the tokens each gets alone
through generate()."""

import pytest
import torch

from zhiyin import MusicgenForConditionalGeneration, MusicgenProcessor
from zhiyin.backends import kernels
from zhiyin.backends.cuda_graph import GraphStep
from zhiyin.backends.fused_step import FusedStep
from zhiyin.backends.select import PlainStep
from zhiyin.generation.conditioning import TextCondition
from zhiyin.generation.loop import generate_together
from zhiyin.modules.decoder import CrossKV
from zhiyin.processing.audio_io import read_audio

from decoder_steps import make_decoder, text_states

STEPS = {
    "plain": PlainStep,
    "fused": FusedStep.build,
    "graph": lambda decoder, cross: GraphStep(decoder, cross, capture=False),
}


def run(decoder, step_of, rows: list[tuple[TextCondition, torch.Tensor]], steps: int) -> list[torch.Tensor]:
    """Prefill each row's tokens [1, K, T_r] but its last `steps` into its own cache row, then step all rows together
    at their own positions; returns each step's logits [rows, K, V]."""
    capacity = max(tokens.shape[-1] for _, tokens in rows)
    decoder.setup_caches(len(rows), capacity)
    try:
        for r, (condition, tokens) in enumerate(rows):
            known = tokens.shape[-1] - steps
            decoder(tokens[:, :, :known], condition.cross(decoder), torch.arange(known)[None], rows=slice(r, r + 1))
        step = step_of(decoder, CrossKV.concat([c.cross(decoder) for c, _ in rows]))
        assert step is not None
        out = []
        for i in range(steps):
            at = [tokens.shape[-1] - steps + i for _, tokens in rows]
            columns = torch.cat([tokens[:, :, p] for (_, tokens), p in zip(rows, at)])
            out.append(step(columns, torch.tensor(at)).float())
        return out
    finally:
        decoder.free_caches()


@pytest.mark.parametrize("backend", list(STEPS))
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_rows_at_their_own_positions_step_together_as_alone(backend, quantize):
    if quantize and backend != "fused":
        pytest.skip("int8 weights: the fused step's case")
    if backend == "fused" and kernels.library() is None:
        pytest.skip("no C++ kernels here: the fused step cannot run")
    decoder = make_decoder(seed=21)
    if backend == "fused":
        kernels.accelerate_decoder(decoder, quantize)
    K, V = decoder.config.num_codebooks, decoder.config.vocab_size
    g = torch.Generator().manual_seed(0)
    rows = [
        (text_states(decoder, 1, text_len=S), torch.randint(0, V + 1, (1, K, T), generator=g))
        for S, T in [(5, 4), (2, 11), (9, 7)]
    ]  # text lengths and positions all different
    with torch.inference_mode():
        together = run(decoder, STEPS[backend], rows, steps=3)
        for r, row in enumerate(rows):
            alone = run(decoder, STEPS[backend], [row], steps=3)
            for step, (got, want) in enumerate(zip(together, alone)):
                scale = want.abs().max()
                # float32: within 1e-5. int8: an int8 KV-cache entry rounds to 1/127 of its largest value, so a
                # float rounding difference at one step can move it a step of that at the next
                tolerance = 1e-5 if quantize is None else 1e-3
                assert (got[r] - want[0]).abs().max() <= tolerance * scale, (backend, r, step)


def test_requests_with_their_own_settings_and_seeds_get_the_tokens_they_get_alone(tiny_checkpoint, shared_audio):
    folder, _ = tiny_checkpoint
    model = MusicgenForConditionalGeneration.from_pretrained(folder)
    processor = MusicgenProcessor.from_pretrained(folder)
    clip = read_audio(shared_audio / "sorohanro_solo_trumpet_06.ogg", 32000, 1)[0, : 32000 // 2]
    asks = [  # (inputs, options, seed): guided top-k, unguided top-p, greedy with an audio prompt, a batch of two
        (
            processor(text=["80s pop with bassy drums"], return_tensors="pt"),
            dict(do_sample=True, guidance_scale=3.0, top_k=20, max_new_tokens=30),
            1,
        ),
        (
            processor(text=["a calm piano"], return_tensors="pt"),
            dict(do_sample=True, guidance_scale=1.0, top_k=None, top_p=0.8, temperature=0.7, max_new_tokens=24),
            2,
        ),
        (
            processor(text=["jazz"], audio=[clip], sampling_rate=32000, return_tensors="pt"),
            dict(do_sample=False, guidance_scale=2.0, max_new_tokens=20),
            3,
        ),
        (
            processor(
                text=["lofi hip hop", "a very long description of a slow ambient drone"],
                padding=True,
                return_tensors="pt",
            ),
            dict(do_sample=True, guidance_scale=3.0, top_k=50, max_new_tokens=26),
            4,
        ),
    ]
    alone = [
        model.generate(**inputs, **options, generator=torch.Generator().manual_seed(seed), return_codes=True)
        for inputs, options, seed in asks
    ]
    requests = [
        model.prepare_request(**inputs, **options, generator=torch.Generator().manual_seed(seed))
        for inputs, options, seed in asks
    ]
    frames = [[] for _ in requests]
    for step in generate_together(model.decoder, requests):
        for made, frame in zip(frames, step):
            if frame is not None:
                made.append(frame)
    for request, made, want in zip(requests, frames, alone):
        got = torch.cat([request.prompt, *made], dim=-1)
        assert torch.equal(got, want)
    assert len({codes.shape[-1] for codes in alone}) > 1  # different lengths, ending at different steps
