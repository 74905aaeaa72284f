"""sampling.draw against torch.multinomial, whose random numbers the reference uses: same tokens, same RNG state."""

import torch

from zhiyin.generation.sampling import draw, filter_top_k


def test_draw_is_multinomial_without_its_check():
    for seed in range(50):
        scores = filter_top_k(torch.randn(8, 2048, generator=torch.Generator().manual_seed(seed)) * 3, 250)
        probs = scores.softmax(dim=-1)  # zeros outside the top 250
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        tokens = draw(probs, ours)
        assert torch.equal(tokens, torch.multinomial(probs, 1, generator=theirs)[:, 0])
        assert torch.equal(ours.get_state(), theirs.get_state())  # the next step's numbers stay in step too
        assert (probs.gather(1, tokens[:, None]) > 0).all()
    torch.manual_seed(3)  # the global generator, as generate() without `generator=` uses it
    tokens = draw(probs)
    torch.manual_seed(3)
    assert torch.equal(tokens, torch.multinomial(probs, 1)[:, 0])


def test_draw_follows_the_probabilities():
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0]]).expand(20000, 4)
    counts = torch.bincount(draw(probs, torch.Generator().manual_seed(0)), minlength=4) / 20000
    assert torch.allclose(counts, probs[0], atol=0.01)
