"""The torch statistics backend of the Controller, and the method switch.

``TorchBackend`` satisfies ``gaccore.backend.TorchSide`` (``gaccore.kernels``
registers it there on import): row results come
from the fused Triton kernel on CUDA, from the compiled CPU pass on CPU where
numba is installed, and from the torch twin elsewhere (the ``method`` option:
"auto", "triton", "numba", "torch"), the controller's state lives as
0-d float64 tensors on an accelerator and as host scalars for CPU tensors,
and nothing here reads a device value on the host except ``to_host`` (the
explicit read path behind ``ctrl.mu`` and ``ctrl.metrics()``).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from gaccore.kernels import reference
from gaccore.kernels.tensors import ROW_DTYPE, as_tensors, check_inputs, is_host, on_host
from gaccore.rows import BatchStats, RowResults, finalize, with_scores
from gaccore.validation import check_filter_demos, check_trim

# Where row results come from: the Triton kernel on CUDA, the numba pass on
# CPU (where numba is installed) and the twin elsewhere, or one of them forced.
STATS_METHODS = ("auto", "triton", "numba", "torch")
HAS_NUMBA = importlib.util.find_spec("numba") is not None


def _check_method(method: str) -> None:
    if method not in STATS_METHODS:
        raise ValueError(f"method must be one of {STATS_METHODS}, got {method!r}")
    if method == "numba" and not HAS_NUMBA:
        raise ValueError('method="numba" needs numba: pip install gaccore[cpu]')


def uses_triton(method: str, device: torch.device) -> bool:
    """Whether ``method`` runs the Triton kernels on ``device``: "triton"
    everywhere, "auto" on CUDA."""
    return method == "triton" or (method == "auto" and device.type == "cuda")


def uses_numba(method: str, device: torch.device) -> bool:
    """Whether ``method`` runs the numba pass on ``device``: "numba" (CPU
    tensors only), and "auto" on CPU where numba is installed."""
    if device.type != "cpu":
        if method == "numba":
            raise ValueError(f'method="numba" runs on CPU tensors, got tensors on {device}')
        return False
    return method == "numba" or (method == "auto" and HAS_NUMBA)


def row_results(
    logp: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    expert: torch.Tensor | None = None,
    *,
    ref_logp: torch.Tensor | None = None,
    sft_coef: str = "phi",
    method: str = "auto",
    scores: torch.Tensor | None = None,
) -> RowResults:
    """Row results of one batch from the kernel or the twin; the one place
    inputs are validated. ``scores`` are the verifier's per-row scores (see
    ``gaccore.rows.with_scores``).

    ``"auto"`` runs the Triton kernel on CUDA, the numba pass on CPU where
    numba is installed and the twin elsewhere; ``"triton"`` forces the kernel
    (on CPU only under ``TRITON_INTERPRET=1``), ``"numba"`` the numba pass
    (CPU tensors), ``"torch"`` the twin.
    """
    rows = _row_results(logp, mask, adv, expert, ref_logp, sft_coef, method, scores)
    return as_tensors(rows) if is_host(rows) else rows


def _row_results(
    logp: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    expert: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    sft_coef: str,
    method: str,
    scores: torch.Tensor | None,
) -> RowResults:
    """``row_results`` as its path gives them: numpy arrays from the numba
    pass, tensors from the kernel and the twin."""
    _check_method(method)
    check_inputs(logp, mask, adv, expert, ref_logp, sft_coef, scores)
    if uses_triton(method, logp.device):
        from gaccore.kernels import fused  # lazy: triton is imported only when the kernel runs

        rows = fused.kernel_row_results(logp, mask, adv, expert, ref_logp=ref_logp, sft_coef=sft_coef, checked=True)
    elif uses_numba(method, logp.device):
        from gaccore.kernels import cpu_rows  # lazy: numba is imported, and the pass compiled, when it first runs

        rows = cpu_rows.cpu_row_results(logp, mask, adv, expert, ref_logp=ref_logp, sft_coef=sft_coef)
    else:
        rows = reference.twin_row_results(logp, mask, adv, expert, ref_logp=ref_logp, sft_coef=sft_coef)
    if scores is not None:
        scores = scores.detach()
        if is_host(rows):
            scores = scores.to(ROW_DTYPE).numpy()  # with_scores copies it
    return with_scores(rows, scores)


def batch_stats(
    logp: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    expert: torch.Tensor | None = None,
    *,
    ref_logp: torch.Tensor | None = None,
    trim: float = 0.1,
    sft_coef: str = "phi",
    method: str = "auto",
    scores: torch.Tensor | None = None,
    filter_demos: float | None = None,
) -> BatchStats[torch.Tensor, torch.Tensor]:
    """The proxies of SPEC §2 for torch tensors, as 0-d tensors on their device.

    ``logp``/``mask``/``ref_logp`` are ``[B, T]``, ``adv`` is ``[B]`` or
    ``[B, T]``, ``expert`` is ``[B]``. Floats come back as float64, counts as
    int64; no host-device synchronization happens. ``method`` ("auto" by
    default) picks the kernel or the twin, see ``row_results``. ``scores``
    and ``filter_demos`` as in ``gaccore.batch_stats``.
    """
    check_trim(trim)
    check_filter_demos(filter_demos)
    rows = row_results(logp, mask, adv, expert, ref_logp=ref_logp, sft_coef=sft_coef, method=method, scores=scores)
    return finalize(rows, trim=trim, filter_demos=filter_demos)


class TorchBackend:
    """Statistics from torch tensors (``gaccore.backend.StatsBackend``).

    Row results always come from torch (the kernel or the twin, by
    ``method``). Where the state lives depends on the device: on an
    accelerator as 0-d float64/bool tensors beside the inputs, updated
    without host reads; on CPU, with ``host_on_cpu`` (the default), as numpy
    scalars, with the row results finalized through numpy views of their
    memory: there is no device to stay on, and a host scalar operation costs
    a tenth of a 0-d tensor operation. ``host_on_cpu=False`` keeps CPU state
    in tensors too, exactly as on a GPU (tests use it to run the device path
    on CPU). ``update`` returns a 0-d float32 tensor on the inputs' device
    either way.

    Where the state lives on a device, the eager rest of each step (finalize
    and ``advance``) runs as one Triton launch (``fused_close_step``)
    wherever ``method`` runs the statistics kernel ("auto" on CUDA, "triton"
    everywhere, on CPU in the interpreter); "torch" keeps every step in
    plain torch operations, so nothing needs triton.
    """

    name = "torch"

    def __init__(self, method: str = "auto", *, host_on_cpu: bool = True) -> None:
        _check_method(method)
        self.method = method
        self.host_on_cpu = host_on_cpu

    def check(self, logp: Any, mask: Any, adv: Any, expert: Any, *, ref_logp: Any, sft_coef: str, scores: Any) -> None:
        check_inputs(logp, mask, adv, expert, ref_logp, sft_coef, scores)

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
        """Row results as tensors, or as numpy arrays where the state lives on
        the host and the numba pass wrote them there (``finalize`` reads them
        as they are; 18 tensor views and back cost more than the pass's
        bookkeeping)."""
        rows = _row_results(logp, mask, adv, expert, ref_logp, sft_coef, self.method, scores)
        return as_tensors(rows) if is_host(rows) and not self._host(logp.device) else rows

    def merge(self, a: RowResults, b: RowResults) -> RowResults:
        return a.merge(b)

    def reduce(self, rows: RowResults, process_group: Any) -> RowResults:
        from gaccore.kernels.distributed import all_gather_row_results  # lazy: needs torch.distributed

        return all_gather_row_results(as_tensors(rows) if is_host(rows) else rows, process_group)

    def mean_over_group(self, value: Any, process_group: Any, device: torch.device | None) -> torch.Tensor:
        from gaccore.kernels.distributed import mean_over_group  # lazy: needs torch.distributed

        return mean_over_group(value, process_group, device)

    def compile_close_step(self, close_step: Callable[..., Any], mode: bool | str) -> Callable[..., Any]:
        """``close_step`` through ``torch.compile`` (``True``), and that
        replayed from a CUDA graph per argument layout (``"reduce-overhead"``,
        see ``gaccore.kernels.graphs``)."""
        compiled = torch.compile(close_step)
        if mode is True:
            return compiled
        from gaccore.kernels.graphs import CloseStepGraphs  # lazy: imports the controller's state type

        return CloseStepGraphs(compiled)

    def update_replay(self) -> Any:
        """One controller's single-micro-batch ``update`` replayed from a CUDA
        graph per layout, statistics kernel included
        (``gaccore.kernels.graphs.UpdateGraphs``), where this backend's
        ``method`` runs the Triton kernels."""
        from gaccore.kernels.graphs import UpdateGraphs  # lazy: imports the controller's state type

        return UpdateGraphs(self)

    def fused_close_step(self) -> Callable[..., Any]:
        """One controller's eager ``close_step`` as one launch of
        ``gaccore.kernels.close_step`` where this backend's ``method`` runs
        the Triton kernels on the state's device, returning the new state,
        the batch and ``mu`` as the float32 ``update`` returns (written by
        the same launch); ``None`` (the plain
        ``close_step``) for statistics given as a batch (``update_stats``),
        where the method is the torch twin's, and above ``MAX_ROWS`` rows."""
        kernel: Any = None

        def close(
            device: torch.device,
            state: Any,
            config: Any,
            observations: dict[str, Any],
            prior_value: float | None,
            rows: RowResults | None,
            batch: BatchStats[Any, Any] | None,
        ) -> Any:
            nonlocal kernel
            if batch is not None or not uses_triton(self.method, device):
                return None
            if kernel is None:
                from gaccore.kernels.close_step import CloseStepKernel  # lazy: imports triton

                kernel = CloseStepKernel()
            return kernel(device, state, config, observations, prior_value, rows)

        return close

    def finalize(self, rows: RowResults, *, trim: float, filter_demos: float | None) -> BatchStats[Any, Any]:
        if not is_host(rows) and self._host(rows.n_tokens.device):
            rows = on_host(rows)
        return finalize(rows, trim=trim, filter_demos=filter_demos)

    def _host(self, device: torch.device) -> bool:
        return self.host_on_cpu and device.type == "cpu"

    def device_of(self, value: torch.Tensor) -> torch.device | None:
        """The state's placement: ``None`` (host scalars) for CPU tensors
        with ``host_on_cpu``, else the tensor's device."""
        return None if self._host(value.device) else value.device

    def device_of_name(self, device: str | torch.device) -> torch.device | None:
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


TORCH_BACKEND = TorchBackend()
