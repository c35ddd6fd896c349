"""Statistics backends: where the controller's numbers live and are computed.

The controller is written once; a backend supplies the batch statistics for
one kind of input and holds the controller's state in matching arrays. The
numpy backend (here) computes in float64 on the host. The torch backend
(``gaccore.kernels``, imported only when a torch tensor arrives) keeps state
as 0-d float64 tensors on the inputs' device and never synchronizes.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from gaccore import stats
from gaccore._array import is_torch
from gaccore.stats import BatchStats, NumpyPartials


class StatsBackend(Protocol):
    """What the Controller needs from an array library."""

    name: str

    def check(self, logp: Any, mask: Any, adv: Any, expert: Any, *, ref_logp: Any, sft_coef: str) -> None:
        """Validate one micro-batch as ``partials`` does, without computing anything."""

    def partials(
        self,
        logp: Any,
        mask: Any,
        adv: Any,
        expert: Any,
        *,
        ref_logp: Any,
        sft_coef: str,
    ) -> Any:
        """Mergeable row results of one micro-batch (validates the inputs)."""

    def merge(self, a: Any, b: Any) -> Any:
        """Exact combination of two micro-batches' row results."""

    def reduce(self, partials: Any, process_group: Any) -> Any:
        """Row results merged over every rank of ``process_group``, in rank order."""

    def finalize(self, partials: Any, *, trim: float) -> BatchStats[Any, Any]:
        """The proxies from merged row results."""

    def device_of(self, value: Any) -> Any:
        """The placement key of an input (``None`` for host arrays)."""

    def scalar(self, value: Any, device: Any) -> Any:
        """A number or 0-d array as a float64 state scalar on ``device``."""

    def flag(self, value: bool, device: Any) -> Any:
        """A Python bool as a boolean state scalar on ``device``."""

    def to_host(self, value: Any) -> float | bool:
        """A state scalar as a Python float or bool (may synchronize)."""

    def output(self, mu: Any) -> Any:
        """The ``mu`` handed back by ``update``/``step``."""


class NumpyBackend:
    """float64 numpy statistics; state as numpy float64 / bool scalars."""

    name = "numpy"

    def check(self, logp: Any, mask: Any, adv: Any, expert: Any, *, ref_logp: Any, sft_coef: str) -> None:
        stats.check_inputs(logp, mask, adv, expert, ref_logp, sft_coef)

    def partials(
        self,
        logp: Any,
        mask: Any,
        adv: Any,
        expert: Any,
        *,
        ref_logp: Any,
        sft_coef: str,
    ) -> NumpyPartials:
        return stats.batch_partials(logp, mask, adv, expert, ref_logp=ref_logp, sft_coef=sft_coef)

    def merge(self, a: NumpyPartials, b: NumpyPartials) -> NumpyPartials:
        return a.merge(b)

    def reduce(self, partials: NumpyPartials, process_group: Any) -> NumpyPartials:
        raise TypeError(
            "process_group needs torch tensors: pass logp, mask and adv as torch tensors "
            "(numpy inputs are never reduced across ranks)"
        )

    def finalize(self, partials: NumpyPartials, *, trim: float) -> BatchStats[float, int]:
        return stats.finalize(partials, trim=trim)

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

    def output(self, mu: Any) -> float:
        return float(mu)


NUMPY_BACKEND = NumpyBackend()


def backend_for(value: object) -> StatsBackend:
    """The backend for an input: torch tensors go to ``gaccore.kernels``."""
    if is_torch(value):
        from gaccore.kernels import TORCH_BACKEND  # lazy: core never imports torch

        return TORCH_BACKEND
    return NUMPY_BACKEND
