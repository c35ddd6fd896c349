"""Schedule priors for the mixing weight: callables ``step -> mu``."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    """Linear ``mu_start -> mu_peak`` over ``warmup_steps``, cosine
    ``mu_peak -> mu_valley`` over ``decay_steps``, then ``mu_valley``.

    A phase of 0 steps is skipped. ``mu_start=0`` is CHORD's schedule. It is a
    frozen dataclass rather than a closure so that it compares equal, prints
    its parameters and pickles.
    """

    warmup_steps: int
    decay_steps: int
    mu_peak: float
    mu_valley: float
    mu_start: float = 0.0

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "decay_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("mu_peak", "mu_valley", "mu_start"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.mu_start + (self.mu_peak - self.mu_start) * step / self.warmup_steps
        into_decay = step - self.warmup_steps
        if into_decay < self.decay_steps:
            cosine = 0.5 * (1.0 + math.cos(math.pi * into_decay / self.decay_steps))
            return self.mu_valley + (self.mu_peak - self.mu_valley) * cosine
        return float(self.mu_valley)


def warmup_cosine(
    warmup_steps: int,
    decay_steps: int,
    mu_peak: float,
    mu_valley: float,
    mu_start: float = 0.0,
) -> WarmupCosine:
    """The warmup-cosine prior of SPEC.md §3 (CHORD's schedule when ``mu_start=0``)."""
    return WarmupCosine(warmup_steps, decay_steps, mu_peak, mu_valley, mu_start)
