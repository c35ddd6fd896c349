"""The token batch: one micro-batch of the tensors every statistics path reads.

``TokenBatch`` is what the public entry points (``Controller.observe`` and
``update``, ``gaccore.batch_stats``, the trainer bindings) build from their
arguments and check once, through the backend of the inputs' array library
(``StatsBackend.check``); every function below them takes it and checks
nothing again. It holds numpy arrays or torch tensors, never a mix: the
check refuses one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Generic, TypeVar

ArrayT = TypeVar("ArrayT")


@dataclass(frozen=True)
class TokenBatch(Generic[ArrayT]):
    """``logp``, ``mask``, ``ref_logp``: ``[B, T]``; ``adv``: ``[B]`` (one
    advantage per row) or ``[B, T]`` (per token); ``expert``: ``[B]``,
    nonzero marks an expert (SFT) row; ``scores``: ``[B]``, the verifier's
    score of each row (NaN: not scored). SPEC §2 says how each is read."""

    logp: ArrayT
    mask: ArrayT
    adv: ArrayT
    expert: ArrayT | None = None
    ref_logp: ArrayT | None = None
    scores: ArrayT | None = None

    @property
    def rows(self) -> int:
        return int(self.logp.shape[0])  # type: ignore[attr-defined]

    @property
    def tokens(self) -> int:
        return int(self.logp.shape[1])  # type: ignore[attr-defined]

    @property
    def adv_per_token(self) -> bool:
        return len(self.adv.shape) == 2  # type: ignore[attr-defined]

    def given(self) -> dict[str, ArrayT]:
        """The inputs present, by name, in ``INPUT_NAMES`` order."""
        return {name: value for name in INPUT_NAMES if (value := getattr(self, name)) is not None}

    def row_block(self, start: int, stop: int) -> TokenBatch[Any]:
        """Rows ``[start, stop)`` of every input (views where the library makes them)."""
        return replace(self, **{name: value[start:stop] for name, value in self.given().items()})  # type: ignore[index]


INPUT_NAMES = tuple(f.name for f in fields(TokenBatch))
