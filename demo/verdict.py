"""The suite's statistics: intervals from few seeds, and the verdict.

As RL benchmarks report results from few runs (Agarwal et al. 2021, "Deep
RL at the edge of the statistical precipice"): a score per (task, seed),
aggregates over tasks and seeds with stratified bootstrap 95% confidence
intervals (the seeds of each task resampled on their own, by
``scipy.stats.bootstrap``), and comparisons paired by seed: the same seed
gives two methods the same initial weights and prompt order, so the
difference of their scores on (task, seed) is the unit that is resampled.

A method *beats* another when the interval of the mean paired difference
lies above zero; an interval that contains zero decides nothing. Pure
functions of arrays, so tests can build the records by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

FloatArray = npt.NDArray[np.float64]
CONFIDENCE = 0.95
RESAMPLES = 4000
# Accuracies are means of multiples of 1/n_test: differences below this are rounding, not a gap.
TIE = 1e-9


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _mean(*samples: FloatArray, axis: int = -1) -> FloatArray:
    """The mean over tasks of each task's mean over seeds (all seeds of a task weigh alike)."""
    return np.mean([np.mean(sample, axis=axis) for sample in samples], axis=0)


def _iqm(*samples: FloatArray, axis: int = -1) -> FloatArray:
    """The interquartile mean of every (task, seed) score together."""
    return stats.trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)


def stratified_interval(scores: FloatArray, statistic: Callable[..., FloatArray] = _mean, *, seed: int = 0) -> Interval:
    """``statistic`` of ``scores [task, seed]`` with a stratified bootstrap 95%
    interval: each task's seeds are resampled with replacement, on their own."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be [task, seed] with at least one seed, got shape {scores.shape}")
    samples = tuple(scores)
    estimate = float(statistic(*samples))
    if scores.shape[1] < 2 or np.ptp(scores, axis=1).max() == 0.0:
        # One seed has no spread to resample; identical seeds have none to find.
        low = high = estimate if scores.shape[1] >= 2 else float("nan")
        return Interval(estimate, low, high)
    result = stats.bootstrap(
        samples,
        statistic,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return Interval(estimate, float(result.confidence_interval.low), float(result.confidence_interval.high))


def iqm_interval(scores: FloatArray, *, seed: int = 0) -> Interval:
    return stratified_interval(scores, _iqm, seed=seed)


def stratified_t_interval(samples: Sequence[npt.ArrayLike]) -> Interval:
    """The mean over strata (tasks) of each stratum's mean, with a 95%
    t-interval: standard error ``sqrt(sum_r s_r^2 / n_r) / R`` from each
    stratum's sample variance ``s_r^2`` over its ``n_r`` values, degrees of
    freedom by Welch-Satterthwaite. The strata may hold different numbers of
    values (a ``[task, seed]`` matrix is one stratum per row). NaN bounds
    when a stratum has fewer than two values; no spread at all gives the
    estimate as both bounds."""
    rows = [np.asarray(sample, dtype=np.float64).ravel() for sample in samples]
    if not rows or any(row.size == 0 for row in rows):
        raise ValueError("a stratified t-interval needs at least one stratum, each with at least one value")
    estimate = float(np.mean([row.mean() for row in rows]))
    if any(row.size < 2 for row in rows):
        return Interval(estimate, math.nan, math.nan)
    sizes = np.array([row.size for row in rows], dtype=np.float64)
    shares = np.array([row.var(ddof=1) for row in rows]) / sizes  # s_r^2 / n_r
    total = float(shares.sum())
    if total == 0.0:
        return Interval(estimate, estimate, estimate)
    standard_error = math.sqrt(total) / len(rows)
    degrees_of_freedom = total**2 / float(np.sum(shares**2 / (sizes - 1.0)))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2.0, degrees_of_freedom)) * standard_error
    return Interval(estimate, estimate - half, estimate + half)


def width(interval: Interval) -> float:
    """``high - low``; infinite where a bound is undefined (NaN): an interval
    that could not be computed is wider than any that could."""
    spread = interval.high - interval.low
    return math.inf if math.isnan(spread) else spread


def wider(first: Interval, second: Interval) -> Interval:
    """The wider of two intervals of one estimate (the first on a tie)."""
    return second if width(second) > width(first) else first


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``, paired by (task, seed)."""

    difference: Interval  # mean of a - b
    probability_of_improvement: Interval  # P(a > b) + P(a = b) / 2 over paired seeds, averaged over tasks

    @property
    def beats(self) -> bool:
        return self.difference.low > TIE

    @property
    def loses(self) -> bool:
        return self.difference.high < -TIE

    def word(self) -> str:
        return "beats" if self.beats else "loses to" if self.loses else "ties with"


def compare(a: FloatArray, b: FloatArray, *, seed: int = 0) -> Comparison:
    """Paired comparison of two methods' scores ``[task, seed]`` (the same seeds)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have one shape [task, seed], got {a.shape} and {b.shape}")
    difference = a - b
    wins = (difference > TIE) + 0.5 * (np.abs(difference) <= TIE)
    return Comparison(stratified_interval(difference, seed=seed), stratified_interval(wins, seed=seed))


def regrets(final: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
    """``[task]`` per method: the task's best mean final score minus this method's."""
    means = {method: np.asarray(scores).mean(axis=1) for method, scores in final.items()}
    best = np.max(np.stack(list(means.values())), axis=0)
    return {method: best - mean for method, mean in means.items()}


@dataclass(frozen=True)
class CandidateCheck:
    """A gaccore mode against the bar of its track."""

    method: str
    final: dict[str, Comparison]  # per baseline, on final accuracy
    area: dict[str, Comparison]  # per baseline, on the area under the accuracy curve
    worst_regret: float
    regret_limit: float  # the best baseline's worst regret

    @property
    def beats_every_baseline(self) -> bool:
        return all(c.beats for c in self.final.values())

    @property
    def no_worse_on_area(self) -> bool:
        return not any(c.loses for c in self.area.values())

    @property
    def regret_ok(self) -> bool:
        return self.worst_regret <= self.regret_limit + TIE

    @property
    def clears(self) -> bool:
        return self.beats_every_baseline and self.no_worse_on_area and self.regret_ok


@dataclass(frozen=True)
class TrackVerdict:
    track: str
    checks: list[CandidateCheck]
    text: str
    decided: bool  # enough seeds for the intervals to decide

    @property
    def recommended(self) -> str | None:
        """The candidate that clears the bar with the highest mean final
        score; None if none clears, or if the seeds cannot decide."""
        cleared = [c for c in self.checks if c.clears]
        return cleared[0].method if cleared and self.decided else None


def track_verdict(
    track: str,
    final: Mapping[str, FloatArray],
    area: Mapping[str, FloatArray],
    candidates: Sequence[str],
    baselines: Sequence[str],
    *,
    deciding_seeds: int = 5,
) -> TrackVerdict:
    """Each candidate against every baseline of its track. The bar: it beats
    every baseline on final accuracy (the interval of the paired difference
    above zero), is not worse on curve area (no interval below zero), and
    its worst regret over the tasks is no larger than the best baseline's.
    With fewer than ``deciding_seeds`` seeds the intervals describe the runs
    and decide nothing: the text says so and nothing is recommended."""
    if not candidates or not baselines:
        raise ValueError("a track verdict needs candidates and baselines")
    regret = regrets(final)
    worst = {method: float(values.max()) for method, values in regret.items()}
    limit_owner = min(baselines, key=lambda m: worst[m])
    checks = [
        CandidateCheck(
            method=c,
            final={b: compare(final[c], final[b]) for b in baselines},
            area={b: compare(area[c], area[b]) for b in baselines},
            worst_regret=worst[c],
            regret_limit=worst[limit_owner],
        )
        for c in candidates
    ]
    checks.sort(key=lambda check: -float(np.mean(final[check.method])))
    n_tasks, n_seeds = np.asarray(final[candidates[0]]).shape
    decided = n_seeds >= deciding_seeds
    lines = (
        []
        if decided
        else [
            f"Cannot decide: {n_seeds} seed(s) on {n_tasks} task(s). A bootstrap of so few seeds gives intervals "
            f"too narrow to trust; the words below describe these runs, and {deciding_seeds} seeds decide.",
            "",
        ]
    )
    lines += [
        f"The bar for track {track}: beat every baseline on final accuracy (the 95% interval of the mean "
        f"paired difference above zero, {n_tasks} task(s) x {n_seeds} seed(s)), be no worse on the area under "
        f"the accuracy curve (no interval below zero), and have a worst regret over the tasks no larger than the "
        f"best baseline's ({limit_owner}, {worst[limit_owner]:.3f}).",
        "",
    ]
    for check in checks:
        outcome = "clears the bar" if check.clears else "does not clear the bar"
        if not decided:
            outcome = "on these runs " + outcome.replace("clears", "would clear").replace(
                "does not clear", "falls short of"
            )
        failing = [b for b, comparison in check.final.items() if not comparison.beats]
        reasons = []
        if failing:
            reasons.append(f"does not beat {', '.join(failing)} on final accuracy")
        worse_area = [b for b, comparison in check.area.items() if comparison.loses]
        if worse_area:
            reasons.append(f"learns more slowly than {', '.join(worse_area)} (curve area)")
        if not check.regret_ok:
            reasons.append(f"worst regret {check.worst_regret:.3f} above {check.regret_limit:.3f}")
        lines.append(f"- {check.method}: {outcome}" + (f": {'; '.join(reasons)}." if reasons else "."))
    return TrackVerdict(track, checks, "\n".join(lines), decided)
