"""Configuration of a MusicGen checkpoint, read from its `config.json`.

Any transformers version writes these files; we read the keys we need, default the missing ones to the
reference defaults, and keep every key we were given so that `to_dict()` writes back what we read.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from .files import read_json

QUANTIZE = ("int8", "int4")  # the weight-only quantizations of the decoder's linear layers (--quantize)


class _SubConfig:
    """Shared behaviour: build from a dict (unknown keys kept aside), write back to a dict."""

    model_type: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "_SubConfig":
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        out["model_type"] = self.model_type
        return out


@dataclass
class T5Config(_SubConfig):
    """The frozen T5 text encoder (t5-base in the published checkpoints)."""

    model_type = "t5"
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    pad_token_id: int = 0
    eos_token_id: int = 1
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def dense_act_fn(self) -> str:
        """'relu', 'gelu' (exact) or 'gelu_new' (tanh approximation), as the reference reads feed_forward_proj."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]


@dataclass
class EncodecConfig(_SubConfig):
    """The EnCodec audio codec (32 kHz, mono, 4 codebooks in the published checkpoints)."""

    model_type = "encodec"
    target_bandwidths: list = field(default_factory=lambda: [1.5, 3.0, 6.0, 12.0, 24.0])
    sampling_rate: int = 24_000
    audio_channels: int = 1
    normalize: bool = False
    chunk_length_s: float | None = None
    overlap: float | None = None
    hidden_size: int = 128
    num_filters: int = 32
    num_residual_layers: int = 1
    upsampling_ratios: list = field(default_factory=lambda: [8, 5, 4, 2])
    norm_type: str = "weight_norm"
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "reflect"
    compress: int = 2
    num_lstm_layers: int = 2
    trim_right_ratio: float = 1.0
    codebook_size: int = 1024
    codebook_dim: int | None = None
    use_conv_shortcut: bool = True
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.codebook_dim is None:
            self.codebook_dim = self.hidden_size

    @property
    def hop_length(self) -> int:
        """Audio samples per code frame (640 for the 32 kHz model)."""
        return int(math.prod(self.upsampling_ratios))

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sampling_rate / self.hop_length)

    @property
    def num_quantizers(self) -> int:
        bits = math.ceil(math.log2(self.codebook_size))
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * bits))


@dataclass
class DecoderConfig(_SubConfig):
    """The MusicGen decoder LM over EnCodec tokens."""

    model_type = "musicgen_decoder"
    vocab_size: int = 2048
    max_position_embeddings: int = 2048
    num_hidden_layers: int = 24
    ffn_dim: int = 4096
    num_attention_heads: int = 16
    activation_function: str = "gelu"
    hidden_size: int = 1024
    scale_embedding: bool = False
    num_codebooks: int = 4
    audio_channels: int = 1
    pad_token_id: int = 2048
    bos_token_id: int = 2048
    decoder_start_token_id: int | None = None
    cross_attention_hidden_size: int | None = None
    extra: dict = field(default_factory=dict, repr=False)


@dataclass
class MusicgenConfig:
    """The whole checkpoint: `config.text_encoder`, `config.audio_encoder`, `config.decoder` as in the reference."""

    text_encoder: T5Config
    audio_encoder: EncodecConfig
    decoder: DecoderConfig
    extra: dict = field(default_factory=dict, repr=False)
    model_type = "musicgen"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MusicgenConfig":
        data = dict(data)
        for part in ("text_encoder", "audio_encoder", "decoder"):
            if not isinstance(data.get(part), dict):
                raise ValueError(f"config.json has no '{part}' section: this is not a MusicGen checkpoint config")
        text = T5Config.from_dict(data.pop("text_encoder"))
        audio = EncodecConfig.from_dict(data.pop("audio_encoder"))
        decoder = DecoderConfig.from_dict(data.pop("decoder"))
        return cls(text_encoder=text, audio_encoder=audio, decoder=decoder, extra=data)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "MusicgenConfig":
        return cls.from_dict(read_json(path))

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update(
            text_encoder=self.text_encoder.to_dict(),
            audio_encoder=self.audio_encoder.to_dict(),
            decoder=self.decoder.to_dict(),
            model_type=self.model_type,
            is_encoder_decoder=True,
        )
        out.setdefault("architectures", ["MusicgenForConditionalGeneration"])
        return out

    @property
    def sampling_rate(self) -> int:
        return self.audio_encoder.sampling_rate

    @property
    def needs_enc_to_dec_proj(self) -> bool:
        """The reference projects text states only when the widths differ (and no cross-attention width is set)."""
        return (
            self.text_encoder.hidden_size != self.decoder.hidden_size
            and self.decoder.cross_attention_hidden_size is None
        )


@dataclass
class GenerationConfig(_SubConfig):
    """Defaults of `generate`, from `generation_config.json`; unset keys fall back to the reference's global
    defaults (greedy, max_length 20, top_k 50), exactly as transformers does."""

    model_type = ""
    do_sample: bool = False
    guidance_scale: float | None = None
    max_length: int = 20
    max_new_tokens: int | None = None
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "GenerationConfig":
        return cls.from_dict(read_json(path))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("model_type")
        return {k: v for k, v in out.items() if v is not None}


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
        return cls(
            text_encoder=base.text_encoder,
            audio_encoder=base.audio_encoder,
            decoder=base.decoder,
            extra=base.extra,
            **chroma,
        )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(num_chroma=self.num_chroma, chroma_length=self.chroma_length)
        out["decoder"]["model_type"] = "musicgen_melody_decoder"
        if "architectures" not in self.extra:
            out["architectures"] = ["MusicgenMelodyForConditionalGeneration"]
        return out


def config_from_dict(data: dict[str, Any]) -> MusicgenConfig:
    """A checkpoint's config.json as the config of its kind: MusicgenMelodyConfig for melody checkpoints."""
    if data.get("model_type") == MusicgenMelodyConfig.model_type:
        return MusicgenMelodyConfig.from_dict(data)
    return MusicgenConfig.from_dict(data)
