"""Closed-form mixing weights: Eq. 3, Eq. 5 and Eq. 6 of SPEC.md §2.

Every function takes numbers, numpy arrays (elementwise) or torch tensors,
returns the *unclipped* minimizer, and reports an undefined estimate (a
denominator that is not positive, or a result that is not finite) as NaN
instead of raising: the controller reads NaN as "no new information".
"""

from __future__ import annotations

import math
from typing import Any

from gaccore._array import as_float64, isfinite, quiet, to_python, where


def _ratio(numerator: Any, denominator: Any) -> Any:
    positive = denominator > 0
    with quiet(numerator, denominator):
        quotient = numerator / where(positive, denominator, 1.0)
        return where(positive & isfinite(quotient), quotient, math.nan)


def mu_star(D: Any, var_sft: Any, var_rl: Any, rho: Any, cov: Any = 0.0) -> Any:
    """Optimal mixing weight, Eq. 3 (``cov=0``) and Eq. 5 (correlated noise).

    ``mu* = (rho D + vR - c) / (D + vS + vR - 2c)`` minimizes
    ``(mu-rho)^2 D + mu^2 vS + (1-mu)^2 vR + 2 mu (1-mu) c`` where ``D`` is the
    squared SFT/RL gradient disagreement, ``vS``/``vR`` the noise variances
    and ``c`` their covariance. With ``D -> 0`` it is inverse-variance
    weighting ``vR / (vS + vR)``; with no noise it is ``rho``.
    """
    D, var_sft, var_rl, rho, cov = as_float64(D, var_sft, var_rl, rho, cov)
    with quiet(D, var_sft, var_rl, rho, cov):
        numerator = rho * D + var_rl - cov
        denominator = D + var_sft + var_rl - 2.0 * cov
    return to_python(_ratio(numerator, denominator))


def mu_star_biased(
    D: Any,
    var_sft: Any,
    var_rl: Any,
    rho: Any,
    *,
    cov: Any = 0.0,
    bias_diff_sq: Any = 0.0,
    bias_diff_dot_delta: Any = 0.0,
    bias_rl_dot_delta: Any = 0.0,
    bias_rl_dot_diff: Any = 0.0,
) -> Any:
    """Exact minimizer for biased estimators, Eq. 6.

    With ``d = gS - gR`` (``D = |d|^2``), ``db = bS - bR`` and ``bR`` the RL
    bias, it minimizes ``|mu (d + db) - rho d + bR|^2 + mu^2 vS + (1-mu)^2 vR
    + 2 mu (1-mu) c``. The paper minimizes an upper bound instead; the exact
    form reduces to it, and to Eq. 5, when the bias terms vanish.
    Arguments: ``bias_diff_sq = |db|^2``, ``bias_diff_dot_delta = <db, d>``,
    ``bias_rl_dot_delta = <bR, d>``, ``bias_rl_dot_diff = <bR, db>``.
    """
    D, var_sft, var_rl, rho, cov, b_sq, b_dd, br_d, br_db = as_float64(
        D,
        var_sft,
        var_rl,
        rho,
        cov,
        bias_diff_sq,
        bias_diff_dot_delta,
        bias_rl_dot_delta,
        bias_rl_dot_diff,
    )
    with quiet(D, var_sft, var_rl, rho, cov):
        numerator = var_rl - cov + rho * (D + b_dd) - br_d - br_db
        denominator = D + 2.0 * b_dd + b_sq + var_sft + var_rl - 2.0 * cov
    return to_python(_ratio(numerator, denominator))
