"""Reading checkpoint weights: safetensors (single or sharded) or pytorch_model.bin, and folding weight norm.

Weight-normed convolutions appear under two spellings in the wild:
  2023 checkpoints:     <conv>.weight_g, <conv>.weight_v
  current transformers: <conv>.parametrizations.weight.original0 (= g), ...original1 (= v)
Both are folded at load into one plain `<conv>.weight = g * v / ||v||` (norm over every dim but the first).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch

from ..files import DamagedFileError, read_json
from ..modules.quantization import QUANTIZED_PARTS, concatenate_int4, quantize_weight

_G_SUFFIXES = (".weight_g", ".parametrizations.weight.original0")
_V_SUFFIXES = (".weight_v", ".parametrizations.weight.original1")


def fold_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a state dict where every (g, v) weight-norm pair is replaced by `<prefix>.weight`."""
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        for kind, suffixes in (("g", _G_SUFFIXES), ("v", _V_SUFFIXES)):
            suffix = next((s for s in suffixes if key.endswith(s)), None)
            if suffix is not None:
                pending.setdefault(key[: -len(suffix)], {})[kind] = value
                break
        else:
            out[key] = value
    for prefix, pair in pending.items():
        if set(pair) != {"g", "v"}:
            raise ValueError(f"checkpoint has half a weight-norm pair for '{prefix}' (found only {sorted(pair)})")
        g, v = pair["g"].float(), pair["v"].float()
        norm = v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
        out[prefix + ".weight"] = (g * v / norm).to(pair["v"].dtype)
    return out


# ---- reading checkpoint files ---------------------------------------------------------------------------------

WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def read_state_dict(
    paths: list[str],
    dtype: torch.dtype | Callable[[str], torch.dtype] | None = None,
    quantized: Callable[[str], str | None] | None = None,
    adapted: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    mapped: bool = True,
) -> dict[str, torch.Tensor]:
    """Read weight files (all safetensors or all .bin) into one state dict.

    Safetensors files are memory-mapped: no copy is made until a tensor is used. With `dtype` (floating-point
    tensors converted to it; a function of the key gives each its own) or `quantized`, they are read tensor by
    tensor instead, so that loading never holds two copies of the weights. `quantized(key)` names the weights to
    quantize as they are read, and how ('int8', 'int4' or None; quantization.py's quantize_weight: the weight's
    scales and groups are stored under `part_key(key, 'scale')` and so on): a safetensors file is never held
    whole (a memory mapping would keep its pages resident as long as any tensor of it lives, as happens with .bin
    files, which torch.load maps). `adapted(key, tensor)` gives each tensor as it is to be kept, before it is
    converted or quantized (adapters.py's merge of a LoRA adapter). mapped=False: no file is memory-mapped, every
    tensor comes in memory of its own (for a caller that copies some of them elsewhere, as the CPU's huge pages
    take the decoder's weights: a mapping would keep their pages resident beside the copies).
    """
    state: dict[str, torch.Tensor] = {}
    dtype_of = dtype if callable(dtype) else (lambda key: dtype)  # a dtype for every float tensor, or one per key

    def converted(key: str, stored: torch.dtype) -> bool:  # read only to be quantized or converted
        wanted = dtype_of(key)
        return (quantized is not None and quantized(key) is not None) or (
            wanted is not None and stored.is_floating_point and stored != wanted
        )

    def put(key: str, tensor: torch.Tensor, scratch: bool = False) -> None:  # scratch: a buffer reused after this
        if adapted is not None:
            tensor = adapted(key, tensor)
        how = quantized(key) if quantized is not None else None
        if how is not None:
            state.update((part_key(key, part), t) for part, t in quantize_weight(tensor, how, scratch).items())
        else:
            wanted = dtype_of(key)
            state[key] = tensor.to(wanted) if wanted is not None and tensor.is_floating_point() else tensor
            assert not scratch or state[key] is not tensor, f"{key}: the reused read buffer would be kept"

    for path in paths:
        if path.endswith(".safetensors"):
            stored = _stored_dtypes(path)  # reads the header, and so checks the file's size against it
            if mapped and quantized is None and all(not converted(key, kind) for key, kind in stored.items()):
                from safetensors.torch import load_file

                state.update((key, adapted(key, t) if adapted else t) for key, t in load_file(path).items())
            else:
                for key, tensor, scratch in _read_safetensors(path, converted):
                    put(key, tensor, scratch)
        else:
            part = _load_pickle(path, mapped)
            for key in list(part):
                put(key, part.pop(key))
    return state


def _load_pickle(path: str, mapped: bool = True) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin's tensors, memory-mapped where the file allows (mapped) or read. Only plain tensors are
    read (torch.load's weights_only): a file that would run code, or that is damaged, is refused with a
    DamagedFileError, never by advice to lift that limit."""
    import pickle
    import zipfile

    try:
        try:
            part = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
        except RuntimeError as error:  # an old non-zip pickle can't be memory-mapped
            if "mmap" not in str(error):
                raise
            part = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, TypeError) as error:
        refused = "GLOBAL" in str(error)  # weights_only met a reference to a function or class: code
        why = (
            "it holds more than plain tensors (code, which zhiyin never runs)"
            if refused
            else "it is damaged or incomplete"
        )
        raise DamagedFileError(
            f"cannot read weights from '{path}': {why}; download the checkpoint again, or use its model.safetensors"
        ) from None
    if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
        raise DamagedFileError(f"'{path}' holds no state dict of tensors: is it a MusicGen checkpoint file?")
    return part


def part_key(key: str, part: str) -> str:
    """The key of a part of a linear layer: part_key('<linear>.weight', 'scale') -> '<linear>.scale' (a quantized
    weight's scales; kernels.KernelLinear's names)."""
    return key.rsplit(".", 1)[0] + "." + part


def _quantized_part(key: str) -> tuple[str, str] | None:
    """(the weight's key, the part) for the key of a quantized weight's scales or groups, else None"""
    base, _, part = key.rpartition(".")
    return (base + ".weight", part) if part in QUANTIZED_PARTS else None


def is_quantization_scale(key: str, state: dict[str, torch.Tensor]) -> bool:
    """Whether `key` holds the scales of a quantized (int8 or int4) weight of `state` (they stay float32 whatever the
    model's dtype)."""
    weight = state.get(part_key(key, "weight"))
    return key.endswith(".scale") and weight is not None and weight.dtype in (torch.int8, torch.uint8)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _safetensors_header(f) -> tuple[dict, int]:
    """A safetensors file's header and where its data begins, checked against the file's size: a truncated or
    damaged file raises DamagedFileError instead of giving garbage tensors."""
    import json

    path, file_size = f.name, os.fstat(f.fileno()).st_size
    damaged = f"'{path}' is damaged or incomplete"
    size = int.from_bytes(f.read(8), "little")
    if file_size < 8 or not 2 <= size <= file_size - 8:
        raise DamagedFileError(f"{damaged} (no safetensors header in its {file_size} bytes): download it again")
    try:
        header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        end = max((info["data_offsets"][1] for info in header.values()), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise DamagedFileError(f"{damaged} (its header is not valid): download it again") from None
    if 8 + size + end != file_size:
        raise DamagedFileError(
            f"{damaged} ({file_size} bytes where its header promises {8 + size + end}): download it again"
        )
    return header, 8 + size


def _stored_dtypes(path: str) -> dict[str, torch.dtype]:
    """Each tensor's dtype in a safetensors file, from its header."""
    with open(path, "rb") as f:
        header, _ = _safetensors_header(f)
    return {key: _SAFETENSORS_DTYPES[info["dtype"]] for key, info in header.items()}


def _read_safetensors(
    path: str, passing: Callable[[str, torch.dtype], bool] | None = None
) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """A safetensors file's tensors one at a time, in file order: (key, tensor of its stored dtype, scratch).
    Tensors that `passing(key, stored dtype)` names (read only to be converted or quantized) share one reused
    buffer (scratch True: valid until the next tensor), already in memory: no page faults, no heap left behind;
    the others come in fresh memory of their own."""
    buffer = torch.empty(0, dtype=torch.uint8)
    with open(path, "rb") as f:
        header, base = _safetensors_header(f)
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            start, end = info["data_offsets"]
            stored = _SAFETENSORS_DTYPES[info["dtype"]]
            scratch = passing is not None and passing(name, stored)
            if scratch and buffer.numel() < end - start:
                buffer = torch.empty(end - start, dtype=torch.uint8)
            raw = buffer[: end - start] if scratch else torch.empty(end - start, dtype=torch.uint8)
            f.seek(base + start)
            f.readinto(memoryview(raw.numpy()))
            yield name, raw.view(stored).reshape(info["shape"]), scratch


def shard_names(index_path: str) -> list[str]:
    """The shard file names a `*.index.json` lists, in order, without repeats."""
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict):
        raise DamagedFileError(f"'{index_path}' has no weight_map: download it again")
    return list(dict.fromkeys(weight_map.values()))


# ---- checkpoint layout <-> zhiyin layout (the decoder fuses its projections) ---------------------------------

_DECODER = "decoder.model.decoder."
_RENAMES = {  # checkpoint (after the layer prefix) -> ours
    "self_attn.out_proj.weight": "self_attn.out.weight",
    "self_attn_layer_norm.weight": "self_attn_norm.weight",
    "self_attn_layer_norm.bias": "self_attn_norm.bias",
    "encoder_attn.q_proj.weight": "cross_attn.q.weight",
    "encoder_attn.out_proj.weight": "cross_attn.out.weight",
    "encoder_attn_layer_norm.weight": "cross_attn_norm.weight",
    "encoder_attn_layer_norm.bias": "cross_attn_norm.bias",
    "final_layer_norm.weight": "ffn_norm.weight",
    "final_layer_norm.bias": "ffn_norm.bias",
    "fc1.weight": "fc1.weight",
    "fc2.weight": "fc2.weight",
}
_FUSED = {  # ours -> the checkpoint's pieces, concatenated along dim 0
    "self_attn.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "cross_attn.kv.weight": ("encoder_attn.k_proj.weight", "encoder_attn.v_proj.weight"),
}


def is_decoder_linear(key: str) -> bool:
    """Checkpoint keys of the decoder's linear weights (projections, FFN, LM heads): what int8 and int4 quantize."""
    if key.startswith("decoder.lm_heads."):
        return key.endswith(".weight")
    return key.startswith(_DECODER + "layers.") and key.endswith(("_proj.weight", ".fc1.weight", ".fc2.weight"))


def checkpoint_pieces(ours: str) -> tuple[str, ...] | None:
    """The checkpoint's weight keys of one of zhiyin's fused decoder weights ('decoder.layers.3.self_attn.qkv.weight'
    -> the q_proj, k_proj, v_proj weights, concatenated along dim 0 in this order); None for a weight not fused."""
    if not ours.startswith("decoder.layers."):
        return None
    index, rest = ours[len("decoder.layers.") :].split(".", 1)
    return tuple(f"{_DECODER}layers.{index}.{piece}" for piece in _FUSED[rest]) if rest in _FUSED else None


def checkpoint_key(ours: str) -> str:
    """The checkpoint's key of one of zhiyin's weights that is not fused (to_checkpoint's naming)."""
    (key,) = to_checkpoint({ours: torch.empty(0)}, set())
    return key


def from_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint keys (either weight-norm spelling) -> the keys of zhiyin's MusicgenForConditionalGeneration.
    Quantized weights read by read_state_dict(quantized=...) bring their scales (and groups) along.

    Empties `state`: the tensors move to the result, so that the pieces of each fused projection are freed as soon
    as it is made (loading never holds the decoder's attention weights twice)."""
    folded = fold_weight_norm(state)
    state.clear()
    out: dict[str, torch.Tensor] = {}
    layers: dict[int, dict[str, torch.Tensor]] = {}
    while folded:
        key, value = folded.popitem()
        if key.startswith(_DECODER + "layers."):
            index, rest = key[len(_DECODER + "layers.") :].split(".", 1)
            layers.setdefault(int(index), {})[rest] = value
        elif key.startswith(_DECODER + "embed_tokens."):
            out["decoder." + key[len(_DECODER) :]] = value
        elif key.startswith(_DECODER + "layer_norm."):
            out["decoder.final_norm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("decoder.lm_heads."):
            out[key] = value
        elif key == "text_encoder.encoder.embed_tokens.weight":
            out.setdefault("text_encoder.shared.weight", value)  # tied to shared; some files carry only this one
        elif key == "text_encoder.shared.weight":
            out[key] = value
        elif key.startswith(("text_encoder.", "audio_encoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj.")):
            out[key] = value
        elif key.startswith("decoder.model.decoder.embed_positions"):
            continue  # sinusoidal, recomputed
        else:
            raise ValueError(f"unexpected weight '{key}' in the checkpoint: is this a MusicGen checkpoint?")
    for index, parts in layers.items():
        prefix = f"decoder.layers.{index}."
        for ours, pieces in _FUSED.items():
            missing = [p for p in pieces if p not in parts]
            if len(missing) == len(pieces) and ours.startswith("cross_attn."):
                continue  # melody decoders have no cross-attention
            if missing:
                raise ValueError(f"checkpoint lacks decoder layer {index} weights {missing}")
            if part_key(pieces[0], "groups") in parts:  # int4: its blocks of rows
                out[prefix + ours], out[prefix + part_key(ours, "groups")] = concatenate_int4(
                    [(parts.pop(p), parts.pop(part_key(p, "groups"))) for p in pieces]
                )
            else:
                out[prefix + ours] = torch.cat([parts.pop(p) for p in pieces], dim=0)
            if part_key(pieces[0], "scale") in parts:  # quantized pieces: their scales (per output row) as well
                out[prefix + part_key(ours, "scale")] = torch.cat([parts.pop(part_key(p, "scale")) for p in pieces])
        for theirs, value in parts.items():
            quantized = _quantized_part(theirs)  # a quantized weight's scales and groups follow the weight's name
            if quantized is not None and quantized[0] in _RENAMES:
                out[prefix + part_key(_RENAMES[quantized[0]], quantized[1])] = value
            elif theirs in _RENAMES:
                out[prefix + _RENAMES[theirs]] = value
            else:
                raise ValueError(f"unexpected weight 'decoder layer {index}: {theirs}' in the checkpoint")
    return out


def to_checkpoint(state: dict[str, torch.Tensor], weight_normed: set[str]) -> dict[str, torch.Tensor]:
    """zhiyin keys -> checkpoint keys as current transformers writes them (weight norm as original0/original1).

    `weight_normed` names our conv weights (e.g. 'audio_encoder.encoder.layers.0.conv.weight') to split back
    into g and v, so that the reference loads the file into its weight-normed convolutions.
    """
    back = {v: k for k, v in _RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        value = value.detach().contiguous()
        if key.startswith("decoder.layers."):
            index, rest = key[len("decoder.layers.") :].split(".", 1)
            prefix = f"{_DECODER}layers.{index}."
            if rest in _FUSED:
                for piece, chunk in zip(_FUSED[rest], value.chunk(len(_FUSED[rest]), dim=0)):
                    out[prefix + piece] = chunk.contiguous()
            else:
                out[prefix + back[rest]] = value
        elif key.startswith("decoder.embed_tokens."):
            out[_DECODER + key[len("decoder.") :]] = value
        elif key.startswith("decoder.final_norm."):
            out[_DECODER + "layer_norm." + key.rsplit(".", 1)[1]] = value
        elif key in weight_normed:
            base = key[: -len(".weight")]
            g = value.float().norm(dim=tuple(range(1, value.dim())), keepdim=True).to(value.dtype)
            out[base + ".parametrizations.weight.original0"] = g
            out[base + ".parametrizations.weight.original1"] = value
        else:
            out[key] = value
    return out
