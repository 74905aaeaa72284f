"""Small random decoders and a step-by-step check of a fast decoder step against the plain PyTorch forward
(shared by test_fused_step.py and test_cuda_graph.py)."""

import torch

from zhiyin.backends.fused_step import FusedStep
from zhiyin.config import DecoderConfig
from zhiyin.generation.conditioning import TextCondition
from zhiyin.modules.decoder import CrossKV, MusicgenDecoder


def make_decoder(seed=0, cross_attention=True, **overrides) -> MusicgenDecoder:
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=64,
        num_hidden_layers=3,
        ffn_dim=96,
        num_attention_heads=4,
        hidden_size=64,
        num_codebooks=4,
        pad_token_id=64,
        bos_token_id=64,
    )
    config = DecoderConfig(**{**fields, **overrides})
    decoder = MusicgenDecoder(config, cross_attention).eval()
    with torch.no_grad():
        for p in decoder.parameters():  # not the default init: norms and biases away from 1 and 0 too
            p.normal_(0, 0.3 if p.dim() > 1 else 1.0)
    return decoder


def text_states(decoder: MusicgenDecoder, rows: int, text_len: int = 5) -> TextCondition:
    """Random text states for `rows` rows, the last row's text padded after 2 tokens (the mask must be honoured)."""
    device = decoder.final_norm.weight.device
    text = torch.randn(rows, text_len, decoder.config.hidden_size).to(device, decoder.final_norm.weight.dtype)
    mask = torch.ones(rows, text_len, dtype=torch.long, device=device)
    mask[-1, 2:] = 0
    return TextCondition(text * mask[..., None].to(text.dtype), mask)


def text_condition(decoder: MusicgenDecoder, rows: int, text_len: int = 5) -> CrossKV:
    """The cross-attention inputs of text_states."""
    return text_states(decoder, rows, text_len).cross(decoder)


def entry(cache, position):
    """The cache's keys and values at one position, as float32 [rows, H, Dh]."""
    k, v = cache.k[:, :, position].float(), cache.v[:, :, position].float()
    if cache.k.dtype == torch.int8:
        k, v = k * cache.k_scale[:, :, position, None], v * cache.v_scale[:, :, position, None]
    return k, v


def positions(rows: int, first: int, last: int, device=None) -> torch.Tensor:
    """Positions first..last-1 for every row: [rows, last - first]."""
    return torch.arange(first, last, device=device)[None].expand(rows, last - first)


def compare_steps(decoder, cross, rows, prefill=6, steps=5, tolerance=1e-5, prefix=None, build=FusedStep.build):
    """Prefill with PyTorch, then for each step: the built step's logits (FusedStep by default) vs the plain step's,
    and the cache entry each wrote (within 1 % of the largest, or the logits' tolerance where that is wider)."""
    K, V = decoder.config.num_codebooks, decoder.config.vocab_size
    device = decoder.final_norm.weight.device
    tokens = torch.randint(0, V + 1, (rows, K, prefill + steps)).to(device)  # V: pad token
    offset = 0 if prefix is None else prefix.shape[1]
    with torch.inference_mode():
        decoder.setup_caches(rows, offset + prefill + steps)
        decoder(tokens[:, :, :prefill], cross, positions(rows, 0, offset + prefill, device), prefix=prefix)
        fused = build(decoder, cross)
        assert fused is not None
        for position in range(prefill, prefill + steps):
            at = torch.full((rows,), offset + position)  # positions on the CPU (select.py's protocol)
            got = fused(tokens[:, :, position], at)
            written = [entry(c, offset + position) for c in decoder.caches]
            want = decoder(tokens[:, :, position : position + 1], cross, at[:, None].to(device))[:, :, -1].float()
            assert got.shape == (rows, K, V)
            scale = want.abs().max()
            assert (got - want).abs().max() <= tolerance * scale, (position, (got - want).abs().max() / scale)
            for (k, v), cache in zip(written, decoder.caches):  # the plain step rewrote the same entries
                k_plain, v_plain = entry(cache, offset + position)
                assert (k - k_plain).abs().max() <= max(1e-2, tolerance) * k_plain.abs().max() + 1e-5
                assert (v - v_plain).abs().max() <= max(1e-2, tolerance) * v_plain.abs().max() + 1e-5
        decoder.free_caches()
