"""The torch statistics backend of the Controller, and the backend switch.

``TorchBackend`` satisfies ``gaccore.backend.StatsBackend``: row results come
from the fused Triton kernel on CUDA and from the torch twin elsewhere, the
controller's state lives as 0-d float64 tensors on the inputs' device, and
nothing here reads a device value on the host except ``to_host`` (the
explicit read path behind ``ctrl.mu`` and ``ctrl.metrics()``).
"""

from __future__ import annotations

from typing import Any

import torch

from gaccore.kernels import reference
from gaccore.kernels.rows import RowResults, check_inputs, finalize
from gaccore.stats import BatchStats
from gaccore.validation import check_trim

BACKENDS = ("auto", "triton", "torch")


def row_results(
    logp: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    expert: torch.Tensor | None = None,
    *,
    ref_logp: torch.Tensor | None = None,
    sft_coef: str = "phi",
    backend: str = "auto",
) -> RowResults:
    """Row results of one batch from the kernel or the twin.

    ``"auto"`` runs the Triton kernel on CUDA and the twin elsewhere,
    ``"triton"`` forces the kernel (on CPU only under ``TRITON_INTERPRET=1``),
    ``"torch"`` forces the twin.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_inputs(logp, mask, adv, expert, ref_logp, sft_coef)
    if backend == "torch" or (backend == "auto" and logp.device.type != "cuda"):
        return reference.row_results(logp, mask, adv, expert, ref_logp=ref_logp, sft_coef=sft_coef)
    from gaccore.kernels import fused  # lazy: triton is imported only when the kernel runs

    return fused.row_results(logp, mask, adv, expert, ref_logp=ref_logp, sft_coef=sft_coef)


def batch_stats(
    logp: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    expert: torch.Tensor | None = None,
    *,
    ref_logp: torch.Tensor | None = None,
    trim: float = 0.1,
    sft_coef: str = "phi",
    backend: str = "auto",
) -> BatchStats[torch.Tensor, torch.Tensor]:
    """The proxies of SPEC §2 for torch tensors, as 0-d tensors on their device.

    ``logp``/``mask``/``ref_logp`` are ``[B, T]``, ``adv`` is ``[B]`` or
    ``[B, T]``, ``expert`` is ``[B]``. Floats come back as float64, counts as
    int64; no host-device synchronization happens. See ``row_results`` for
    ``backend``.
    """
    check_trim(trim)
    rows = row_results(logp, mask, adv, expert, ref_logp=ref_logp, sft_coef=sft_coef, backend=backend)
    return finalize(rows, trim=trim)


class TorchBackend:
    """Statistics from torch tensors; state as 0-d float64/bool tensors on their device."""

    name = "torch"

    def __init__(self, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend

    def check(self, logp: Any, mask: Any, adv: Any, expert: Any, *, ref_logp: Any, sft_coef: str) -> None:
        check_inputs(logp, mask, adv, expert, ref_logp, sft_coef)

    def partials(
        self,
        logp: Any,
        mask: Any,
        adv: Any,
        expert: Any,
        *,
        ref_logp: Any,
        sft_coef: str,
    ) -> RowResults:
        return row_results(logp, mask, adv, expert, ref_logp=ref_logp, sft_coef=sft_coef, backend=self.backend)

    def merge(self, a: RowResults, b: RowResults) -> RowResults:
        return a.merge(b)

    def reduce(self, partials: RowResults, process_group: Any) -> RowResults:
        from gaccore.kernels.distributed import all_gather_partials  # lazy: needs torch.distributed

        return all_gather_partials(partials, process_group)

    def finalize(self, partials: RowResults, *, trim: float) -> BatchStats[torch.Tensor, torch.Tensor]:
        return finalize(partials, trim=trim)

    def device_of(self, value: torch.Tensor) -> torch.device:
        return value.device

    def device_of_name(self, device: str | torch.device) -> torch.device:
        return torch.device(device)

    def scalar(self, value: Any, device: torch.device) -> torch.Tensor:
        if isinstance(value, torch.Tensor):  # a kl or statistic may carry the caller's graph: never keep it
            return value.detach().to(device=device, dtype=torch.float64)
        return torch.full((), float(value), dtype=torch.float64, device=device)

    def flag(self, value: bool, device: torch.device) -> torch.Tensor:
        return torch.full((), bool(value), dtype=torch.bool, device=device)

    def to_host(self, value: torch.Tensor) -> float | bool:
        return value.item()  # the explicit read path: may synchronize

    def output(self, mu: torch.Tensor) -> torch.Tensor:
        return mu.to(torch.float32)


TORCH_BACKEND = TorchBackend()
