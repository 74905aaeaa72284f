"""EnCodec codes (and melody chroma, another argmax) compared honestly across CPUs.

Each codebook picks the entry nearest to what the codebooks before it left over (an argmin of float32 distances).
Where two entries are equally near within float32 resolution, a latent that differs in its last bits (another
CPU's rounding, another convolution algorithm) may pick either, and the residual then differs for every later
codebook of that frame. Both picks are right. So:

- `assert_same_codes`: codes equal to the reference's, except in frames where the reference's and ours part at a
  tie; there each of our codes must be a nearest entry (within TIE) of the residual it quantizes.
- `reference_takes_our_prompt_codes`: generation from an audio prompt, compared token by token after the prompt's
  codes were compared as above.
- `assert_same_chroma`: a melody's one-hot chroma (the loudest of 12 pitch classes per frame), equal but where the
  two loudest are as loud within rounding.
"""

from __future__ import annotations

import contextlib

import torch

# Relative to |x|^2 + max |e|^2: float32 distances are exact to ~1e-7 of that, and the latents of two CPUs differ by
# ~1e-7 (2.6e-7 seen at the published shapes on an AVX2 EPYC); ten times that is a tie, more is a clear pick.
TIE = 1e-6


def _codebooks(codec) -> list[torch.Tensor]:
    return [layer.codebook.embed.double() for layer in codec.quantizer.layers]


def _latents(codec, audio: torch.Tensor, padding_mask=None) -> torch.Tensor:
    """Our EnCodec encoder's latents [B, D, frames] for mono audio [B, 1, T] (the same masking as encode)."""
    x = audio.to(codec.dtype)
    if padding_mask is not None:
        x = x * padding_mask.reshape(x.shape[0], -1, x.shape[-1]).bool()
    with torch.no_grad():
        return codec.encoder(x).double()


def _distances(residual: torch.Tensor, embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances [..., N] of residuals [..., D] to the entries, and the scale their rounding is relative to."""
    dist = (residual[..., None, :] - embed).pow(2).sum(-1)
    scale = residual.pow(2).sum(-1, keepdim=True) + embed.pow(2).sum(-1).max()
    return dist, scale


def assert_same_codes(codec, audio: torch.Tensor, got: torch.Tensor, want: torch.Tensor, padding_mask=None) -> None:
    """got (ours), want (the reference's): codes [B, K, frames] of mono audio [B, 1, T] by our EnCodec `codec`."""
    assert got.shape == want.shape, (got.shape, want.shape)
    differing = (got != want).any(dim=1).nonzero().tolist()  # [(b, t)]
    if not differing:
        return
    latents, codebooks = _latents(codec, audio, padding_mask), _codebooks(codec)
    assert len(differing) <= max(2, got.shape[-1] // 20), f"{len(differing)} frames differ: more than ties explain"
    for b, t in differing:
        residual, parted = latents[b, :, t], False
        for k, embed in enumerate(codebooks[: got.shape[1]]):
            dist, scale = _distances(residual, embed)
            nearest = dist.min()
            ours, theirs = int(got[b, k, t]), int(want[b, k, t])
            assert dist[ours] - nearest <= TIE * scale, f"frame {t} codebook {k}: code {ours} is not a nearest entry"
            if not parted and ours != theirs:  # where the two part, theirs must be just as near: a tie
                assert dist[theirs] - nearest <= TIE * scale, f"frame {t} codebook {k}: {ours} vs {theirs}, no tie"
                parted = True
            residual = residual - embed[ours]


@contextlib.contextmanager
def reference_takes_our_prompt_codes(reference, codec):
    """Within: the reference model's EnCodec encodes an audio prompt, `assert_same_codes` checks its codes against
    ours (our `codec`), and the reference then generates from ours. So a tie picked the other way on this CPU is
    checked as a tie, and the generations after it are still compared token by token."""
    encode = reference.audio_encoder.encode

    def checked(*args, **kwargs):
        out = encode(*args, **kwargs)
        audio, mask = kwargs["input_values"], kwargs.get("padding_mask")
        with torch.no_grad():
            ours = codec.encode(audio, mask)
        assert_same_codes(codec, audio, ours, out.audio_codes[0], mask)
        out.audio_codes = ours[None]
        return out

    reference.audio_encoder.encode = checked
    try:
        yield
    finally:
        del reference.audio_encoder.encode  # the instance attribute goes; the class's method shows again


CHROMA_TIE = 1e-4  # of a frame's largest pitch-class energy: the oracle's resampler rounds ~1e-5 from ours


def assert_same_chroma(got: torch.Tensor, want: torch.Tensor, energies: torch.Tensor) -> None:
    """One-hot chroma [B, frames, 12], ours and the reference's, equal except in frames where the reference's pick
    is a tie: its energy (ours, `energies`, normalised to a largest of 1) within CHROMA_TIE of the largest."""
    assert got.shape == want.shape == energies.shape, (got.shape, want.shape, energies.shape)
    differing = (got != want).any(-1)
    if differing.any():
        theirs = energies.gather(-1, want.argmax(-1, keepdim=True))[..., 0]
        gaps = (energies.max(-1).values - theirs)[differing]
        assert gaps.max() <= CHROMA_TIE, (
            f"{int(differing.sum())} chroma frames differ, by up to {float(gaps.max()):.1e}"
        )
