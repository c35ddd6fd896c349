"""Row results: what one batch reduces to, and the one finalize of SPEC §2.

Every statistics path reduces each row of a batch to a fixed set of numbers,
``RowResults``: one float64 array of length ``B`` per field. The float64
numpy reference (``gaccore.stats``), the fused Triton kernel, its torch
twin and the compiled CPU pass (``gaccore.kernels``) differ only in how they
get there. Everything after
that is shared and happens here: micro-batches merge by concatenating rows,
ranks by gathering them in rank order, and ``finalize`` combines the rows
exactly in float64.

The same code runs on numpy arrays and on torch tensors (torch is never
imported here: its functions are looked up on the tensors' module, as in
``gaccore._array``). On tensors ``finalize`` has no data-dependent shapes, no
boolean indexing and no host reads: rows that do not take part in a statistic
are excluded with ``where``, the trimmed variance sorts with non-SFT rows
padded to +inf, and counts are sums. It never synchronizes a GPU, and its work
depends only on the number of rows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

import numpy as np

from gaccore._array import absolute, clip, is_torch, quiet, torch_module, where

Value = TypeVar("Value")
Count = TypeVar("Count")


@dataclass(frozen=True)
class BatchStats(Generic[Value, Count]):
    """The proxies of one batch: Python floats/ints from numpy inputs, 0-d
    tensors on the inputs' device from torch inputs. NaN marks a statistic
    the batch does not define (too few rows, a degenerate coefficient...)."""

    var_sft: Value
    var_rl: Value
    disagreement: Value
    kl: Value
    n_sft: Count
    n_rl: Count
    n_tokens: Count
    n_nonfinite_rows: Count
    # The verifier's success rates: the mean score of the scored demonstrations
    # (kept or not) and of the scored RL rows; NaN without scores.
    expert_success: Value = math.nan  # type: ignore[assignment]
    policy_success: Value = math.nan  # type: ignore[assignment]
    n_demos: Count = 0  # type: ignore[assignment]  # valid demonstration rows before the filter


@dataclass(frozen=True)
class RowResults:
    """Per-row results of one or more batches, each field a float64 ``[B]``
    array (numpy) or tensor (torch).

    Flags are 0/1. The token moments are over the row's masked-in tokens:
    ``mean_*`` and ``m2_*`` (sum of squared deviations) of the RL
    coefficient ``a_t`` and the SFT coefficient ``w_t``, ``c_aw`` their
    co-moment, ``min_*``/``max_*`` their ranges. Values of rows that are not
    valid (rows without tokens included) are unspecified (they may be NaN)
    and never read: ``finalize`` selects rows by the flags.
    """

    n_tokens: Any  # masked-in tokens of the row
    valid: Any  # has tokens and every masked-in value is finite
    rl: Any  # valid non-expert row (every valid row without `expert`)
    sft: Any  # valid expert row (the RL rows without `expert`)
    nll: Any  # -(masked mean of logp), Eq. 9
    seq_adv: Any  # adv_i, or the masked mean of adv over the row, Eq. 8
    mean_a: Any
    mean_w: Any
    m2_a: Any
    m2_w: Any
    c_aw: Any
    min_a: Any
    max_a: Any
    min_w: Any
    max_w: Any
    kl_sum: Any  # sum of k3 over the row's tokens; NaN without ref_logp
    demo: Any = None  # valid expert row, before any filter; 0 without `expert` (set by with_roles)
    score: Any = None  # the verifier's score of the row; NaN where not scored (set by with_roles/with_scores)

    def merge(self, other: RowResults) -> RowResults:
        """The rows of both, ``self`` first: the exact merge of two micro-batches."""
        return RowResults(**{f.name: _concat(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})


# The field orders every path that packs these into one buffer follows (the
# Triton kernels' outputs, the numba pass's rows, the distributed gather).
ROW_FIELDS = tuple(f.name for f in fields(RowResults))
BATCH_FIELDS = tuple(f.name for f in fields(BatchStats))


def with_roles(rows: RowResults, expert: Any) -> RowResults:
    """Fill ``rl``/``sft``/``demo`` from ``valid`` and the expert flags (SPEC
    §2), with every row unscored (``with_scores`` adds the verifier's scores).

    Without ``expert`` every valid row is an RL row and the SFT statistic is
    taken over the same rows (the documented fallback); no row is a
    demonstration then. The numpy statistics and the torch twin join the
    roles here; the fused kernel writes the same flags in its epilogue
    (``gaccore.kernels.fused``), which saves a GPU these launches."""
    unscored = rows.valid * math.nan
    if expert is None:
        return dataclasses.replace(rows, rl=rows.valid, sft=rows.valid, demo=rows.valid * 0.0, score=unscored)
    # valid is 0/1 in float64: a comparison and two arithmetic ops give both
    # flags (each op is a kernel launch on a GPU, which costs more than the arithmetic)
    demo = rows.valid * (expert != 0)
    return dataclasses.replace(rows, rl=rows.valid - demo, sft=demo, demo=demo, score=unscored)


def with_scores(rows: RowResults, scores: Any) -> RowResults:
    """The verifier's per-row scores ``[B]`` (float; NaN or inf: not scored),
    for every row of the batch: a demonstration's score, a rollout's reward."""
    # A copy, never a view: the caller may refill its buffer before the step closes.
    return rows if scores is None else dataclasses.replace(rows, score=_as_real(scores, copy=True))


def kept_demos(scores: Any, filter_demos: float | None) -> Any:
    """Which demonstrations the filter keeps: those whose score is not below
    ``filter_demos``. An unscored one (NaN) is kept, and ``None`` keeps all.
    Works on numpy arrays and torch tensors; trainers mask their SFT loss
    with it, the controller its SFT statistics."""
    threshold = -math.inf if filter_demos is None else filter_demos
    return ~(scores < threshold)


# -- the few operations whose spelling differs between numpy and torch ----------


def _concat(a: Any, b: Any) -> Any:
    return torch_module().cat([a, b]) if is_torch(a) else np.concatenate([a, b])


def _sort(x: Any) -> Any:
    return torch_module().sort(x, stable=True).values if is_torch(x) else np.sort(x, kind="stable")


def _positions(x: Any) -> Any:
    """``0, 1, ..., len(x) - 1`` as float64, beside ``x``."""
    if is_torch(x):
        torch = torch_module()
        return torch.arange(x.shape[0], device=x.device, dtype=torch.float64)
    return np.arange(x.shape[0], dtype=np.float64)


def _as_real(x: Any, *, copy: bool = False) -> Any:
    """``x`` as float64; with ``copy``, never a view of ``x``'s memory."""
    if is_torch(x):
        return x.to(torch_module().float64, copy=copy)
    return np.array(x, dtype=np.float64) if copy else np.asarray(x, dtype=np.float64)


def _masked_sum(select: Any, values: Any) -> Any:
    return where(select, values, 0.0).sum()


def _masked_extreme(select: Any, values: Any, *, largest: bool) -> Any:
    """max (or min) of the selected values; -inf (+inf) when none is selected."""
    fill = -math.inf if largest else math.inf
    masked = where(select, values, fill)
    if not is_torch(masked):
        return masked.max(initial=fill) if largest else masked.min(initial=fill)
    padded = torch_module().cat([masked, masked.new_full((1,), fill)])
    return padded.amax() if largest else padded.amin()


def _at_least_one(x: Any) -> Any:
    return where(x >= 1, x, 1)


def _masked_mean(select: Any, values: Any) -> Any:
    """Mean of the selected values; NaN when none is selected."""
    count = _as_real(select.sum())
    return where(count > 0, _masked_sum(select, values) / _at_least_one(count), math.nan)


# -- finalize ---------------------------------------------------------------------


def trimmed_variance(nll: Any, sft: Any, trim: float) -> Any:
    """Eq. 9 without leaving the device: drop exactly ``floor(trim n)`` of the
    smallest and of the largest SFT values, ddof=1 variance of the rest.

    Non-SFT rows are padded with +inf so they sort last; the kept window of
    sorted positions ``[k, n - k)`` is selected with a mask, not a slice."""
    n = _as_real(sft.sum())
    k = (trim * n) // 1.0  # float64 floor, exactly as math.floor(trim * n)
    ordered = _sort(where(sft, nll, math.inf))
    position = _positions(ordered)
    kept = (position >= k) & (position < n - k)
    count = n - 2 * k
    mean = _masked_sum(kept, ordered) / _at_least_one(count)
    m2 = _masked_sum(kept, (ordered - mean) ** 2)
    return where(count >= 2, m2 / _at_least_one(count - 1), math.nan)


def finalize(
    rows: RowResults, *, trim: float = 0.1, filter_demos: float | None = None, success_threshold: float | None = None
) -> BatchStats[Any, Any]:
    """The proxies of SPEC §2 from row results: 0-d tensors on their device
    for torch rows (float64, counts int64), Python floats and ints for numpy
    rows.

    Rows combine with the parallel-axis (Chan) formulas in float64:
    ``mean = sum n_i mean_i / N``, ``M2 = sum M2_i + sum n_i (mean_i - mean)^2``
    and the same for the co-moment, so the result equals one pass over all
    tokens of the RL rows. ``trim`` and ``filter_demos`` are taken as valid:
    ``batch_stats`` and ``Config`` check them once, before any row is reduced.

    With ``filter_demos``, a demonstration scored below it (``kept_demos``) is
    no SFT row: it adds nothing to ``var_sft`` or ``n_sft``. It still counts
    in ``n_demos`` and in the expert's success rate, which measures the
    expert, not the filter. With ``success_threshold``, the success rates
    count a score at or above it as a success and one below as a failure;
    the filter reads the scores as they are.
    """
    with quiet(rows.valid):  # NaN/inf of rows outside a statistic are masked
        stats = _finalize(rows, trim, filter_demos, success_threshold)
    if is_torch(stats.var_sft):
        return stats
    host = {f.name: getattr(stats, f.name) for f in fields(stats)}
    return BatchStats(**{name: int(v) if name.startswith("n_") else float(v) for name, v in host.items()})


def _finalize(
    rows: RowResults, trim: float, filter_demos: float | None, success_threshold: float | None
) -> BatchStats[Any, Any]:
    rl, sft, demo = rows.rl != 0, rows.sft != 0, rows.demo != 0
    if filter_demos is not None:
        sft = sft & (kept_demos(rows.score, filter_demos) | ~demo)
    n_rl, n_sft = rl.sum(), sft.sum()

    # Eq. 8: ddof=1 variance of the sequence advantages of RL rows.
    seq_mean = _masked_sum(rl, rows.seq_adv) / _at_least_one(n_rl)
    seq_m2 = _masked_sum(rl, (rows.seq_adv - seq_mean) ** 2)
    var_rl = where(n_rl >= 2, seq_m2 / _at_least_one(n_rl - 1), math.nan)

    # Eq. 10: token moments of the RL rows merged across rows.
    n = where(rl, rows.n_tokens, 0.0)
    n_tokens = n.sum()
    total = _at_least_one(n_tokens)
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
    pearson = c_aw / where(defined, m2_a * m2_w, 1.0) ** 0.5
    disagreement = where(defined, clip(2.0 * (1.0 - pearson), 0.0, 4.0), math.nan)

    kl = where(n_tokens > 0, _masked_sum(rl, rows.kl_sum) / total, math.nan)
    dropped = (rows.n_tokens > 0) & (rows.valid == 0)
    scored = absolute(rows.score) < math.inf  # false for NaN and inf: not scored
    success = rows.score if success_threshold is None else _as_real(rows.score >= success_threshold)
    return BatchStats(
        var_sft=trimmed_variance(rows.nll, sft, trim),
        var_rl=var_rl,
        disagreement=disagreement,
        kl=kl,
        n_sft=n_sft,
        n_rl=n_rl,
        n_tokens=n_tokens.to(torch_module().int64) if is_torch(n_tokens) else n_tokens,
        n_nonfinite_rows=dropped.sum(),
        expert_success=_masked_mean(demo & scored, success),
        policy_success=_masked_mean(rl & scored, success),
        n_demos=demo.sum(),
    )
