"""One decoder step in one C++ call: csrc/kernels.cpp's zhiyin_decoder_step.

The token loop's steps each take one new position per row. Run as PyTorch ops, a step of musicgen-small is ~300
small operations around the 150 weight products, and their dispatch costs as much as a third of the step on a
2-core CPU. The fused step does the whole of it (embeddings, every layer's norms, attention over the KV cache and the
text, FFN with GELU, final norm, LM heads) in one parallel region, with the weight products of kernels.py's
KernelLinear layers. It reads the decoder's own parameters and writes into its own KV cache, so the PyTorch
prefill and the fused steps share one cache. Each row is at its own position and attends to its own text length.
`FusedStep.build` returns None where it does not apply (kernels off or unavailable, not on the CPU, float16, more
rows than the kernels take); select.py then picks another step.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections import deque

import torch
from torch import Tensor, nn

from ..modules.decoder import CrossKV, MusicgenDecoder, sinusoidal_positions
from . import kernels
from .kernels import KernelLinear, LinearWeights

P = ctypes.c_void_p


class _Layer(ctypes.Structure):  # csrc/kernels.cpp's Layer
    _fields_ = [
        ("self_norm_weight", P),
        ("self_norm_bias", P),
        ("qkv", LinearWeights),
        ("self_out", LinearWeights),
        ("cross_norm_weight", P),
        ("cross_norm_bias", P),
        ("cross_q", LinearWeights),
        ("cross_out", LinearWeights),
        ("ffn_norm_weight", P),
        ("ffn_norm_bias", P),
        ("fc1", LinearWeights),
        ("fc2", LinearWeights),
        ("cache_k", P),
        ("cache_v", P),
        ("cache_k_scale", P),
        ("cache_v_scale", P),
        ("text_k", P),
        ("text_v", P),
    ]


class _Step(ctypes.Structure):  # csrc/kernels.cpp's Step
    _fields_ = [
        (name, ctypes.c_int64)
        for name in ("rows", "dim", "heads", "ffn_dim", "codebooks", "vocab", "max_len", "text_len", "layers")
    ]
    _fields_ += [(name, ctypes.c_int32) for name in ("cache_type", "gelu", "threads", "first_row")]
    _fields_ += [
        ("eps", ctypes.c_float),
        ("embed_scale", ctypes.c_float),
        ("layer", ctypes.POINTER(_Layer)),
        ("embeddings", P),
        ("position_table", P),
        ("text_mask", P),
        ("text_lengths", P),
        ("norm_weight", P),
        ("norm_bias", P),
        ("lm_heads", ctypes.POINTER(LinearWeights)),
    ]


def _float(t: Tensor) -> Tensor:
    return t.detach().float().contiguous()


class FusedStep:
    """A decoder step (select.py's protocol): (tokens [n, K], positions [n], first_row) -> logits [n, K, V] float32
    for the rows first_row..first_row + n - 1, one new position per row. Valid while the decoder's caches (set up
    before) and `cross` live; holds every tensor the C++ side points at."""

    def __init__(self, decoder: MusicgenDecoder, cross: CrossKV | None, library: ctypes.CDLL):
        for mirror, which in ((_Layer, 1), (_Step, 2)):
            kernels.check_mirror(library, mirror, which)
        c, caches = decoder.config, decoder.caches
        rows, heads, max_len, _ = caches[0].k.shape
        self.library, self.max_len = library, max_len
        self.shape = (rows, c.num_codebooks, c.vocab_size)
        keep = self._keep = []  # tensors and structures the C++ side reads

        def ptr(t: Tensor | None) -> int | None:
            if t is None:
                return None
            keep.append(t)
            return t.data_ptr()

        layers = (_Layer * len(decoder.layers))()
        for i, (layer, cache) in enumerate(zip(decoder.layers, caches)):
            L = layers[i]
            L.self_norm_weight, L.self_norm_bias = ptr(layer.self_attn_norm.weight), ptr(layer.self_attn_norm.bias)
            L.qkv, L.self_out = layer.self_attn.qkv.weights(rows), layer.self_attn.out.weights(rows)
            if layer.cross_attn is not None:
                L.cross_norm_weight = ptr(layer.cross_attn_norm.weight)
                L.cross_norm_bias = ptr(layer.cross_attn_norm.bias)
                L.cross_q, L.cross_out = layer.cross_attn.q.weights(rows), layer.cross_attn.out.weights(rows)
                L.text_k, L.text_v = ptr(_float(cross.keys[i])), ptr(_float(cross.values[i]))
            L.ffn_norm_weight, L.ffn_norm_bias = ptr(layer.ffn_norm.weight), ptr(layer.ffn_norm.bias)
            L.fc1, L.fc2 = layer.fc1.weights(rows), layer.fc2.weights(rows)
            L.cache_k, L.cache_v = ptr(cache.k), ptr(cache.v)
            if cache.k.dtype == torch.int8:
                L.cache_k_scale, L.cache_v_scale = ptr(cache.k_scale), ptr(cache.v_scale)
        embeddings = (P * c.num_codebooks)(*[ptr(e.weight) for e in decoder.embed_tokens])
        heads_weights = (LinearWeights * c.num_codebooks)(*[head.weights(rows) for head in decoder.lm_heads])
        text_len = cross.keys[0].shape[2] if cross is not None else 0
        text_mask = _float(cross.mask).view(rows, text_len) if cross is not None else None
        text_lengths = _text_lengths(text_mask, cross.values) if cross is not None else None
        step = self.step = _Step(
            rows=rows,
            dim=c.hidden_size,
            heads=heads,
            ffn_dim=c.ffn_dim,
            codebooks=c.num_codebooks,
            vocab=c.vocab_size,
            max_len=max_len,
            text_len=text_len,
            layers=len(decoder.layers),
            cache_type=kernels.WEIGHT_TYPES[caches[0].k.dtype],
            gelu=int(c.activation_function == "gelu"),
            threads=torch.get_num_threads(),
            eps=decoder.final_norm.eps,
            embed_scale=decoder.embed_scale,
            embeddings=ctypes.cast(embeddings, P),
            layer=ctypes.cast(layers, ctypes.POINTER(_Layer)),
            lm_heads=ctypes.cast(heads_weights, ctypes.POINTER(LinearWeights)),
            position_table=ptr(sinusoidal_positions(torch.arange(max_len), c.hidden_size).contiguous()),
            text_mask=ptr(text_mask),
            text_lengths=ptr(text_lengths),
            norm_weight=ptr(decoder.final_norm.weight),
            norm_bias=ptr(decoder.final_norm.bias),
        )
        keep += [layers, embeddings, heads_weights, step]
        self.step_pointer = ctypes.addressof(step)
        self.threads, self.warm = thread_count(), False

    @classmethod
    def build(cls, decoder: MusicgenDecoder, cross: CrossKV | None) -> "FusedStep | None":
        """The fused step for this generation, or None where it does not apply."""
        library = kernels.library()
        caches = decoder.caches
        if library is None or caches is None or caches[0].k.dtype not in kernels.WEIGHT_TYPES:
            return None
        if caches[0].k.device.type != "cpu" or caches[0].k.shape[0] > kernels.MAX_STEP_ROWS:
            return None
        if (cross is None) != (decoder.layers[0].cross_attn is None):
            return None
        linears = [m for m in decoder.modules() if isinstance(m, (nn.Linear, KernelLinear))]
        if not all(isinstance(m, KernelLinear) and m.weights() is not None for m in linears):
            return None
        others = [p for m in decoder.modules() if not isinstance(m, KernelLinear) for p in m.parameters(recurse=False)]
        if any(p.dtype != torch.float32 for p in others):
            return None
        return cls(decoder, cross, library)

    def __call__(self, tokens: Tensor, positions: Tensor, first_row: int = 0) -> Tensor:
        if not self.warm:  # the first step writes fresh pages of the KV cache (up to ~7 ms more): not a fair probe
            self.warm, self.step.threads = True, self.threads.choice
            return self._run(tokens, positions, first_row)
        threads = self.threads.next(tokens.shape[0])
        self.step.threads = threads
        started = time.perf_counter()
        logits = self._run(tokens, positions, first_row)
        self.threads.record(threads, time.perf_counter() - started)
        return logits

    def _run(self, tokens: Tensor, positions: Tensor, first_row: int) -> Tensor:
        # [n, K] tokens of the first n rows, [n] positions: as the C++ side reads them (as the loop keeps them, no copy)
        if tokens.dtype != torch.int64 or not tokens.is_contiguous():
            tokens = tokens.to(torch.int64).contiguous()
        if positions.dtype != torch.int64 or not positions.is_contiguous():
            positions = positions.to(torch.int64).contiguous()
        rows, K, V = self.shape
        n = tokens.shape[0]
        # shapes here; the C++ side checks the values (a token or position outside its range: nothing computed)
        if tokens.dim() != 2 or not 0 < n <= rows - first_row or first_row < 0 or tokens.shape[1] != K:
            raise IndexError(
                f"tokens {tuple(tokens.shape)} from row {first_row} must be [{rows}, {K}] (or fewer rows, within the "
                f"{rows})"
            )
        if positions.shape != (n,):
            raise IndexError(f"positions {tuple(positions.shape)} must be [{n}]: one per row")
        logits = torch.empty(n, K, V, dtype=torch.float32)
        self.step.rows, self.step.first_row = n, first_row
        failed = self.library.zhiyin_decoder_step(
            self.step_pointer, tokens.data_ptr(), positions.data_ptr(), logits.data_ptr()
        )
        if failed == 1:
            raise IndexError(f"tokens {tokens.tolist()} must have values in 0..{V} (the pad token)")
        if failed == 2:
            raise IndexError(f"positions {positions.tolist()} are outside the KV cache (0..{self.max_len - 1})")
        return logits


def _text_lengths(mask: Tensor, values: list[Tensor]) -> Tensor:
    """Additive text mask [rows, S] and every layer's text values [rows, H, S, Dh] -> each row's text length [rows]
    int64: through its last valid position, so that attention over it equals attention over all S (the masked rest
    adds exact zeros). A row with no valid position has equal scores over all S: its attention is the mean of its
    values, so 0 where they are all zeros (the null text of guidance, whose attention is then zeros, written without
    reading its keys and values: csrc/kernels.cpp's attend), else all S."""
    valid = mask == 0
    last = torch.where(valid, torch.arange(1, mask.shape[1] + 1), 0).amax(dim=1)
    blank = torch.stack([(v == 0).flatten(1).all(dim=1) for v in values]).all(dim=0)
    empty = torch.where(blank, 0, mask.shape[1])
    return torch.where(valid.any(dim=1), last, empty).to(torch.int64).contiguous()


_THREAD_COUNT: ThreadCount | None = None


def thread_count() -> ThreadCount:
    """The process's ThreadCount, shared by every fused step: what it learned of the machine outlives a step (the
    engine builds a new one whenever its batch changes, and each fresh count would probe one thread again)."""
    global _THREAD_COUNT
    if _THREAD_COUNT is None:
        _THREAD_COUNT = ThreadCount(kernels.usable_threads())
    return _THREAD_COUNT


class ThreadCount:
    """How many threads the next decoder step runs on: of the usable count, half of it and one, the one whose recent
    steps were fastest. On a machine of our own that is all of them; with another busy process, a team whose members
    wait for a CPU can be slower than one thread, and then fewer threads win (BENCHMARKS.md, "Beside a busy
    process"). At each window each other count runs one step, and the window's choice is the fastest of those probes
    and the chosen count's own recent steps (the median of its last RECENT: one slow step of it, a page fault or the
    machine's memory changing speed, does not hand a window to a count that is slower in truth). Windows come every
    PROBE_EVERY steps; while all the threads win by FAR, twice as far apart each time, up to PROBE_AT_MOST (each probe
    of one thread costs a slow step); and at once when the chosen count's median grows FAR above its time at the last
    window (a busy process has come). A count without a time yet (the first window, new rows) is probed too
    (BENCHMARKS.md, session 25). The step's numbers do not depend on the count, so switching never changes the music."""

    PROBE_EVERY, PROBE_AT_MOST = 64, 512
    RECENT = 8
    FAR = 1.25

    def __init__(self, most: int):
        self.counts = sorted({most, max(1, most // 2), 1}, reverse=True)
        self.seconds: dict[int, float] = {}  # each count's time at `rows` rows: a probe's, the chosen's recent median
        self.recent: deque[float] = deque(maxlen=self.RECENT)  # the chosen count's last steps
        self.steps, self.probes, self.probing, self.rows, self.choice = 0, [], False, None, most
        self.window, self.every, self.settled = 0, self.PROBE_EVERY, None  # the next window's step, the spacing, and
        # the chosen count's time at the last window

    def next(self, rows: int = 0) -> int:
        """The count for a step of `rows` rows. Times of steps of other row counts do not compare: when the rows
        change they are forgotten, and the last choice stands until the next window."""
        if rows != self.rows:
            self.rows, self.seconds, self.probes, self.settled = rows, {}, [], None
            self.recent.clear()
        if self.steps >= self.window:
            self.probes = [c for c in self.counts if c != self.choice or c not in self.seconds]
            self.window = self.steps + self.every
        self.steps += 1
        self.probing = bool(self.probes)
        return self.probes.pop(0) if self.probing else self.choice

    def record(self, count: int, seconds: float) -> None:
        """A step's time: a probe's replaces its count's; the chosen count's steps keep their recent median. The
        window's last probe chooses, and sets when the next window comes."""
        if count == self.choice and not self.probing:
            self.recent.append(seconds)
            self.seconds[count] = statistics.median(self.recent)
            full = len(self.recent) == self.RECENT
            if self.settled is not None and full and self.seconds[count] > self.FAR * self.settled:
                self.window, self.every = self.steps, self.PROBE_EVERY  # slower for good: a window now
            return
        self.seconds[count] = seconds
        if not (self.probing and not self.probes):
            return
        choice = min(self.seconds, key=self.seconds.get)
        far = all(t > self.FAR * self.seconds[choice] for c, t in self.seconds.items() if c != choice)
        if choice == self.choice == self.counts[0] and far:
            self.every = min(2 * self.every, self.PROBE_AT_MOST)
        else:
            self.every = self.PROBE_EVERY  # (fewer threads than there are: soon see whether the others are back)
        if choice != self.choice:
            self.choice = choice
            self.recent.clear()
        self.settled, self.window = self.seconds[choice], self.steps + self.every
