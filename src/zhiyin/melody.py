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

Long music (generate_long, generate_stream; long_form.py) runs audiocraft's windows, each a fresh generation
conditioned on the same text and on the melody "tiled along" the music: the window whose context begins at t seconds
of the music takes C chroma frames starting at frame round(t * CHROMA_RATE) of the melody, taken cyclically
(frame i of the window is melody frame (round(t * rate) + i) mod F), so a melody shorter than the music repeats and
each window hears the part of the tune under its own stretch of time. This is audiocraft's
MusicGen._generate_tokens: for the window at `current_gen_offset` frames (context included, advancing by
extend_stride) it takes the melody WAVEFORM at samples (int(time_offset * sample_rate) + arange(30 s)) mod length
and computes the chroma of that. Here the chroma is tiled instead of the waveform (the processor's chroma is all
the model is given), which equals audiocraft's up to where the melody's end wraps to its start (at most a frame
of STFT context differs there) and the rounding of t to the chroma's 4096-sample hop. The first window (t = 0) is
exactly generate()'s prefix, so music that fits one window is one generate() pass. One difference remains: the
processor keeps at most 30 s of melody, so a longer tune repeats its first 30 s where audiocraft plays on.
"""

from __future__ import annotations

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

CHROMA_HOP = 4096  # samples per chroma frame (MusicgenMelodyFeatureExtractor's hop_length): 7.8125 frames/s at 32 kHz


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

    def stepper(self, cross: None):
        return self.decoder.stepper(None, offset=self.prefix.shape[1])

    def forward(self, tokens: Tensor, cross: None, start: int = 0) -> Tensor:
        if start == 0:
            return self.decoder(tokens, None, 0, prefix=self.prefix)  # [rows, K, L + T, V]
        return self.decoder(tokens, None, self.prefix.shape[1] + start)


class MusicgenMelodyForConditionalGeneration(MusicgenForConditionalGeneration):
    """Same API as MusicgenForConditionalGeneration (from_pretrained, generate, get_unconditional_inputs,
    save_pretrained); generate takes the melody as `input_features` from MusicgenMelodyProcessor, and no audio
    prompt (the reference's melody model takes none either)."""

    config: MusicgenMelodyConfig

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
        self.precision = None  # the plan from_pretrained loaded it by
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
            "melody models have no cross-attention (text and melody are a prefix of the decoder's input): use "
            "generate(), generate_long(), generate_stream() or forward(), not the text-only model's cross-attention path"
        )

    def _prefix(
        self, text: Tensor, text_mask: Tensor, chroma: Tensor | None, guidance: bool, chroma_start: int = 0
    ) -> Tensor:
        """Text states [B, S, text_hidden] + mask [B, S], chroma [B, F, 12] or None -> prefix [rows, C + S, D],
        rows = 2B with guidance (second half: zero text, null chroma). The C chroma frames are F's frames
        chroma_start, chroma_start + 1, ... taken cyclically (0: the reference's tile-and-crop)."""
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
        C, F = self.config.chroma_length, chroma.shape[1]
        chroma = chroma[:, (chroma_start + torch.arange(C, device=chroma.device)) % F]  # [rows, C, D], tiled
        return torch.cat([chroma, text], dim=1)

    def _inputs(self, input_ids, attention_mask, input_features, encoder_outputs) -> tuple[Tensor, Tensor, Tensor | None]:
        """Text states and mask (null text when only a melody is given), and the chroma [B, F, 12] or None."""
        chroma = _as_tensor(input_features, self.device, self.conditioning_dtype)
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
        _no_audio_prompt(unknown)
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

    @torch.inference_mode()
    def generate_long(self, input_ids=None, attention_mask=None, input_features=None, encoder_outputs=None, **kwargs):
        """MusicgenForConditionalGeneration.generate_long (duration, window, extend_stride, sampling, ...) with the
        melody (input_features) tiled along the music: each window is conditioned on the text and on the chroma from
        its own start time on, cyclically (see the module's docstring). No audio prompt."""
        _no_audio_prompt(kwargs)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, encoder_outputs=encoder_outputs)
        return super().generate_long(**inputs, input_values=_Melody(input_features), **kwargs)

    @torch.inference_mode()
    def generate_stream(self, input_ids=None, attention_mask=None, input_features=None, encoder_outputs=None, **kwargs):
        """generate_long() as it happens, audio chunks while the codes are being made, as
        MusicgenForConditionalGeneration.generate_stream."""
        _no_audio_prompt(kwargs)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, encoder_outputs=encoder_outputs)
        return super().generate_stream(**inputs, input_values=_Melody(input_features), **kwargs)

    def _window_conditions(self, inputs, settings):
        """(condition, no prompt) for long_form.long_frames: the window whose context begins at frame `start` of the
        music is prefixed with the text and the chroma from time start / frame_rate on, tiled."""
        input_ids, attention_mask, melody, _, encoder_outputs = inputs  # generate_long's slots; the melody rides in
        text, text_mask, chroma = self._inputs(input_ids, attention_mask, melody.features, encoder_outputs)
        B, K = text.shape[0], self.config.decoder.num_codebooks
        chroma_rate = self.config.audio_encoder.sampling_rate / CHROMA_HOP
        frame_rate = self.config.audio_encoder.frame_rate

        def condition(start: int):
            chroma_start = round(start / frame_rate * chroma_rate)
            prefix = self._prefix(text, text_mask, chroma, settings.uses_guidance, chroma_start)
            return _PrefixedDecoder(self.decoder, prefix), None

        return condition, torch.zeros(B, K, 0, dtype=torch.long, device=self.device)


class _Melody:
    """The melody's chroma carried through MusicgenForConditionalGeneration.generate_long's input_values slot."""

    def __init__(self, features):
        self.features = features


def _no_audio_prompt(kwargs: dict) -> None:
    if "input_values" in kwargs:
        raise ValueError(
            "melody models take no audio prompt to continue (input_values): give the melody as input_features "
            "from the processor, processor(audio=melody, sampling_rate=..., text=...)"
        )
