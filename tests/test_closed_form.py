"""Eq. 3, 5 and 6 against the brute-force minimizer of their MSE."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaccore import mu_star, mu_star_biased


def _argmin_convex(f, lo: float = -1e3, hi: float = 1e3, iterations: int = 300) -> float:
    """Ternary search: the brute-force minimizer of a convex function of mu."""
    for _ in range(iterations):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if f(a) <= f(b):
            hi = b
        else:
            lo = a
    return 0.5 * (lo + hi)


def _problem(seed: int, dim: int, bias_scale: float, corr: bool):
    """Gradients, biases and a joint noise covariance of (eS, eR), from vectors."""
    rng = np.random.default_rng(seed)
    g_sft, g_rl = rng.normal(size=dim), rng.normal(size=dim)
    b_sft, b_rl = bias_scale * rng.normal(size=dim), bias_scale * rng.normal(size=dim)
    factor = rng.normal(size=(2 * dim, 2 * dim)) * rng.uniform(0.1, 2.0)
    cov = factor @ factor.T / (2 * dim)
    if not corr:
        cov[:dim, dim:] = 0.0
        cov[dim:, :dim] = 0.0
    return g_sft, g_rl, b_sft, b_rl, cov, rng.uniform(0.0, 1.0)


def _mse(mu, g_sft, g_rl, b_sft, b_rl, cov, rho):
    """E|mu gS^ + (1-mu) gR^ - (rho gS + (1-rho) gR)|^2, computed from the vectors."""
    dim = g_sft.size
    mean_error = mu * (g_sft + b_sft) + (1 - mu) * (g_rl + b_rl) - (rho * g_sft + (1 - rho) * g_rl)
    mixing = np.hstack([mu * np.eye(dim), (1 - mu) * np.eye(dim)])  # e -> mu eS + (1-mu) eR
    noise = float(np.trace(mixing @ cov @ mixing.T))
    return float(mean_error @ mean_error) + noise


def _terms(g_sft, g_rl, b_sft, b_rl, cov):
    dim = g_sft.size
    delta, bias_diff = g_sft - g_rl, b_sft - b_rl
    return dict(
        D=float(delta @ delta),
        var_sft=float(np.trace(cov[:dim, :dim])),
        var_rl=float(np.trace(cov[dim:, dim:])),
        cov=float(np.trace(cov[:dim, dim:])),
        bias_diff_sq=float(bias_diff @ bias_diff),
        bias_diff_dot_delta=float(bias_diff @ delta),
        bias_rl_dot_delta=float(b_rl @ delta),
        bias_rl_dot_diff=float(b_rl @ bias_diff),
    )


problems = dict(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 6))


@settings(max_examples=60, deadline=None)
@given(**problems)
def test_eq3_is_the_minimizer_for_unbiased_independent_noise(seed: int, dim: int) -> None:
    g_sft, g_rl, b_sft, b_rl, cov, rho = _problem(seed, dim, 0.0, corr=False)
    t = _terms(g_sft, g_rl, b_sft, b_rl, cov)
    brute = _argmin_convex(lambda m: _mse(m, g_sft, g_rl, b_sft, b_rl, cov, rho))
    assert mu_star(t["D"], t["var_sft"], t["var_rl"], rho) == pytest.approx(brute, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(**problems)
def test_eq5_is_the_minimizer_for_correlated_noise(seed: int, dim: int) -> None:
    g_sft, g_rl, b_sft, b_rl, cov, rho = _problem(seed, dim, 0.0, corr=True)
    t = _terms(g_sft, g_rl, b_sft, b_rl, cov)
    brute = _argmin_convex(lambda m: _mse(m, g_sft, g_rl, b_sft, b_rl, cov, rho))
    assert mu_star(t["D"], t["var_sft"], t["var_rl"], rho, t["cov"]) == pytest.approx(brute, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(**problems, bias_scale=st.floats(0.0, 3.0))
def test_eq6_is_the_minimizer_for_biased_estimators(seed: int, dim: int, bias_scale: float) -> None:
    g_sft, g_rl, b_sft, b_rl, cov, rho = _problem(seed, dim, bias_scale, corr=True)
    t = _terms(g_sft, g_rl, b_sft, b_rl, cov)
    brute = _argmin_convex(lambda m: _mse(m, g_sft, g_rl, b_sft, b_rl, cov, rho))
    got = mu_star_biased(
        t["D"],
        t["var_sft"],
        t["var_rl"],
        rho,
        cov=t["cov"],
        bias_diff_sq=t["bias_diff_sq"],
        bias_diff_dot_delta=t["bias_diff_dot_delta"],
        bias_rl_dot_delta=t["bias_rl_dot_delta"],
        bias_rl_dot_diff=t["bias_rl_dot_diff"],
    )
    assert got == pytest.approx(brute, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(
    D=st.floats(0.0, 1e3),
    var_sft=st.floats(1e-3, 1e3),
    var_rl=st.floats(1e-3, 1e3),
    rho=st.floats(0.0, 1.0),
    cov_frac=st.floats(-0.9, 0.9),
)
def test_the_forms_reduce_to_each_other(D, var_sft, var_rl, rho, cov_frac) -> None:
    cov = cov_frac * math.sqrt(var_sft * var_rl)
    assert mu_star_biased(D, var_sft, var_rl, rho, cov=cov) == pytest.approx(
        mu_star(D, var_sft, var_rl, rho, cov), rel=1e-12, abs=1e-12
    )
    assert mu_star(D, var_sft, var_rl, rho, 0.0) == pytest.approx(
        (rho * D + var_rl) / (D + var_sft + var_rl), rel=1e-12
    )


@settings(max_examples=100, deadline=None)
@given(var_sft=st.floats(1e-3, 1e3), var_rl=st.floats(1e-3, 1e3), rho=st.floats(0.0, 1.0))
def test_limits_of_eq3(var_sft: float, var_rl: float, rho: float) -> None:
    # D -> 0: inverse-variance weighting.
    assert mu_star(1e-14, var_sft, var_rl, rho) == pytest.approx(var_rl / (var_sft + var_rl), rel=1e-9)
    # No noise, or overwhelming disagreement: the target ratio.
    assert mu_star(1.0, 1e-15, 1e-15, rho) == pytest.approx(rho, abs=1e-12)
    assert mu_star(1e15, var_sft, var_rl, rho) == pytest.approx(rho, abs=1e-9)


def test_undefined_estimates_are_nan_not_errors() -> None:
    assert math.isnan(mu_star(0.0, 0.0, 0.0, 0.5))
    assert math.isnan(mu_star(1.0, -3.0, 0.5, 0.5))
    assert math.isnan(mu_star(math.nan, 1.0, 1.0, 0.5))
    assert math.isnan(mu_star(math.inf, 1.0, 1.0, 0.5))
    assert math.isnan(mu_star_biased(1.0, 1.0, 1.0, 0.5, cov=2.0))
    assert isinstance(mu_star(1.0, 1.0, 1.0, 0.5), float)


def test_elementwise_on_arrays_including_bad_entries() -> None:
    D = np.array([1.0, 0.0, np.nan, np.inf, 2.0])
    var_sft = np.array([1.0, 0.0, 1.0, 1.0, 0.5])
    out = mu_star(D, var_sft, 1.0, 0.5)
    assert out.shape == (5,)
    expected = [(0.5 + 1) / 3, 1.0, np.nan, np.nan, (1.0 + 1.0) / 3.5]
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    with np.errstate(all="raise"):  # no warnings escape either
        mu_star(np.zeros(3), np.zeros(3), np.zeros(3), 0.5)
