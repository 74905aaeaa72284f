"""How a decoder step runs, decided once per generation, in this one place.

Every step follows one protocol: step(tokens [n, K], positions [n], first_row=0) -> logits [n, K, V] for the rows
first_row..first_row + n - 1 of the KV cache (all of them, or fewer: the other rows are left as they are), one new
position per row (each row its own sequence; tokens on the decoder's device, positions on the CPU, so that a step can
check them without waiting for a GPU), valid while the decoder's KV cache (set up before the call) and the generation's
cross-attention inputs live. The choice, in order:

    FusedStep   zhiyin's C++ step, one call per step (fused_step.py): on the CPU, kernels on (ZHIYIN_KERNELS not 0),
                the decoder's linear layers on the kernels (kernels.accelerate_decoder) and at most MAX_STEP_ROWS rows
    GraphStep   the step as a CUDA graph, one replay per step (cuda_graph.py): caches on a CUDA GPU,
                ZHIYIN_CUDA_GRAPHS not 0
    PlainStep   the decoder's forward() on one new position per row: everywhere else
"""

from __future__ import annotations

import os
from collections.abc import Callable

from torch import Tensor

from ..modules.decoder import CrossKV, MusicgenDecoder
from .cuda_graph import GraphStep
from .fused_step import FusedStep

Step = Callable[[Tensor, Tensor], Tensor]  # (tokens [rows, K], positions [rows]) -> logits [rows, K, V]

_kernels_override: bool | None = None


def kernels_enabled() -> bool:
    """Whether zhiyin's C++ kernels may run (ZHIYIN_KERNELS=0 turns them off, set_kernels_enabled overrides)."""
    if _kernels_override is not None:
        return _kernels_override
    return os.environ.get("ZHIYIN_KERNELS", "1") != "0"


def set_kernels_enabled(enabled: bool | None) -> bool:
    """Switch the kernels on or off for this process (None: as ZHIYIN_KERNELS says); returns the previous setting."""
    global _kernels_override
    previous, _kernels_override = kernels_enabled(), enabled
    return previous


def cuda_graphs_enabled() -> bool:
    return os.environ.get("ZHIYIN_CUDA_GRAPHS", "1") != "0"


class PlainStep:
    """The decoder's own forward() for one new position per row."""

    def __init__(self, decoder: MusicgenDecoder, cross: CrossKV | None):
        self.decoder, self.cross = decoder, cross

    def __call__(self, tokens: Tensor, positions: Tensor, first_row: int = 0) -> Tensor:
        return self.decoder.step(tokens, self.cross, positions, first_row)


def decoder_step(decoder: MusicgenDecoder, cross: CrossKV | None) -> Step:
    """The step for one generation on this decoder (its caches set up), as the module's docstring orders them."""
    device = decoder.caches[0].k.device
    if device.type == "cpu" and kernels_enabled():
        fused = FusedStep.build(decoder, cross)
        if fused is not None:
            return fused
    if device.type == "cuda" and cuda_graphs_enabled():
        return GraphStep(decoder, cross)
    return PlainStep(decoder, cross)
