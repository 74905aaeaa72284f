"""Random-weight MusicGen checkpoints made with transformers (the oracle), in the file layouts found in the wild.

    make_checkpoint(folder, shape="tiny", layout="safetensors") -> the transformers model it saved

layouts: "safetensors" (current transformers: parametrizations.weight.original0/1, no tied T5 embedding key),
         "bin-2023" (pytorch_model.bin with weight_g/weight_v keys and the tied T5 embedding, as published in 2023),
         "sharded" (model-0000N-of-0000M.safetensors + index), "sharded-bin" (pytorch_model-*.bin + index).
shapes:  "tiny" (fast), "tiny-noproj" (text width = decoder width: no enc_to_dec_proj), "tiny-stereo" (as the
         musicgen-stereo-* repos: decoder audio_channels 2 with 8 codebooks L1,R1,L2,R2,..., the mono 4-codebook
         EnCodec, preprocessor feature_size 2), "small" (the published musicgen-small shapes: decoder 1024 x 24
         layers x 16 heads, 4 x 2048 codebooks, t5-base, EnCodec 32 kHz).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tokenizer_fixture import make_t5_like_tokenizer

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"


def _configs(shape: str, text_vocab: int):
    from transformers import EncodecConfig, MusicgenDecoderConfig, T5Config

    if shape == "small":  # the published musicgen-small shapes, as zhiyin's random checkpoints have them
        from zhiyin.random_checkpoint import published_config

        config = published_config("small")
        return (
            T5Config(**config["text_encoder"]),
            EncodecConfig(**config["audio_encoder"]),
            MusicgenDecoderConfig(**config["decoder"]),
        )
    width = 32 if shape == "tiny-noproj" else 48
    t5 = T5Config(vocab_size=text_vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    codec = EncodecConfig(
        sampling_rate=32000,
        upsampling_ratios=[8, 5, 4, 4],
        num_filters=8,
        hidden_size=16,
        codebook_size=64,
        codebook_dim=16,
        target_bandwidths=[1.2],
        use_causal_conv=False,
        use_conv_shortcut=False,  # 4 codebooks of 6 bits
    )
    stereo = shape == "tiny-stereo"  # as musicgen-stereo-*: the decoder has 2 x 4 codebooks, EnCodec stays mono
    decoder = MusicgenDecoderConfig(
        vocab_size=64,
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=96,
        num_codebooks=8 if stereo else 4,
        audio_channels=2 if stereo else 1,
        pad_token_id=64,
        bos_token_id=64,
        decoder_start_token_id=64,
    )
    return t5, codec, decoder


def build_reference(shape: str = "tiny", text_vocab: int = 200, seed: int = 0):
    """A transformers MusicGen with random weights, its EnCodec codebooks filled (transformers leaves them 0)."""
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

    torch.manual_seed(seed)
    t5, codec, decoder = _configs(shape, text_vocab)
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5, audio_encoder=codec, decoder=decoder))
    with torch.no_grad():
        # transformers leaves the codebooks at zero; fill them like a k-means init on real music latents, so
        # that audio prompts use many codes: each layer's entries are frames of the residual left by the ones before
        residual = model.audio_encoder.encoder(_real_music(codec.sampling_rate))[0].T  # [frames, D]
        for layer in model.audio_encoder.quantizer.layers:
            embed = layer.codebook.embed
            picks = torch.randint(0, residual.shape[0], (embed.shape[0],))
            embed.copy_(residual[picks] + 0.1 * residual.std() * torch.randn_like(embed))
            nearest = torch.cdist(residual, embed).argmin(dim=1)
            residual = residual - embed[nearest]
    pad = decoder.pad_token_id
    g = model.generation_config
    g.do_sample, g.guidance_scale, g.max_length = True, 3.0, 1500
    g.pad_token_id = g.bos_token_id = g.decoder_start_token_id = pad
    return model.eval()


def _real_music(sampling_rate: int, seconds: float = 4.0) -> torch.Tensor:
    """[1, 1, samples] of real music (the string orchestra clip, which no test encodes) at `sampling_rate`."""
    import soundfile
    import soxr

    data, rate = soundfile.read(
        SHARED_AUDIO / "brahms_hungarian_dance_5_strings.ogg", dtype="float32", frames=int(seconds * 22050)
    )
    if data.ndim > 1:
        data = data.mean(axis=1)
    return torch.from_numpy(soxr.resample(data, rate, sampling_rate)).float()[None, None]


def _rename_2023(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        out[key] = value.contiguous()
    return out


def _write_bin_shards(state: dict, folder: Path, shards: int) -> None:
    keys = sorted(state)
    weight_map = {}
    names = [f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin" for i in range(shards)]
    for i, name in enumerate(names):
        part = {k: state[k] for k in keys[i::shards]}
        torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
    index = {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
        "weight_map": weight_map,
    }
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


def make_checkpoint(folder, shape: str = "tiny", layout: str = "safetensors", seed: int = 0):
    """Write a complete checkpoint folder (weights, configs, tokenizer, preprocessor); return the reference model."""
    from transformers import EncodecFeatureExtractor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = make_t5_like_tokenizer(folder)
    model = build_reference(shape, text_vocab=32128 if shape == "small" else vocab, seed=seed)
    channels = model.config.decoder.audio_channels
    EncodecFeatureExtractor(
        feature_size=channels,
        sampling_rate=model.config.audio_encoder.sampling_rate,
        padding_side="left",
        padding_value=0.0,
        return_attention_mask=True,
    ).save_pretrained(folder)

    if layout == "safetensors":
        model.save_pretrained(folder)
    elif layout == "sharded":
        model.save_pretrained(folder, max_shard_size="100KB" if shape.startswith("tiny") else "500MB")
    elif layout in ("bin-2023", "sharded-bin"):
        model.config.save_pretrained(folder)
        model.generation_config.save_pretrained(folder)
        state = _rename_2023(model.state_dict())
        state["text_encoder.encoder.embed_tokens.weight"] = state["text_encoder.shared.weight"]
        if layout == "bin-2023":
            torch.save(state, folder / "pytorch_model.bin")
        else:
            _write_bin_shards(state, folder, shards=3)
    else:
        raise ValueError(layout)
    return model
