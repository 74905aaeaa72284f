"""The delay pattern as tables, for mono (4 codebooks, delays 0 1 2 3) and stereo (8 codebooks in the decoder's
order L1 R1 L2 R2 ..., delays 0 0 1 1 2 2 3 3): a prompt of 2 frames laid out over 8 positions. P is the pad token,
a0 frame 0 of the first codebook (b0 of the second, ...), ? a position left to generate."""

import pytest
import torch

from zhiyin.generation.delay_pattern import UNKNOWN, DelayPattern, first_unknown

PAD = 99
MONO = """
P a0 a1 ?  ?  P  P  P
P P  b0 b1 ?  ?  P  P
P P  P  c0 c1 ?  ?  P
P P  P  P  d0 d1 ?  ?
"""
STEREO = """
P a0 a1 ?  ?  P  P  P
P b0 b1 ?  ?  P  P  P
P P  c0 c1 ?  ?  P  P
P P  d0 d1 ?  ?  P  P
P P  P  e0 e1 ?  ?  P
P P  P  f0 f1 ?  ?  P
P P  P  P  g0 g1 ?  ?
P P  P  P  h0 h1 ?  ?
"""


def table(text: str) -> torch.Tensor:
    """The table as numbers: P -> PAD, ? -> UNKNOWN, codebook letter k and frame f -> 10 * k + f."""

    def value(cell: str) -> int:
        return {"P": PAD, "?": UNKNOWN}.get(cell) or 10 * (ord(cell[0]) - ord("a")) + int(cell[1:])

    return torch.tensor([[value(cell) for cell in line.split()] for line in text.strip().splitlines()])


@pytest.mark.parametrize("codebooks, channels, text", [(4, 1, MONO), (8, 2, STEREO)], ids=["mono", "stereo"])
def test_the_pattern_is_the_table(codebooks, channels, text):
    pattern = DelayPattern.of(codebooks, channels)
    prompt = torch.tensor([[10 * k + f for f in range(2)] for k in range(codebooks)])[None]  # [1, K, 2]
    laid = pattern.build(prompt, 8, PAD)
    assert torch.equal(laid[0], table(text))
    assert (pattern.max_delay, pattern.frames(8), pattern.length(4)) == (3, 4, 8)
    assert first_unknown(laid) == 3
    assert [pattern.frame_completed_at(p) for p in range(8)] == [-4, -3, -2, -1, 0, 1, 2, 3]
    generated = laid.masked_fill(laid == UNKNOWN, 7)
    # position-major, as the token loop keeps them: [8 positions, 2 rows, K], the second row another item
    tokens = torch.cat([generated, generated + 1000]).permute(2, 0, 1).contiguous()
    for f in range(4):  # one frame at a time, as the token loop takes each frame out
        expected = prompt[..., f : f + 1] if f < 2 else torch.full((1, codebooks, 1), 7)
        assert torch.equal(pattern.frame(tokens, f, 1), expected)
    assert torch.equal(pattern.frame(tokens, 1, 2)[1], prompt[0, :, 1:2] + 1000)


def test_a_pattern_is_musicgens():
    with pytest.raises(ValueError, match="k // channels"):
        DelayPattern((0, 2, 1, 3))
