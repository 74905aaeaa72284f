"""`BatchFeature`: the dict of model inputs that the processor and `get_unconditional_inputs` return."""

from __future__ import annotations

from typing import Any

import torch


class BatchFeature(dict):
    """A dict of model inputs that also allows attribute access (`inputs.input_ids`), so `model(**inputs)` and
    `model.generate(**inputs)` work, and that can move its tensors with `.to(device)`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no input named '{name}'; have: {', '.join(self)}") from None

    def to(self, *args: Any, **kwargs: Any) -> "BatchFeature":
        """Move tensors like `Tensor.to` does; a dtype is applied to floating-point tensors only."""
        for name, value in self.items():
            if isinstance(value, torch.Tensor):
                if value.is_floating_point():
                    self[name] = value.to(*args, **kwargs)
                else:
                    self[name] = value.to(device=_device_in(args, kwargs))
        return self


def _device_in(args: tuple, kwargs: dict) -> Any:
    """The device among `.to()`'s arguments, or None (keep the device) when only a dtype was given."""
    if "device" in kwargs:
        return kwargs["device"]
    for arg in args:
        if isinstance(arg, (str, torch.device, int)):
            return arg
    return None


def check_return_tensors(return_tensors: str | None) -> None:
    if return_tensors not in (None, "pt", "np"):
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")


def padding_strategy(padding: bool | str) -> str:
    """True/"longest" -> "longest"; "max_length"; False/None/"do_not_pad" -> "do_not_pad"."""
    if padding is True or padding == "longest":
        return "longest"
    if padding is False or padding is None or padding == "do_not_pad":
        return "do_not_pad"
    if padding == "max_length":
        return "max_length"
    raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
