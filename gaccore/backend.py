"""Statistics backends: where the controller's numbers live and are computed,
and the one seam between the numpy core and the torch side.

The controller is written once; a backend supplies the batch statistics for
one kind of input and holds the controller's state in matching arrays. The
numpy backend (here) computes in float64 on the host. The torch backend lives
in ``gaccore.kernels`` and registers itself here with ``register_backend``
when that package is imported. The core never imports it: ``torch_backend``
loads the package by name the first time a torch tensor (or a torch device)
reaches the controller, so ``import gaccore`` needs numpy only and the import
graph points one way, from the torch side down to the core.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from gaccore import stats
from gaccore._array import is_torch
from gaccore.rows import BatchStats, RowResults, finalize


class StatsBackend(Protocol):
    """What the Controller needs from an array library."""

    name: str

    def check(self, logp: Any, mask: Any, adv: Any, expert: Any, *, ref_logp: Any, sft_coef: str, scores: Any) -> None:
        """Validate one micro-batch as ``row_results`` does, without computing anything."""

    def row_results(
        self,
        logp: Any,
        mask: Any,
        adv: Any,
        expert: Any,
        *,
        ref_logp: Any,
        sft_coef: str,
        scores: Any,
    ) -> Any:
        """Mergeable row results of one micro-batch (validates the inputs)."""

    def merge(self, a: Any, b: Any) -> Any:
        """Exact combination of two micro-batches' row results."""

    def reduce(self, rows: Any, process_group: Any) -> Any:
        """Row results merged over every rank of ``process_group``, in rank order."""

    def finalize(self, rows: Any, *, trim: float, filter_demos: float | None) -> BatchStats[Any, Any]:
        """The proxies from merged row results."""

    def device_of(self, value: Any) -> Any:
        """The placement key of an input (``None`` for host arrays)."""

    def scalar(self, value: Any, device: Any) -> Any:
        """A number or 0-d array as a float64 state scalar on ``device``."""

    def flag(self, value: bool, device: Any) -> Any:
        """A Python bool as a boolean state scalar on ``device``."""

    def to_host(self, value: Any) -> float | bool:
        """A state scalar as a Python float or bool (may synchronize)."""

    def to_host_all(self, values: Sequence[Any]) -> list[float]:
        """Scalars as Python floats (flags as 0.0/1.0), in one transfer."""

    def output(self, mu: Any) -> Any:
        """The ``mu`` handed back by ``update``/``step``."""


class UpdateReplay(Protocol):
    """A whole ``update`` of one micro-batch replayed from a recording (the
    torch side's ``update_replay``)."""

    def accepts(self, device: Any, rows: int | None) -> bool:
        """Whether a step on ``device`` with ``rows`` rows (``None``: a step
        without statistics) can be replayed."""

    def __call__(
        self,
        device: Any,
        state: Any,
        config: Any,
        inputs: dict[str, Any] | None,
        observations: dict[str, Any],
        prior_value: float | None,
    ) -> tuple[Any, BatchStats[Any, Any] | None, Any]:
        """The step: ``inputs`` are ``observe``'s tensors, checked (``None``
        on a step without statistics), ``observations`` and the prior as the
        caller gave them. Returns the new state, the batch and the ``mu``
        that ``update`` returns."""


class TorchSide(StatsBackend, Protocol):
    """What the controller needs beyond statistics from the torch side, which
    only it can do: tensors out of state scalars, placement by device name,
    collectives, and compiling the device-side step."""

    def as_tensor(self, value: Any, device: Any) -> Any:
        """``value`` as a 0-d float32 tensor on ``device`` (its own device when ``None``)."""

    def device_of_name(self, device: Any) -> Any:
        """The state's placement for a torch device or its name."""

    def mean_over_group(self, value: Any, process_group: Any, device: Any) -> Any:
        """The mean of a scalar over every rank of ``process_group``."""

    def compile_close_step(self, close_step: Callable[..., Any], mode: bool | str) -> Callable[..., Any]:
        """``close_step`` through ``torch.compile`` (``True``) or replayed
        from CUDA graphs (``"reduce-overhead"``)."""

    def update_replay(self) -> UpdateReplay:
        """What ``compile_step="reduce-overhead"`` replays an ``update`` of
        one micro-batch with: its statistics and its closing step in one
        CUDA graph."""

    def fused_close_step(self) -> Callable[..., Any]:
        """One controller's eager ``close_step`` for state on a device, fused
        into one kernel launch: called as ``(device, state, config,
        observations, prior_value, rows, batch)`` with the observations and
        the prior as the caller gave them (not placed), it returns the new
        state, the placed batch and the ``mu`` that ``update`` returns (what
        ``output`` would make of the new state's), or ``None`` where the
        kernel does not apply (the controller then runs ``close_step``)."""


class NumpyBackend:
    """float64 numpy statistics; state as numpy float64 / bool scalars."""

    name = "numpy"

    def check(self, logp: Any, mask: Any, adv: Any, expert: Any, *, ref_logp: Any, sft_coef: str, scores: Any) -> None:
        stats.check_inputs(logp, mask, adv, expert, ref_logp, sft_coef, scores)

    def row_results(
        self,
        logp: Any,
        mask: Any,
        adv: Any,
        expert: Any,
        *,
        ref_logp: Any,
        sft_coef: str,
        scores: Any,
    ) -> RowResults:
        return stats.row_results(logp, mask, adv, expert, ref_logp=ref_logp, sft_coef=sft_coef, scores=scores)

    def merge(self, a: RowResults, b: RowResults) -> RowResults:
        return a.merge(b)

    def reduce(self, rows: RowResults, process_group: Any) -> RowResults:
        raise TypeError(
            "process_group needs torch tensors: pass logp, mask and adv as torch tensors "
            "(numpy inputs are never reduced across ranks)"
        )

    def finalize(self, rows: RowResults, *, trim: float, filter_demos: float | None) -> BatchStats[float, int]:
        return finalize(rows, trim=trim, filter_demos=filter_demos)

    def device_of(self, value: Any) -> None:
        return None

    def scalar(self, value: Any, device: Any) -> np.float64:
        if is_torch(value):  # a torch kl on a host state: its value, never its graph
            value = value.detach()
        return np.float64(value)

    def flag(self, value: bool, device: Any) -> np.bool_:
        return np.bool_(value)

    def to_host(self, value: Any) -> float | bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        return float(value)

    def to_host_all(self, values: Sequence[Any]) -> list[float]:
        return [float(value) for value in values]

    def output(self, mu: Any) -> float:
        return float(mu)


NUMPY_BACKEND = NumpyBackend()

# The package that registers the torch backend when imported: named, not
# imported, so the core depends on nothing above it.
TORCH_SIDE = "gaccore.kernels"
_torch_side: TorchSide | None = None


def register_backend(backend: TorchSide) -> None:
    """Install the torch side's backend (called by ``gaccore.kernels`` on import)."""
    global _torch_side
    _torch_side = backend


def torch_backend() -> TorchSide:
    """The torch side's backend, importing ``gaccore.kernels`` on first use."""
    if _torch_side is None:
        importlib.import_module(TORCH_SIDE)
    if _torch_side is None:
        raise RuntimeError(f"{TORCH_SIDE} was imported but registered no backend")
    return _torch_side


def backend_for(value: object) -> StatsBackend:
    """The backend for an input: torch tensors go to the torch side."""
    return torch_backend() if is_torch(value) else NUMPY_BACKEND
