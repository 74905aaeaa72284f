"""Fast CPU decoding: zhiyin's C++ kernels (csrc/), their build, and the decoder's linear layers on them.

A decoder step multiplies a few activation rows (batch x 2 with guidance) by every weight matrix, so it is bound by
how fast the weights are read from memory. `csrc/matvec.h` reads each weight once for all rows, for float32,
bfloat16, int8 (weight-only, one scale per output row) and int4 (a scale per row and one per 32 columns) weights
(BENCHMARKS.md compares it with PyTorch's BLAS). Many rows (the engine's steps, a prompt's text) make the products
compute-bound instead: on CPUs with AMX (Intel Xeon since Sapphire Rapids) int8 ones then run on its tiles, the
weights read from a second copy laid out as tiles, with the same numbers (ZHIYIN_AMX=0 turns that off).
`csrc/kernels.cpp` runs one such product on its own (KernelLinear, here) or a whole decoder step in one call
(fused_step.py); EnCodec's decoder takes its LSTM arithmetic (KernelLSTMArithmetic) and its convolutions
(KernelConvolution, `csrc/convolution.h`) from the kernels too. The sources are compiled once with the system C++
compiler (`-O3 -march=native -fopenmp`; a compiler without OpenMP builds them for one thread) into ~/.cache/zhiyin (or
$ZHIYIN_CACHE) and called through ctypes; ZHIYIN_KERNELS_MARCH=x86-64-v3 (any -march) builds them for another CPU
level instead. Without a compiler, or with ZHIYIN_KERNELS=0 (read by select.py), the same layers run on plain PyTorch:
results agree to float rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import heap
from ..config import QUANTIZE
from ..files import write_atomic
from ..modules.encodec import EncodecConv1d, EncodecConvTranspose1d, EncodecLSTM, LSTMArithmetic, pad1d
from ..modules.quantization import dequantize_int4, dequantize_int8, quantize_weight
from .precision import Precision, place, plan

SOURCES = Path(__file__).with_name("csrc")  # kernels.cpp and the headers it includes
FLAGS = ["-O3", "-shared", "-fPIC", "-std=c++17", "-Wno-psabi"]  # and -fopenmp, -march=<target> (_compile)
MAX_STEP_ROWS = 64  # rows of one fused step
# rows of one product in the kernels; more rows (prefill) go to PyTorch's BLAS, but not for int8/int4 weights (the
# kernels take any number of rows of those: PyTorch would need them dequantized first)
MAX_ROWS = 8
WEIGHT_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2, torch.uint8: 3}  # csrc/matvec.h's WeightType
TORCH_GENERATOR_BYTES = 5056  # a CPU torch.Generator's get_state(), as csrc/kernels.cpp's TorchGenerator reads it
# Smaller weights run on one thread: waking a team costs more than it saves, and on a busy machine each
# parallel region can wait a whole scheduler slice for a descheduled team member.
PARALLEL_MIN_WEIGHTS = 1 << 20
# the fewest output columns (output channels x phases) of a transposed codec convolution in the kernels' panels: with
# fewer, PyTorch's product was as fast or faster (BENCHMARKS.md, "EnCodec's convolutions")
KERNEL_CONVOLUTION_COLUMNS = 256

_library: ctypes.CDLL | None = None
_tried = False


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _compile(target: Path, march: str, compiler: str | None, sources: Path) -> None:
    """Compile sources/kernels.cpp into target: with OpenMP if the compiler has it (else on one thread: Apple's
    clang, clang without libomp), for -march (or, on ARM, -mcpu=native where the compiler knows no -march=native; on
    x86 -mcpu only tunes, and would build for the oldest x86 without a word)."""
    if compiler is None:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    targets = [f"-march={march}"] + (["-mcpu=native"] if march == "native" and not x86 else [])

    def compile_into(output: str) -> None:
        first_error = None
        for openmp in (["-fopenmp"], []):
            for arch in targets:
                command = [compiler, *FLAGS, *openmp, arch, str(sources / "kernels.cpp"), "-o", output]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode == 0:
                    if not openmp:
                        print(
                            f"zhiyin: {compiler} has no OpenMP, so the CPU kernels run on one thread (g++, or clang "
                            "with libomp, runs them on all cores)",
                            file=sys.stderr,
                        )
                    return
                first_error = first_error or done.stderr.strip()
        raise RuntimeError(f"compiling kernels.cpp failed: {first_error[-500:]}")

    write_atomic(target, compile_into)


def build(march: str = "native", sources: Path = SOURCES) -> ctypes.CDLL:
    """The kernels compiled for `march` (the compiler's -march: this CPU by default; the tests also build older x86
    levels) from `sources` (bench/ab_kernels.py builds an older revision's), built once into ~/.cache/zhiyin or
    $ZHIYIN_CACHE and loaded. Raises RuntimeError or OSError."""
    text = b"".join(path.read_bytes() for path in sorted(sources.iterdir()) if path.suffix in (".cpp", ".h"))
    compiler = _compiler()
    signature = " ".join([str(compiler), *FLAGS, march]) + (_cpu_signature() if march == "native" else "")
    key = hashlib.sha256(text + signature.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("ZHIYIN_CACHE") or Path.home() / ".cache" / "zhiyin")
    target = cache / f"kernels-{key}.so"
    if not target.exists():
        print(f"zhiyin: compiling the CPU kernels into {cache} (once per machine, a few seconds)", file=sys.stderr)
        _compile(target, march, compiler, sources)
    lib = ctypes.CDLL(str(target))
    p = ctypes.c_void_p
    lib.zhiyin_linear.argtypes = [ctypes.POINTER(LinearWeights), p, p, ctypes.c_int64, ctypes.c_int]
    lib.zhiyin_lstm.argtypes = [ctypes.POINTER(LinearWeights), p, p, p, p] + [ctypes.c_int64] * 3 + [ctypes.c_int]
    lib.zhiyin_decoder_step.argtypes = [p, p, p, p]
    lib.holding_gil = ctypes.PyDLL(str(target))  # its functions keep the GIL while they run
    choose = lib.holding_gil.zhiyin_choose
    choose.argtypes = [p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_float]
    choose.argtypes += [ctypes.c_int64, p, p, ctypes.c_int64]
    lib.zhiyin_exponential.argtypes = [p, ctypes.c_int64, p]
    lib.zhiyin_struct_size.argtypes = [ctypes.c_int]
    lib.zhiyin_struct_size.restype = ctypes.c_int64
    lib.zhiyin_panel_floats.argtypes = [ctypes.c_int64] * 2
    lib.zhiyin_panel_floats.restype = ctypes.c_int64
    lib.zhiyin_pack_panels.argtypes = [p, ctypes.c_int64, ctypes.c_int64, p]
    lib.zhiyin_convolution.argtypes = [p] + [ctypes.c_int64] * 4 + [ctypes.c_int, p, p, ctypes.c_int64, ctypes.c_int64]
    lib.zhiyin_convolution.argtypes += [p, ctypes.c_int]
    lib.zhiyin_direct_floats.argtypes = [ctypes.c_int64] * 2
    lib.zhiyin_direct_floats.restype = ctypes.c_int64
    lib.zhiyin_pack_direct.argtypes = [p, ctypes.c_int64, ctypes.c_int64, p]
    lib.zhiyin_direct_convolution.argtypes = [p] + [ctypes.c_int64] * 5 + [ctypes.c_int, ctypes.c_int64, ctypes.c_int]
    lib.zhiyin_direct_convolution.argtypes += [p, p, ctypes.c_int64, p, ctypes.c_int]
    check_mirror(lib, LinearWeights, 0)
    return lib


def amx_rows() -> int | None:
    """The fewest rows whose int8 products run on AMX tiles, or None: the kernels were built for a CPU without them,
    Linux does not let this process use them, or ZHIYIN_AMX=0. The numbers are the same either way (csrc/matvec.h)."""
    lib = library()
    if lib is None or os.environ.get("ZHIYIN_AMX", "1") == "0":
        return None
    return lib.zhiyin_amx_rows() or None


def check_mirror(lib: ctypes.CDLL, mirror: type[ctypes.Structure], which: int) -> None:
    """A ctypes mirror of a C++ structure must have its size: else the C++ side would read past or beside it."""
    if ctypes.sizeof(mirror) != lib.zhiyin_struct_size(which):
        raise RuntimeError(
            f"{mirror.__name__} is {ctypes.sizeof(mirror)} bytes, its C++ structure "
            f"{lib.zhiyin_struct_size(which)}: csrc/ and its ctypes mirror disagree"
        )


def library() -> ctypes.CDLL | None:
    """The compiled kernels for this CPU, built on first use; None if they are switched off or can't be built here."""
    from .select import kernels_enabled  # (select.py imports this module)

    global _library, _tried
    if not kernels_enabled():
        return None
    if _tried:
        return _library
    _tried = True
    try:
        _library = build(os.environ.get("ZHIYIN_KERNELS_MARCH") or "native")
    except (RuntimeError, OSError) as error:
        warnings.warn(f"zhiyin: fast CPU kernels unavailable ({error}); using plain PyTorch (slower)", stacklevel=2)
    return _library


class LinearWeights(ctypes.Structure):
    """csrc/matvec.h's Linear: a weight [n, k] (float32, bfloat16, int8, or int4 packed in uint8), for int8 and int4
    its scale [n], for int4 its group scales; for int8 on AMX, the same weights as tiles (KernelLinear.tiles)."""

    _fields_ = [
        ("weight", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("groups", ctypes.c_void_p),
        ("n", ctypes.c_int64),
        ("k", ctypes.c_int64),
        ("type", ctypes.c_int32),
        ("unused", ctypes.c_int32),
        ("tiles", ctypes.c_void_p),
    ]


class KernelLinear(nn.Module):
    """A bias-free linear layer (y = x W^T) whose products run in zhiyin's kernel (csrc/matvec.h).

    weight is float32, bfloat16 or int8 ([N, K], same key as nn.Linear's); int8 carries `scale` [N]; int4 is packed
    in uint8 [N, K' / 2] with `scale` [N] and `groups` [N, K' / 32], both in the kernels' order of 16-row blocks
    (quantization.py's quantize_int4; K' is K rounded up to 32, so in_features is given).
    """

    def __init__(self, weight: Tensor, scale: Tensor | None = None, groups: Tensor | None = None, in_features=None):
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        self.scale = None if scale is None else nn.Parameter(scale.float().contiguous(), requires_grad=False)
        self.groups = None if groups is None else nn.Parameter(groups.contiguous(), requires_grad=False)
        self.out_features, self.in_features = weight.shape[0], in_features or weight.shape[1]

    @classmethod
    def from_linear(cls, linear: nn.Linear | KernelLinear, quantize: str | None = None) -> KernelLinear:
        if getattr(linear, "bias", None) is not None:
            raise ValueError("KernelLinear has no bias")
        if quantize is None:
            return cls(linear.weight.data)
        weight = linear.dequantized(torch.float32) if isinstance(linear, KernelLinear) else linear.weight.data
        return cls(**quantize_weight(weight, quantize), in_features=linear.in_features)

    def weights(self, rows: int = 1) -> LinearWeights | None:
        """This layer's weights as the kernels take them for products of up to `rows` rows (None where they have no
        kernel: float16, not on the CPU)."""
        w = self.weight
        if w.device.type != "cpu" or w.dtype not in WEIGHT_TYPES:
            return None
        scale = self.scale.data_ptr() if self.scale is not None else None
        groups = self.groups.data_ptr() if self.groups is not None else None
        tiles = self.tiles(rows)
        return LinearWeights(
            w.data_ptr(),
            scale,
            groups,
            self.out_features,
            self.in_features,
            WEIGHT_TYPES[w.dtype],
            0,
            None if tiles is None else tiles.data_ptr(),
        )

    def tiles(self, rows: int) -> Tensor | None:
        """int8 weights as AMX tiles (csrc/matvec.h's layout: for each 16 output rows and 64 columns, 1 KiB whose
        row q holds columns 4q..4q+3 of each of the 16 rows), where products of `rows` rows run on them and the shape
        allows; made at first use and again if the weights change in place. A second copy of the weights (products
        of fewer rows read the first): made only where it is used."""
        w = self.weight
        N, K = w.shape
        if self.quantized != "int8" or N % 16 or K % 64 or w.device.type != "cpu":
            return None
        fewest = amx_rows()
        if fewest is None or rows < fewest:
            return None
        key = (w.data_ptr(), w._version)
        if getattr(self, "_tiles_key", None) != key:
            self._tiles = w.detach().view(N // 16, 16, K // 64, 16, 4).permute(0, 2, 3, 1, 4).contiguous()
            self._tiles_key = key
        return self._tiles

    def forward(self, x: Tensor) -> Tensor:
        K, N = self.in_features, self.out_features
        rows = x.numel() // K
        if rows == 0:  # (the kernel takes at least one row)
            return x.new_empty(*x.shape[:-1], N)
        # int8/int4 weights take any number of rows here: PyTorch would need them dequantized to float first
        lib = library() if x.device.type == "cpu" and (rows <= MAX_ROWS or self.scale is not None) else None
        weights = self.weights(rows) if lib is not None else None
        if weights is None:
            return F.linear(x, self.dequantized(x.dtype))
        return _product(lib, weights, x.reshape(rows, K)).view(*x.shape[:-1], N).to(x.dtype)

    def dequantized(self, dtype: torch.dtype) -> Tensor:
        if self.groups is not None:
            return dequantize_int4(self.weight, self.scale, self.groups, self.in_features).to(dtype)
        if self.scale is not None:
            return dequantize_int8(self.weight, self.scale).to(dtype)
        return self.weight.to(dtype)

    @property
    def quantized(self) -> str | None:
        """'int8', 'int4', or None for float weights"""
        return "int4" if self.groups is not None else "int8" if self.scale is not None else None


def usable_threads() -> int:
    """PyTorch's thread count, within the CPUs this process may run on."""
    try:
        return max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0))))
    except AttributeError:  # no sched_getaffinity (macOS)
        return torch.get_num_threads()


def _product(lib: ctypes.CDLL, weights: LinearWeights, x: Tensor) -> Tensor:
    """x [M, K] W^T -> [M, N] float32 in csrc/kernels.cpp's zhiyin_linear, on every thread where W is large."""
    rows, (N, K) = x.shape[0], (weights.n, weights.k)
    flat = x.float().contiguous()
    out = torch.empty(rows, N, dtype=torch.float32)
    threads = usable_threads() if N * K * max(1, rows // MAX_ROWS) >= PARALLEL_MIN_WEIGHTS else 1
    lib.zhiyin_linear(ctypes.byref(weights), flat.data_ptr(), out.data_ptr(), rows, threads)
    return out


def _recorded(*tensors: Tensor | None) -> bool:
    """Whether autograd would record an op on these: the kernels' outputs carry no gradient, so PyTorch's path then."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _float_product(x: Tensor, weight: Tensor) -> Tensor | None:
    """x [M, K] weight^T [K, N] -> [M, N] float32 in the kernels for a float32 or bfloat16 weight on the CPU, or None
    (no kernels, another dtype or device, a weight not contiguous, gradients to record)."""
    if x.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16) or not weight.is_contiguous():
        return None
    if _recorded(x, weight):
        return None
    lib = library()
    if lib is None:
        return None
    N, K = weight.shape
    return _product(lib, LinearWeights(weight.data_ptr(), None, None, N, K, WEIGHT_TYPES[weight.dtype], 0, None), x)


class KernelLSTMArithmetic(LSTMArithmetic):
    """EnCodec's LSTM arithmetic (modules/encodec.py's LSTMArithmetic) in the kernels. In float32 the recurrence over
    every frame is one call (zhiyin_lstm: each frame's product and gates without a trip through Python, ~2x faster:
    BENCHMARKS.md, "EnCodec's LSTM in one call"); the recurrent product, one row a frame, streams its weights at the
    rate of the caches they come from. Each product is the same sum at any thread count and however many frames are
    beside it, which BLAS's small products are not on every CPU (MKL on Zen 4 at 5-11 rows), so that chunked
    decoding on 1 or 2 threads gives the same bits. The sums' order and the sigmoid's and tanh's last bits are not
    PyTorch's. In other dtypes the recurrence goes frame by frame (the kernels' products where they apply); on other
    devices, or with gradients to record, it is PyTorch's."""

    @staticmethod
    def inputs(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        out = _float_product(x.reshape(-1, x.shape[-1]), weight)
        if out is None:
            return LSTMArithmetic.inputs(x, weight, bias)
        return (out + bias.float()).to(x.dtype).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def recurrent(inputs: Tensor, h: Tensor, weight: Tensor) -> Tensor:
        out = _float_product(h, weight)
        return LSTMArithmetic.recurrent(inputs, h, weight) if out is None else inputs + out.to(inputs.dtype)

    @classmethod
    def frames(cls, inputs: Tensor, h: Tensor, c: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lib = library()
        floats = all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (inputs, h, c))
        usable = floats and weight.dtype in (torch.float32, torch.bfloat16) and weight.is_contiguous()
        if lib is None or not usable or _recorded(inputs, h, c, weight):
            return super().frames(inputs, h, c, weight)
        (T, B, _), (N, C) = inputs.shape, weight.shape
        inputs = inputs.contiguous()
        h, c = (state.clone(memory_format=torch.contiguous_format) for state in (h, c))  # the kernel writes them
        y = torch.empty(T, B, C)
        w = LinearWeights(weight.data_ptr(), None, None, N, C, WEIGHT_TYPES[weight.dtype], 0, None)
        threads = usable_threads() if N * C >= PARALLEL_MIN_WEIGHTS else 1
        lib.zhiyin_lstm(ctypes.byref(w), inputs.data_ptr(), h.data_ptr(), c.data_ptr(), y.data_ptr(), T, B, C, threads)
        return y, h, c


class KernelConvolution:
    """One of EnCodec's decoder convolutions over time in the kernels (csrc/convolution.h): a stride-1 nn.Conv1d (its
    input padded by the caller), vectorized over time, or the upsampling's nn.ConvTranspose1d (kernel 2s, stride s:
    the polyphase product, untrimmed) in panels of output columns; an ELU before it applied as the kernel reads its
    input where asked. The weights packed once (again if they change); every output summed in registers in one
    order and written in its place, the bias added last: the same numbers at any thread count and chunk length,
    PyTorch's up to the order of the sums; ~2x faster than PyTorch's product and the passes around it (BENCHMARKS.md,
    "EnCodec's convolutions" and "Narrow convolutions vectorized over time"). float32 on the CPU without gradients to
    record; None elsewhere (the caller's PyTorch)."""

    def __init__(self, conv: nn.Conv1d | nn.ConvTranspose1d, lib: ctypes.CDLL | None = None):
        self.conv = conv
        self.transposed = isinstance(conv, nn.ConvTranspose1d)
        self.lib = lib  # None: library(), the kernels built for this CPU
        self._packed: tuple | None = None  # (what the weight was, packed)

    def _pack(self, lib: ctypes.CDLL) -> Tensor:
        """The weight packed for its kernel. The transposed convolution's as panels of B [K, N]: rows tap by tap,
        input channel by channel; columns output channel by channel, its s phases each (the tap at t-1 takes
        W[:, :, s + r], the one at t W[:, :, r]). A stride-1 convolution's as blocks of output channels, from
        [C_out, C_in k]."""
        w = self.conv.weight.detach().float()
        if self.transposed:  # [C_in, C_out, 2s]
            s, c_in = self.conv.stride[0], w.shape[0]
            matrix = torch.cat([w[:, :, s:].reshape(c_in, -1), w[:, :, :s].reshape(c_in, -1)]).contiguous()
            packed = torch.empty(lib.zhiyin_panel_floats(*matrix.shape))
            lib.zhiyin_pack_panels(matrix.data_ptr(), *matrix.shape, packed.data_ptr())
            return packed
        matrix = w.reshape(w.shape[0], -1).contiguous()
        packed = torch.empty(lib.zhiyin_direct_floats(*matrix.shape))
        lib.zhiyin_pack_direct(matrix.data_ptr(), *matrix.shape, packed.data_ptr())
        return packed

    def __call__(self, x: Tensor, elu: bool = False, left: int = 0, right: int = 0, mode: str = "constant"):
        """The convolution of x [B, C_in, T] (of ELU(x) where elu) -> [B, C_out, ...] or None. A stride-1 one's input
        padded by `left` and `right` as modules/encodec.py's pad1d pads in `mode`: reflected or zeros as the kernel
        reads it (no padded copy), other modes (and reflect padding longer than x) by pad1d first."""
        weight, bias = self.conv.weight, self.conv.bias
        if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
            return None
        if _recorded(x, weight, bias):
            return None
        lib = self.lib or library()
        if lib is None:
            return None
        key = (weight.data_ptr(), None if weight.is_inference() else weight._version)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, self._pack(lib))
        packed = self._packed[1].data_ptr()
        (B, c_in, T), k = x.shape, self.conv.kernel_size[0]
        bias = bias.detach().float().contiguous() if bias is not None else None
        bias_pointer = bias.data_ptr() if bias is not None else None
        threads = usable_threads()
        if not self.transposed:
            if (left or right) and (mode not in ("reflect", "constant") or mode == "reflect" and T <= max(left, right)):
                x, left, right, T = pad1d(x, left, right, mode), 0, 0, T + left + right
            x = x if x.stride(-1) == 1 else x.contiguous()  # rows apart (a slice of a longer output) are read in place
            c_out = weight.shape[0]
            out = torch.empty(B, c_out, max(left + T + right - k + 1, 0))
            layout = (x.stride(1), c_in, T, left, right, int(mode == "reflect"), k, int(elu))
            for b in range(B):
                lib.zhiyin_direct_convolution(
                    x[b].data_ptr(), *layout, packed, bias_pointer, c_out, out[b].data_ptr(), threads
                )
            return out
        assert left == right == 0, "a transposed convolution pads itself"
        x = x.contiguous()
        c_out, s = weight.shape[1], self.conv.stride[0]
        out = torch.empty(B, c_out, (T + 1) * s)
        for b in range(B):  # a kernel-2 convolution over x with a row of zeros either side
            lib.zhiyin_convolution(
                x[b].data_ptr(), c_in, T, 1, 2, int(elu), packed, bias_pointer, c_out, s, out[b].data_ptr(), threads
            )
        return out


def use_kernel_codec(codec: nn.Module) -> None:
    """The codec's decoder on the kernels where they help: its LSTMs' arithmetic (KernelLSTMArithmetic), their
    recurrent weights on huge pages, and its convolutions (KernelConvolution). The encoder keeps PyTorch's arithmetic
    (its outputs are rounded to codes: nearest neighbours that other last bits could change)."""
    for module in codec.decoder.modules():
        if isinstance(module, EncodecLSTM):
            module.arithmetic = KernelLSTMArithmetic
            lstm = module.lstm
            heap.onto_huge_pages([getattr(lstm, f"weight_hh_l{i}") for i in range(lstm.num_layers)])
        if isinstance(module, (EncodecConv1d, EncodecConvTranspose1d)) and _kernel_convolves(module):
            module.kernel_convolution = KernelConvolution(module.conv)


def _kernel_convolves(module: EncodecConv1d | EncodecConvTranspose1d) -> bool:
    """Whether KernelConvolution computes this convolution: every plain stride-1 one, and the transposed ones with
    enough output columns to fill its panels."""
    conv = module.conv
    if isinstance(module, EncodecConvTranspose1d):
        return module.polyphase and conv.out_channels * conv.stride[0] >= KERNEL_CONVOLUTION_COLUMNS
    return module.norm is None and module.stride == 1 and conv.dilation[0] == 1 and conv.groups == 1


def chooser(
    guidance: float | None, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> Callable[[Tensor, Tensor], bool] | None:
    """One request's token choice in one kernel call a step (csrc/kernels.cpp's zhiyin_choose: guidance, temperature,
    top-k, softmax, the draw with the Exp(1) noise [items * K, V] that `generator`'s exponential_ would give, drawn
    from its state, which advances as that draw advances it; no generator: greedy), with these settings: a function
    (logits [R, K, V], out) -> whether it chose, writing the tokens [items * K] into each copy of them that out
    (int64, contiguous, on the CPU) holds. They are the tokens generation/sampling.py's PyTorch ops choose (the two
    softmaxes may differ in the last bit, which decides a draw only where two candidates tie to that bit). Everything
    but the logits is checked here, once: between two steps each check costs tens of microseconds, the caches being
    cold (BENCHMARKS.md, session 25). None where it does not run: no kernels, or a generator that is not on the CPU or
    not drawn as this PyTorch draws (draws_like_pytorch); the function chooses nothing, and draws nothing, for logits
    not float32 and contiguous on the CPU, or with a NaN score."""
    lib = library()  # (built at its first use on the CPU: a GPU's generation never compiles it)
    if lib is None or (generator is not None and (generator.device.type != "cpu" or not draws_like_pytorch())):
        return None
    # holding the GIL while it runs: no other Python thread draws from the generator between get_state and set_state
    call = lib.holding_gil.zhiyin_choose
    settings = (guidance or 0.0, temperature, top_k or 0)
    float32 = torch.float32

    def choose(logits: Tensor, out: Tensor) -> bool:
        if logits.dtype != float32 or not logits.is_cpu or not logits.is_contiguous():
            return False
        R, K, V = logits.shape
        items = R // 2 if guidance is not None else R
        copies = out.numel() // (items * K)
        if out.dtype != torch.int64 or not out.is_cpu or not out.is_contiguous() or copies * items * K != out.numel():
            raise ValueError(
                f"out must be contiguous int64 on the CPU, copies of {items * K} tokens: got {out.dtype} {out.shape}"
            )
        state = None if generator is None else generator.get_state()
        failed = call(
            logits.data_ptr(),
            items,
            K,
            V,
            *settings,
            state if state is None else state.data_ptr(),
            out.data_ptr(),
            copies,
        )
        if not failed and state is not None:
            generator.set_state(state)
        return not failed

    return choose


@lru_cache(maxsize=None)
def draws_like_pytorch() -> bool:
    """Whether the kernels draw from a generator's state the numbers its exponential_ draws, checked once per
    process over several turns of its Mersenne Twister: get_state's bytes and the CPU generator's algorithm are
    PyTorch's own, not a promise of its API, and a PyTorch that changes them leaves sampling to its ops."""
    ours, theirs = torch.Generator().manual_seed(1234), torch.Generator().manual_seed(1234)
    state, drawn = ours.get_state(), torch.empty(3000)
    same = state.numel() == TORCH_GENERATOR_BYTES
    if same:
        library().zhiyin_exponential(state.data_ptr(), drawn.numel(), drawn.data_ptr())
        ours.set_state(state)
        same = torch.equal(drawn, torch.empty(3000).exponential_(1, generator=theirs))
    if not same or not torch.equal(ours.get_state(), theirs.get_state()):
        warnings.warn("zhiyin: this PyTorch draws random numbers unlike the kernels; sampling on PyTorch's ops")
        return False
    return True


def check_quantize(quantize: str | None) -> None:
    if quantize not in (None, *QUANTIZE):
        raise ValueError(f"unknown quantization '{quantize}': the choices are {', '.join(QUANTIZE)}")


def use_kernel_linears(decoder: nn.Module, quantize: str | None = None) -> None:
    """Swap the decoder's bias-free linear layers (projections, FFN, LM heads) for KernelLinear, in place
    (quantizing their weights with quantize='int8' or 'int4'). On a meta-device decoder this makes the layers that
    quantized weights read by weights.read_state_dict(quantized=...) load into."""
    check_quantize(quantize)

    def swapped(layer: nn.Module) -> bool:  # float KernelLinear layers are quantized too
        if isinstance(layer, nn.Linear):
            return layer.bias is None
        return isinstance(layer, KernelLinear) and quantize is not None and layer.quantized is None

    # hold no reference to a replaced layer, so that each one's weights are freed as soon as it is swapped
    parents = [m for m in decoder.modules() if any(swapped(c) for c in m.children())]
    for module in parents:
        for name in [n for n, c in module.named_children() if swapped(c)]:
            setattr(module, name, KernelLinear.from_linear(getattr(module, name), quantize))


def accelerate_decoder(decoder: nn.Module, quantize: str | None = None, precision: Precision | None = None) -> None:
    """Swap the decoder's linear layers for KernelLinear (use_kernel_linears; those already swapped stay as they
    are) and place it by its precision plan (precision.place; by default the plan for its device, its dtype and
    `quantize`). Which step then runs is select.py's decision, per generation."""
    use_kernel_linears(decoder, quantize)
    reference = decoder.final_norm.weight
    place(decoder, precision or plan(reference.device, reference.dtype, quantize))
    heap.return_freed_memory()  # the replaced float weights
