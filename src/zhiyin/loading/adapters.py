"""LoRA adapters in PEFT's format, merged into the base weights as the checkpoint is read.

An adapter folder holds adapter_config.json (peft_type LORA, r, lora_alpha, ...) and adapter_model.safetensors, whose
keys are `base_model.model.<module>.lora_A.weight` and `.lora_B.weight`, <module> named as in transformers'
MusicgenForConditionalGeneration (`zhiyin train` writes them so, and so does peft on a transformers MusicGen). Each
adapted weight becomes W + scaling * B @ A (scaling = lora_alpha / r, or lora_alpha / sqrt(r) with rslora), computed
in float32 on the checkpoint's tensor before zhiyin fuses, converts or quantizes it: int8, bfloat16, the fused CPU
step and CUDA graphs then run on ordinary weights.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from torch import Tensor

from ..files import DamagedFileError, read_json

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."


class AdapterError(ValueError):
    """An adapter that cannot be used with this model, and why."""


@dataclass
class Adapter:
    """A LoRA adapter: per adapted checkpoint weight (e.g. 'decoder.model.decoder.layers.0.self_attn.q_proj.weight')
    its A [r, in] and B [out, r], and the scaling of their product."""

    folder: str
    scaling: float
    factors: dict[str, tuple[Tensor, Tensor]]
    merged_keys: set[str] = field(default_factory=set)

    def merge(self, key: str, weight: Tensor) -> Tensor:
        """The checkpoint's `weight` under `key`, with this adapter's update when it adapts it (same dtype)."""
        if key not in self.factors:
            return weight
        A, B = self.factors[key]
        if weight.dim() != 2 or (B.shape[0], A.shape[1]) != tuple(weight.shape):
            raise AdapterError(
                f"the adapter '{self.folder}' was made for another model: '{_module(key)}' is "
                f"{list(weight.shape)} here, the adapter's update is {[B.shape[0], A.shape[1]]}"
            )
        self.merged_keys.add(key)
        return (weight.float() + self.scaling * (B.float() @ A.float())).to(weight.dtype)

    def check_all_merged(self) -> None:
        """After loading: every module the adapter adapts was in the checkpoint."""
        missing = sorted(_module(key) for key in set(self.factors) - self.merged_keys)
        if missing:
            raise AdapterError(
                f"the adapter '{self.folder}' adapts modules this model does not have ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}): it was made for another kind of model"
            )


def _module(key: str) -> str:
    return key.removesuffix(".weight")


def read_adapter(folder: str | os.PathLike) -> Adapter:
    """The adapter in `folder` (see the module's docstring); a clear error for anything else."""
    from safetensors.torch import load_file

    folder = str(folder)
    config_path, weights_path = os.path.join(folder, CONFIG_FILE), os.path.join(folder, WEIGHTS_FILE)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise AdapterError(
                f"'{folder}' is not an adapter folder: it has no {os.path.basename(path)} (make one with zhiyin train)"
            )
    config = read_json(config_path)
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"'{folder}' holds a {config.get('peft_type')!r} adapter: zhiyin takes LoRA adapters")
    refused = [
        name
        for name in ("use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "modules_to_save", "lora_bias")
        if config.get(name)
    ]
    if refused:
        raise AdapterError(f"the adapter '{folder}' uses {', '.join(refused)}: zhiyin merges plain LoRA adapters only")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, int | float):
        raise AdapterError(f"'{config_path}' has no valid r and lora_alpha")
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    try:
        tensors = load_file(weights_path)
    except Exception as error:  # safetensors raises its own kinds for damaged files
        raise DamagedFileError(f"cannot read '{weights_path}': {error}") from None
    halves: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        module, _, half = key.removeprefix(PREFIX).rpartition(".lora_")
        if not key.startswith(PREFIX) or half not in ("A.weight", "B.weight"):
            raise AdapterError(f"the adapter '{folder}' holds '{key}': zhiyin merges LoRA on linear layers only")
        halves.setdefault(module + ".weight", {})[half[0]] = tensor
    factors = {}
    for key, pair in halves.items():
        if set(pair) != {"A", "B"} or pair["A"].shape[0] != rank or pair["B"].shape[1] != rank:
            raise AdapterError(f"the adapter '{folder}' is damaged: '{_module(key)}' lacks a rank-{rank} A and B")
        factors[key] = (pair["A"], pair["B"])
    if not factors:
        raise AdapterError(f"the adapter '{folder}' adapts nothing")
    return Adapter(folder, scaling, factors)
