"""from_pretrained as one flat recipe: config, files, read, convert, place. And save_pretrained, its inverse.

config    config.json (the kind of model it names must be the kind asked for) and generation_config.json
files     the weight files: one safetensors or pickle file, or the shards an index names
read      every tensor in the dtype the precision plan gives its part (int8/int4 weights quantized as they are read,
          so the float file is never held whole), a LoRA adapter's updates merged in first (adapters.py)
convert   the checkpoint's names and layouts to zhiyin's (weights.py)
place     the model built on the meta device, its tensors assigned, moved to its device; on the CPU (or
          quantized) the decoder's linear layers on zhiyin's kernels, every part in the plan's dtypes
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .. import heap
from ..backends import kernels
from ..backends.precision import place, plan
from ..config import GenerationConfig, MusicgenConfig, MusicgenMelodyConfig
from ..files import write_atomic, write_json
from ..modules.encodec import IGNORED_CHECKPOINT_SUFFIXES
from . import adapters, hub, weights
from .devices import parse_device, parse_dtype


def load_pretrained(
    model_class: type[nn.Module],
    name_or_path: str | os.PathLike,
    dtype=None,
    device=None,
    quantize: str | None = None,
    adapter: str | os.PathLike | None = None,
    **hub_kwargs,
) -> nn.Module:
    """A model_class (MusicgenForConditionalGeneration or its melody kind) with a checkpoint's weights (and a LoRA
    adapter's updates merged into them); the arguments as from_pretrained takes them."""
    dtype = parse_dtype(dtype)
    device = parse_device(device) if device is not None else None
    kernels.check_quantize(quantize)

    # config
    config = hub.read_config(name_or_path, **hub_kwargs)
    _check_kind(model_class, config, str(name_or_path))
    generation_path = hub.resolve_file(name_or_path, "generation_config.json", required=False, **hub_kwargs)
    generation_config = GenerationConfig.from_json_file(generation_path) if generation_path else None

    # files
    files = _weight_files(name_or_path, hub_kwargs)
    lora = adapters.read_adapter(adapter) if adapter is not None else None

    # read and convert
    wanted = None if dtype == "auto" else dtype or torch.float32
    precision = plan(device, wanted, quantize) if wanted is not None else None  # which part in which dtype
    quantized = (lambda key: quantize if weights.is_decoder_linear(key) else None) if quantize else None
    on_cpu = device is None or device.type == "cpu"  # the decoder's weights then go onto huge pages (precision.place)
    with heap.large_tensors_mapped():
        merge = lora and lora.merge
        state = weights.read_state_dict(files, precision.of if precision else None, quantized, merge, mapped=not on_cpu)
        state = weights.from_checkpoint(state)
    if lora is not None:
        lora.check_all_merged()
    floats = [k for k, v in state.items() if v.is_floating_point() and not weights.is_quantization_scale(k, state)]
    if precision is None:  # dtype 'auto': the stored one (the first, if they are mixed)
        precision = plan(device, state[floats[0]].dtype, quantize)
    for key in floats:
        state[key] = state[key].to(precision.of(key))
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_CHECKPOINT_SUFFIXES)}

    # place
    on_kernels = on_cpu or quantize is not None
    with torch.device("meta"):
        model = model_class(config, generation_config).to(dtype=precision.conditioning)
        model.decoder.to(dtype=precision.weights)
        if on_kernels:
            kernels.use_kernel_linears(model.decoder, quantize)  # the layers the weights (int8 or float) load into
    if model.enc_to_dec_proj is None:
        state.pop("enc_to_dec_proj.weight", None), state.pop("enc_to_dec_proj.bias", None)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"the weights of '{name_or_path}' do not fit its config.json: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    del state
    if device is not None:
        model.to(device)
    place(model.decoder, precision)
    if on_cpu:
        kernels.use_kernel_codec(model.audio_encoder)
    model.precision = precision
    heap.return_freed_memory()
    return model.eval()


def _check_kind(model_class: type[nn.Module], config: MusicgenConfig, name: str) -> None:
    melody = isinstance(config, MusicgenMelodyConfig)
    if melody and model_class.config_class is not MusicgenMelodyConfig:
        raise ValueError(
            f"'{name}' is a melody checkpoint (musicgen_melody): load it with "
            "zhiyin.MusicgenMelodyForConditionalGeneration.from_pretrained"
        )
    if not melody and model_class.config_class is MusicgenMelodyConfig:
        raise ValueError(
            f"'{name}' is not a melody checkpoint (model_type "
            f"{config.extra.get('model_type')!r}): load it with zhiyin.MusicgenForConditionalGeneration"
        )


def _weight_files(name_or_path, hub_kwargs) -> list[str]:
    for filename in weights.WEIGHT_FILES:
        path = hub.resolve_file(name_or_path, filename, required=False, **hub_kwargs)
        if path is None:
            continue
        if filename.endswith(".index.json"):
            return [hub.resolve_file(name_or_path, shard, **hub_kwargs) for shard in weights.shard_names(path)]
        return [path]
    raise hub.ModelNotFoundError(f"'{name_or_path}' has no weights: expected one of {', '.join(weights.WEIGHT_FILES)}")


def save_pretrained(model: nn.Module, folder: str | os.PathLike) -> None:
    """Write config.json, generation_config.json and model.safetensors in the layout transformers loads."""
    from safetensors.torch import save_file

    state = model.state_dict()
    if any(v.dtype in (torch.int8, torch.uint8) for v in state.values()):
        raise ValueError("cannot save a quantized model: save the float checkpoint (load it without quantize)")
    os.makedirs(folder, exist_ok=True)
    normed = set()
    if model.config.audio_encoder.norm_type == "weight_norm":
        normed = {k for k in state if k.startswith("audio_encoder.") and k.endswith("conv.weight")}
    if "text_encoder.shared.weight" in state:
        state["text_encoder.encoder.embed_tokens.weight"] = state["text_encoder.shared.weight"]
    tensors = weights.to_checkpoint(state, normed)
    # tied tensors must not share storage in a safetensors file
    tensors["text_encoder.encoder.embed_tokens.weight"] = tensors["text_encoder.encoder.embed_tokens.weight"].clone()
    write_atomic(os.path.join(folder, "model.safetensors"), lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    config = model.config.to_dict()
    config["dtype"] = str(model.dtype).removeprefix("torch.")
    write_json(os.path.join(folder, "config.json"), config)
    write_json(os.path.join(folder, "generation_config.json"), model.generation_config.to_dict())
