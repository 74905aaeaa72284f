"""The weight-streaming CPU kernels against plain PyTorch, and the fast decoding path against the plain one."""

import ctypes
import platform

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
from zhiyin.modules.quantization import quantize_int8

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


def test_more_rows_than_the_kernel_takes_fall_back_to_pytorch():
    weight, x = torch.randn(64, 32), torch.randn(3, 7, 32)  # 21 rows
    assert torch.allclose(KernelLinear(weight)(x), F.linear(x, weight), atol=1e-5)


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
    for options, tolerance in [(dict(quantize="int8"), 0.05), (dict(dtype="bfloat16"), 0.05)]:
        model = MusicgenForConditionalGeneration.from_pretrained(folder, **options)
        got = model(**inputs, decoder_input_ids=tokens).float()
        assert (got - want).abs().max() / want.abs().max() < tolerance, options
    quantized = MusicgenForConditionalGeneration.from_pretrained(folder, quantize="int8")
    with pytest.raises(ValueError, match="int8"):
        quantized.save_pretrained(folder / "never")
    with pytest.raises(ValueError, match="int8"):
        MusicgenForConditionalGeneration.from_pretrained(folder, quantize="int4")


@pytest.mark.parametrize("layout", ["safetensors", "bin-2023", "sharded", "sharded-bin"])
def test_int8_quantized_while_reading_equals_quantizing_the_loaded_model(layout, tmp_path):
    """from_pretrained(quantize='int8') quantizes each decoder weight as it is read (the float32 file is never held
    whole): the same int8 weights and scales as loading in float32 and quantizing the model afterwards."""
    make_checkpoint(tmp_path, "tiny", layout)
    quantized = MusicgenForConditionalGeneration.from_pretrained(tmp_path, quantize="int8")
    model = MusicgenForConditionalGeneration.from_pretrained(tmp_path)
    kernels.accelerate_decoder(model.decoder, "int8")
    want, got = model.state_dict(), quantized.state_dict()
    assert set(got) == set(want)
    assert sum(v.dtype == torch.int8 for v in got.values()) == 2 * 7 + 4  # 2 layers x 7 linears + 4 LM heads
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
            want = F.linear(x, int8.dequantized(torch.float32))
            assert ((got - want).abs() <= 1e-3 * F.linear(x.abs(), int8.dequantized(torch.float32).abs())).all()
    # the int16 products' worst case: every weight and activation at its largest, int32 lanes at their fullest
    extreme = KernelLinear(*quantize_int8(torch.ones(8, 8192)))
    x = torch.ones(2, 8192)
    assert torch.equal(_product(older, extreme, x), torch.full((2, 8), 8192.0))
    for quantize in (None, "int8"):
        decoder = make_decoder(seed=11)
        kernels.accelerate_decoder(decoder, quantize)
        compare_steps(
            decoder,
            text_condition(decoder, 2),
            2,
            tolerance=1e-5 if quantize is None else 1e-3,
            build=lambda decoder, cross: FusedStep(decoder, cross, older),
        )


def test_a_compiler_without_openmp_builds_one_thread_kernels(tmp_path, monkeypatch, capsys):
    """Apple's clang has no -fopenmp: the kernels are then built without it and run on one thread, same numbers."""
    real = kernels._compiler()
    wrapper = tmp_path / "c++"
    refuse = '[ "$a" = -fopenmp ] && { echo "unsupported option -fopenmp" >&2; exit 1; }'
    wrapper.write_text(f'#!/bin/sh\nfor a; do {refuse}; done\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CXX", str(wrapper))
    monkeypatch.setenv("ZHIYIN_CACHE", str(tmp_path / "cache"))
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


def test_a_kernel_linear_takes_no_rows():
    """A product of no rows (the text projection of a batch of null texts only) is empty, not a crash."""
    weight = torch.randn(8, 16)
    for layer in (KernelLinear(weight), KernelLinear.from_linear(KernelLinear(weight), "int8")):
        assert layer(torch.randn(0, 3, 16)).shape == (0, 3, 8)
