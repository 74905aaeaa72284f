"""How the next tokens are chosen, as settings checked once (sampling.py applies them). No torch here: the command
line checks its flags with these same rules before it imports torch."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class SamplingSettings:
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = None
    guidance_scale: float | None = None

    def validate(self, names: dict[str, str] | None = None) -> None:
        """Raise ValueError for settings outside their range. `names` renames the settings in the messages (the
        CLI's flags: {"top_k": "--top-k", ...}), so the API and the CLI say the same thing in their own words."""
        name = lambda key: (names or {}).get(key, key)  # noqa: E731
        for key in ("guidance_scale", "temperature", "top_p"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ValueError(f"{name(key)} must be a finite number, got {value!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)):
            raise ValueError(f"{name('top_k')} must be a whole number, got {self.top_k!r}")
        if self.guidance_scale is not None and self.guidance_scale < 1:
            raise ValueError(f"{name('guidance_scale')} must be >= 1 (1 turns guidance off), got {self.guidance_scale:g}")
        if not self.do_sample:
            return
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"{name('top_k')} must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"{name('top_p')} must be in (0, 1], got {self.top_p:g}")
        if self.temperature is None or self.temperature <= 0:
            raise ValueError(
                f"{name('temperature')} must be > 0 when sampling, got {self.temperature} (use {name('greedy')} instead)"
            )

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale is not None and self.guidance_scale > 1
