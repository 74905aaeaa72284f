"""The weight-streaming CPU kernels against plain PyTorch, and the fast decoding path against the plain one."""

import ctypes
import platform
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from zhiyin import MusicgenForConditionalGeneration
from zhiyin.backends import kernels
from zhiyin.backends.fused_step import FusedStep
from zhiyin.backends.kernels import KernelLinear
from zhiyin.backends.precision import plan
from zhiyin.backends.select import set_kernels_enabled
from zhiyin.modules import encodec
from zhiyin.modules.quantization import (
    concatenate_int4,
    dequantize_int4,
    int4_blocks,
    int4_rows,
    quantize_int4,
    quantize_int8,
)

from checkpoints import make_checkpoint
from decoder_steps import compare_steps, make_decoder, text_condition


@pytest.fixture(autouse=True)
def kernels_available():
    assert kernels.library() is not None, "the C++ kernels did not build (is g++ installed?)"


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("shape", [(64, 48), (100, 50), (3072, 1024), (1024, 4096)])
def test_float_kernels_match_pytorch(rows, shape):
    N, K = shape
    g = torch.Generator().manual_seed(rows * 7 + N)
    weight, x = torch.randn(N, K, generator=g), torch.randn(rows, K, generator=g)
    want = F.linear(x, weight)
    got = KernelLinear(weight)(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4 * K**0.5)
    half = weight.bfloat16()
    got = KernelLinear(half)(x)
    assert torch.allclose(got, F.linear(x, half.float()), rtol=1e-5, atol=1e-4 * K**0.5)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 6, 7, 8, 21, 100])  # more than 8: a prefill, in blocks of 8 rows
def test_int8_kernel_matches_dequantized_weights(rows):
    weight, x = torch.randn(300, 200), torch.randn(rows, 200)
    q, scale = quantize_int8(weight)
    assert q.dtype == torch.int8 and scale.shape == (300,)
    dequantized = q.float() * scale[:, None]
    assert (dequantized - weight).abs().max() <= scale.max() / 2 + 1e-6  # round to nearest
    got = KernelLinear(q, scale)(x)
    # on x86 with AVX2 and 64-bit ARM the activations go in as int16 (a scale per row): at most half a step off each
    step = x.abs().amax(dim=1, keepdim=True) / 32767  # [rows, 1]
    bound = step / 2 * dequantized.abs().sum(dim=1) + 1e-5 * F.linear(x.abs(), dequantized.abs())
    assert ((got - F.linear(x, dequantized)).abs() <= bound).all()


@pytest.mark.parametrize("N", [301, 1024])  # an odd count leaves a weight row outside the row-pair blocks
def test_int8_rows_do_not_depend_on_the_rows_beside_them(N):
    """A row's product is the same exact sum however many rows pass over the weights with it (the step's rows of
    several requests: continuous batching relies on it)."""
    weight, x = torch.randn(N, 384), torch.randn(21, 384)
    layer = KernelLinear(*quantize_int8(weight))
    alone = torch.cat([layer(row[None]) for row in x])
    for rows in (2, 5, 6, 8, 13, 21):
        assert torch.equal(layer(x[:rows]), alone[:rows]), rows


@pytest.fixture(scope="module")
def fma_shy_kernels(tmp_path_factory):
    """The kernels as GCC builds them where its tuning avoids chains of fused multiply-adds (as for some CPUs it
    does): then it fused a product with its add in some block sizes' loops and not in others'; None with another
    compiler."""
    folder = tmp_path_factory.mktemp("fma-shy")
    wrapper = folder / "c++"
    wrapper.write_text(f'#!/bin/sh\nexec {kernels._compiler()} "$@" --param=avoid-fma-max-bits=512\n')
    wrapper.chmod(0o755)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CXX", str(wrapper))
        patch.setenv("ZHIYIN_CACHE", str(folder / "cache"))
        try:
            return kernels.build()
        except RuntimeError:
            return None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K", [64, 1000, 8193])  # whole vectors; 8 and 1 columns past them (the scalar tail)
def test_float_rows_do_not_depend_on_the_rows_beside_them(fma_shy_kernels, dtype, K):
    """float32 and bfloat16 weights too (EnCodec's LSTM products, of any row count): each block size sums a row in
    the same order with the same fused multiply-adds, written out, whatever the compiler's tuning prefers (GCC,
    tuned for some CPUs, fuses them in some block sizes and not in others)."""
    g = torch.Generator().manual_seed(K)
    layer, x = KernelLinear(torch.randn(40, K, generator=g).to(dtype)), torch.randn(40, K, generator=g)
    for library in [kernels.library()] + ([fma_shy_kernels] if fma_shy_kernels else []):
        alone = torch.cat([_product(library, layer, row[None]) for row in x])
        for rows in (2, 3, 4, 5, 8, 11, 40):
            assert torch.equal(_product(library, layer, x[:rows]), alone[:rows]), rows


def _on_and_off_amx(monkeypatch, run):
    """run() with int8 products on AMX tiles, then on the vector units (ZHIYIN_AMX=0)."""
    if kernels.amx_rows() is None:
        pytest.skip("this CPU, or its Linux, has no AMX tiles for the kernels")
    on = run()
    monkeypatch.setenv("ZHIYIN_AMX", "0")
    assert kernels.amx_rows() is None
    off = run()
    monkeypatch.delenv("ZHIYIN_AMX")
    return on, off


# (48, 16384): two threads take 24 output rows each, so each share has rows outside whole tiles (on the vector
# units); (1000, 256), (40, 64): no tiles at all (output rows not a multiple of 16)
@pytest.mark.parametrize(
    "N, K", [(1024, 1024), (3072, 1024), (1024, 4096), (96, 8192), (48, 16384), (1000, 256), (40, 64)]
)
def test_int8_products_on_amx_tiles_are_the_same_numbers(monkeypatch, N, K):
    """Where the CPU has AMX, int8 products of more than 5 rows run on its tiles (each int16 activation as its high
    and low bytes, two exact int32 products put together): the same numbers to the bit as the vector units', for
    every row count, shares of output rows that end inside a tile, and the largest weights and activations."""
    g = torch.Generator().manual_seed(N + K)
    layer = KernelLinear(*quantize_int8(torch.randn(N, K, generator=g)))
    xs = [torch.randn(rows, K, generator=g) * torch.rand(rows, 1, generator=g) * 10 for rows in (5, 6, 8, 16, 17, 40)]
    extreme = KernelLinear(*quantize_int8(torch.cat([torch.ones(N // 2, K), -torch.ones(N - N // 2, K)])))
    xs.append(torch.cat([torch.ones(8, K), -torch.ones(8, K)]))  # int16 activations +-32767: bytes 127/255, -128/1

    def products():
        return [layer(x) for x in xs] + [extreme(xs[-1])]

    on, off = _on_and_off_amx(monkeypatch, products)
    tiled = N % 16 == 0 and K % 64 == 0
    assert (layer.tiles(6) is not None) == tiled
    assert layer.tiles(5) is None  # (the products of 5 rows stream on the vector units: no second copy)
    for a, b in zip(on, off):
        assert torch.equal(a, b)
    assert torch.equal(on[-1][:8, 0], torch.full((8,), float(K)))
    if tiled:  # the tiles follow the weights when they change
        before = layer.tiles(6)
        with torch.no_grad():
            layer.weight[0, :64].neg_()
        assert not torch.equal(layer.tiles(6), before)
        assert torch.equal(layer.tiles(6)[0, 0, :, 0], layer.weight.data[0, :64].view(16, 4))


def test_a_decoder_step_on_amx_tiles_is_the_same_step(monkeypatch):
    """A fused int8 step of 12 rows (6 requests with guidance) gives the same logits with AMX as without."""
    decoder = make_decoder(seed=5, ffn_dim=128)
    kernels.accelerate_decoder(decoder, "int8")
    rows, K = 12, decoder.config.num_codebooks
    cross = text_condition(decoder, rows)
    tokens = torch.randint(0, decoder.config.vocab_size, (rows, K))

    def step():
        with torch.inference_mode():
            decoder.setup_caches(rows, 8)
            fused = FusedStep.build(decoder, cross)
            return [fused(tokens, torch.full((rows,), position)) for position in range(3)]

    on, off = _on_and_off_amx(monkeypatch, step)
    for a, b in zip(on, off):
        assert torch.equal(a, b)
    decoder.free_caches()


def _int4_product(layer: KernelLinear, x: Tensor) -> Tensor:
    """What the int4 kernels compute on every CPU, in PyTorch: each activation row scaled to -127..127 (its largest
    magnitude to 127), its float32 products rounded to integers, exact integer sums against value x group scale,
    then float(sum) * (row scale x activation scale)."""
    K = layer.in_features
    integers = dequantize_int4(layer.weight, torch.ones_like(layer.scale), layer.groups, K).long()
    top = x.abs().amax(dim=1, keepdim=True)
    row_scale = torch.where(top > 0, top / 127, torch.ones_like(top))
    xq = torch.round(x * (1.0 / row_scale)).clamp(-127, 127)
    return (xq.long() @ integers.T).float() * (layer.scale[None, :] * row_scale)


def test_int4_quantization():
    """Values -8..7 in whole units of a step per 32 columns: each group's value of largest magnitude becomes -8
    exactly, the others round to the nearest step; the steps are whole multiples (-63..63) of the row's scale."""
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(50, 200, generator=g) * torch.rand(50, 1, generator=g)
    weight[3] = 0  # a row of zeros
    weight[4, 64:96] = 1e-9  # a group far smaller than its row's largest
    packed, scale, groups = quantize_int4(weight)
    assert packed.dtype == torch.uint8 and packed.shape == (50, 112)  # 200 columns padded to 224, two per byte
    assert scale.shape == (50,) and groups.shape == (50, 7) and groups.dtype == torch.int8
    assert groups.abs().max() <= 63 and (groups != 0).all()
    dequantized = dequantize_int4(packed, scale, groups, 200)
    assert dequantized.shape == (50, 200) and not dequantized[3].any()
    in_rows = int4_rows(packed, groups)[1]  # the group scales in row order (quantize_int4 gives the kernels')
    assert torch.equal(int4_blocks(int4_rows(packed, groups)[0], in_rows)[0], packed)
    steps = (in_rows.float() * scale[:, None]).repeat_interleave(32, dim=1)[:, :200]
    values = dequantize_int4(packed, torch.ones(50), torch.ones_like(groups), 200)
    assert torch.equal(values * steps, dequantized) and values.min() >= -8 and values.max() <= 7
    unclamped = values < 7
    assert ((dequantized - weight).abs()[unclamped] <= steps.abs()[unclamped] * 0.5001 + 1e-12).all()
    assert (dequantized - weight).norm() < 0.1 * weight.norm()  # 4 bits: about 8 % of a Gaussian's norm
    extreme = weight[:, :192].reshape(50, 6, 32).abs().argmax(dim=-1)  # each full group's largest becomes -8
    assert (values[:, :192].reshape(50, 6, 32).gather(-1, extreme[..., None]).abs()[[0, 1, 2, 5]] == 8).all()


def test_int4_pieces_stack_into_one_weight():
    """Pieces quantized apart (a checkpoint's q, k, v projections) stacked: the weight quantize_int4 makes of the
    stacked rows, also where a piece ends inside a block of 16 rows"""
    g = torch.Generator().manual_seed(5)
    for rows in ([16, 32], [20, 30, 7]):
        pieces = [torch.randn(n, 96, generator=g) for n in rows]
        packed, _, groups = quantize_int4(torch.cat(pieces))
        got = concatenate_int4([quantize_int4(p)[::2] for p in pieces])
        assert torch.equal(got[0], packed) and torch.equal(got[1], groups), rows
    with pytest.raises(ValueError, match="at most 32768 columns"):
        quantize_int4(torch.zeros(1, 32769))


@pytest.mark.parametrize("rows", [1, 2, 3, 6, 8, 21])
@pytest.mark.parametrize("shape", [(100, 48), (64, 96), (301, 1000), (40, 4096), (17, 8192)])
def test_int4_kernel_is_the_exact_integer_product(rows, shape):
    """int4 weights against int8 activations: exact integer sums (any row count; 1000 columns end inside a group;
    100, 301 and 17 rows end inside a block of 16), the same bits as the PyTorch reference."""
    N, K = shape
    g = torch.Generator().manual_seed(rows + N)
    weight, x = torch.randn(N, K, generator=g), torch.randn(rows, K, generator=g)
    layer = KernelLinear(*quantize_int4(weight), in_features=K)
    got = layer(x)
    assert torch.equal(got, _int4_product(layer, x))
    # against the float product of the same weights: off by the activations' rounding (half a step of each) only
    weights = layer.dequantized(torch.float32)
    step = x.abs().amax(dim=1, keepdim=True) / 127
    assert ((got - F.linear(x, weights)).abs() <= 0.5 * step * weights.abs().sum(dim=1) * 1.001 + 1e-4).all()


@pytest.mark.parametrize("N", [301, 1024])
def test_int4_rows_do_not_depend_on_the_rows_beside_them(N):
    weight, x = torch.randn(N, 384), torch.randn(21, 384)
    layer = KernelLinear(*quantize_int4(weight), in_features=384)
    alone = torch.cat([layer(row[None]) for row in x])
    for rows in (2, 5, 6, 8, 13, 21):
        assert torch.equal(layer(x[:rows]), alone[:rows]), rows


def test_more_rows_than_the_kernel_takes_fall_back_to_pytorch():
    weight, x = torch.randn(64, 32), torch.randn(3, 7, 32)  # 21 rows
    assert torch.allclose(KernelLinear(weight)(x), F.linear(x, weight), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 11, 40])
def test_lstm_products_are_pytorchs_at_any_thread_count(monkeypatch, dtype, rows):
    """EnCodec's LSTM products on the kernels (the frame-by-frame recurrence's, where it is not one call):
    PyTorch's numbers up to the order of the sums, and the same bits on 1 or 2 threads and whatever rows are beside
    (BLAS's small products are not, on some CPUs); a weight that is not contiguous goes to PyTorch itself."""
    g = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(256, 64, generator=g).to(dtype), torch.randn(256, generator=g).to(dtype)
    x, h = torch.randn(rows, 1, 64, generator=g).to(dtype), torch.randn(rows, 64, generator=g).to(dtype)
    products = kernels.KernelLSTMArithmetic
    calls = []
    product = kernels._product
    monkeypatch.setattr(kernels, "_product", lambda *a: calls.append(1) or product(*a))
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    inputs = products.inputs(x, weight, bias)
    want = F.linear(x.float(), weight.float(), bias.float())
    assert inputs.dtype == dtype and inputs.shape == (rows, 1, 256)
    assert (inputs.float() - want).abs().max() <= tolerance * want.abs().max()
    gates = products.recurrent(inputs[:, 0], h, weight)
    want = torch.addmm(inputs[:, 0].float(), h.float(), weight.float().t())
    assert gates.dtype == dtype and (gates.float() - want).abs().max() <= tolerance * want.abs().max()
    assert len(calls) == 2
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(products.inputs(x, weight, bias), inputs)
            assert torch.equal(products.inputs(x[-1:], weight, bias), inputs[-1:])  # alone: the same bits
            assert torch.equal(products.recurrent(inputs[:, 0], h, weight), gates)
    finally:
        torch.set_num_threads(previous)
    transposed = weight.t().contiguous().t()  # the same values, not contiguous
    assert torch.equal(products.recurrent(inputs[:, 0], h, transposed), torch.addmm(inputs[:, 0], h, transposed.t()))
    calls.clear()
    learned = weight.clone().requires_grad_()  # gradients to record: PyTorch's products, which record them
    assert products.recurrent(inputs[:, 0], h, learned).grad_fn is not None and not calls
    assert torch.equal(products.inputs(x, transposed, bias), F.linear(x, transposed, bias))


@pytest.mark.parametrize("channels, batch", [(512, 1), (512, 3), (40, 2)])
@torch.inference_mode()  # as the codec decodes
def test_lstm_recurrence_in_one_call_is_pytorchs_at_any_thread_count(channels, batch):
    """An LSTM layer's recurrence over every frame in one kernel call (zhiyin_lstm): nn.LSTM's outputs and final
    state up to rounding (its sigmoid and tanh are ours); the same bits on 1 or 2 threads (512 channels: large enough
    for both) and when the frames come in two calls, the state carried; the caller's state left as it was. Other
    dtypes go frame by frame."""
    g = torch.Generator().manual_seed(channels + batch)
    lstm = torch.nn.LSTM(channels, channels)
    with torch.no_grad():
        for weight in lstm.parameters():
            weight.copy_(torch.randn(weight.shape, generator=g) * 2 / channels**0.5)  # gates well beyond 0.625
    frames = 23
    x = torch.randn(frames, batch, channels, generator=g)
    h, c = torch.randn(batch, channels, generator=g), torch.randn(batch, channels, generator=g)
    want, (want_h, want_c) = lstm(x, (h[None], c[None]))
    arithmetic = kernels.KernelLSTMArithmetic
    inputs = arithmetic.inputs(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
    kept = h.clone(), c.clone()
    previous, got = torch.get_num_threads(), {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got[threads] = arithmetic.frames(inputs, h, c, lstm.weight_hh_l0)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(h, kept[0]) and torch.equal(c, kept[1])
    for one, two in zip(got[1], got[2]):
        assert torch.equal(one, two)
    y, last_h, last_c = got[2]
    assert y.shape == want.shape and torch.equal(last_h, y[-1])
    for ours, theirs in ((y, want), (last_h, want_h[0]), (last_c, want_c[0])):
        assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()
    head, head_h, head_c = arithmetic.frames(inputs[:9], h, c, lstm.weight_hh_l0)
    tail, tail_h, tail_c = arithmetic.frames(inputs[9:], head_h, head_c, lstm.weight_hh_l0)
    assert torch.equal(torch.cat([head, tail]), y) and torch.equal(tail_h, last_h) and torch.equal(tail_c, last_c)
    narrow = [t.to(torch.bfloat16) for t in (inputs, h, c, lstm.weight_hh_l0)]
    y16 = arithmetic.frames(*narrow)[0]
    assert y16.dtype == torch.bfloat16 and (y16.float() - want).abs().max() <= 0.1


@pytest.mark.parametrize(
    "c_in, c_out, kernel, stride",
    [(64, 32, 16, 8), (48, 24, 10, 5), (16, 5, 4, 2), (32, 16, 3, 1), (24, 40, 7, 1), (40, 24, 1, 1), (64, 1, 7, 1)]
    + [(24, 72, 3, 1)],  # channels in 9 blocks (on AVX-512; 18 on AVX2) over a few times: split by channels
)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("elu", [False, True])
@torch.no_grad()  # as the codec decodes (in inference mode)
def test_convolutions_are_pytorchs_at_any_thread_count_and_chunk(c_in, c_out, kernel, stride, bias, elu):
    """EnCodec's decoder convolutions on the kernels: the upsampling's transposed ones (kernel 2s, stride s; strides
    whose phases fill the packed panels unevenly, channels that are no multiple of a vector) and stride-1 ones
    (kernel 7, 3, 1; to one channel, as the codec's last; channels that are no multiple of a block), an ELU before
    them or not: PyTorch's numbers up to the order of the sums; the same bits on 1 or 2 threads, and for the first
    outputs of a chunk whatever input follows."""
    torch.manual_seed(stride + c_in + kernel)
    make = torch.nn.ConvTranspose1d if stride > 1 else torch.nn.Conv1d
    conv = make(c_in, c_out, kernel, stride, bias=bias)
    convolution = kernels.KernelConvolution(conv)
    previous = torch.get_num_threads()
    try:
        for frames in (kernel, kernel + 1, kernel + 6, 60, 500):
            x = torch.randn(2, c_in, frames)
            got = {}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                got[threads] = convolution(x, elu)
            assert torch.equal(got[1], got[2])
            want = conv(F.elu(x) if elu else x)
            assert got[2].shape == want.shape
            assert (got[2] - want).abs().max() <= 1e-5 * want.abs().max()
            head = (frames // 2 - kernel + 1) * stride if stride == 1 else frames // 2 * stride  # outputs of x[:half]
            assert torch.equal(convolution(x[:, :, : frames // 2], elu)[..., :head], got[2][..., :head])
            if stride > 1:
                continue
            # a stride-1 one pads x as it reads it (a short x reflected: padded first), the same bits as a padded
            # copy; x's rows may lie apart (a slice of a longer output): read in place
            longer = torch.randn(2, c_in, frames + 9)
            longer[..., :frames] = x
            for left, right, mode in ((kernel - 1, 0, "reflect"), (3, 2, "reflect"), (kernel // 2, 2, "constant")):
                padded = encodec.pad1d(x, left, right, mode)
                once = convolution(padded, elu)
                assert torch.equal(convolution(x, elu, left, right, mode), once), (left, right, mode)
                assert torch.equal(convolution(longer[..., :frames], elu, left, right, mode), once)
                want = conv(F.elu(padded) if elu else padded)
                assert (once - want).abs().max() <= 1e-5 * want.abs().max()
    finally:
        torch.set_num_threads(previous)
    assert convolution(x.to(torch.bfloat16)) is None  # another dtype: the caller's PyTorch
    with torch.enable_grad():
        assert convolution(x) is None  # gradients to record (the weights want them): PyTorch's
    conv.weight.mul_(2)  # a changed weight is packed again
    assert (convolution(x) - conv(x)).abs().max() <= 1e-5 * conv(x).abs().max()


@torch.inference_mode()  # as the model and the engine decode
def test_the_codecs_decoder_runs_on_the_kernels(tiny_checkpoint, monkeypatch):
    """from_pretrained gives the codec's decoder LSTMs the kernels' arithmetic and its convolutions the kernels'
    (KernelConvolution: every stride-1 one, the transposed ones with enough output columns): the same audio up to
    rounding, and the same bits on 1 or 2 threads, chunk by chunk too; the encoder keeps PyTorch's, whose outputs
    become codes."""
    monkeypatch.setattr(kernels, "KERNEL_CONVOLUTION_COLUMNS", 16)  # the tiny codec's are narrow
    model = MusicgenForConditionalGeneration.from_pretrained(tiny_checkpoint[0])
    codec = model.audio_encoder
    decoding = [m for m in codec.decoder.modules() if isinstance(m, encodec.EncodecLSTM)]
    encoding = [m for m in codec.encoder.modules() if isinstance(m, encodec.EncodecLSTM)]
    kinds = (encodec.EncodecConv1d, encodec.EncodecConvTranspose1d)
    convolutions = [m for m in codec.decoder.modules() if isinstance(m, kinds)]
    assert decoding and encoding and convolutions
    assert all(m.arithmetic is kernels.KernelLSTMArithmetic for m in decoding)
    assert all(m.arithmetic is encodec.LSTMArithmetic for m in encoding)
    for m in convolutions:  # transposed ones of few output columns keep PyTorch's
        transposed = isinstance(m, encodec.EncodecConvTranspose1d)
        wide = not transposed or m.conv.out_channels * m.conv.stride[0] >= kernels.KERNEL_CONVOLUTION_COLUMNS
        assert isinstance(m.kernel_convolution, kernels.KernelConvolution) == wide, m
    assert sum(m.kernel_convolution is not None for m in convolutions) >= 4
    assert convolutions[-1].conv.out_channels == 1 and convolutions[-1].kernel_convolution is not None
    assert not any(m.kernel_convolution for m in codec.encoder.modules() if isinstance(m, kinds))
    codes = torch.randint(0, model.config.audio_encoder.codebook_size, (1, 4, 60), generator=torch.Generator())
    previous, audio = torch.get_num_threads(), {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            decode = encodec.ChunkedDecode(codec)
            decode.add(codes)
            audio[threads] = torch.cat([decode.decode(end) for end in (5, 11, 23, 29, 36, 47, 60)], dim=-1)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(audio[1], audio[2])
    for m in decoding:
        m.arithmetic = encodec.LSTMArithmetic
    for m in convolutions:
        m.kernel_convolution = None
    plain = model.decode_audio(codes)
    assert (audio[2] - plain).norm() <= 1e-5 * plain.norm()


def test_fast_path_is_token_identical_to_the_plain_path(tiny_checkpoint):
    folder, _ = tiny_checkpoint
    model = MusicgenForConditionalGeneration.from_pretrained(folder)
    assert any(isinstance(m, KernelLinear) for m in model.decoder.modules())
    inputs = dict(
        input_ids=torch.tensor([[5, 9, 3, 1], [7, 1, 0, 0]]), attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    )
    fast = model.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=40, return_codes=True)
    previous = set_kernels_enabled(False)
    try:
        plain = model.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=40, return_codes=True)
    finally:
        set_kernels_enabled(previous)
    assert torch.equal(fast, plain)


def test_int8_and_bfloat16_models_stay_close_to_float32(tiny_checkpoint):
    folder, _ = tiny_checkpoint
    reference = MusicgenForConditionalGeneration.from_pretrained(folder)
    inputs = dict(input_ids=torch.tensor([[5, 9, 3, 1]]))
    tokens = torch.randint(0, 64, (1, 4, 1))  # one row: the kernels' path
    want = reference(**inputs, decoder_input_ids=tokens)
    for options, tolerance in [
        (dict(quantize="int8"), 0.05),
        (dict(quantize="int4"), 0.2),
        (dict(dtype="bfloat16"), 0.05),
    ]:
        model = MusicgenForConditionalGeneration.from_pretrained(folder, **options)
        got = model(**inputs, decoder_input_ids=tokens).float()
        assert (got - want).abs().max() / want.abs().max() < tolerance, options
    for options in (dict(quantize="int8"), dict(quantize="int4")):
        with pytest.raises(ValueError, match="cannot save a quantized model"):
            MusicgenForConditionalGeneration.from_pretrained(folder, **options).save_pretrained(folder / "never")
    with pytest.raises(ValueError, match="the choices are int8, int4"):
        MusicgenForConditionalGeneration.from_pretrained(folder, quantize="int3")


@pytest.mark.parametrize("layout", ["safetensors", "bin-2023", "sharded", "sharded-bin"])
@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantized_while_reading_equals_quantizing_the_loaded_model(layout, quantize, tmp_path):
    """from_pretrained(quantize=...) quantizes each decoder weight as it is read (the float32 file is never held
    whole): the same weights, scales (and int4's group scales) as loading in float32 and quantizing afterwards."""
    make_checkpoint(tmp_path, "tiny", layout)
    quantized = MusicgenForConditionalGeneration.from_pretrained(tmp_path, quantize=quantize)
    model = MusicgenForConditionalGeneration.from_pretrained(tmp_path)
    kernels.accelerate_decoder(model.decoder, quantize)
    want, got = model.state_dict(), quantized.state_dict()
    assert set(got) == set(want)
    stored = torch.int8 if quantize == "int8" else torch.uint8
    assert sum(v.dtype == stored for v in got.values()) == 2 * 7 + 4  # 2 layers x 7 linears + 4 LM heads
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key


def test_int8_with_reduced_precision_and_auto_dtypes(tiny_checkpoint):
    folder, _ = tiny_checkpoint
    for dtype, rest in [("bfloat16", torch.bfloat16), ("auto", torch.float32), ("float16", torch.float16)]:
        model = MusicgenForConditionalGeneration.from_pretrained(folder, dtype=dtype, quantize="int8")
        head = model.decoder.lm_heads[0]
        assert head.weight.dtype == torch.int8 and head.scale.dtype == torch.float32, dtype  # scales stay float32
        conditioning = plan(None, rest, "int8").conditioning  # float32 where this CPU has no native `rest`
        assert model.text_encoder.shared.weight.dtype == conditioning, dtype
        # bfloat16 on the CPU: the decoder's norms and embeddings in float32 (float activations)
        norm = torch.float32 if dtype == "bfloat16" else rest
        assert model.decoder.final_norm.weight.dtype == norm, dtype
        logits = model(input_ids=torch.tensor([[5, 9, 3]]), decoder_input_ids=torch.zeros(1, 4, 2, dtype=torch.long))
        assert torch.isfinite(logits).all()


def test_kernels_are_built_once_into_the_cache_with_a_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZHIYIN_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_library", None)
    monkeypatch.setattr(kernels, "_tried", False)
    assert kernels.library() is not None
    built = list(tmp_path.glob("kernels-*.so"))
    assert len(built) == 1 and "compiling the CPU kernels" in capsys.readouterr().err
    monkeypatch.setattr(kernels, "_library", None)
    monkeypatch.setattr(kernels, "_tried", False)
    assert kernels.library() is not None  # a new process would find it: no second build, no notice
    assert list(tmp_path.glob("kernels-*.so")) == built and capsys.readouterr().err == ""


def _product(library, layer: KernelLinear, x: Tensor) -> Tensor:
    y = torch.empty(x.shape[0], layer.out_features)
    library.zhiyin_linear(ctypes.byref(layer.weights()), x.data_ptr(), y.data_ptr(), x.shape[0], 2)
    return y


def _int16_product(q: Tensor, scale: Tensor, x: Tensor) -> Tensor:
    """What the int8 kernels compute where activations go in as int16 (x86 with AVX2, 64-bit ARM), in PyTorch: each
    row scaled to +-32767, its float32 products x * (1 / scale) rounded to the nearest integer (ties to even), exact
    integer sums, then float(sum) * (weight scale * row scale)."""
    top = x.abs().amax(dim=1, keepdim=True)  # [rows, 1]
    row_scale = torch.where(top > 0, top / 32767.0, torch.ones_like(top))
    xq = torch.round(x * (1.0 / row_scale))  # float32 products, then to the nearest integer
    sums = xq.long() @ q.long().T  # exact
    return sums.float() * (scale[None, :] * row_scale)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="int16 activations: x86 and 64-bit ARM")
def test_int16_activations_round_each_float32_product():
    """Activations whose float32 product with the row's inverse scale lands exactly on .5 (the exact product just
    above): rounded from the float32 product, ties to even, at every column, vector body or tail, on every build
    (a fused multiply-add in the vector body once rounded them up while the scalar tail rounded them down)."""
    if not kernels.library().zhiyin_int16():
        pytest.skip("this build converts int8 to float")
    g = torch.Generator().manual_seed(3)
    candidates = torch.rand(200000, generator=g)
    exact = candidates.double() * 32767.0
    ties = candidates[torch.round(candidates * 32767.0).double() != torch.round(exact)]  # float32 .5, exact above
    x = torch.randn(3, 1000, generator=g).clamp(-1, 1) * 0.9
    x[:, 0] = 1.0  # each row's largest: the inverse scale is 32767
    for row in range(3):
        x[row, [5, 500, 991, 993, 999]] = ties[row * 5 : row * 5 + 5]
    layer = KernelLinear(*quantize_int8(torch.randn(40, 1000, generator=g)))
    want = _int16_product(layer.weight, layer.scale, x)
    builds = [kernels.library()]
    if platform.machine() == "x86_64" and "avx2" in kernels._cpu_signature().split():
        builds.append(kernels.build("x86-64-v3"))
    for library in builds:
        assert torch.equal(_product(library, layer, x), want)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 instruction-set levels")
@pytest.mark.parametrize("march, flag", [("x86-64-v3", "avx2"), ("x86-64", "sse2")])
def test_kernels_built_for_older_x86_levels(march, flag):
    """Most x86 machines have AVX2 but not AVX-512 (where this CPU may build wider code): the same sources built for
    AVX2 and for plain SSE2 give the same products and the same decoder steps. int8 on AVX2 uses exact integer sums
    like AVX512-VNNI does: the same numbers to the bit."""
    if flag not in kernels._cpu_signature().split():  # /proc/cpuinfo's flags line
        pytest.skip(f"this CPU has no {flag}")
    native, older = kernels.library(), kernels.build(march)
    g = torch.Generator().manual_seed(0)
    for N, K in [(96, 1000), (64, 4096), (40, 8192)]:
        weight = torch.randn(N, K, generator=g)
        for rows in (1, 2, 6, 8, 100):
            x = torch.randn(rows, K, generator=g)
            for layer in (KernelLinear(weight), KernelLinear(weight.bfloat16())):
                want = F.linear(x, layer.weight.float())
                assert torch.allclose(_product(older, layer, x), want, rtol=1e-5, atol=1e-4 * K**0.5), (N, K, rows)
            int8 = KernelLinear(*quantize_int8(weight))
            got = _product(older, int8, x)
            if flag == "avx2":
                assert torch.equal(got, _product(native, int8, x)), (N, K, rows)
            int4 = KernelLinear(*quantize_int4(weight), in_features=K)  # exact integer sums on every build
            assert torch.equal(_product(older, int4, x), _product(native, int4, x)), (N, K, rows)
            want = F.linear(x, int8.dequantized(torch.float32))
            assert ((got - want).abs() <= 1e-3 * F.linear(x.abs(), int8.dequantized(torch.float32).abs())).all()
    # the int16 products' worst case: every weight and activation at its largest, int32 lanes at their fullest
    extreme = KernelLinear(*quantize_int8(torch.ones(8, 8192)))
    x = torch.ones(2, 8192)
    assert torch.equal(_product(older, extreme, x), torch.full((2, 8), 8192.0))
    extreme = KernelLinear(*quantize_int4(-torch.ones(8, 8192)), in_features=8192)  # every weight -8 x 63
    assert torch.equal(_product(older, extreme, x), _int4_product(extreme, x))
    assert torch.allclose(_product(older, extreme, x), torch.full((2, 8), -8192.0))
    for conv in (torch.nn.ConvTranspose1d(48, 24, 10, 5), torch.nn.Conv1d(32, 40, 3), torch.nn.Conv1d(64, 1, 7)):
        x = torch.randn(1, conv.in_channels, 37, generator=g)  # EnCodec's kinds, with their fused ELU
        with torch.no_grad():
            got, want = kernels.KernelConvolution(conv, older)(x, True), kernels.KernelConvolution(conv)(x, True)
        if flag == "avx2":  # one fused multiply-add after another, in the same order on both
            assert torch.equal(got, want)
        assert (got - conv(F.elu(x)).detach()).abs().max() <= 1e-5 * want.abs().max()
    for quantize in (None, "int8", "int4"):
        decoder = make_decoder(seed=11)
        kernels.accelerate_decoder(decoder, quantize)
        compare_steps(
            decoder,
            text_condition(decoder, 2),
            2,
            tolerance=1e-5 if quantize is None else 1e-3,
            build=lambda decoder, cross: FusedStep(decoder, cross, older),
        )


# The CPU levels people's machines have, whatever this one is: AMX (Sapphire Rapids) and AVX-512 with native
# bfloat16 (Zen 4) compile parts that no other x86 level does, 64-bit ARM its NEON parts, where a name clash or a
# type error breaks the whole build for those CPUs alone. The other architecture's levels need a cross compiler
# (.ci/run installs Debian's g++-aarch64-linux-gnu).
CPU_LEVELS = [
    *(("x86_64", march) for march in ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4", "icelake-server")),
    *(("x86_64", march) for march in ("sapphirerapids", "znver4")),
    *(("aarch64", march) for march in ("armv8-a", "armv8.2-a+dotprod", "armv9-a")),
]


@pytest.mark.parametrize("architecture, march", CPU_LEVELS)
def test_the_kernels_compile_for_every_cpu_level(architecture, march):
    """The sources compile (syntax and every template, no code made) for each level, as _compile builds them; a
    compiler older than the level skips it."""
    compiler = (
        kernels._compiler() if platform.machine() == architecture else shutil.which(f"{architecture}-linux-gnu-g++")
    )
    if compiler is None:
        pytest.skip(f"no C++ compiler for {architecture} here (Debian: g++-{architecture.replace('_', '-')}-linux-gnu)")
    command = [compiler, *kernels.FLAGS, "-fopenmp", f"-march={march}", "-fsyntax-only"]
    done = subprocess.run([*command, str(kernels.SOURCES / "kernels.cpp")], capture_output=True, text=True)
    unknown = ("bad value", "unknown value", "unknown target CPU", "invalid feature modifier")  # (gcc, clang)
    if done.returncode and any(words in done.stderr for words in unknown):
        pytest.skip(f"this compiler knows no -march={march}")
    assert done.returncode == 0, done.stderr[-3000:]


def _refusing_compiler(tmp_path, monkeypatch, flag: str, message: str) -> None:
    """The system's C++ compiler, behind a wrapper that fails with `message` when given `flag`, as CXX, with a fresh
    kernel cache."""
    wrapper = tmp_path / "c++"
    refuse = f'[ "$a" = {flag} ] && {{ echo "{message}" >&2; exit 1; }}'
    wrapper.write_text(f'#!/bin/sh\nfor a; do {refuse}; done\nexec {kernels._compiler()} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CXX", str(wrapper))
    monkeypatch.setenv("ZHIYIN_CACHE", str(tmp_path / "cache"))


def test_a_compiler_without_openmp_builds_one_thread_kernels(tmp_path, monkeypatch, capsys):
    """Apple's clang has no -fopenmp: the kernels are then built without it and run on one thread, same numbers."""
    _refusing_compiler(tmp_path, monkeypatch, "-fopenmp", "unsupported option -fopenmp")
    single = kernels.build()
    assert "has no OpenMP" in capsys.readouterr().err
    assert single.zhiyin_openmp() == 0
    layer = KernelLinear(*quantize_int8(torch.randn(300, 1000)))
    x = torch.randn(2, 1000)
    assert torch.equal(_product(single, layer, x), _product(kernels.library(), layer, x))
    decoder = make_decoder(seed=12)
    kernels.accelerate_decoder(decoder)
    compare_steps(
        decoder, text_condition(decoder, 2), 2, build=lambda decoder, cross: FusedStep(decoder, cross, single)
    )


@pytest.mark.skipif(platform.machine() != "x86_64", reason="on x86 -mcpu only tunes")
def test_a_native_build_that_fails_on_x86_says_so(tmp_path, monkeypatch):
    """Sources that do not compile for this CPU raise with the compiler's error (the kernels are then off, with a
    warning): never a library quietly built for the oldest x86 by a -mcpu=native retry."""
    _refusing_compiler(tmp_path, monkeypatch, "-march=native", "error: the code does not build")
    with pytest.raises(RuntimeError, match="the code does not build"):
        kernels.build()


def test_a_kernel_linear_takes_no_rows():
    """A product of no rows (the text projection of a batch of null texts only) is empty, not a crash."""
    weight = torch.randn(8, 16)
    for quantize in (None, "int8", "int4"):
        layer = KernelLinear.from_linear(KernelLinear(weight), quantize)
        assert layer(torch.randn(0, 3, 16)).shape == (0, 3, 8)
