"""The decoder module: what its step loop and engine rely on beyond the oracle comparisons (test_model.py)."""

import torch

from decoder_steps import make_decoder, text_states


def test_null_text_rows_get_zero_keys_and_values_and_text_rows_their_own():
    """project_text projects only the rows with text: a null row (zero states, zero mask) gets zeros, which is what
    its projection is, and a text row gets the numbers of its projection alone."""
    decoder = make_decoder()
    text = text_states(decoder, 2).guided()  # 2 text rows, 2 null rows
    cross = decoder.project_text(text.states, text.mask)
    with torch.no_grad():
        for layer, keys, values in zip(decoder.layers, cross.keys, cross.values):
            alone = layer.cross_attn.project_text(text.states[:2])
            assert torch.equal(keys[:2], alone[0]) and torch.equal(values[:2], alone[1])
            assert not keys[2:].any() and not values[2:].any()
            nulls = layer.cross_attn.project_text(text.states[2:])
            assert torch.equal(keys[2:], nulls[0]) and torch.equal(values[2:], nulls[1])
    only_null = decoder.project_text(text.states[2:], text.mask[2:])
    assert not any(k.any() for k in only_null.keys) and only_null.keys[0].shape[0] == 2
