"""sampling.next_tokens: the reference's tokens from the reference's random numbers (torch.multinomial's), and the
same tokens from the kernel's one call as from the PyTorch ops."""

import pytest
import torch

from zhiyin.backends import kernels
from zhiyin.backends.select import set_kernels_enabled
from zhiyin.generation.options import SamplingSettings
from zhiyin.generation.sampling import TokenChoice, apply_guidance, exponential_noise, filter_top_k, next_tokens

needs_kernels = pytest.mark.skipif(kernels.library() is None, reason="no C++ compiler: the kernels cannot be built")


def pytorch_next_tokens(logits, settings, generator):
    previous = set_kernels_enabled(False)
    try:
        return next_tokens(logits, settings, generator)
    finally:
        set_kernels_enabled(previous)


def test_noise_draw_is_multinomial_without_its_check():
    for seed in range(50):
        scores = filter_top_k(torch.randn(8, 2048, generator=torch.Generator().manual_seed(seed)) * 3, 250)
        probs = scores.softmax(dim=-1)  # zeros outside the top 250
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        tokens = (probs / exponential_noise(probs.shape, probs.device, ours)).argmax(dim=-1)
        assert torch.equal(tokens, torch.multinomial(probs, 1, generator=theirs)[:, 0])
        assert torch.equal(ours.get_state(), theirs.get_state())  # the next step's numbers stay in step too
        assert (probs.gather(1, tokens[:, None]) > 0).all()


def test_next_tokens_are_the_references():
    """guidance, top-k, softmax, then torch.multinomial (what the reference runs), from the global generator"""
    settings = SamplingSettings(do_sample=True, guidance_scale=3.0, top_k=250)
    for seed in range(20):
        logits = torch.randn(4, 4, 2048, generator=torch.Generator().manual_seed(seed)) * 4  # 2 items, guided
        probs = filter_top_k(apply_guidance(logits, 3.0).reshape(8, 2048), 250).softmax(dim=-1)
        torch.manual_seed(seed)
        want = torch.multinomial(probs, 1)[:, 0].view(2, 4)
        torch.manual_seed(seed)
        assert torch.equal(next_tokens(logits, settings), want)


SETTINGS = [
    SamplingSettings(do_sample=True, guidance_scale=3.0, top_k=250),  # musicgen's defaults
    SamplingSettings(do_sample=False, guidance_scale=3.0),
    SamplingSettings(do_sample=False, guidance_scale=None),
    SamplingSettings(do_sample=True, guidance_scale=None, top_k=None, temperature=0.7),
    SamplingSettings(do_sample=True, guidance_scale=2.5, top_k=5, temperature=1.3),
    SamplingSettings(do_sample=True, guidance_scale=1.0, top_k=1),
    SamplingSettings(do_sample=True, guidance_scale=3.0, top_k=5000),  # more than the vocabulary: all kept
    SamplingSettings(do_sample=True, guidance_scale=3.0, top_k=50, top_p=0.9),  # top-p: PyTorch's ops alone
]


@needs_kernels
@pytest.mark.parametrize("settings", SETTINGS)
def test_kernel_chooses_the_pytorch_tokens(settings):
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        rows = 6 if settings.uses_guidance else 3
        vocab = 2048 if seed % 3 else 1001  # (a vocabulary that is no whole number of vectors)
        logits = torch.randn(rows, 4, vocab, generator=g) * (1 + seed % 6)
        if seed % 4 == 1:  # exact ties: greedy takes the first, top-k keeps every tie of the k-th
            logits = (logits * 2).round() / 2
        if seed % 4 == 2:  # scores that are never chosen
            logits[:, :, ::3] = float("-inf")
        if seed % 8 == 3:  # zeros of both signs around the k-th score (equal as floats, apart as bits)
            logits = torch.where(logits.abs() < 1, 0.0, logits) * torch.where(
                torch.rand(logits.shape, generator=g) < 0.5, -1, 1
            )
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        want = pytorch_next_tokens(logits, settings, theirs)
        if settings.top_p is None:  # the kernel's own call, not a fallback to the ops
            guidance = settings.guidance_scale if settings.uses_guidance else None
            top_k = settings.top_k if settings.do_sample else None
            drawn = ours if settings.do_sample else None
            got = torch.empty(logits.shape[0] // (2 if guidance else 1), 4, dtype=torch.long)
            # (not chosen: guided -inf scores are NaN (-inf + (-inf - -inf) x 3): the ops decide, and did above)
            if not kernels.chooser(guidance, settings.temperature, top_k, drawn)(logits, got):
                assert guidance is not None and apply_guidance(logits, guidance).isnan().any()
                assert torch.equal(ours.get_state(), torch.Generator().manual_seed(seed).get_state())  # none drawn
                ours.set_state(theirs.get_state())
            else:
                assert torch.equal(got.view(want.shape), want)
        else:
            assert torch.equal(next_tokens(logits, settings, ours), want)
        assert torch.equal(ours.get_state(), theirs.get_state())


@needs_kernels
def test_kernel_leaves_nan_scores_to_pytorch():
    logits = torch.randn(2, 4, 64)
    logits[0, 1, 7] = float("nan")
    settings = SamplingSettings(do_sample=True, guidance_scale=3.0, top_k=10)
    untouched = torch.Generator().manual_seed(0)
    assert not kernels.chooser(3.0, 1.0, 10, untouched)(logits, torch.empty(1, 4, dtype=torch.long))
    assert torch.equal(untouched.get_state(), torch.Generator().manual_seed(0).get_state())  # nothing drawn
    ours, theirs = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(next_tokens(logits, settings, ours), pytorch_next_tokens(logits, settings, theirs))


@needs_kernels
def test_kernel_draws_pytorchs_numbers_from_its_state():
    """the kernels' own draw of a generator's Exp(1) numbers is exponential_'s, number for number, and leaves the
    generator where exponential_ leaves it, over several turns of its Mersenne Twister and from any point of one"""
    assert kernels.draws_like_pytorch()
    for seed, skip in ((0, 0), (7, 1), (123456789, 1001)):
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for g in (ours, theirs):
            torch.empty(skip).exponential_(1, generator=g)
        state, drawn = ours.get_state(), torch.empty(5000)
        kernels.library().zhiyin_exponential(state.data_ptr(), drawn.numel(), drawn.data_ptr())
        ours.set_state(state)
        assert torch.equal(drawn, torch.empty(5000).exponential_(1, generator=theirs))
        assert torch.equal(ours.get_state(), theirs.get_state())


@needs_kernels
def test_kernel_draws_from_the_global_generator_without_one():
    settings = SamplingSettings(do_sample=True, guidance_scale=3.0, top_k=250)
    logits = torch.randn(2, 4, 2048)
    torch.manual_seed(5)
    ours = next_tokens(logits, settings)
    after = torch.default_generator.get_state()
    torch.manual_seed(5)
    assert torch.equal(ours, pytorch_next_tokens(logits, settings, None))
    assert torch.equal(after, torch.default_generator.get_state())


@pytest.mark.parametrize("kernel", [True, False])
def test_draws_follow_the_probabilities(kernel):
    probs = torch.tensor([0.7, 0.2, 0.1, 0.0])
    logits = probs.log().expand(20000, 1, 4)
    previous = set_kernels_enabled(kernel)
    try:
        tokens = next_tokens(logits, SamplingSettings(top_k=None), torch.Generator().manual_seed(0))
    finally:
        set_kernels_enabled(previous)
    assert torch.allclose(torch.bincount(tokens.flatten(), minlength=4) / 20000, probs, atol=0.01)


def test_the_kernel_is_not_built_for_logits_off_the_cpu(monkeypatch):
    """a GPU's generation samples with PyTorch's ops and never compiles the CPU kernels"""
    monkeypatch.setattr(kernels, "library", lambda: pytest.fail("the kernels were asked for"))
    settings = SamplingSettings(do_sample=True, guidance_scale=3.0, top_k=5)
    assert TokenChoice(settings, None, torch.device("meta")).kernel is None


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("settings", [SETTINGS[0], SETTINGS[3], SETTINGS[-1]], ids=["guided", "unguided", "top-p"])
def test_tokens_into_out_once_per_copy(kernel, settings):
    """With out [copies * B, K] (the token loop's rows: a guided request's twice), each copy gets the tokens
    next_tokens returns, and out is what comes back."""
    if kernel and kernels.library() is None:
        pytest.skip("no C++ compiler: the kernels cannot be built")
    rows = 4 if settings.uses_guidance else 2
    logits = torch.randn(rows, 4, 2048, generator=torch.Generator().manual_seed(3)) * 4
    previous = set_kernels_enabled(kernel)
    try:
        want = next_tokens(logits, settings, torch.Generator().manual_seed(1))  # [2, 4]
        out = torch.full((4, 4), -5, dtype=torch.long)
        got = TokenChoice(settings, torch.Generator().manual_seed(1), logits.device)(logits, out)
    finally:
        set_kernels_enabled(previous)
    assert got is out and torch.equal(out, torch.cat([want, want]))
    if kernel:
        with pytest.raises(ValueError, match="copies of 8 tokens"):
            kernels.chooser(None, 1.0, None, None)(logits[:2], torch.empty(7, dtype=torch.long))
