"""The decoder step as a CUDA graph: one replay per generated position instead of ~300 kernel launches from Python.

On a GPU a step of musicgen-small is a few hundred small kernels, each launched from Python: the launches, not the
GPU, set the pace. A CUDA graph records them once and replays them with one call. A graph replays fixed kernels on
fixed memory, so the step it records has static shapes: the new tokens and each row's position are read from device
buffers ([rows, K] and [rows]) that each call fills, the keys/values go into the preallocated KV cache at those
positions, and on a GPU attention runs over the whole cache with a mask of each row's positions so far
(modules/decoder.py). One graph per generation: its KV cache and text keys/values are the graph's memory. The first
step runs the step once (warm-up) and captures it; every later step replays.

`GraphStep(..., capture=False)` runs the same step from the same buffers without a graph, on any device: that is how
the tests hold it to the plain step on a machine without a GPU, and what runs (with a warning) if a capture fails.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn


class GraphStep:
    """A decoder step (select.py's protocol): (tokens [n, K], positions [n], first_row) -> logits [n, K, V], one new
    position per row. The graph steps the first rows; rows from first_row > 0 (a request's first position, alone)
    go through the decoder's forward. Valid while the decoder's caches (set up before) and `cross` live. The logits
    are a fresh tensor each call."""

    def __init__(self, decoder: nn.Module, cross, capture: bool = True):
        cache = decoder.caches[0].k  # [rows, H, max_len, Dh]
        rows, _, self.max_len, _ = cache.shape
        self.decoder, self.cross, self.capture = decoder, cross, capture
        self.tokens = torch.zeros(rows, decoder.config.num_codebooks, dtype=torch.long, device=cache.device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=cache.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None  # the graph's output buffer

    def _step(self) -> Tensor:
        return self.decoder(self.tokens[:, :, None], self.cross, self.positions[:, None])[:, :, -1]  # [rows, K, V]

    def __call__(self, tokens: Tensor, positions: Tensor, first_row: int = 0) -> Tensor:
        if first_row:
            return self.decoder.step(tokens, self.cross, positions, first_row)
        # (the tokens' values are not checked: that would wait for the GPU; the positions are on the CPU)
        n = tokens.shape[0]
        if tokens.shape[1:] != self.tokens.shape[1:] or not 0 < n <= self.tokens.shape[0] or positions.shape != (n,):
            raise IndexError(
                f"tokens {tuple(tokens.shape)} and positions {tuple(positions.shape)} must be "
                f"{list(self.tokens.shape)} and {list(self.positions.shape)} (or fewer rows: the first ones)"
            )
        if int(positions.min()) < 0 or int(positions.max()) >= self.max_len:
            raise IndexError(f"positions {positions.tolist()} are outside the KV cache (0..{self.max_len - 1})")
        # the graph steps every row: rows past n get the pad token at position 0 (the caller leaves them free)
        self.tokens[n:] = self.decoder.config.pad_token_id
        self.positions[n:] = 0
        self.tokens[:n].copy_(tokens)
        self.positions[:n].copy_(positions)
        return self._replay()[:n]

    def _replay(self) -> Tensor:
        if not self.capture:
            return self._step()
        if self.graph is None:
            try:
                self._record()
            except RuntimeError as error:  # never lose the music to a capture problem: run the step without a graph
                warnings.warn(
                    f"zhiyin: capturing the decoder step as a CUDA graph failed ({error}); running it "
                    "without one (slower; ZHIYIN_CUDA_GRAPHS=0 skips the attempt)",
                    stacklevel=2,
                )
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
