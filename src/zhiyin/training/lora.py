"""LoRA adapters on zhiyin's own modules, with peft, saved in PEFT's format under transformers' module names.

zhiyin's decoder fuses projections (self-attention's q, k, v in one layer; cross-attention's k, v) and runs its
linear layers in its own kernels, which have no gradients. For training, `trainable_layers` puts plain nn.Linear
layers in their place, sharing the weights, a fused one as its checkpoint's separate layers (q_proj, k_proj, v_proj)
whose outputs are concatenated: each can take its own adapter, and each has a name in transformers' MusicGen
(weights.py's naming). peft injects the adapters; `save_adapter` writes them under those names, which is what
`peft.PeftModel.from_pretrained(<transformers MusicGen>, folder)` and zhiyin's `adapter=` (loading/adapters.py) read.
"""

from __future__ import annotations

import os
import re

import torch
from torch import Tensor, nn

from ..files import write_atomic, write_json
from ..loading import adapters, weights

# what LoRA adapts (zhiyin's module paths): the attention projections and the FFN always; the LM heads when asked
ATTENTION_AND_FFN = re.compile(r"decoder\.layers\.\d+\.((self_attn|cross_attn)\.(qkv|q|kv|out)|fc1|fc2)")
LM_HEADS = re.compile(r"decoder\.lm_heads\.\d+")


class SplitLinear(nn.Module):
    """A fused projection as its checkpoint's separate layers, in order; its output is theirs concatenated."""

    def __init__(self, weight: Tensor, names: list[str]):
        super().__init__()
        for name, part in zip(names, weight.chunk(len(names), dim=0)):
            self.add_module(name, _linear(part))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([layer(x) for layer in self.children()], dim=-1)


def _linear(weight: Tensor, bias: Tensor | None = None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach().float(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().float(), requires_grad=False)
    return layer


def trainable_layers(model: nn.Module, text_projection: bool = False, lm_heads: bool = False) -> dict[str, str]:
    """Swap the decoder's linear layers for nn.Linear ones (fused ones split), in place, every parameter frozen.
    Returns {module path in `model`: the checkpoint's module name} of the layers LoRA is to adapt."""
    if text_projection and getattr(model, "enc_to_dec_proj", None) is None:
        raise ValueError("this model has no text projection (its text and decoder widths are the same)")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    targets = {}
    wanted = [ATTENTION_AND_FFN] + [LM_HEADS] * lm_heads
    for path, layer in list(model.named_modules()):
        if not path.startswith("decoder.") or isinstance(layer, nn.Embedding) or getattr(layer, "weight", None) is None:
            continue
        if layer.weight.dim() != 2:  # (norms)
            continue
        pieces = weights.checkpoint_pieces(path + ".weight")
        if pieces is not None:
            names = [piece.rsplit(".", 2)[-2] for piece in pieces]
            replacement: nn.Module = SplitLinear(_weight(layer), names)
            module_names = {f"{path}.{n}": piece.removesuffix(".weight") for n, piece in zip(names, pieces)}
        else:
            replacement = _linear(_weight(layer), getattr(layer, "bias", None))
            module_names = {path: weights.checkpoint_key(path + ".weight").removesuffix(".weight")}
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent), name, replacement)
        if any(pattern.fullmatch(path) for pattern in wanted):
            targets.update(module_names)
    if text_projection:
        targets["enc_to_dec_proj"] = "enc_to_dec_proj"
    return targets


def _weight(layer: nn.Module) -> Tensor:
    """A layer's float weight (an int8 one dequantized: training starts from float weights)."""
    if getattr(layer, "scale", None) is not None:
        return layer.dequantized(torch.float32)
    return layer.weight.detach().float()


def add_adapters(model: nn.Module, targets: dict[str, str], rank: int, alpha: float, dropout: float) -> None:
    """peft's LoRA adapters on the `targets` layers of `model` (A random from torch's generator, B zero: the model
    starts as it was); only their weights train."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=sorted(targets), bias="none")
    inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".lora_" in name)


def adapter_state(model: nn.Module, targets: dict[str, str]) -> dict[str, Tensor]:
    """The adapters' weights under PEFT's file keys: 'base_model.model.<checkpoint module>.lora_A.weight', ..."""
    state = {}
    for path, module in model.named_modules():
        if path in targets:
            for half in ("A", "B"):
                weight = getattr(module, f"lora_{half}")["default"].weight
                state[f"{adapters.PREFIX}{targets[path]}.lora_{half}.weight"] = weight.detach().float().contiguous()
    return state


def load_adapter_state(model: nn.Module, targets: dict[str, str], state: dict[str, Tensor]) -> None:
    """Put saved adapter weights (adapter_state's keys) back into the model's adapters."""
    for path, module in model.named_modules():
        if path in targets:
            for half in ("A", "B"):
                with torch.no_grad():
                    getattr(module, f"lora_{half}")["default"].weight.copy_(
                        state[f"{adapters.PREFIX}{targets[path]}.lora_{half}.weight"]
                    )


def save_adapter(
    folder: str | os.PathLike,
    model: nn.Module,
    targets: dict[str, str],
    rank: int,
    alpha: float,
    dropout: float,
    base_model: str,
) -> None:
    """adapter_model.safetensors and adapter_config.json in PEFT's format, each written atomically."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    state = adapter_state(model, targets)
    write_atomic(
        os.path.join(folder, adapters.WEIGHTS_FILE), lambda path: save_file(state, path, metadata={"format": "pt"})
    )
    write_json(os.path.join(folder, adapters.CONFIG_FILE), adapter_config(targets, rank, alpha, dropout, base_model))


def adapter_config(targets: dict[str, str], rank: int, alpha: float, dropout: float, base_model: str) -> dict:
    """PEFT's adapter_config.json for a LoRA adapter on these checkpoint modules (named in full: a bare 'q_proj'
    would also match modules of the text encoder in other models)."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(targets.values()),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }
