"""The torch side's backend of the Controller (``gaccore.registry.StatsBackend``).

Row results come from the implementation ``gaccore.registry`` chooses for
the tensors' device (the fused Triton kernel on CUDA, the compiled numba
pass on CPU where numba is installed, the torch twin elsewhere, or the one
named); the controller's state lives as 0-d float64 tensors on an
accelerator and as host scalars for CPU tensors; and nothing here reads a
device value on the host except ``to_host`` (the explicit read path behind
``ctrl.mu`` and ``ctrl.metrics()``). ``gaccore.registry.BACKENDS`` names
this module: the core imports it by name the first time a torch tensor
reaches it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gaccore.batch import TokenBatch
from gaccore.registry import Implementation, StepRunner, check_implementation, choose
from gaccore.rows import BatchStats, RowResults, finalize, with_scores
from gaccore.step import close_step

from .runners import CompiledRunner, EagerRunner, ReplayRunner
from .tensors import ROW_DTYPE, as_tensors, check_tensors, is_host, on_host


class TorchBackend:
    """Statistics from torch tensors, and the controller's state beside them.

    Where the state lives depends on the device: on an accelerator as 0-d
    float64/bool tensors beside the inputs, updated without host reads; on
    CPU, with ``host_on_cpu`` (the default), as numpy scalars, with the row
    results finalized through numpy views of their memory: there is no
    device to stay on, and a host scalar operation costs a tenth of a 0-d
    tensor operation. ``host_on_cpu=False`` keeps CPU state in tensors too,
    exactly as on a GPU (tests use it to run the device path on CPU).
    ``update`` returns a 0-d float32 tensor on the inputs' device either way.

    ``implementation`` names the statistics implementation the controller's
    steps use (``gaccore.registry.IMPLEMENTATIONS``; "auto" chooses per
    device). How a step runs where the state lives on a device is the
    runner's (``gaccore.kernels.runners``): with an implementation that runs
    the Triton kernels there, the eager step is one more Triton launch;
    "torch" keeps every step in plain torch operations, so nothing needs triton.
    """

    name = "torch"

    def __init__(self, implementation: str = "auto", *, host_on_cpu: bool = True) -> None:
        check_implementation(implementation, self.name)
        self.implementation = implementation
        self.host_on_cpu = host_on_cpu
        self._chosen: dict[tuple[str, str], Implementation] = {}

    def implementation_on(self, device: torch.device, name: str | None = None) -> Implementation:
        """The implementation that computes row results on ``device``: ``name``'s, or this backend's."""
        key = (self.implementation if name is None else name, device.type)
        chosen = self._chosen.get(key)
        if chosen is None:
            chosen = self._chosen[key] = choose(key[0], self.name, device.type)
        return chosen

    def check(self, batch: TokenBatch[Any]) -> None:
        check_tensors(batch)

    def row_results(self, batch: TokenBatch[torch.Tensor], sft_coef: str) -> RowResults:
        """Row results as tensors, or as numpy arrays where the state lives on
        the host and the numba pass wrote them there (``finalize`` reads them
        as they are; 18 tensor views and back cost more than the pass's
        bookkeeping)."""
        rows = self._rows(batch, sft_coef, self.implementation_on(batch.logp.device))
        return as_tensors(rows) if is_host(rows) and not self._host(batch.logp.device) else rows

    def batch_stats(
        self,
        batch: TokenBatch[torch.Tensor],
        *,
        sft_coef: str,
        trim: float,
        filter_demos: float | None,
        success_threshold: float | None,
        implementation: str,
    ) -> BatchStats[torch.Tensor, torch.Tensor]:
        """0-d tensors on the batch's device: floats float64, counts int64."""
        rows = self._rows(batch, sft_coef, choose(implementation, self.name, batch.logp.device.type))
        rows = as_tensors(rows) if is_host(rows) else rows
        return finalize(rows, trim=trim, filter_demos=filter_demos, success_threshold=success_threshold)

    def _rows(self, batch: TokenBatch[torch.Tensor], sft_coef: str, implementation: Implementation) -> RowResults:
        """``implementation``'s row results, the scores joined: numpy arrays
        from the numba pass, tensors from the kernel and the twin."""
        rows = implementation.row_results(batch, sft_coef)
        scores = batch.scores
        if scores is not None:
            scores = scores.detach()
            if is_host(rows):
                scores = scores.to(ROW_DTYPE).numpy()  # with_scores copies it
        return with_scores(rows, scores)

    def merge(self, a: RowResults, b: RowResults) -> RowResults:
        return a.merge(b)

    def reduce(self, rows: RowResults, process_group: Any) -> RowResults:
        from .distributed import all_gather_row_results  # lazy: needs torch.distributed

        return all_gather_row_results(as_tensors(rows) if is_host(rows) else rows, process_group)

    def mean_over_group(self, value: Any, process_group: Any, device: torch.device | None) -> torch.Tensor:
        from .distributed import mean_over_group  # lazy: needs torch.distributed

        return mean_over_group(value, process_group, device)

    def finalize(
        self, rows: RowResults, *, trim: float, filter_demos: float | None, success_threshold: float | None
    ) -> BatchStats[Any, Any]:
        if not is_host(rows) and self._host(rows.n_tokens.device):
            rows = on_host(rows)
        return finalize(rows, trim=trim, filter_demos=filter_demos, success_threshold=success_threshold)

    def _host(self, device: torch.device) -> bool:
        return self.host_on_cpu and device.type == "cpu"

    def device_of(self, value: torch.Tensor) -> torch.device | None:
        """The state's placement: ``None`` (host scalars) for CPU tensors
        with ``host_on_cpu``, else the tensor's device."""
        return None if self._host(value.device) else value.device

    def placement(self, device: str | torch.device) -> torch.device | None:
        placement = torch.device(device)
        return None if self._host(placement) else placement

    def scalar(self, value: Any, device: torch.device | None) -> Any:
        if isinstance(value, torch.Tensor):  # a kl or statistic may carry the caller's graph: never keep it
            value = value.detach()
        if device is None:
            return np.float64(value.item() if isinstance(value, torch.Tensor) else value)
        if isinstance(value, torch.Tensor):
            return value.to(device=device, dtype=torch.float64)
        return torch.full((), float(value), dtype=torch.float64, device=device)

    def flag(self, value: bool, device: torch.device | None) -> Any:
        if device is None:
            return np.bool_(value)
        return torch.full((), bool(value), dtype=torch.bool, device=device)

    def to_host(self, value: Any) -> float | bool:
        if isinstance(value, torch.Tensor):
            return value.item()  # the explicit read path: may synchronize
        return bool(value) if isinstance(value, np.bool_) else float(value)

    def to_host_all(self, values: Sequence[Any]) -> list[float]:
        """One device-to-host copy for all tensors of a device (host values as they are)."""
        out = [math.nan] * len(values)
        by_device: dict[torch.device, list[int]] = {}
        for i, value in enumerate(values):
            if isinstance(value, torch.Tensor):
                by_device.setdefault(value.device, []).append(i)
            else:
                out[i] = float(value)
        for indices in by_device.values():
            stacked = torch.stack([values[i].detach().to(torch.float64) for i in indices])
            for i, host in zip(indices, stacked.tolist(), strict=True):
                out[i] = host
        return out

    def as_tensor(self, value: Any, device: torch.device | str | None) -> torch.Tensor:
        """``value`` as a 0-d float32 tensor on ``device`` (its own device when
        ``None``); a tensor moves device to device, never through the host."""
        if isinstance(value, torch.Tensor):
            return value.to(device=value.device if device is None else device, dtype=torch.float32)
        return torch.tensor(float(value), dtype=torch.float32, device=device)

    def output(self, mu: Any) -> torch.Tensor:
        if isinstance(mu, torch.Tensor):
            return mu.to(torch.float32)
        return torch.tensor(float(mu), dtype=torch.float32)

    def runner(self, compile_step: bool | str) -> StepRunner:
        """How one controller's steps run, for its ``compile_step``: see ``gaccore.kernels.runners``."""
        if compile_step is False:
            return EagerRunner(self)
        if compile_step is True:
            return CompiledRunner(torch.compile(close_step))
        return ReplayRunner(self)


TORCH_BACKEND = TorchBackend()
