"""The kernels built for 64-bit ARM (NEON) and run under qemu, against this machine's build: int8 and int4 products
are exact integer sums on every CPU, so the same numbers to the bit; float32 and bfloat16 ones sum in another order
(4 lanes), so the same to rounding, and still each row the same beside any rows. Needs Debian's g++-aarch64-linux-gnu
and qemu-user (.ci/run installs both); skipped without them."""

import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from zhiyin.backends import kernels
from zhiyin.backends.kernels import WEIGHT_TYPES, KernelLinear
from zhiyin.modules.quantization import quantize_int4, quantize_int8

COMPILER, QEMU = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
pytestmark = pytest.mark.skipif(
    platform.machine() == "aarch64" or not (COMPILER and QEMU),
    reason="needs an x86 machine with Debian's g++-aarch64-linux-gnu and qemu-user",
)


@pytest.fixture(scope="module", params=["armv8-a", "armv8.2-a+dotprod"])
def arm_linear(request, tmp_path_factory):
    """tests/backends/arm_linear.cpp built for ARMv8-A, and for ARMv8.2-A with the dot product instructions (int4's
    sdot blocks), statically: qemu needs no ARM libraries then."""
    program = tmp_path_factory.mktemp("arm") / "linear"
    command = [COMPILER, *kernels.FLAGS, "-fopenmp", f"-march={request.param}", "-static", f"-I{kernels.SOURCES}"]
    command = [flag for flag in command if flag not in ("-shared", "-fPIC")]
    subprocess.run(
        [*command, str(Path(__file__).with_name("arm_linear.cpp")), "-o", str(program)], check=True, capture_output=True
    )
    return program


def on_arm(program, layer: KernelLinear, x: torch.Tensor) -> torch.Tensor:
    w = layer.weight
    weight = w.view(torch.uint8 if w.element_size() == 1 else torch.int16).numpy().tobytes()
    scale = layer.scale.numpy().tobytes() if layer.scale is not None else b""
    groups = layer.groups.numpy().tobytes() if layer.groups is not None else b""
    sizes = [WEIGHT_TYPES[w.dtype], layer.out_features, layer.in_features, x.shape[0], len(weight), len(scale) // 4]
    header = np.array([*sizes, len(groups)], np.int64).tobytes()
    data = header + weight + scale + groups + x.contiguous().numpy().tobytes()
    out = subprocess.run([QEMU, str(program)], input=data, capture_output=True, check=True).stdout
    return torch.from_numpy(np.frombuffer(out, np.float32).copy()).view(x.shape[0], layer.out_features)


def here(layer: KernelLinear, x: torch.Tensor) -> torch.Tensor:
    return kernels._product(kernels.library(), layer.weights(), x)


@pytest.mark.parametrize("N, K", [(96, 1000), (64, 4096), (40, 8192)])
def test_arm_products_are_this_machines(arm_linear, N, K):
    g = torch.Generator().manual_seed(N + K)
    weight = torch.randn(N, K, generator=g)
    layers = {
        "int8": KernelLinear(*quantize_int8(weight)),
        "int4": KernelLinear(*quantize_int4(weight), in_features=K),
        "float32": KernelLinear(weight),
        "bfloat16": KernelLinear(weight.bfloat16()),
    }
    for rows in (1, 2, 6, 8, 100):  # one pass, several passes, more than MAX_ROWS (chunks of weight rows)
        x = torch.randn(rows, K, generator=g)
        for name, layer in layers.items():
            got, want = on_arm(arm_linear, layer, x), here(layer, x)
            if name in ("int8", "int4"):
                assert torch.equal(got, want), (name, rows)
            else:
                assert (got - want).abs().max() <= 1e-5 * K**0.5 * want.abs().max(), (name, rows)
    x = torch.randn(5, K, generator=g)
    for name in ("float32", "bfloat16"):  # a row's float sums: the same alone as beside others, on ARM too
        alone = torch.cat([on_arm(arm_linear, layers[name], row[None]) for row in x])
        assert torch.equal(on_arm(arm_linear, layers[name], x), alone), name
