"""The decoder step as a CUDA graph: one replay per generated position instead of ~300 kernel launches from Python.

On a GPU a step of musicgen-small is a few hundred small kernels, each launched from Python: the launches, not the
GPU, set the pace. A CUDA graph records them once and replays them with one call. A graph replays fixed kernels on
fixed memory, so the step it records has static shapes: the new tokens and the position are read from device buffers
([rows, K] and [1]) that each call fills, the keys/values go into the preallocated KV cache at that position
(index_copy_), and attention runs over the whole cache with a mask of the positions written so far (the decoder's
tensor-`start` path, decoder.py). One graph per generation: its KV cache and text keys/values are the graph's
memory. The first step runs the static step once (warm-up) and captures it; every later step replays.

`GraphStep(..., capture=False)` runs the same static-shape step without a graph, on any device: that is how the
tests hold it to the plain step on a machine without a GPU, and what runs (with a warning) if a capture fails.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor, nn


class GraphStep:
    """The step function of one generation: (tokens [rows, K], position) -> logits [rows, K, V], for one new position
    per row, at position + offset (melody models' prefix). Valid while the decoder's caches (set up before) and
    `cross` live. The logits are a fresh tensor each call."""

    def __init__(self, decoder: nn.Module, cross, offset: int = 0, capture: bool = True):
        cache = decoder.caches[0].k  # [rows, H, max_len, Dh]
        rows, _, self.max_len, _ = cache.shape
        self.decoder, self.cross, self.offset, self.capture = decoder, cross, offset, capture
        self.tokens = torch.zeros(rows, decoder.config.num_codebooks, dtype=torch.long, device=cache.device)
        self.position = torch.zeros(1, dtype=torch.long, device=cache.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None  # the graph's output buffer

    @classmethod
    def build(cls, decoder: nn.Module, cross, offset: int = 0) -> GraphStep | None:
        """A capturing GraphStep where it applies (caches on a CUDA device; ZHIYIN_CUDA_GRAPHS not 0), else None."""
        if decoder.caches is None or decoder.caches[0].k.device.type != "cuda":
            return None
        if os.environ.get("ZHIYIN_CUDA_GRAPHS", "1") == "0":
            return None
        return cls(decoder, cross, offset)

    def _step(self) -> Tensor:
        return self.decoder(self.tokens[:, :, None], self.cross, start=self.position)[:, :, -1]  # [rows, K, V]

    def __call__(self, tokens: Tensor, position: int) -> Tensor:
        if tokens.shape != self.tokens.shape:  # (their values are not checked: that would wait for the GPU)
            raise IndexError(f"tokens {tuple(tokens.shape)} must be {list(self.tokens.shape)}")
        if not 0 <= position + self.offset < self.max_len:
            raise IndexError(f"position {position} is outside the KV cache ({self.max_len - self.offset} positions)")
        self.tokens.copy_(tokens)
        self.position.fill_(position + self.offset)
        if not self.capture:
            return self._step()
        if self.graph is None:
            try:
                self._record()
            except RuntimeError as error:  # never lose the music to a capture problem: run the step without a graph
                warnings.warn(f"zhiyin: capturing the decoder step as a CUDA graph failed ({error}); running it "
                              "without one (slower; ZHIYIN_CUDA_GRAPHS=0 skips the attempt)", stacklevel=2)
                self.capture, self.graph = False, None
                return self._step()
        self.graph.replay()
        return self.logits.clone()

    def _record(self) -> None:
        # warm-up on a side stream first (cuBLAS workspaces, kernel choices), as capture requires; it writes the
        # same cache entries as the replay that follows, so it changes nothing
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()
