"""Batch statistics (Eq. 8-10 and the k3 KL) in float64 numpy: the reference,
the numpy backend, and ``batch_stats``.

The statistics are computed in two stages so that micro-batches of one
optimizer step (and, in ``gaccore.kernels``, ranks of a process group) can be
merged exactly: ``row_results`` reduces one batch to its row results
(``gaccore.rows.RowResults``), ``RowResults.merge`` concatenates two of them,
and ``gaccore.rows.finalize`` (shared with the torch paths) turns them into
``BatchStats``. ``batch_stats`` is the three in a row, for numpy arrays here
and for torch tensors through the torch side's backend. Every implementation
of ``row_results`` (``gaccore.registry.IMPLEMENTATIONS``) is held to this one
in the tests.

Conventions (SPEC.md §2): the mask is binarized; masked-out positions never
enter arithmetic, so padding may hold NaN or -inf; logp is clamped to <= 0.
A row is valid when it has a masked-in token and all of its masked-in logp,
adv and ref_logp values are finite; invalid rows with tokens are dropped and
counted. Without ``expert`` every valid row is an RL row and the SFT
statistic is taken over the same rows. ``n_tokens`` counts the masked-in
tokens of RL rows, the tokens that ``disagreement`` and ``kl`` average over.

Rows are reduced in blocks of about ``HOST_BLOCK_TOKENS`` tokens: each
float64 temporary of a block stays below the allocator's threshold for fresh
memory-mapped pages, whose page faults cost more than the arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from gaccore._array import absolute, expm1, is_torch, where
from gaccore.batch import TokenBatch
from gaccore.registry import backend, check_implementation, checked, library_of
from gaccore.rows import BatchStats, RowResults, finalize, with_roles, with_scores
from gaccore.step import PlainRunner
from gaccore.validation import check_batch, check_sft_coef, check_threshold, check_trim

__all__ = ["NUMPY_BACKEND", "NumpyBackend", "batch_stats", "k3", "row_results"]

ArrayT = TypeVar("ArrayT")
FloatArray = npt.NDArray[np.float64]

# Below this |x| the k3 term expm1(x) - x is evaluated by its series, where the
# subtraction would cancel; the truncation error there is below 1e-18 relative.
K3_SERIES_BELOW = 1e-3
HOST_BLOCK_TOKENS = 1 << 14
_ZERO = np.float64(0.0)  # a float64 fill keeps np.where's result float64 for float32 inputs
_FLOAT_MAX = np.finfo(np.float64).max


def k3(x: ArrayT) -> ArrayT:
    """The k3 KL term ``exp(x) - x - 1`` as ``expm1(x) - x``, by its series
    ``x^2/2 (1 + x/3 (1 + x/4 (1 + x/5 (1 + x/6))))`` for tiny ``|x|``.

    Written once for float64 numpy arrays and torch tensors alike (the torch
    twin of the kernel calls it too)."""
    series = 0.5 * x * x * (1 + x / 3 * (1 + x / 4 * (1 + x / 5 * (1 + x / 6))))
    with np.errstate(over="ignore", invalid="ignore"):
        direct = expm1(x) - x
    return where(absolute(x) < K3_SERIES_BELOW, series, direct)


def _finite_rows(values: FloatArray) -> FloatArray:
    """Rows whose values are all finite (max and min propagate NaN)."""
    if values.shape[1] == 0:
        return np.ones(values.shape[0], dtype=bool)
    return (values.max(axis=1) < np.inf) & (values.min(axis=1) > -np.inf)


def _row_min(on: np.ndarray, values: FloatArray) -> FloatArray:
    return np.where(on, values, np.inf).min(axis=1, initial=np.inf)


def _block_rows(block: TokenBatch[np.ndarray], on: np.ndarray, sft_coef: str) -> dict[str, FloatArray]:
    """Row results of a block of rows in float64, without the roles (``on``: the block's binarized mask)."""
    logp, adv, ref_logp = block.logp, block.adv, block.ref_logp
    n_tokens = np.count_nonzero(on, axis=1).astype(np.float64)
    count = np.maximum(n_tokens, 1.0)
    logp64 = np.where(on, logp, _ZERO)
    valid = (n_tokens > 0) & _finite_rows(logp64)
    np.minimum(logp64, 0.0, out=logp64)
    if sft_coef == "phi":
        prob = np.exp(logp64)
        weight = prob * (1.0 - prob)  # 0 where masked out (logp64 = 0 there)
    else:
        weight = -np.expm1(logp64)
    mean_w = weight.sum(axis=1) / count
    dev_w = np.where(on, weight - mean_w[:, None], 0.0)

    if adv.ndim == 1:
        # One advantage per row: a_t is constant along the row, so its mean
        # is adv_i and its M2 and co-moment are exactly 0.
        mean_a = adv.astype(np.float64)
        valid &= np.isfinite(mean_a)
        m2_a = c_aw = np.zeros_like(mean_a)
        min_a = np.where(n_tokens > 0, mean_a, _FLOAT_MAX)
        max_a = np.where(n_tokens > 0, mean_a, -_FLOAT_MAX)
    else:
        adv64 = np.where(on, adv, _ZERO)
        valid &= _finite_rows(adv64)
        mean_a = adv64.sum(axis=1) / count
        dev_a = np.where(on, adv64 - mean_a[:, None], 0.0)
        m2_a = np.einsum("ij,ij->i", dev_a, dev_a)
        c_aw = np.einsum("ij,ij->i", dev_a, dev_w)
        min_a, max_a = _row_min(on, adv64), -_row_min(on, -adv64)

    if ref_logp is None:
        kl_sum = np.full_like(n_tokens, np.nan)
    else:
        ref64 = np.where(on, ref_logp, _ZERO)
        valid &= _finite_rows(ref64)
        kl_sum = k3(ref64 - logp64).sum(axis=1)  # 0 where masked out: k3(0) = 0

    return {
        "n_tokens": n_tokens,
        "valid": valid.astype(np.float64),
        "nll": -logp64.sum(axis=1) / count,
        "seq_adv": mean_a,
        "mean_a": mean_a,
        "mean_w": mean_w,
        "m2_a": m2_a,
        "m2_w": np.einsum("ij,ij->i", dev_w, dev_w),
        "c_aw": c_aw,
        "min_a": min_a,
        "max_a": max_a,
        "min_w": _row_min(on, weight),
        "max_w": weight.max(axis=1, initial=0.0),  # w >= 0, 0 where masked out
        "kl_sum": kl_sum,
    }


def row_results(batch: TokenBatch[np.ndarray], sft_coef: str) -> RowResults:
    """Reduce one checked batch to its mergeable row results (float64
    throughout), the verifier's scores joined (``rows.with_scores``)."""
    on = batch.mask != 0
    step = max(1, HOST_BLOCK_TOKENS // max(batch.tokens, 1))
    with np.errstate(all="ignore"):  # invalid rows compute NaN/inf; their values are never read
        blocks = [
            _block_rows(batch.row_block(start, start + step), on[start : start + step], sft_coef)
            for start in range(0, batch.rows, step)
        ] or [_block_rows(batch, on, sft_coef)]
    fields: dict[str, Any] = {name: np.concatenate([block[name] for block in blocks]) for name in blocks[0]}
    placeholder = fields["valid"]  # rl and sft are set from valid by with_roles
    return with_scores(with_roles(RowResults(**fields, rl=placeholder, sft=placeholder), batch.expert), batch.scores)


def batch_stats(
    logp: Any,
    mask: Any,
    adv: Any,
    expert: Any = None,
    *,
    ref_logp: Any = None,
    trim: float = 0.1,
    sft_coef: str = "phi",
    scores: Any = None,
    filter_demos: float | None = None,
    success_threshold: float | None = None,
    implementation: str = "auto",
) -> BatchStats[Any, Any]:
    """The proxies of SPEC.md §2 for one batch.

    ``logp``/``mask``/``ref_logp`` are ``[B, T]``, ``adv`` is ``[B]`` or
    ``[B, T]``, ``expert`` is ``[B]`` (nonzero marks an SFT/expert row).
    ``scores`` ``[B]`` are the verifier's scores of the rows (NaN: not
    scored); they give the success rates, and with ``filter_demos`` a
    demonstration scored below it leaves the SFT statistic (``kept_demos``).
    ``success_threshold`` turns scores into successes for the rates (see
    ``Config``). Never raises on valid shapes and dtypes; undefined
    statistics are NaN.

    numpy arrays give Python floats and ints, computed in float64. torch
    tensors give 0-d tensors on their device (floats float64, counts int64)
    with no host-device synchronization, from the implementation
    ``implementation`` names (``gaccore.registry.IMPLEMENTATIONS``):
    ``"auto"`` runs the Triton kernel on CUDA, the numba pass on CPU where
    numba is installed and the torch twin elsewhere; ``"triton"`` forces the
    kernel (on CPU only under ``TRITON_INTERPRET=1``), ``"numba"`` the numba
    pass (CPU tensors), ``"torch"`` the twin.
    """
    check_trim(trim)
    check_threshold("filter_demos", filter_demos)
    check_threshold("success_threshold", success_threshold)
    check_sft_coef(sft_coef)
    batch = TokenBatch(logp, mask, adv, expert, ref_logp, scores)
    check_implementation(implementation, library_of(logp))
    side = checked(batch)
    return side.batch_stats(
        batch,
        sft_coef=sft_coef,
        trim=trim,
        filter_demos=filter_demos,
        success_threshold=success_threshold,
        implementation=implementation,
    )


class NumpyBackend:
    """float64 numpy statistics; state as numpy float64 / bool scalars
    (``gaccore.registry.StatsBackend``)."""

    name = "numpy"

    def check(self, batch: TokenBatch[Any]) -> None:
        check_batch(batch, array_type=np.ndarray, type_name="a numpy array", kind_of=lambda dtype: dtype.kind)

    def row_results(self, batch: TokenBatch[np.ndarray], sft_coef: str) -> RowResults:
        return row_results(batch, sft_coef)

    def batch_stats(
        self,
        batch: TokenBatch[np.ndarray],
        *,
        sft_coef: str,
        trim: float,
        filter_demos: float | None,
        success_threshold: float | None,
        implementation: str,
    ) -> BatchStats[float, int]:
        rows = row_results(batch, sft_coef)
        return finalize(rows, trim=trim, filter_demos=filter_demos, success_threshold=success_threshold)

    def merge(self, a: RowResults, b: RowResults) -> RowResults:
        return a.merge(b)

    def reduce(self, rows: RowResults, process_group: Any) -> RowResults:
        raise TypeError(
            "process_group needs torch tensors: pass logp, mask and adv as torch tensors "
            "(numpy inputs are never reduced across ranks)"
        )

    def mean_over_group(self, value: Any, process_group: Any, device: Any) -> Any:
        """Process groups are torch's: the mean over one comes from the torch side."""
        return backend("torch").mean_over_group(value, process_group, device)

    def finalize(
        self, rows: RowResults, *, trim: float, filter_demos: float | None, success_threshold: float | None
    ) -> BatchStats[float, int]:
        return finalize(rows, trim=trim, filter_demos=filter_demos, success_threshold=success_threshold)

    def device_of(self, value: Any) -> None:
        return None

    def placement(self, device: Any) -> None:
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

    def as_tensor(self, value: Any, device: Any) -> Any:
        return backend("torch").as_tensor(value, device)

    def runner(self, compile_step: bool | str) -> PlainRunner:
        """Host scalars have nothing to compile: every step runs ``close_step`` as written."""
        return PlainRunner()


NUMPY_BACKEND = NumpyBackend()
