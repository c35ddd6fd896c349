"""Batch statistics (Eq. 8-10 and the k3 KL) in float64 numpy: the reference.

The statistics are computed in two stages so that micro-batches of one
optimizer step (and, in ``gaccore.kernels``, ranks of a process group) can be
merged exactly: ``batch_partials`` reduces one batch to mergeable row
results, ``NumpyPartials.merge`` combines two of them (Chan's pairwise update for
every second moment, SFT NLL values concatenated), ``finalize`` turns the
merged result into ``BatchStats``. ``batch_stats`` is the three in a row.

Conventions (SPEC.md §2): the mask is binarized; masked-out positions never
enter arithmetic, so padding may hold NaN or -inf; logp is clamped to <= 0.
A row is valid when it has a masked-in token and all of its masked-in logp,
adv and ref_logp values are finite; invalid rows with tokens are dropped and
counted. Without ``expert`` every valid row is an RL row and the SFT
statistic is taken over the same rows. ``n_tokens`` counts the masked-in
tokens of RL rows, the tokens that ``disagreement`` and ``kl`` average over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from gaccore.validation import check_batch, check_trim

Value = TypeVar("Value")
Count = TypeVar("Count")

FloatArray = npt.NDArray[np.float64]

# Below this |x| the k3 term expm1(x) - x is evaluated by its series, where the
# subtraction would cancel; the truncation error there is below 1e-18 relative.
K3_SERIES_BELOW = 1e-3


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
    n_dropped: Count


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of one variable."""

    count: int
    mean: float
    m2: float

    @staticmethod
    def of(values: FloatArray) -> Moments:
        if values.size == 0:
            return Moments(0, 0.0, 0.0)
        mean = float(values.mean())
        return Moments(int(values.size), mean, float(((values - mean) ** 2).sum()))

    def merge(self, other: Moments) -> Moments:
        """Chan et al.'s pairwise update: exact, no ``sum(x^2) - n mean^2``."""
        count = self.count + other.count
        if count == 0:
            return self
        delta = other.mean - self.mean
        weight = self.count * other.count / count
        return Moments(
            count,
            self.mean + delta * other.count / count,
            self.m2 + other.m2 + delta * delta * weight,
        )


@dataclass(frozen=True)
class CoMoments:
    """Moments of a pair of variables plus their co-moment and ranges."""

    x: Moments
    y: Moments
    cxy: float
    x_min: float
    x_max: float
    y_min: float
    y_max: float

    @staticmethod
    def of(x: FloatArray, y: FloatArray) -> CoMoments:
        mx, my = Moments.of(x), Moments.of(y)
        if x.size == 0:
            return CoMoments(mx, my, 0.0, math.inf, -math.inf, math.inf, -math.inf)
        cxy = float(((x - mx.mean) * (y - my.mean)).sum())
        return CoMoments(mx, my, cxy, float(x.min()), float(x.max()), float(y.min()), float(y.max()))

    def merge(self, other: CoMoments) -> CoMoments:
        count = self.x.count + other.x.count
        if count == 0:
            return self
        weight = self.x.count * other.x.count / count
        cxy = self.cxy + other.cxy + (other.x.mean - self.x.mean) * (other.y.mean - self.y.mean) * weight
        return CoMoments(
            self.x.merge(other.x),
            self.y.merge(other.y),
            cxy,
            min(self.x_min, other.x_min),
            max(self.x_max, other.x_max),
            min(self.y_min, other.y_min),
            max(self.y_max, other.y_max),
        )


@dataclass(frozen=True)
class NumpyPartials:
    """Mergeable row results of one or more numpy batches."""

    seq_adv: Moments  # sequence advantages a_i of RL rows (Eq. 8)
    sft_nll: FloatArray  # nll_i of SFT rows, in row order (Eq. 9)
    coefs: CoMoments  # (a_t, w_t) over RL tokens (Eq. 10)
    kl_sum: float  # sum of k3 over RL tokens; NaN when RL tokens came without ref_logp
    n_sft: int
    n_rl: int
    n_dropped: int

    def merge(self, other: NumpyPartials) -> NumpyPartials:
        return NumpyPartials(
            self.seq_adv.merge(other.seq_adv),
            np.concatenate([self.sft_nll, other.sft_nll]),
            self.coefs.merge(other.coefs),
            self.kl_sum + other.kl_sum,
            self.n_sft + other.n_sft,
            self.n_rl + other.n_rl,
            self.n_dropped + other.n_dropped,
        )


def k3(x: FloatArray) -> FloatArray:
    """The k3 KL term ``exp(x) - x - 1`` as ``expm1(x) - x``, by its series
    ``x^2/2 (1 + x/3 (1 + x/4 (1 + x/5 (1 + x/6))))`` for tiny ``|x|``."""
    series = 0.5 * x * x * (1 + x / 3 * (1 + x / 4 * (1 + x / 5 * (1 + x / 6))))
    with np.errstate(over="ignore", invalid="ignore"):
        direct = np.expm1(x) - x
    return np.where(np.abs(x) < K3_SERIES_BELOW, series, direct)


def check_inputs(
    logp: np.ndarray,
    mask: np.ndarray,
    adv: np.ndarray,
    expert: np.ndarray | None,
    ref_logp: np.ndarray | None,
    sft_coef: str,
) -> tuple[int, int]:
    """Validate one batch of numpy arrays (types, shapes, dtype kinds)
    without reading any value; returns ``(B, T)``."""
    return check_batch(
        {"logp": logp, "mask": mask, "adv": adv, "expert": expert, "ref_logp": ref_logp},
        array_type=np.ndarray,
        type_name="a numpy array",
        kind_of=lambda dtype: dtype.kind,
        sft_coef=sft_coef,
    )


def batch_partials(
    logp: np.ndarray,
    mask: np.ndarray,
    adv: np.ndarray,
    expert: np.ndarray | None = None,
    *,
    ref_logp: np.ndarray | None = None,
    sft_coef: str = "phi",
) -> NumpyPartials:
    """Reduce one batch to mergeable row results (float64 throughout)."""
    check_inputs(logp, mask, adv, expert, ref_logp, sft_coef)

    on = mask != 0
    token_adv = np.broadcast_to(adv[:, None], on.shape) if adv.ndim == 1 else adv
    finite = np.isfinite(logp) & np.isfinite(token_adv)
    if ref_logp is not None:
        finite &= np.isfinite(ref_logp)
    lengths = on.sum(axis=1)
    has_tokens = lengths > 0
    valid = has_tokens & np.all(finite | ~on, axis=1)
    is_expert = np.zeros_like(valid) if expert is None else expert != 0
    rl_rows = valid & ~is_expert
    sft_rows = rl_rows if expert is None else valid & is_expert

    logp64 = np.where(on, np.minimum(logp.astype(np.float64), 0.0), 0.0)
    adv64 = np.where(on, token_adv.astype(np.float64), 0.0)
    safe_lengths = np.maximum(lengths, 1)
    nll = -logp64.sum(axis=1) / safe_lengths
    seq_adv = adv.astype(np.float64) if adv.ndim == 1 else adv64.sum(axis=1) / safe_lengths

    rl_tokens = on & rl_rows[:, None]
    rl_logp = logp64[rl_tokens]
    if sft_coef == "phi":
        prob = np.exp(rl_logp)
        sft_weight = prob * (1.0 - prob)
    else:
        sft_weight = -np.expm1(rl_logp)
    # Without ref_logp the KL is unknown only if RL tokens need it: a
    # micro-batch of expert rows alone leaves the step's KL defined.
    kl_sum = math.nan if rl_logp.size else 0.0
    if ref_logp is not None:
        kl_sum = float(k3(ref_logp.astype(np.float64)[rl_tokens] - rl_logp).sum())

    return NumpyPartials(
        seq_adv=Moments.of(seq_adv[rl_rows]),
        sft_nll=nll[sft_rows],
        coefs=CoMoments.of(adv64[rl_tokens], sft_weight),
        kl_sum=kl_sum,
        n_sft=int(sft_rows.sum()),
        n_rl=int(rl_rows.sum()),
        n_dropped=int((has_tokens & ~valid).sum()),
    )


def trimmed_variance(values: FloatArray, trim: float) -> float:
    """Eq. 9: sample variance after dropping exactly ``floor(trim n)`` of the
    smallest and of the largest values (ties counted one by one)."""
    n = values.size
    drop = math.floor(trim * n)
    kept = np.sort(values)[drop : n - drop]
    if kept.size < 2:
        return math.nan
    return float(kept.var(ddof=1))


def z_disagreement(coefs: CoMoments) -> float:
    """Eq. 10: ``mean_t (z(a)_t - z(w)_t)^2 = 2 (1 - pearson(a, w))``, NaN with
    fewer than two tokens or a coefficient whose values are all equal."""
    degenerate = coefs.x_min == coefs.x_max or coefs.y_min == coefs.y_max
    if coefs.x.count < 2 or degenerate or coefs.x.m2 <= 0 or coefs.y.m2 <= 0:
        return math.nan
    pearson = coefs.cxy / math.sqrt(coefs.x.m2 * coefs.y.m2)
    return min(max(2.0 * (1.0 - pearson), 0.0), 4.0)


def finalize(partials: NumpyPartials, *, trim: float = 0.1) -> BatchStats[float, int]:
    check_trim(trim)
    seq = partials.seq_adv
    n_tokens = partials.coefs.x.count
    return BatchStats(
        var_sft=trimmed_variance(partials.sft_nll, trim),
        var_rl=seq.m2 / (seq.count - 1) if seq.count >= 2 else math.nan,
        disagreement=z_disagreement(partials.coefs),
        kl=partials.kl_sum / n_tokens if n_tokens > 0 else math.nan,
        n_sft=partials.n_sft,
        n_rl=partials.n_rl,
        n_tokens=n_tokens,
        n_dropped=partials.n_dropped,
    )


def batch_stats(
    logp: np.ndarray,
    mask: np.ndarray,
    adv: np.ndarray,
    expert: np.ndarray | None = None,
    *,
    ref_logp: np.ndarray | None = None,
    trim: float = 0.1,
    sft_coef: str = "phi",
) -> BatchStats[float, int]:
    """The proxies of SPEC.md §2 for one batch, in float64.

    ``logp``/``mask``/``ref_logp`` are ``[B, T]``, ``adv`` is ``[B]`` or
    ``[B, T]``, ``expert`` is ``[B]`` (nonzero marks an SFT/expert row).
    Never raises on valid shapes and dtypes; undefined statistics are NaN.
    """
    check_trim(trim)
    partials = batch_partials(logp, mask, adv, expert, ref_logp=ref_logp, sft_coef=sft_coef)
    return finalize(partials, trim=trim)
