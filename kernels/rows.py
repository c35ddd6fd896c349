"""Row results: what one batch of torch tensors reduces to, and their finalize.

Both statistics paths, the fused Triton kernel (``gaccore.kernels.fused``)
and the plain-torch twin (``gaccore.kernels.reference``), reduce each row of
a batch to a fixed set of numbers, ``RowResults``: one float64 tensor of
length ``B`` per field. Everything after that is shared and happens here:
micro-batches merge by concatenating rows, ranks by gathering them in rank
order, and ``finalize`` combines the rows exactly in float64 on the device.

``finalize`` has no data-dependent shapes, no boolean indexing and no host
reads: rows that do not take part in a statistic are excluded with
``torch.where``, the trimmed variance sorts with non-SFT rows padded to
+inf, and counts are sums. It therefore never synchronizes the GPU, and its
work depends only on the number of rows.

This module imports torch only (no triton), so the twin works where triton
is missing and the kernel module is imported only when it is used.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from gaccore.stats import BatchStats
from gaccore.validation import check_batch, check_trim

ROW_DTYPE = torch.float64


@dataclass(frozen=True)
class RowResults:
    """Per-row results of one or more batches, each field a float64 ``[B]`` tensor.

    Flags are 0/1. The token moments are over the row's masked-in tokens:
    ``mean_*`` and ``m2_*`` (sum of squared deviations) of the RL
    coefficient ``a_t`` and the SFT coefficient ``w_t``, ``c_aw`` their
    co-moment, ``min_*``/``max_*`` their ranges (+/-max float without tokens).
    Values of rows that are not valid are unspecified (they may be NaN) and
    never read: ``finalize`` selects rows by the flags.
    """

    n_tokens: torch.Tensor  # masked-in tokens of the row
    valid: torch.Tensor  # has tokens and every masked-in value is finite
    rl: torch.Tensor  # valid non-expert row (every valid row without `expert`)
    sft: torch.Tensor  # valid expert row (the RL rows without `expert`)
    nll: torch.Tensor  # -(masked mean of logp), Eq. 9
    seq_adv: torch.Tensor  # adv_i, or the masked mean of adv over the row, Eq. 8
    mean_a: torch.Tensor
    mean_w: torch.Tensor
    m2_a: torch.Tensor
    m2_w: torch.Tensor
    c_aw: torch.Tensor
    min_a: torch.Tensor
    max_a: torch.Tensor
    min_w: torch.Tensor
    max_w: torch.Tensor
    kl_sum: torch.Tensor  # sum of k3 over the row's tokens; NaN without ref_logp

    def merge(self, other: RowResults) -> RowResults:
        """The rows of both, ``self`` first: the exact merge of two micro-batches."""
        return RowResults(**{f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self)})


def with_roles(rows: RowResults, expert: torch.Tensor | None) -> RowResults:
    """Fill ``rl``/``sft`` from ``valid`` and the expert flags (SPEC §2).

    Without ``expert`` every valid row is an RL row and the SFT statistic is
    taken over the same rows (the documented fallback)."""
    valid = rows.valid != 0
    if expert is None:
        rl = sft = valid
    else:
        is_expert = expert != 0
        rl, sft = valid & ~is_expert, valid & is_expert
    return dataclasses.replace(rows, rl=rl.to(ROW_DTYPE), sft=sft.to(ROW_DTYPE))


def numpy_kind(dtype: torch.dtype) -> str:
    """The numpy dtype kind ('b', 'i', 'u', 'f', 'c') of a torch dtype."""
    if dtype == torch.bool:
        return "b"
    if dtype.is_complex:
        return "c"
    if dtype.is_floating_point:
        return "f"
    return "i" if dtype.is_signed else "u"


def check_inputs(
    logp: Any,
    mask: Any,
    adv: Any,
    expert: Any,
    ref_logp: Any,
    sft_coef: str,
) -> tuple[int, int]:
    """Validate one batch of torch tensors (types, shapes, dtype kinds, one
    device) without reading any value; returns ``(B, T)``."""
    named = {"logp": logp, "mask": mask, "adv": adv, "expert": expert, "ref_logp": ref_logp}
    shape = check_batch(
        named, array_type=torch.Tensor, type_name="a torch.Tensor", kind_of=numpy_kind, sft_coef=sft_coef
    )
    for name, value in named.items():
        if value is not None and value.device != logp.device:
            raise ValueError(f"{name} is on {value.device} but logp is on {logp.device}: put all inputs on one device")
    return shape


def _masked_sum(select: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.where(select, values, 0.0).sum()


def _masked_extreme(select: torch.Tensor, values: torch.Tensor, *, largest: bool) -> torch.Tensor:
    """max (or min) of the selected values; -inf (+inf) when none is selected."""
    fill = -math.inf if largest else math.inf
    padded = torch.cat([torch.where(select, values, fill), values.new_full((1,), fill)])
    return padded.amax() if largest else padded.amin()


def trimmed_variance(nll: torch.Tensor, sft: torch.Tensor, trim: float) -> torch.Tensor:
    """Eq. 9 without leaving the device: drop exactly ``floor(trim n)`` of the
    smallest and of the largest SFT values, ddof=1 variance of the rest.

    Non-SFT rows are padded with +inf so they sort last; the kept window of
    sorted positions ``[k, n - k)`` is selected with a mask, not a slice."""
    n = sft.sum().to(ROW_DTYPE)
    k = torch.floor(trim * n)  # float64, exactly as math.floor(trim * n) on the host
    ordered = torch.sort(torch.where(sft, nll, math.inf), stable=True).values
    position = torch.arange(ordered.shape[0], device=ordered.device, dtype=ROW_DTYPE)
    kept = (position >= k) & (position < n - k)
    count = n - 2 * k
    mean = _masked_sum(kept, ordered) / count.clamp(min=1)
    m2 = _masked_sum(kept, (ordered - mean) ** 2)
    return torch.where(count >= 2, m2 / (count - 1).clamp(min=1), math.nan)


def finalize(rows: RowResults, *, trim: float = 0.1) -> BatchStats[torch.Tensor, torch.Tensor]:
    """The proxies of SPEC §2 from row results, as 0-d tensors on their device.

    Rows combine with the parallel-axis (Chan) formulas in float64:
    ``mean = sum n_i mean_i / N``, ``M2 = sum M2_i + sum n_i (mean_i - mean)^2``
    and the same for the co-moment, so the result equals one pass over all
    tokens of the RL rows. Floats are float64, counts int64.
    """
    check_trim(trim)
    rl, sft = rows.rl != 0, rows.sft != 0
    n_rl, n_sft = rl.sum(), sft.sum()

    # Eq. 8: ddof=1 variance of the sequence advantages of RL rows.
    seq_mean = _masked_sum(rl, rows.seq_adv) / n_rl.clamp(min=1)
    seq_m2 = _masked_sum(rl, (rows.seq_adv - seq_mean) ** 2)
    var_rl = torch.where(n_rl >= 2, seq_m2 / (n_rl - 1).clamp(min=1), math.nan)

    # Eq. 10: token moments of the RL rows merged across rows.
    n = torch.where(rl, rows.n_tokens, 0.0)
    n_tokens = n.sum()
    total = n_tokens.clamp(min=1)
    mean_a = _masked_sum(rl, n * rows.mean_a) / total
    mean_w = _masked_sum(rl, n * rows.mean_w) / total
    dev_a, dev_w = rows.mean_a - mean_a, rows.mean_w - mean_w
    m2_a = _masked_sum(rl, rows.m2_a + n * dev_a * dev_a)
    m2_w = _masked_sum(rl, rows.m2_w + n * dev_w * dev_w)
    c_aw = _masked_sum(rl, rows.c_aw + n * dev_a * dev_w)
    # A coefficient whose values are all equal has no z-score (a float M2 is never exactly 0).
    degenerate = (_masked_extreme(rl, rows.min_a, largest=False) == _masked_extreme(rl, rows.max_a, largest=True)) | (
        _masked_extreme(rl, rows.min_w, largest=False) == _masked_extreme(rl, rows.max_w, largest=True)
    )
    defined = (n_tokens >= 2) & ~degenerate & (m2_a > 0) & (m2_w > 0)
    pearson = c_aw / torch.sqrt(torch.where(defined, m2_a * m2_w, 1.0))
    disagreement = torch.where(defined, (2.0 * (1.0 - pearson)).clamp(0.0, 4.0), math.nan)

    kl = torch.where(n_tokens > 0, _masked_sum(rl, rows.kl_sum) / total, math.nan)
    dropped = (rows.n_tokens > 0) & (rows.valid == 0)
    return BatchStats(
        var_sft=trimmed_variance(rows.nll, sft, trim),
        var_rl=var_rl,
        disagreement=disagreement,
        kl=kl,
        n_sft=n_sft,
        n_rl=n_rl,
        n_tokens=n_tokens.to(torch.int64),
        n_dropped=dropped.sum(),
    )
