"""`MusicgenForConditionalGeneration`: T5 text encoder + MusicGen decoder + EnCodec, with the Hugging Face-style
`from_pretrained` / `generate` / `get_unconditional_inputs` / `save_pretrained`.

    text ──T5──> [B, S, 768] ──enc_to_dec_proj──> [B, S, D] ──cross-attention──┐
    audio prompt ──EnCodec.encode──> codes [B, K, P] ──delay pattern──> decoder ─┴─> codes [B, K, F]
    codes ──EnCodec.decode──> audio [B, channels, F * 640]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import heap, hub, kernels, weights
from .config import GenerationConfig, MusicgenConfig
from .decoder import CrossKV, MusicgenDecoder
from .delay_pattern import codebook_delays, num_frames
from .encodec import IGNORED_CHECKPOINT_SUFFIXES, EncodecModel
from .generation import generate_codes
from .inputs import BatchFeature
from .long_form import EXTEND_STRIDE_SECONDS, WINDOW_SECONDS, long_frames, plan_windows
from .precision import Precision, plan
from .sampling_settings import SamplingSettings
from .streaming import decode_stream
from .t5 import T5Encoder

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype '{dtype}': use one of {', '.join(_DTYPES)} (or 'auto' for the checkpoint's)")
    return _DTYPES[name]


def parse_device(device: str | torch.device) -> torch.device:
    """torch.device(device), or a ValueError that says what to do where that device is not on this machine."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device '{device}': use cpu, cuda, cuda:1, ... ({error})") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"device '{device}': this machine's PyTorch ({torch.__version__}, {build}) sees no CUDA GPU; "
                             "use cpu, or install a CUDA build of PyTorch on a machine with an NVIDIA GPU")
        if (device.index or 0) >= count:
            raise ValueError(f"device '{device}': there are {count} CUDA GPUs here (cuda:0 to cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device '{device}': Apple's MPS is not available here; use cpu")
    return device


def _as_tensor(value: Any, device: torch.device, dtype: torch.dtype | None = None) -> Tensor | None:
    if value is None:
        return None
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    return tensor.to(device=device, dtype=dtype) if dtype is not None else tensor.to(device)


class MusicgenForConditionalGeneration(nn.Module):
    def __init__(self, config: MusicgenConfig, generation_config: GenerationConfig | None = None):
        super().__init__()
        self.config = config
        self.generation_config = generation_config or GenerationConfig()
        self.text_encoder = T5Encoder(config.text_encoder)
        self.enc_to_dec_proj = (
            nn.Linear(config.text_encoder.hidden_size, config.decoder.hidden_size) if config.needs_enc_to_dec_proj else None
        )
        self.audio_encoder = EncodecModel(config.audio_encoder)
        self.decoder = MusicgenDecoder(config.decoder)
        self.precision: Precision | None = None  # the plan from_pretrained loaded it by

    @property
    def device(self) -> torch.device:
        return self.decoder.final_norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model was loaded in: its decoder's weights' (int8 ones aside). Its other parts may compute
        wider (precision.py: on the CPU a bfloat16 decoder's activations are float32, and T5 and EnCodec stay
        float32 where the CPU has no native bfloat16)."""
        return self.precision.weights if self.precision is not None else self.conditioning_dtype

    @property
    def conditioning_dtype(self) -> torch.dtype:
        """The dtype T5, the text projection and EnCodec hold and compute in."""
        return self.text_encoder.shared.weight.dtype

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
    ) -> "MusicgenForConditionalGeneration":
        """Load a checkpoint from a local folder or a hub id (e.g. 'facebook/musicgen-small').

        dtype: float32 (default), bfloat16, float16, or 'auto' for the dtype the weights are stored in.
        quantize: 'int8' stores the decoder's linear weights as int8 with a scale per output row (weight-only).
        On the CPU the decoder's linear layers run in zhiyin's weight-streaming kernels (see kernels.py).
        """
        dtype = parse_dtype(dtype if dtype is not None else torch_dtype)
        device = parse_device(device) if device is not None else None
        hub_kwargs = dict(revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only)
        config_path = hub.resolve_file(name_or_path, "config.json", **hub_kwargs)
        config = cls._read_config(hub.read_json(config_path), str(name_or_path))
        generation_path = hub.resolve_file(name_or_path, "generation_config.json", required=False, **hub_kwargs)
        generation_config = GenerationConfig.from_json_file(generation_path) if generation_path else None

        files = _weight_files(name_or_path, hub_kwargs)
        kernels.check_quantize(quantize)
        wanted = None if dtype == "auto" else dtype or torch.float32
        precision = plan(device, wanted, quantize) if wanted is not None else None  # which part in which dtype
        # int8: the decoder's linear weights are quantized as they are read, so the float file is never held whole
        quantized = weights.is_decoder_linear if quantize == "int8" else None
        with heap.large_tensors_mapped():
            state = weights.read_state_dict(files, precision.of if precision else None, quantized)
            state = weights.from_checkpoint(state)
        floats = [k for k, v in state.items() if v.is_floating_point() and not weights.is_int8_scale(k, state)]
        if precision is None:  # dtype 'auto': the stored one (the first, if they are mixed)
            precision = plan(device, state[floats[0]].dtype, quantize)
        for key in floats:
            state[key] = state[key].to(precision.of(key))
        on_cpu = device is None or device.type == "cpu"
        with torch.device("meta"):
            model = cls(config, generation_config).to(dtype=precision.conditioning)
            model.decoder.to(dtype=precision.weights)
            if on_cpu or quantize is not None:
                kernels.stream_linears(model.decoder, quantize)  # the layers the weights (int8 or float) load into
        model._load_converted(state, str(name_or_path))
        model.precision = precision
        del state
        if device is not None:
            model.to(device)
        if on_cpu or quantize is not None:
            kernels.accelerate_decoder(model.decoder, quantize, precision)
        return model.eval()

    @classmethod
    def _read_config(cls, raw: dict, name: str) -> MusicgenConfig:
        if raw.get("model_type") == "musicgen_melody":
            raise ValueError(
                f"'{name}' is a melody checkpoint (musicgen_melody): load it with "
                "zhiyin.MusicgenMelodyForConditionalGeneration.from_pretrained"
            )
        return MusicgenConfig.from_dict(raw)

    def _load_converted(self, state: dict[str, Tensor], name: str) -> None:
        state = {k: v for k, v in state.items() if not k.endswith(IGNORED_CHECKPOINT_SUFFIXES)}
        if self.enc_to_dec_proj is None:
            state.pop("enc_to_dec_proj.weight", None), state.pop("enc_to_dec_proj.bias", None)
        result = self.load_state_dict(state, strict=False, assign=True)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"the weights of '{name}' do not fit its config.json: "
                f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write config.json, generation_config.json and model.safetensors in the layout transformers loads."""
        from safetensors.torch import save_file

        state = self.state_dict()
        if any(v.dtype == torch.int8 for v in state.values()):
            raise ValueError("cannot save an int8-quantized model: save the float checkpoint (load it without quantize)")
        os.makedirs(folder, exist_ok=True)
        normed = set()
        if self.config.audio_encoder.norm_type == "weight_norm":
            normed = {k for k in state if k.startswith("audio_encoder.") and k.endswith("conv.weight")}
        if "text_encoder.shared.weight" in state:
            state["text_encoder.encoder.embed_tokens.weight"] = state["text_encoder.shared.weight"]
        tensors = weights.to_checkpoint(state, normed)
        # tied tensors must not share storage in a safetensors file
        tensors["text_encoder.encoder.embed_tokens.weight"] = tensors["text_encoder.encoder.embed_tokens.weight"].clone()
        _write_atomic(os.path.join(folder, "model.safetensors"), lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        config = self.config.to_dict()
        config["dtype"] = str(self.dtype).removeprefix("torch.")
        _write_atomic(os.path.join(folder, "config.json"), lambda p: _dump_json(config, p))
        _write_atomic(
            os.path.join(folder, "generation_config.json"), lambda p: _dump_json(self.generation_config.to_dict(), p)
        )

    # ---- generation ----------------------------------------------------------------------------------------------

    def get_unconditional_inputs(self, num_samples: int = 1, max_new_tokens: int | None = None) -> BatchFeature:
        """Null text inputs for unconditional generation (guidance off), as the reference gives them; with
        `max_new_tokens` (as transformers' documentation passes it) that length goes along to `generate`."""
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a whole number of at least 1, got {num_samples!r}")
        hidden = torch.zeros(num_samples, 1, self.config.text_encoder.hidden_size, device=self.device,
                             dtype=self.conditioning_dtype)
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
                raise ValueError(f"this model takes {channels}-channel audio prompts, got {input_values.shape[1]} channels")
        input_values = input_values.to(self.audio_encoder.dtype)
        if channels == 1:
            return self.audio_encoder.encode(input_values, padding_mask)
        left = self.audio_encoder.encode(input_values[:, :1], padding_mask)
        right = self.audio_encoder.encode(input_values[:, 1:], padding_mask)
        return torch.stack([left, right], dim=2).flatten(1, 2)  # [B, 2K', F]: L1, R1, L2, R2, ...

    @torch.inference_mode()
    def decode_audio(self, codes: Tensor) -> Tensor:
        """Codes [B, K, frames] -> audio [B, channels, samples] float32."""
        if self.config.decoder.audio_channels == 1:
            return self.audio_encoder.decode(codes).float()
        left = self.audio_encoder.decode(codes[:, 0::2])
        right = self.audio_encoder.decode(codes[:, 1::2])
        return torch.cat([left, right], dim=1).float()

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
                raise ValueError("input_ids must be [batch, tokens] with at least one token: use the processor on your text")
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

    def _cross_attention_inputs(self, text: Tensor, text_mask: Tensor) -> CrossKV:
        """Text states [B, S, text_hidden] -> per-layer cross-attention keys/values (projected, padding zeroed)."""
        if self.enc_to_dec_proj is not None:
            text = self.enc_to_dec_proj(text)
        text = text.to(self.decoder.final_norm.weight.dtype)
        text = text * text_mask[..., None].to(text.dtype)
        return self.decoder.project_text(text, text_mask)

    @torch.inference_mode()
    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None) -> Tensor:
        """Decoder logits [B, K, T, V] for decoder_input_ids [B, K, T] (or [B*K, T] as the reference takes them)."""
        text, text_mask = self._text_states(input_ids, attention_mask, encoder_outputs)
        tokens = _as_tensor(decoder_input_ids, self.device, torch.long)
        tokens = tokens.reshape(text.shape[0], self.config.decoder.num_codebooks, -1)
        return self.decoder(tokens, self._cross_attention_inputs(text, text_mask), start=0)

    def _settings(self, kw: dict[str, Any]) -> SamplingSettings:
        g = self.generation_config

        def pick(name):
            value = kw.get(name)
            return value if value is not None else getattr(g, name)

        settings = SamplingSettings(
            do_sample=bool(pick("do_sample")),
            temperature=pick("temperature"),
            top_k=pick("top_k"),
            top_p=pick("top_p"),
            guidance_scale=pick("guidance_scale"),
        )
        settings.validate()
        return settings

    _LONGER_MUSIC = "for longer music use generate_long(..., duration=seconds)"

    def _new_tokens(self, max_new_tokens: int | None, max_length: int | None, prompt_frames: int) -> int:
        """max_new_tokens as the reference resolves it (argument, generation_config, then max_length), checked."""
        if max_new_tokens is None:
            max_new_tokens = self.generation_config.max_new_tokens
        if max_new_tokens is None:
            max_new_tokens = (max_length or self.generation_config.max_length) - 1 - prompt_frames
        delays = codebook_delays(self.config.decoder.num_codebooks, self.config.decoder.audio_channels)
        if max_new_tokens <= max(delays):
            raise ValueError(
                f"max_new_tokens must be more than {max(delays)} (the codebook delay) to make any audio, got {max_new_tokens}"
            )
        frames = num_frames(1 + prompt_frames + max_new_tokens, delays)
        if frames > self.max_frames():
            rate = self.config.audio_encoder.frame_rate
            raise ValueError(
                f"{frames / rate:.1f} s of audio (prompt included) is longer than one pass of this model can make "
                f"(at most {self.max_frames() / rate:.1f} s): {self._LONGER_MUSIC}"
            )
        return max_new_tokens

    def _check_prompt_length(self, samples: int) -> None:
        codec = self.config.audio_encoder
        if math.ceil(samples / codec.hop_length) >= self.max_frames():
            rate, most = codec.sampling_rate, self.max_frames() / codec.frame_rate
            raise ValueError(
                f"the audio prompt is {samples / rate:.1f} s long, and one pass of this model holds at most {most:.1f} s "
                f"with what follows it: keep only its last seconds, e.g. input_values[..., -{10 * rate}:] for 10 s"
            )

    def max_frames(self) -> int:
        """The most audio frames one pass can make: the decoder's positions less the start token and delays."""
        c = self.config.decoder
        return num_frames(c.max_position_embeddings, codebook_delays(c.num_codebooks, c.audio_channels))

    @torch.inference_mode()
    def generate(
        self,
        input_ids=None,
        attention_mask=None,
        input_values=None,
        padding_mask=None,
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
        """Generate music; returns audio [batch, channels, samples] float32 (codes [B, K, frames] if return_codes).

        Arguments not given default to the checkpoint's generation_config.json, then to the reference's
        defaults (greedy, max_length 20, top_k 50), exactly as transformers does.
        channels is config.decoder.audio_channels (2 for musicgen-stereo-*); input_values ([B, channels, T], or
        [B, T] for mono) with another channel count is mixed to the model's, as `encode_audio` says.
        """
        if "input_features" in unknown:
            raise ValueError(
                "this model has no melody input (input_features): melody conditioning needs a melody checkpoint such "
                "as facebook/musicgen-melody, loaded with zhiyin.MusicgenMelodyForConditionalGeneration"
            )
        if unknown:
            raise ValueError(f"generate() got arguments it does not know: {', '.join(sorted(unknown))}")
        settings = self._settings(
            dict(do_sample=do_sample, guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p)
        )
        cross, prompt = self._prepare(input_ids, attention_mask, input_values, padding_mask, encoder_outputs, settings)
        max_new_tokens = self._new_tokens(max_new_tokens, max_length, prompt.shape[-1])
        codes = generate_codes(self.decoder, cross, prompt, max_new_tokens, settings, progress_bar, generator)
        return codes if return_codes else self.decode_audio(codes)

    def _prepare(
        self, input_ids, attention_mask, input_values, padding_mask, encoder_outputs, settings: SamplingSettings
    ) -> tuple[CrossKV, Tensor]:
        """The decoder's cross-attention inputs (2B rows with guidance) and the audio prompt's codes [B, K, P]."""
        device, K = self.device, self.config.decoder.num_codebooks
        text, text_mask = self._text_states(input_ids, attention_mask, encoder_outputs)
        B = text.shape[0]

        if input_values is not None:
            audio = _as_tensor(input_values, device, torch.float32)
            if audio.dim() == 2:
                audio = audio[:, None]
            if audio.shape[0] != B:
                raise ValueError(f"{audio.shape[0]} audio prompts for {B} text prompts: give one audio prompt per text")
            self._check_prompt_length(audio.shape[-1])  # before the work of encoding it
            prompt = self.encode_audio(audio, _as_tensor(padding_mask, device))
        else:
            prompt = torch.zeros(B, K, 0, dtype=torch.long, device=device)

        # classifier-free guidance: a second batch half with null text (zero states, zero mask)
        if settings.uses_guidance:
            text = torch.cat([text, torch.zeros_like(text)])
            text_mask = torch.cat([text_mask, torch.zeros_like(text_mask)])
        return self._cross_attention_inputs(text, text_mask), prompt

    @torch.inference_mode()
    def generate_long(
        self,
        input_ids=None,
        attention_mask=None,
        input_values=None,
        padding_mask=None,
        encoder_outputs=None,
        *,
        duration: float,
        window: float = WINDOW_SECONDS,
        extend_stride: float = EXTEND_STRIDE_SECONDS,
        progress_bar: bool = False,
        return_codes: bool = False,
        generator: torch.Generator | None = None,
        **sampling,
    ) -> Tensor:
        """Music of any length: `duration` seconds of new music after the audio prompt (if any), made in windows of
        at most `window` seconds (default 30, the training length), each later window prompted with the last
        (window - extend_stride) seconds of codes so far and making extend_stride new seconds (audiocraft's
        continuation; see long_form.py). Memory and time per second stay flat however long the music.

        Returns audio [B, channels, (P + round(duration * frame_rate)) * hop] float32 (the prompt's P frames
        re-decoded, as generate() does), or the codes [B, K, P + frames] if return_codes. sampling: do_sample,
        guidance_scale, temperature, top_k, top_p, defaulting as in generate(). Music that fits one window (prompt
        included) is exactly one generate() pass: the same tokens and the same audio.
        """
        frames = self._long_frames(
            (input_ids, attention_mask, input_values, padding_mask, encoder_outputs),
            duration, window, extend_stride, progress_bar, generator, sampling, "generate_long",
        )
        codes = torch.cat(list(frames), dim=-1)  # [B, K, P + new frames]
        if return_codes:
            return codes
        codec = self.config.audio_encoder
        pieces = decode_stream(self.decode_audio, [codes], round(WINDOW_SECONDS * codec.frame_rate), codec.hop_length)
        return torch.cat(list(pieces), dim=-1)  # decoded in 30 s pieces: bounded memory

    @torch.inference_mode()
    def generate_stream(
        self,
        input_ids=None,
        attention_mask=None,
        input_values=None,
        padding_mask=None,
        encoder_outputs=None,
        *,
        duration: float,
        chunk_seconds: float = 1.0,
        window: float = WINDOW_SECONDS,
        extend_stride: float = EXTEND_STRIDE_SECONDS,
        progress_bar: bool = False,
        generator: torch.Generator | None = None,
        **sampling,
    ) -> Iterator[Tensor]:
        """generate_long() as it happens: yields audio chunks [B, channels, samples] of chunk_seconds each (the last
        shorter; an audio prompt comes first, re-decoded) while the codes are still being made, each chunk once its
        frames and 0.1 s more are out. Joined, the chunks are generate_long()'s audio up to the overlapping chunked
        decoding (streaming.py: 141 dB SNR against one decode, float rounding, on the test checkpoint). Bad arguments
        raise here; the music is made as the iterator is consumed (one generation at a time per model).
        """
        rate = self.config.audio_encoder.frame_rate
        chunk = round(chunk_seconds * rate)
        if chunk < 1:
            raise ValueError(f"chunk_seconds must be at least one frame (1/{rate} s), got {chunk_seconds:g}")
        frames = self._long_frames(
            (input_ids, attention_mask, input_values, padding_mask, encoder_outputs),
            duration, window, extend_stride, progress_bar, generator, sampling, "generate_stream",
        )
        return decode_stream(self.decode_audio, frames, chunk, self.config.audio_encoder.hop_length)

    def _long_frames(
        self, inputs, duration, window, extend_stride, progress_bar, generator, sampling, caller
    ) -> Iterator[Tensor]:
        """Checks the arguments, encodes the prompts, and returns long_form.long_frames' iterator of codes."""
        unknown = sampling.keys() - {"do_sample", "guidance_scale", "temperature", "top_k", "top_p"}
        if unknown:
            raise ValueError(f"{caller}() got arguments it does not know: {', '.join(sorted(unknown))}")
        settings = self._settings(sampling)
        rate = self.config.audio_encoder.frame_rate
        if not isinstance(duration, (int, float)) or not math.isfinite(duration):
            raise ValueError(f"duration must be a finite number of seconds, got {duration!r}")
        new_frames = round(duration * rate)
        if new_frames < 1:
            raise ValueError(f"duration must be more than 0 seconds (at least one frame, 1/{rate} s), got {duration:g}")
        condition, prompt = self._window_conditions(inputs, settings)
        W, S = plan_windows(window, extend_stride, rate, self.max_frames(), prompt.shape[-1])
        return long_frames(condition, prompt, new_frames, W, S, settings, progress_bar, generator)

    def _window_conditions(self, inputs, settings: SamplingSettings):
        """(condition, prompt codes [B, K, P]) for long_form.long_frames: every window of a text-only model has the
        same decoder and cross-attention inputs, wherever it starts."""
        cross, prompt = self._prepare(*inputs, settings)
        return (lambda start: (self.decoder, cross)), prompt


def _weight_files(name_or_path, hub_kwargs) -> list[str]:
    for filename in weights.WEIGHT_FILES:
        path = hub.resolve_file(name_or_path, filename, required=False, **hub_kwargs)
        if path is None:
            continue
        if filename.endswith(".index.json"):
            return [hub.resolve_file(name_or_path, shard, **hub_kwargs) for shard in weights.shard_names(path)]
        return [path]
    raise hub.ModelNotFoundError(
        f"'{name_or_path}' has no weights: expected one of {', '.join(weights.WEIGHT_FILES)}"
    )


def _dump_json(data: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def _write_atomic(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
