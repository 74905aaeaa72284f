"""The dtype and device a model is asked to load in, read from what a user types ('bfloat16', 'cuda:1')."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)} (or 'auto' for the checkpoint's)")
    return DTYPES[name]


def parse_device(device: str | torch.device) -> torch.device:
    """torch.device(device), or a ValueError that says what to do where that device is not on this machine."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device '{device}': use cpu, cuda, cuda:1, ... ({error})") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(
                f"device '{device}': this machine's PyTorch ({torch.__version__}, {build}) sees no CUDA GPU; "
                "use cpu, or install a CUDA build of PyTorch on a machine with an NVIDIA GPU"
            )
        if (device.index or 0) >= count:
            raise ValueError(f"device '{device}': there are {count} CUDA GPUs here (cuda:0 to cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device '{device}': Apple's MPS is not available here; use cpu")
    return device
