"""The Hugging Face-style classes: `MusicgenForConditionalGeneration` (T5 text encoder + MusicGen decoder + EnCodec)
and `MusicgenMelodyForConditionalGeneration`, with `from_pretrained` / `generate` / `generate_long` /
`generate_stream` / `get_unconditional_inputs` / `save_pretrained`. A facade: loading is loading/pretrained.py,
the options of a call generation/options.py, the conditions generation/conditioning.py, and the step loop
generation/loop.py; here the processor's inputs become a condition and an audio prompt.

    text ──T5──> [B, S, 768] ──enc_to_dec_proj──> [B, S, D] ──cross-attention──┐
    audio prompt ──EnCodec.encode──> codes [B, K, P] ──delay pattern──> decoder ─┴─> codes [B, K, F]
    codes ──EnCodec.decode──> audio [B, channels, F * 640]

Melody models (facebook/musicgen-melody, -melody-large, stereo-melody-*) put text and a melody's chroma before the
decoder's input instead of cross-attending to the text:

    melody ──chroma.py──> input_features [B, F, 12] ──audio_enc_to_dec_proj──> [B, F, D] ──tile/crop──> [B, C, D] ┐
    text ──T5──> [B, S, 768] ──enc_to_dec_proj──> × attention mask ──> [B, S, D] ──────────────────────────────────┤
                                                     prefix [B, C + S, D] = [chroma; text]  ◄──────────────────────┘
    prefix + codes ──decoder (no cross-attention; tokens at positions C + S, ...)──> codes ──EnCodec──> audio

C is config.chroma_length (235 frames = 30 s): a shorter melody is repeated until it fills C frames, a longer one
cropped. Without a melody the chroma is the "null" one: one frame with bin 0 set; without text, the text is null
(zero states of length 1), both as the reference. Classifier-free guidance (scale > 1) doubles the batch; the
second half has zero text states and the null chroma. Padded text positions are zeroed, not masked: the decoder
attends to every prefix position, as the reference does.

Long music (generate_long, generate_stream; generation/long_form.py) runs audiocraft's windows, each a fresh generation
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

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .backends.precision import Precision
from .config import GenerationConfig, MusicgenConfig, MusicgenMelodyConfig
from .generation.conditioning import Condition, MelodyCondition, TextCondition
from .generation.long_form import long_frames
from .generation.loop import Request, generate_codes
from .generation.options import GenerationOptions, Limits
from .generation.streaming import decode_stream
from .loading.pretrained import load_pretrained, save_pretrained
from .modules.decoder import MusicgenDecoder
from .modules.encodec import EncodecModel
from .modules.t5 import T5Encoder
from .processing.inputs import BatchFeature

# what generate, generate_long, generate_stream and prepare_request take as model inputs (the processor's, and
# get_unconditional_inputs'); every other keyword argument is an option (generation/options.py)
INPUTS = ("input_ids", "attention_mask", "input_values", "padding_mask", "encoder_outputs", "input_features")
CHROMA_HOP = 4096  # samples per chroma frame (MusicgenMelodyFeatureExtractor's hop_length): 7.8125 frames/s at 32 kHz


def _as_tensor(value: Any, device: torch.device, dtype: torch.dtype | None = None) -> Tensor | None:
    if value is None:
        return None
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    return tensor.to(device=device, dtype=dtype) if dtype is not None else tensor.to(device)


class MusicgenForConditionalGeneration(nn.Module):
    config_class = MusicgenConfig

    def __init__(self, config: MusicgenConfig, generation_config: GenerationConfig | None = None):
        super().__init__()
        self.config = config
        self.generation_config = generation_config or GenerationConfig()
        self.text_encoder = T5Encoder(config.text_encoder)
        self.enc_to_dec_proj = (
            nn.Linear(config.text_encoder.hidden_size, config.decoder.hidden_size)
            if config.needs_enc_to_dec_proj
            else None
        )
        self.audio_encoder = EncodecModel(config.audio_encoder)
        self.decoder = MusicgenDecoder(config.decoder)
        self.precision: Precision | None = None  # the plan from_pretrained loaded it by

    @property
    def device(self) -> torch.device:
        return self.decoder.final_norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model was loaded in: its decoder's weights' (int8/int4 ones aside). Its other parts may compute
        wider (backends/precision.py: on the CPU a bfloat16 decoder's activations are float32, and T5 and EnCodec
        stay float32 where the CPU has no native bfloat16)."""
        return self.precision.weights if self.precision is not None else self.conditioning_dtype

    @property
    def conditioning_dtype(self) -> torch.dtype:
        """The dtype T5, the text projection and EnCodec hold and compute in."""
        return self.text_encoder.shared.weight.dtype

    @property
    def limits(self) -> Limits:
        return Limits.of(self.config)

    def max_frames(self) -> int:
        """The most audio frames one pass can make: the decoder's positions less the start token and delays."""
        return self.limits.max_frames

    # ---- loading and saving ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        *,
        torch_dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        quantize: str | None = None,
        adapter: str | os.PathLike | None = None,
    ):
        """Load a checkpoint from a local folder or a hub id (e.g. 'facebook/musicgen-small').

        dtype: float32 (default), bfloat16, float16, or 'auto' for the dtype the weights are stored in.
        quantize: 'int8' stores the decoder's linear weights as int8 with a scale per output row (weight-only);
            'int4' as 4-bit values with a scale per row and one per 32 columns (the fastest, and the least exact).
        adapter: a LoRA adapter folder in PEFT's format (what `zhiyin train` makes), merged into the weights.
        On the CPU the decoder's linear layers run in zhiyin's kernels (backends/kernels.py).
        """
        return load_pretrained(
            cls,
            name_or_path,
            dtype if dtype is not None else torch_dtype,
            device,
            quantize,
            adapter,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
        )

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write config.json, generation_config.json and model.safetensors in the layout transformers loads."""
        save_pretrained(self, folder)

    # ---- encoding and decoding ---------------------------------------------------------------------------------

    def get_unconditional_inputs(self, num_samples: int = 1, max_new_tokens: int | None = None) -> BatchFeature:
        """Null text inputs for unconditional generation (guidance off), as the reference gives them; with
        `max_new_tokens` (as transformers' documentation passes it) that length goes along to `generate`."""
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a whole number of at least 1, got {num_samples!r}")
        hidden = torch.zeros(
            num_samples, 1, self.config.text_encoder.hidden_size, device=self.device, dtype=self.conditioning_dtype
        )
        mask = torch.zeros(num_samples, 1, device=self.device, dtype=torch.long)
        inputs = BatchFeature(encoder_outputs=(hidden,), attention_mask=mask, guidance_scale=1.0)
        if max_new_tokens is not None:
            inputs["max_new_tokens"] = max_new_tokens
        return inputs

    @torch.inference_mode()
    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """T5 last hidden states [B, S, text_hidden]."""
        return self.text_encoder(input_ids, attention_mask)

    @torch.inference_mode()
    def encode_audio(self, input_values: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Audio [B, channels, T] at the codec's rate -> prompt codes [B, K, frames] in the decoder's codebook order.

        Stereo models encode each channel with the mono EnCodec and interleave the codes L1, R1, L2, R2, ...
        A prompt whose channel count is not the model's is mixed to it: mono for a stereo model is copied to both
        channels (L = R, as the reference's forward() repeats mono codes; its generate() raises instead), stereo
        for a mono model is averaged (the reference crashes in EnCodec); any other count raises ValueError.
        """
        channels = self.config.decoder.audio_channels
        if input_values.dim() != 3:
            raise ValueError(f"input_values must be [batch, channels, samples], got shape {tuple(input_values.shape)}")
        if input_values.shape[1] != channels:
            if channels == 1 and input_values.shape[1] == 2:
                input_values = input_values.mean(dim=1, keepdim=True)
            elif channels == 2 and input_values.shape[1] == 1:
                input_values = input_values.expand(-1, 2, -1)
            else:
                raise ValueError(
                    f"this model takes {channels}-channel audio prompts, got {input_values.shape[1]} channels"
                )
        input_values = input_values.to(self.audio_encoder.dtype)
        if channels == 1:
            return self.audio_encoder.encode(input_values, padding_mask)
        left = self.audio_encoder.encode(input_values[:, :1], padding_mask)
        right = self.audio_encoder.encode(input_values[:, 1:], padding_mask)
        return torch.stack([left, right], dim=2).flatten(1, 2)  # [B, 2K', F]: L1, R1, L2, R2, ...

    @torch.inference_mode()
    def decode_audio(self, codes: Tensor) -> Tensor:
        """Codes [B, K, frames] -> audio [B, channels, frames * hop] float32: decoded in chunks (generation/
        streaming.py), as every piece of music zhiyin makes, so that a piece decoded while it was made is the same."""
        channels = self.config.decoder.audio_channels
        chunks = list(decode_stream(self.audio_encoder, channels, [codes]))
        if not chunks:
            return torch.zeros(codes.shape[0], channels, 0)
        return torch.cat(chunks, dim=-1)

    def _text_states(self, input_ids, attention_mask, encoder_outputs) -> tuple[Tensor, Tensor]:
        """Text hidden states [B, S, text_hidden] and mask [B, S] from token ids or given encoder outputs."""
        device = self.device
        if encoder_outputs is not None:
            if isinstance(encoder_outputs, (tuple, list)):
                hidden = encoder_outputs[0]
            else:
                hidden = getattr(encoder_outputs, "last_hidden_state", encoder_outputs)
            hidden = _as_tensor(hidden, device, self.conditioning_dtype)
        elif input_ids is not None:
            input_ids = _as_tensor(input_ids, device, torch.long)
            if input_ids.dim() != 2 or input_ids.shape[1] == 0:
                raise ValueError(
                    "input_ids must be [batch, tokens] with at least one token: use the processor on your text"
                )
            mask = _as_tensor(attention_mask, device)
            hidden = self.encode_text(input_ids, mask)
        else:
            raise ValueError(
                "generate() needs a text prompt (input_ids from the processor) or null inputs: "
                "use model.get_unconditional_inputs(num_samples) for unconditional music"
            )
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=device)
        return hidden, _as_tensor(attention_mask, device, torch.long)

    def _text_condition(self, text: Tensor, text_mask: Tensor) -> TextCondition:
        """Text states [B, S, text_hidden] and mask -> the decoder's cross-attention condition (projected, padding
        zeroed)."""
        if self.enc_to_dec_proj is not None:
            text = self.enc_to_dec_proj(text)
        text = text.to(self.decoder.final_norm.weight.dtype)
        return TextCondition(text * text_mask[..., None].to(text.dtype), text_mask)

    def _condition(
        self,
        input_ids=None,
        attention_mask=None,
        input_values=None,
        padding_mask=None,
        encoder_outputs=None,
        input_features=None,
    ) -> tuple[Condition, Tensor]:
        """The processor's inputs -> (condition, the audio prompt's codes [B, K, P])."""
        if input_features is not None:
            raise ValueError(
                "this model has no melody input (input_features): melody conditioning needs a melody checkpoint such "
                "as facebook/musicgen-melody, loaded with zhiyin.MusicgenMelodyForConditionalGeneration"
            )
        device, K = self.device, self.config.decoder.num_codebooks
        text, text_mask = self._text_states(input_ids, attention_mask, encoder_outputs)
        B = text.shape[0]
        if input_values is not None:
            audio = _as_tensor(input_values, device, torch.float32)
            if audio.dim() == 2:
                audio = audio[:, None]
            if audio.shape[0] != B:
                raise ValueError(f"{audio.shape[0]} audio prompts for {B} text prompts: give one audio prompt per text")
            self.limits.check_prompt_samples(audio.shape[-1], self.config.sampling_rate)  # before encoding it
            prompt = self.encode_audio(audio, _as_tensor(padding_mask, device))
        else:
            prompt = torch.zeros(B, K, 0, dtype=torch.long, device=device)
        return self._text_condition(text, text_mask), prompt

    @torch.inference_mode()
    def forward(
        self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None, input_features=None
    ) -> Tensor:
        """Decoder logits [B, K, L + T, V] for decoder_input_ids [B, K, T] (or [B*K, T] as the reference takes
        them); L: a melody model's prefix (0 for text models)."""
        condition, _ = self._condition(
            input_ids, attention_mask, encoder_outputs=encoder_outputs, input_features=input_features
        )
        tokens = _as_tensor(decoder_input_ids, self.device, torch.long)
        tokens = tokens.reshape(condition.rows, self.config.decoder.num_codebooks, -1)
        total = condition.prefix_length + tokens.shape[-1]
        positions = torch.arange(total, device=self.device)[None].expand(condition.rows, total)
        return self.decoder(tokens, condition.cross(self.decoder), positions, prefix=condition.prefix())

    # ---- generation ----------------------------------------------------------------------------------------------

    def _arguments(self, caller: str, input_ids, arguments: dict[str, Any]) -> tuple[tuple, GenerationOptions]:
        """A generation call's keyword arguments -> (the model inputs, in INPUTS' order; the resolved options)."""
        inputs = (input_ids, *(arguments.pop(name, None) for name in INPUTS[1:]))
        return inputs, GenerationOptions.resolve(caller, arguments, self.generation_config, self.limits)

    @torch.inference_mode()
    def generate(self, input_ids=None, *, generator: torch.Generator | None = None, **arguments) -> Tensor:
        """Generate music; returns audio [batch, channels, samples] float32 (codes [B, K, frames] if return_codes).

        options (generation/options.py): max_new_tokens, max_length, do_sample, guidance_scale, temperature, top_k,
        top_p, progress_bar, return_codes. Those not given default to the checkpoint's generation_config.json, then
        to the reference's defaults (greedy, max_length 20, top_k 50), exactly as transformers does.
        channels is config.decoder.audio_channels (2 for musicgen-stereo-*); input_values ([B, channels, T], or
        [B, T] for mono) with another channel count is mixed to the model's, as `encode_audio` says. Melody models
        take the melody as input_features (from MusicgenMelodyProcessor) and no audio prompt.
        """
        inputs, resolved = self._arguments("generate", input_ids, arguments)
        codes = generate_codes(self.decoder, self._request(inputs, resolved, generator), resolved.progress_bar)
        return codes if resolved.return_codes else self.decode_audio(codes)

    @torch.inference_mode()
    def prepare_request(self, input_ids=None, *, generator: torch.Generator | None = None, **arguments) -> Request:
        """What generate() would run, as a Request for generation/loop.py's generate_together, which steps several
        requests (each with its own settings and generator) together: each gets the tokens it gets alone."""
        inputs, resolved = self._arguments("generate", input_ids, arguments)
        return self._request(inputs, resolved, generator)

    def _request(self, inputs: tuple, options: GenerationOptions, generator) -> Request:
        condition, prompt = self._condition(*inputs)
        return Request(condition, prompt, options.new_tokens(prompt.shape[-1]), options.sampling, generator)

    @torch.inference_mode()
    def generate_long(self, input_ids=None, *, generator: torch.Generator | None = None, **arguments) -> Tensor:
        """Music of any length: `duration` seconds of new music after the audio prompt (if any), made in windows of
        at most `window` seconds (default 30, the training length), each later window prompted with the last
        (window - extend_stride) seconds of codes so far and making extend_stride new seconds (audiocraft's
        continuation; generation/long_form.py). Memory and time per second stay flat however long the music.
        Melody models hear the melody tiled along the music (this module's docstring).

        Returns audio [B, channels, (P + round(duration * frame_rate)) * hop] float32 (the prompt's P frames
        re-decoded, as generate() does), or the codes [B, K, P + frames] if return_codes. options
        (generation/options.py): duration (required), window, extend_stride, do_sample, guidance_scale,
        temperature, top_k, top_p, progress_bar, return_codes, defaulting as in generate(). Music that fits one
        window (prompt included) is exactly one generate() pass: the same tokens and the same audio.
        """
        inputs, resolved = self._arguments("generate_long", input_ids, arguments)
        codes = torch.cat(list(self._long_frames(inputs, resolved, generator)), dim=-1)  # [B, K, P + new frames]
        if resolved.return_codes:
            return codes
        return self.decode_audio(codes)

    @torch.inference_mode()
    def generate_stream(
        self, input_ids=None, *, generator: torch.Generator | None = None, **arguments
    ) -> Iterator[Tensor]:
        """generate_long() as it happens: yields audio chunks [B, channels, samples] of chunk_seconds each (default
        1; the last shorter; an audio prompt comes first, re-decoded) while the codes are still being made, each
        chunk once its frames and 0.1 s more are out. Joined, the chunks are generate_long()'s audio up to float
        rounding (the same chunked decoding with other chunk sizes: generation/streaming.py). Bad arguments raise
        here; the music is made as the iterator is consumed (one generation at a time per model).
        """
        inputs, resolved = self._arguments("generate_stream", input_ids, arguments)
        frames = self._long_frames(inputs, resolved, generator)
        chunk, channels = resolved.chunk_frames, self.config.decoder.audio_channels
        return decode_stream(self.audio_encoder, channels, frames, chunk_frames=chunk, first_frames=chunk)

    def _long_frames(self, inputs: tuple, options: GenerationOptions, generator) -> Iterator[Tensor]:
        """Encodes the prompts (now) and returns long_form.long_frames' iterator of codes."""
        condition, prompt = self._condition(*inputs)
        options.check_prompt_frames(prompt.shape[-1])
        window, stride = options.window_frames
        return long_frames(
            self.decoder,
            condition,
            prompt,
            options.new_frames,
            window,
            stride,
            options.sampling,
            options.progress_bar,
            generator,
        )


class MusicgenMelodyForConditionalGeneration(MusicgenForConditionalGeneration):
    """Same API as MusicgenForConditionalGeneration (from_pretrained, generate, generate_long, generate_stream,
    get_unconditional_inputs, save_pretrained); the melody comes as `input_features` from MusicgenMelodyProcessor,
    and there is no audio prompt (the reference's melody model takes none either)."""

    config_class = MusicgenMelodyConfig
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

    def _condition(
        self,
        input_ids=None,
        attention_mask=None,
        input_values=None,
        padding_mask=None,
        encoder_outputs=None,
        input_features=None,
    ) -> tuple[Condition, Tensor]:
        """The processor's inputs -> (melody condition, no audio prompt [B, K, 0])."""
        if input_values is not None or padding_mask is not None:
            raise ValueError(
                "melody models take no audio prompt to continue (input_values): give the melody as input_features "
                "from the processor, processor(audio=melody, sampling_rate=..., text=...)"
            )
        chroma = _as_tensor(input_features, self.device, self.conditioning_dtype)
        if chroma is not None and (chroma.dim() != 3 or chroma.shape[-1] != self.config.num_chroma):
            raise ValueError(
                f"input_features must be chroma [batch, frames, {self.config.num_chroma}] from the melody processor, "
                f"got shape {tuple(chroma.shape)}"
            )
        if chroma is not None and input_ids is None and encoder_outputs is None:  # a melody alone: null text
            null = self.get_unconditional_inputs(chroma.shape[0])
            encoder_outputs, attention_mask = null["encoder_outputs"], null["attention_mask"]
        text, text_mask = self._text_states(input_ids, attention_mask, encoder_outputs)
        B = text.shape[0]
        if chroma is not None and chroma.shape[0] != B:
            raise ValueError(f"{chroma.shape[0]} melodies for {B} text prompts: give one melody per text")
        null = torch.zeros(
            B, 1 if chroma is None else chroma.shape[1], self.config.num_chroma, device=text.device, dtype=text.dtype
        )
        null[:, :, 0] = 1
        chroma = null if chroma is None else chroma.to(text.dtype)
        if self.enc_to_dec_proj is not None:
            text = self.enc_to_dec_proj(text)
        if self.audio_enc_to_dec_proj is not None:
            chroma, null = self.audio_enc_to_dec_proj(chroma), self.audio_enc_to_dec_proj(null)
        codec = self.config.audio_encoder
        condition = MelodyCondition(
            chroma=chroma,
            null_chroma=null,
            text=text * text_mask[..., None].to(text.dtype),
            length=self.config.chroma_length,
            frame_rate=codec.frame_rate,
            chroma_rate=codec.sampling_rate / CHROMA_HOP,
        )
        return condition, torch.zeros(B, self.config.decoder.num_codebooks, 0, dtype=torch.long, device=self.device)


def model_class_for(config: MusicgenConfig) -> type[MusicgenForConditionalGeneration]:
    """The class that loads a checkpoint with this config: the melody one for melody checkpoints."""
    if isinstance(config, MusicgenMelodyConfig):
        return MusicgenMelodyForConditionalGeneration
    return MusicgenForConditionalGeneration


def load_model(name_or_path: str | os.PathLike, **options) -> MusicgenForConditionalGeneration:
    """The checkpoint `name_or_path` names, loaded by the class its config asks for (model_class_for) with
    from_pretrained's `options` (dtype, device, quantize, adapter, ...)."""
    from .loading.hub import read_config

    return model_class_for(read_config(name_or_path)).from_pretrained(name_or_path, **options)
