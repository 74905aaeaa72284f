"""The precision plan: which part computes in which dtype, from the device, the mode and what the CPU does natively."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from zhiyin import MusicgenForConditionalGeneration
from zhiyin.backends import precision
from zhiyin.backends.precision import Precision, plan

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
F32, BF16, F16, I8 = torch.float32, torch.bfloat16, torch.float16, torch.int8


@pytest.mark.parametrize("native", [True, False])
def test_the_plan(monkeypatch, native):
    monkeypatch.setattr(precision, "native_on_cpu", lambda dtype: native)
    narrow = BF16 if native else F32
    assert plan(CPU, F32, None) == Precision(weights=F32, activations=F32, cache=F32, conditioning=F32)
    assert plan(None, F32, "int8") == Precision(weights=F32, activations=F32, cache=I8, conditioning=F32)
    assert plan(None, F32, "int4") == Precision(weights=F32, activations=F32, cache=I8, conditioning=F32)
    assert plan(CPU, BF16, None) == Precision(weights=BF16, activations=F32, cache=BF16, conditioning=narrow)
    assert plan(CPU, BF16, "int8") == Precision(weights=BF16, activations=F32, cache=I8, conditioning=narrow)
    assert plan(CUDA, BF16, "int8") == Precision(weights=BF16, activations=BF16, cache=BF16, conditioning=BF16)
    assert plan(CUDA, F16, None).conditioning == F16
    assert plan(CPU, BF16, None).of("decoder.lm_heads.0.weight") == BF16
    assert plan(CPU, BF16, None).of("audio_encoder.decoder.layers.0.conv.weight") == narrow


def test_pytorch_limited_to_avx2_has_no_native_bfloat16(tmp_path):
    """As an AVX2 machine computes (the way PyTorch is told to here), bfloat16 is not native, whatever this CPU is."""
    script = "from zhiyin.backends.precision import native_on_cpu; import torch; print(native_on_cpu(torch.bfloat16))"
    for env in ({"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}):
        done = subprocess.run(
            [sys.executable, "-c", script],
            env={**__import__("os").environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert done.stdout.strip() == "False", (env, done.stderr)


def test_bfloat16_without_native_support_keeps_t5_and_encodec_in_float32(tiny_checkpoint, monkeypatch):
    folder, _ = tiny_checkpoint
    monkeypatch.setattr(precision, "native_on_cpu", lambda dtype: False)
    model = MusicgenForConditionalGeneration.from_pretrained(folder, dtype="bfloat16")
    assert model.dtype == BF16 and model.decoder.lm_heads[0].weight.dtype == BF16  # the decoder's weights stay narrow
    assert model.conditioning_dtype == F32 and model.audio_encoder.dtype == F32
    assert model.text_encoder.shared.weight.dtype == F32 and model.enc_to_dec_proj.weight.dtype == F32
    full = MusicgenForConditionalGeneration.from_pretrained(folder)
    assert torch.equal(model.encode_text(torch.tensor([[5, 9, 3]])), full.encode_text(torch.tensor([[5, 9, 3]])))
    codes = torch.randint(0, 64, (1, 4, 20), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.decode_audio(codes), full.decode_audio(codes))  # read as float32: not rounded first
    inputs = model.get_unconditional_inputs(1, max_new_tokens=8)
    assert model.generate(**inputs, do_sample=False, return_codes=True).shape == (1, 4, 5)
