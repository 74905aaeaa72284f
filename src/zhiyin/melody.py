"""`MusicgenMelodyForConditionalGeneration` (facebook/musicgen-melody, -melody-large, stereo-melody-*): MusicGen
conditioned on text and a melody's chroma, both put before the decoder's input instead of cross-attended.

    melody ──chroma.py──> input_features [B, F, 12] ──audio_enc_to_dec_proj──> [B, F, D] ──tile/crop──> [B, C, D] ┐
    text ──T5──> [B, S, 768] ──enc_to_dec_proj──> × attention mask ──> [B, S, D] ──────────────────────────────────┤
                                                     prefix [B, C + S, D] = [chroma; text]  ◄──────────────────────┘
    prefix + codes ──decoder (no cross-attention; tokens at positions C + S, ...)──> codes ──EnCodec──> audio

C is config.chroma_length (235 frames = 30 s): a shorter melody is repeated until it fills C frames, a longer one
cropped. Without a melody the chroma is the "null" one: one frame with bin 0 set; without text, the text is null
(zero states of length 1), both as the reference. Classifier-free guidance (scale > 1) doubles the batch; the
second half has zero text states and the null chroma. Padded text positions are zeroed, not masked: the decoder
attends to every prefix position, as the reference does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .config import GenerationConfig, MusicgenConfig
from .decoder import MusicgenDecoder
from .encodec import EncodecModel
from .generation import generate_codes
from .model import MusicgenForConditionalGeneration, _as_tensor
from .t5 import T5Encoder


@dataclass
class MusicgenMelodyConfig(MusicgenConfig):
    """A melody checkpoint's config.json: the three sub-configs plus the chroma settings."""

    num_chroma: int = 12
    chroma_length: int = 235
    model_type = "musicgen_melody"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MusicgenMelodyConfig":
        data = dict(data)
        chroma = {k: data.pop(k) for k in ("num_chroma", "chroma_length") if data.get(k) is not None}
        base = MusicgenConfig.from_dict(data)
        return cls(text_encoder=base.text_encoder, audio_encoder=base.audio_encoder, decoder=base.decoder,
                   extra=base.extra, **chroma)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(num_chroma=self.num_chroma, chroma_length=self.chroma_length)
        out["decoder"]["model_type"] = "musicgen_melody_decoder"
        if "architectures" not in self.extra:
            out["architectures"] = ["MusicgenMelodyForConditionalGeneration"]
        return out


class _PrefixedDecoder(nn.Module):
    """The decoder seen by `generate_codes`: the prefix goes in with the first (prefill) call, and every position
    the loop names is shifted by the prefix length."""

    def __init__(self, decoder: MusicgenDecoder, prefix: Tensor):
        super().__init__()
        self.decoder, self.prefix, self.config = decoder, prefix, decoder.config

    def setup_caches(self, batch: int, max_len: int) -> None:
        self.decoder.setup_caches(batch, self.prefix.shape[1] + max_len)

    def free_caches(self) -> None:
        self.decoder.free_caches()

    def forward(self, tokens: Tensor, cross: None, start: int = 0) -> Tensor:
        if start == 0:
            return self.decoder(tokens, None, 0, prefix=self.prefix)  # [rows, K, L + T, V]
        return self.decoder(tokens, None, self.prefix.shape[1] + start)


class MusicgenMelodyForConditionalGeneration(MusicgenForConditionalGeneration):
    """Same API as MusicgenForConditionalGeneration (from_pretrained, generate, get_unconditional_inputs,
    save_pretrained); generate takes the melody as `input_features` from MusicgenMelodyProcessor, and no audio
    prompt (the reference's melody model takes none either)."""

    config: MusicgenMelodyConfig
    _LONGER_MUSIC = "longer music is not supported for melody models yet"

    def __init__(self, config: MusicgenMelodyConfig, generation_config: GenerationConfig | None = None):
        nn.Module.__init__(self)
        self.config = config
        self.generation_config = generation_config or GenerationConfig()
        D, text_width = config.decoder.hidden_size, config.text_encoder.hidden_size
        self.text_encoder = T5Encoder(config.text_encoder)
        self.enc_to_dec_proj = nn.Linear(text_width, D) if text_width != D else None
        self.audio_enc_to_dec_proj = nn.Linear(config.num_chroma, D) if config.num_chroma != D else None
        self.audio_encoder = EncodecModel(config.audio_encoder)
        self.decoder = MusicgenDecoder(config.decoder, cross_attention=False)
        self.decoder.embed_scale = 1.0  # the reference's melody decoder never scales its embeddings

    @classmethod
    def _read_config(cls, raw: dict, name: str) -> MusicgenMelodyConfig:
        if raw.get("model_type") != "musicgen_melody":
            raise ValueError(
                f"'{name}' is not a melody checkpoint (model_type {raw.get('model_type')!r}): load it with "
                "zhiyin.MusicgenForConditionalGeneration"
            )
        return MusicgenMelodyConfig.from_dict(raw)

    def _cross_attention_inputs(self, text: Tensor, text_mask: Tensor):
        raise ValueError(
            "melody models have no cross-attention: they support generate() and forward() (one pass of at most "
            f"{self.max_frames() / self.config.audio_encoder.frame_rate:.0f} s), not the text-only model's other generation paths yet"
        )

    def _prefix(self, text: Tensor, text_mask: Tensor, chroma: Tensor | None, guidance: bool) -> Tensor:
        """Text states [B, S, text_hidden] + mask [B, S], chroma [B, F, 12] or None -> prefix [rows, C + S, D],
        rows = 2B with guidance (second half: zero text, null chroma)."""
        B = text.shape[0]
        null = torch.zeros(B, 1 if chroma is None else chroma.shape[1], self.config.num_chroma, device=text.device,
                           dtype=text.dtype)
        null[:, :, 0] = 1
        chroma = null if chroma is None else chroma.to(text.dtype)
        if self.enc_to_dec_proj is not None:
            text = self.enc_to_dec_proj(text)
        if guidance:
            text, text_mask = torch.cat([text, torch.zeros_like(text)]), torch.cat([text_mask, torch.zeros_like(text_mask)])
            chroma = torch.cat([chroma, null])
        text = text * text_mask[..., None].to(text.dtype)  # [rows, S, D]
        if self.audio_enc_to_dec_proj is not None:
            chroma = self.audio_enc_to_dec_proj(chroma)  # [rows, F, D]
        C = self.config.chroma_length
        chroma = chroma.repeat(1, math.ceil(C / chroma.shape[1]), 1)[:, :C]  # [rows, C, D]
        return torch.cat([chroma, text], dim=1)

    def _inputs(self, input_ids, attention_mask, input_features, encoder_outputs) -> tuple[Tensor, Tensor, Tensor | None]:
        """Text states and mask (null text when only a melody is given), and the chroma [B, F, 12] or None."""
        chroma = _as_tensor(input_features, self.device, self.dtype)
        if chroma is not None and (chroma.dim() != 3 or chroma.shape[-1] != self.config.num_chroma):
            raise ValueError(
                f"input_features must be chroma [batch, frames, {self.config.num_chroma}] from the melody processor, "
                f"got shape {tuple(chroma.shape)}"
            )
        if chroma is not None and input_ids is None and encoder_outputs is None:
            null = self.get_unconditional_inputs(chroma.shape[0])
            encoder_outputs, attention_mask = null["encoder_outputs"], null["attention_mask"]
        text, text_mask = self._text_states(input_ids, attention_mask, encoder_outputs)
        if chroma is not None and chroma.shape[0] != text.shape[0]:
            raise ValueError(f"{chroma.shape[0]} melodies for {text.shape[0]} text prompts: give one melody per text")
        return text, text_mask, chroma

    @torch.inference_mode()
    def forward(self, input_ids=None, attention_mask=None, input_features=None, decoder_input_ids=None,
                encoder_outputs=None) -> Tensor:
        """Logits [B, K, C + S + T, V] over the prefix and decoder_input_ids [B, K, T] (or [B*K, T])."""
        text, text_mask, chroma = self._inputs(input_ids, attention_mask, input_features, encoder_outputs)
        tokens = _as_tensor(decoder_input_ids, self.device, torch.long)
        tokens = tokens.reshape(text.shape[0], self.config.decoder.num_codebooks, -1)
        return self.decoder(tokens, None, 0, prefix=self._prefix(text, text_mask, chroma, guidance=False))

    @torch.inference_mode()
    def generate(
        self,
        input_ids=None,
        attention_mask=None,
        input_features=None,
        encoder_outputs=None,
        *,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        do_sample: bool | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        progress_bar: bool = False,
        return_codes: bool = False,
        generator: torch.Generator | None = None,
        **unknown,
    ) -> Tensor:
        """Generate music from text and/or a melody; returns audio [batch, channels, samples] float32 (codes
        [B, K, frames] if return_codes). A melody without text is conditioned on null text."""
        if "input_values" in unknown:
            raise ValueError(
                "melody models take no audio prompt to continue (input_values): give the melody as input_features "
                "from the processor, processor(audio=melody, sampling_rate=..., text=...)"
            )
        if unknown:
            raise ValueError(f"generate() got arguments it does not know: {', '.join(sorted(unknown))}")
        settings = self._settings(
            dict(do_sample=do_sample, guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p)
        )
        text, text_mask, chroma = self._inputs(input_ids, attention_mask, input_features, encoder_outputs)
        B, K = text.shape[0], self.config.decoder.num_codebooks
        max_new_tokens = self._new_tokens(max_new_tokens, max_length, 0)

        prefix = self._prefix(text, text_mask, chroma, settings.uses_guidance)  # [rows, C + S, D]
        no_prompt = torch.zeros(B, K, 0, dtype=torch.long, device=self.device)
        codes = generate_codes(_PrefixedDecoder(self.decoder, prefix), None, no_prompt, max_new_tokens, settings,
                               progress_bar, generator)
        return codes if return_codes else self.decode_audio(codes)
