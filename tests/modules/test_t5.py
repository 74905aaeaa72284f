"""zhiyin.t5.T5Encoder against transformers.T5EncoderModel (the oracle) with random weights."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from zhiyin import random_checkpoint  # noqa: E402
from zhiyin.config import T5Config  # noqa: E402
from zhiyin.modules.t5 import T5Encoder, relative_position_bucket  # noqa: E402

TINY = dict(
    vocab_size=99,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=3,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
)
T5_BASE = random_checkpoint.T5_BASE  # t5-base, as the published checkpoints have it


def _pair(fields: dict, attn_implementation: str = "eager"):
    """A random transformers T5EncoderModel and our encoder holding the same weights."""
    torch.manual_seed(0)
    hf_config = transformers.T5Config(**fields, dropout_rate=0.0)
    hf_config._attn_implementation = attn_implementation
    ref = transformers.T5EncoderModel(hf_config).eval()
    ours = T5Encoder(T5Config.from_dict(fields)).eval()
    state = {k: v for k, v in ref.state_dict().items() if k != "encoder.embed_tokens.weight"}
    ours.load_state_dict(state, strict=True)
    return ref, ours


def _batch(vocab_size: int, lengths: tuple[int, ...], seed: int = 1):
    """Right-padded ids [B, L] and mask [B, L] (pad id 0)."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(1, vocab_size, (len(lengths), L), generator=g)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return ids, mask


def _assert_close_valid(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, rtol: float):
    valid = mask.bool()
    a, b = ours[valid].double(), ref[valid].double()
    err = ((a - b).norm() / b.norm()).item()
    assert err < rtol, f"relative error {err:.3g}"
    torch.testing.assert_close(ours[valid], ref[valid], rtol=rtol, atol=rtol * b.abs().max().item())


def test_state_dict_keys_match_reference():
    ref, ours = _pair(TINY)
    ref_keys = set(ref.state_dict()) - {"encoder.embed_tokens.weight"}
    assert set(ours.state_dict()) == ref_keys
    assert "shared.weight" in ours.state_dict()
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in ours.state_dict()
    assert not any("relative_attention_bias" in k for k in ours.state_dict() if not k.startswith("encoder.block.0."))


def test_relative_position_buckets_match_reference():
    from transformers.models.t5.modeling_t5 import T5Attention as RefAttention

    rel = torch.arange(-600, 600)[None, :] - torch.arange(0, 1)[:, None]
    for nb, md in ((32, 128), (16, 64), (8, 20)):
        want = RefAttention._relative_position_bucket(rel, bidirectional=True, num_buckets=nb, max_distance=md)
        assert torch.equal(relative_position_bucket(rel, nb, md), want)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(dict(TINY, feed_forward_proj="relu"), id="tiny-relu"),
        pytest.param(dict(TINY, feed_forward_proj="gated-gelu"), id="tiny-gated-gelu"),
        pytest.param(dict(TINY, feed_forward_proj="gelu"), id="tiny-gelu"),
    ],
)
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_matches_reference_tiny(fields, attn_implementation):
    ref, ours = _pair(fields, attn_implementation)
    # longer than max_distance so the logarithmic and saturated buckets are exercised too
    ids, mask = _batch(fields["vocab_size"], (150, 97))
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    assert got.shape == want.shape == (2, 150, fields["d_model"])
    _assert_close_valid(got, want, mask, rtol=1e-5)


def test_no_mask_equals_all_ones_mask():
    _, ours = _pair(dict(TINY, feed_forward_proj="relu"))
    ids, mask = _batch(TINY["vocab_size"], (9, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ours(ids, mask))


def test_padding_does_not_change_valid_positions():
    _, ours = _pair(dict(TINY, feed_forward_proj="relu"))
    ids, mask = _batch(TINY["vocab_size"], (12, 7))
    with torch.no_grad():
        padded = ours(ids, mask)[1, :7]
        alone = ours(ids[1:, :7])[0]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)


def test_matches_reference_t5_base_shape():
    ref, ours = _pair(dict(T5_BASE, feed_forward_proj="relu"))
    ids, mask = _batch(T5_BASE["vocab_size"], (12, 7))
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    assert got.shape == (2, 12, 768)
    _assert_close_valid(got, want, mask, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(dtype):
    _, ours = _pair(dict(TINY, feed_forward_proj="gated-gelu"))
    ids, mask = _batch(TINY["vocab_size"], (20, 13))
    half = T5Encoder(ours.config).eval()
    half.load_state_dict(ours.state_dict())
    half.to(dtype)
    with torch.no_grad():
        want = ours(ids, mask)
        got = half(ids, mask)
    assert got.dtype == dtype
    assert torch.isfinite(got).all()
    valid = mask.bool()
    err = ((got.float() - want)[valid].norm() / want[valid].norm()).item()
    assert err < 3e-2, f"relative error {err:.3g}"
