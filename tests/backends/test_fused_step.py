"""The fused C++ decoder step (fused_step.py, csrc/kernels.cpp) against the decoder's plain PyTorch forward:
same logits and same KV cache entries, step after step, in every weight format and decoder variant."""

import pytest
import torch

from zhiyin.backends import kernels
from zhiyin.backends.fused_step import FusedStep, _text_lengths
from zhiyin.backends.select import PlainStep, decoder_step, set_kernels_enabled
from zhiyin.modules.decoder import CrossKV

from decoder_steps import compare_steps, make_decoder, text_condition, text_states

# How far the fused step's logits may stray from the plain step's on the same weights. Both multiply integer
# activations, but their layer norms, GELU and attention (C++ and PyTorch) differ in the last bits, and an
# activation that lies at a rounding boundary then takes the next integer: 1/32767 of its row's largest for int8
# weights (int16 activations), 1/127 for int4 (int8 activations), which now and then moves the logits and the
# cache entries by 1-1.5 % (seen with PyTorch at AVX2 and at AVX-512).
INTEGER_TOLERANCE = {"int8": 1e-3, "int4": 3e-2}


@pytest.fixture(autouse=True)
def kernels_available():
    assert kernels.library() is not None, "the C++ kernels did not build (is g++ installed?)"


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 12, 20])
def test_float32_step_matches_pytorch(rows):
    decoder = make_decoder(seed=rows)
    kernels.accelerate_decoder(decoder)
    compare_steps(decoder, text_condition(decoder, rows), rows)


@pytest.mark.parametrize(
    "quantize, dtype, cache",
    [("int8", torch.float32, torch.int8), ("int4", torch.float32, torch.int8), (None, torch.bfloat16, torch.bfloat16)],
)
@pytest.mark.parametrize("rows", [2, 13])
def test_reduced_precision_steps_match_pytorch_on_the_same_weights(quantize, dtype, cache, rows):
    decoder = make_decoder(seed=3).to(dtype)
    kernels.accelerate_decoder(decoder, quantize)
    assert decoder.cache_dtype == cache  # the fused step writes its keys/values as the plain one does
    assert decoder.final_norm.weight.dtype == torch.float32  # bfloat16 weights, float32 activations
    compare_steps(decoder, text_condition(decoder, rows), rows, tolerance=INTEGER_TOLERANCE.get(quantize, 1e-3))


def test_stereo_relu_and_scaled_embeddings():
    decoder = make_decoder(seed=4, num_codebooks=8, audio_channels=2, activation_function="relu", scale_embedding=True)
    kernels.accelerate_decoder(decoder)
    compare_steps(decoder, text_condition(decoder, 4), 4)


def test_melody_decoder_without_cross_attention_and_with_a_prefix():
    decoder = make_decoder(seed=5, cross_attention=False)
    kernels.accelerate_decoder(decoder)
    prefix = torch.randn(2, 7, decoder.config.hidden_size)
    compare_steps(decoder, None, 2, prefix=prefix)


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_long_cache_and_text(quantize):
    decoder = make_decoder(seed=6)
    kernels.accelerate_decoder(decoder, quantize)
    compare_steps(
        decoder,
        text_condition(decoder, 2, text_len=37),
        2,
        prefill=300,
        steps=3,
        tolerance=INTEGER_TOLERANCE.get(quantize, 1e-5),
    )


def test_rows_without_text():
    """The null text of guidance (no valid position, its states zeros, so its keys and values are zeros) attends to
    nothing and gets zeros, as attention over its equal scores gives; a row with no valid position but values that
    are not zeros (a mask that leaves nothing) attends to all of them, as the plain step does."""
    decoder = make_decoder(seed=11)
    kernels.accelerate_decoder(decoder)
    states = text_states(decoder, 4, text_len=5)
    states.mask[1] = 0  # the null text: project_text gives its row zero keys and values
    cross = states.cross(decoder)
    cross.mask[2] = torch.finfo(cross.mask.dtype).min  # masked whole, its keys and values kept
    assert not any(v[1].any() for v in cross.values) and all(v[2].any() for v in cross.values)
    assert _text_lengths(cross.mask.view(4, 5), cross.values).tolist() == [5, 0, 5, 2]
    compare_steps(decoder, cross, 4)


def test_the_plain_step_runs_where_the_fused_one_does_not_apply():
    decoder = make_decoder(seed=7)
    decoder.setup_caches(2, 8)
    assert isinstance(decoder_step(decoder, None), PlainStep)  # not accelerated: forward()
    kernels.accelerate_decoder(decoder)
    cross = text_condition(decoder, 65)
    decoder.setup_caches(65, 8)  # more rows than the step takes
    assert FusedStep.build(decoder, cross) is None
    assert isinstance(decoder_step(decoder, cross), PlainStep)
    decoder.setup_caches(2, 8)
    assert FusedStep.build(decoder, None) is None  # this decoder needs its text
    step = decoder_step(decoder, text_condition(decoder, 2))
    assert isinstance(step, FusedStep)
    at = torch.zeros(2, dtype=torch.long)
    for bad in (65, -1):  # past the pad token, negative: the C++ side refuses them before it computes
        with pytest.raises(IndexError, match="values in 0..64"):
            step(torch.full((2, 4), bad), at)
    with pytest.raises(IndexError, match=r"must be \[2, 4\]"):
        step(torch.zeros(3, 4, dtype=torch.long), at)
    for bad in ([0, 8], [-1, 0]):
        with pytest.raises(IndexError, match="outside the KV cache"):
            step(torch.zeros(2, 4, dtype=torch.long), torch.tensor(bad))
    previous = set_kernels_enabled(False)
    try:
        assert isinstance(decoder_step(decoder, text_condition(decoder, 2)), PlainStep)
    finally:
        set_kernels_enabled(previous)
    decoder.free_caches()


def two_published_layers(seed: int, width: int, heads: int, ffn: int):
    """Two decoder layers of a published model's widths, its 2048 codes a codebook."""
    return make_decoder(
        seed=seed,
        hidden_size=width,
        num_attention_heads=heads,
        ffn_dim=ffn,
        num_hidden_layers=2,
        vocab_size=2048,
        pad_token_id=2048,
        bos_token_id=2048,
    )


@pytest.mark.parametrize("width, heads, ffn", [(1536, 24, 6144), (2048, 32, 8192)])  # musicgen-medium, -large
@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_published_widths(width, heads, ffn, quantize):
    """Two layers of the medium and large decoders' widths (large: the longest rows the int16 products take)."""
    decoder = two_published_layers(8, width, heads, ffn)
    with torch.no_grad():
        for p in decoder.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
    kernels.accelerate_decoder(decoder, quantize)
    compare_steps(
        decoder,
        text_condition(decoder, 2, text_len=12),
        2,
        prefill=20,
        steps=2,
        tolerance=INTEGER_TOLERANCE.get(quantize, 1e-5),
    )


def run_thread_count(chooser, times, steps: int) -> list[int]:
    """`steps` steps of a ThreadCount whose counts take times[count] seconds a step: the counts it ran."""
    ran = []
    for _ in range(steps):
        ran.append(chooser.next())
        chooser.record(ran[-1], times[ran[-1]])
    return ran


def test_thread_count_follows_the_fastest_recent_steps():
    """At a window each other count runs one step (each count, the first time); the others run on the count that
    was fastest (here the team is slow at first, as beside a busy process, then fast, as when that process ends)."""
    from zhiyin.backends.fused_step import ThreadCount

    chooser = ThreadCount(4)
    assert chooser.counts == [4, 2, 1]
    ran = run_thread_count(chooser, {4: 3.0, 2: 2.0, 1: 1.0}, 3 + ThreadCount.PROBE_EVERY)
    assert ran[:3] == [4, 2, 1] and set(ran[3:]) == {1}
    # the team fast again: on fewer threads than there are, the next window comes PROBE_EVERY steps after the last
    ran = run_thread_count(chooser, {4: 0.5, 2: 0.8, 1: 1.0}, ThreadCount.PROBE_EVERY)
    assert ran[:2] == [4, 2] and set(ran[2:]) == {4}  # the others than the chosen 1, then 4 threads
    assert chooser.next(rows=6) == 4 and chooser.next(rows=8) == 4  # other rows: the choice stands, no probe
    assert ThreadCount(1).counts == [1] and ThreadCount(2).counts == [2, 1]


def test_thread_count_probes_less_while_all_threads_win():
    """On a machine of our own every probe of one thread is a slow step: while all the threads win by far, the
    windows space out (each twice as far after the last, up to PROBE_AT_MOST), and close up once a window is close."""
    from zhiyin.backends.fused_step import ThreadCount

    chooser = ThreadCount(2)
    ran = run_thread_count(chooser, {2: 7.0, 1: 10.0}, 3000)
    probes = [i for i, count in enumerate(ran) if count == 1]
    assert probes[:2] == [0 + 1, 2 + 128] and {b - a for a, b in zip(probes[2:], probes[3:])} == {513}
    assert probes[2] - probes[1] == 257
    ran = run_thread_count(chooser, {2: 7.0, 1: 8.0}, 1100)  # one thread about as fast: probed every 64 steps
    probes = [i for i, count in enumerate(ran) if count == 1]
    assert probes[0] <= 513 and {b - a for a, b in zip(probes, probes[1:])} == {1 + ThreadCount.PROBE_EVERY}


def test_thread_count_keeps_its_choice_through_one_slow_step():
    """A probe is compared with the chosen count's recent median, not with one step of it: a slow step just before a
    window (a page fault, a memory hiccup) does not hand the window to a count that is slower in truth. A lasting
    slowdown (a busy process) calls a window at once."""
    from zhiyin.backends.fused_step import ThreadCount

    chooser = ThreadCount(2)
    run_thread_count(chooser, {2: 7.0, 1: 10.0}, 2)  # the first window: each count probed
    assert chooser.choice == 2
    run_thread_count(chooser, {2: 7.0}, chooser.window - chooser.steps - 1)
    run_thread_count(chooser, {2: 25.0}, 1)  # the last step before the window slow
    assert run_thread_count(chooser, {2: 7.0, 1: 10.0}, 2) == [1, 2] and chooser.choice == 2
    ran = run_thread_count(chooser, {2: 30.0, 1: 11.0}, 12)  # a competitor slows the team for good
    assert ran.index(1) <= ThreadCount.RECENT and chooser.choice == 1 and ran[-1] == 1


def test_a_fused_steps_first_call_is_not_a_thread_probe():
    """The first step of a generation writes fresh pages of the KV cache: it runs on the chosen count, untimed."""
    decoder = make_decoder(seed=2)
    kernels.accelerate_decoder(decoder)
    cross = text_condition(decoder, 2)
    decoder.setup_caches(2, 8)
    step = FusedStep.build(decoder, cross)
    calls = []

    class Recording:
        choice = 1

        def next(self, rows):
            calls.append("next")
            return 1

        def record(self, count, seconds):
            calls.append("record")

    step.threads = Recording()
    tokens = torch.zeros(2, 4, dtype=torch.long)
    step(tokens, torch.tensor([0, 0]))
    assert calls == [] and step.step.threads == 1
    step(tokens, torch.tensor([1, 1]))
    assert calls == ["next", "record"]


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_a_step_of_some_rows_from_first_row(quantize):
    """step(tokens, positions, first_row): rows first_row.. alone (a request's first position, admitted beside
    others), as the plain forward makes them; the other rows' caches untouched."""
    decoder = make_decoder(seed=5)
    kernels.accelerate_decoder(decoder, quantize)
    rows, K = 6, decoder.config.num_codebooks
    cross = text_condition(decoder, rows)
    tokens = torch.randint(0, decoder.config.vocab_size, (2, K))
    with torch.inference_mode():
        decoder.setup_caches(rows, 8)
        fused = FusedStep.build(decoder, cross)
        got = fused(tokens, torch.tensor([0, 0]), first_row=3)
        caches = [(c.k.clone(), c.v.clone()) for c in decoder.caches]
        decoder.setup_caches(rows, 8)
        want = PlainStep(decoder, cross)(tokens, torch.tensor([0, 0]), first_row=3)
        for (k, v), cache in zip(caches, decoder.caches):
            assert torch.equal(k[:3], cache.k[:3]) and torch.equal(k[5:], cache.k[5:])  # untouched: zeros
            assert (k[3:5] != 0).any() and torch.allclose(k[3:5].float(), cache.k[3:5].float(), atol=1e-2)
        with pytest.raises(IndexError, match="from row 5"):
            fused(tokens, torch.tensor([0, 0]), first_row=5)  # past the cache's rows
    assert (got - want).abs().max() <= 1e-3 * want.abs().max()


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_a_rows_numbers_do_not_depend_on_its_place_in_the_step(quantize):
    """Two requests with the same tokens and text, stepped together, get the same bits, and the same as one alone:
    a request's music does not depend on who else is served (the int8 products' scaling was once contracted into
    a fused multiply-add for some rows and not others)."""
    decoder = make_decoder(seed=1, hidden_size=256, ffn_dim=1024, num_hidden_layers=2)
    kernels.accelerate_decoder(decoder, quantize)
    cross, K = text_condition(decoder, 2), decoder.config.num_codebooks
    tokens = torch.randint(0, decoder.config.vocab_size, (2, K, 4), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        decoder.setup_caches(2, 8)
        step = FusedStep.build(decoder, cross)
        alone = [step(tokens[:, :, p], torch.full((2,), p)) for p in range(4)]
        decoder.setup_caches(6, 8)
        step = FusedStep.build(decoder, CrossKV.concat([cross] * 3))
        for p in range(4):
            out = step(tokens[:, :, p].repeat(3, 1), torch.full((6,), p))
            assert all(torch.equal(out[2 * i : 2 * i + 2], alone[p]) for i in range(3)), p


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_a_step_is_the_same_bits_at_any_thread_count(quantize):
    """Each thread computes its share of a product's weight rows but the share's tail, then blocks from the pool of
    every share's tail, whichever thread is free first: whoever computes a row, and however many threads there are,
    the logits and the cache entries are the same bits. Published widths, where every share has a tail."""
    decoder = two_published_layers(4, 1024, 16, 4096)  # musicgen-small's
    kernels.accelerate_decoder(decoder, quantize)
    cross, K = text_condition(decoder, 2), decoder.config.num_codebooks
    tokens = torch.randint(0, 2048, (2, K, 3), generator=torch.Generator().manual_seed(0))
    runs = []
    with torch.inference_mode():
        for threads in (1, 2, 3, 4):
            decoder.setup_caches(2, 4)
            step = FusedStep.build(decoder, cross)
            step.step.threads = threads
            logits = [step._run(tokens[:, :, p], torch.full((2,), p), 0) for p in range(3)]
            runs.append((logits, [(c.k.clone(), c.v.clone()) for c in decoder.caches]))
    decoder.free_caches()
    (want, want_caches), others = runs[0], runs[1:]
    for got, caches in others:
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(caches, want_caches))
