"""numpy batch_stats against a direct, loop-by-loop computation of SPEC.md §2."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaccore import batch_stats
from gaccore.batch import TokenBatch
from gaccore.rows import finalize
from gaccore.stats import row_results


def direct_stats(logp, mask, adv, expert=None, ref_logp=None, trim=0.1, sft_coef="phi"):
    """The definitions, one row and one token at a time, in Python floats."""
    rows, tokens = logp.shape
    rl_seq, sft_nll, a_tok, w_tok, kl_tok = [], [], [], [], []
    dropped = 0
    for i in range(rows):
        idx = [t for t in range(tokens) if mask[i, t] != 0]
        if not idx:
            continue
        token_adv = [float(adv[i]) if adv.ndim == 1 else float(adv[i, t]) for t in idx]
        values = [float(logp[i, t]) for t in idx] + token_adv
        if ref_logp is not None:
            values += [float(ref_logp[i, t]) for t in idx]
        if not all(math.isfinite(v) for v in values):
            dropped += 1
            continue
        lp = [min(float(logp[i, t]), 0.0) for t in idx]
        nll = -sum(lp) / len(lp)
        is_expert = expert is not None and bool(expert[i])
        if expert is None or is_expert:
            sft_nll.append(nll)
        if is_expert:
            continue
        rl_seq.append(float(adv[i]) if adv.ndim == 1 else sum(token_adv) / len(token_adv))
        for k, t in enumerate(idx):
            p = math.exp(lp[k])
            a_tok.append(token_adv[k])
            w_tok.append(p * (1 - p) if sft_coef == "phi" else 1 - p)
            if ref_logp is not None:
                x = float(ref_logp[i, t]) - lp[k]
                kl_tok.append(math.exp(x) - x - 1)

    def var(xs):
        return float(np.var(xs, ddof=1)) if len(xs) >= 2 else math.nan

    k = math.floor(trim * len(sft_nll))
    trimmed = sorted(sft_nll)[k : len(sft_nll) - k]
    disagreement = math.nan
    if len(a_tok) >= 2 and len(set(a_tok)) > 1 and len(set(w_tok)) > 1:
        za = (np.array(a_tok) - np.mean(a_tok)) / np.std(a_tok)
        zw = (np.array(w_tok) - np.mean(w_tok)) / np.std(w_tok)
        disagreement = float(np.mean((za - zw) ** 2))
    return dict(
        var_sft=var(trimmed),
        var_rl=var(rl_seq),
        disagreement=disagreement,
        kl=float(np.mean(kl_tok)) if kl_tok else math.nan,
        n_sft=len(sft_nll),
        n_rl=len(rl_seq),
        n_tokens=len(a_tok),
        n_nonfinite_rows=dropped,
    )


def assert_stats_match(got, want, rel=1e-9, abs_=1e-12) -> None:
    for name, value in want.items():
        actual = getattr(got, name)
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(actual), f"{name}: expected NaN, got {actual}"
        else:
            assert actual == pytest.approx(value, rel=rel, abs=abs_), name


def random_batch(seed, rows, tokens, *, per_token_adv=False, with_expert=True, with_ref=True, poison=True):
    rng = np.random.default_rng(seed)
    logp = -rng.exponential(1.0, (rows, tokens))
    logp[rng.random((rows, tokens)) < 0.05] = 1e-7  # rounding above 0: clamped
    mask = rng.random((rows, tokens)) < 0.7
    adv = rng.normal(size=(rows, tokens) if per_token_adv else rows)
    expert = rng.random(rows) < 0.4 if with_expert else None
    ref = logp + 0.3 * rng.normal(size=(rows, tokens)) if with_ref else None
    if poison:  # padding may hold anything
        logp = np.where(mask, logp, rng.choice([np.nan, -np.inf, 5.0], size=(rows, tokens)))
    return logp, mask, adv, expert, ref


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 23),
    tokens=st.integers(1, 17),
    per_token_adv=st.booleans(),
    with_expert=st.booleans(),
    with_ref=st.booleans(),
    trim=st.sampled_from([0.0, 0.1, 0.25, 0.4]),
    sft_coef=st.sampled_from(["phi", "nll"]),
)
def test_matches_direct_computation(seed, rows, tokens, per_token_adv, with_expert, with_ref, trim, sft_coef):
    logp, mask, adv, expert, ref = random_batch(
        seed, rows, tokens, per_token_adv=per_token_adv, with_expert=with_expert, with_ref=with_ref
    )
    got = batch_stats(logp, mask, adv, expert, ref_logp=ref, trim=trim, sft_coef=sft_coef)
    assert_stats_match(got, direct_stats(logp, mask, adv, expert, ref, trim, sft_coef))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(2, 30), cut=st.integers(1, 29))
def test_merged_micro_batches_equal_the_whole_batch(seed, rows, cut):
    cut = min(cut, rows - 1)
    logp, mask, adv, expert, ref = random_batch(seed, rows, 9)
    whole = batch_stats(logp, mask, adv, expert, ref_logp=ref)
    first = row_results(TokenBatch(logp[:cut], mask[:cut], adv[:cut], expert[:cut], ref_logp=ref[:cut]), "phi")
    second = row_results(TokenBatch(logp[cut:], mask[cut:], adv[cut:], expert[cut:], ref_logp=ref[cut:]), "phi")
    assert_stats_match(finalize(first.merge(second)), whole.__dict__, rel=1e-12)


def test_invalid_rows_are_dropped_and_counted():
    logp, mask, adv, expert, ref = random_batch(3, 12, 8, poison=False)
    mask[:, 0] = True
    logp[2, 0] = np.nan
    adv[5] = np.inf
    ref[7, 0] = -np.inf
    mask[9] = False  # no tokens: neither valid nor dropped
    got = batch_stats(logp, mask, adv, expert, ref_logp=ref)
    assert got.n_nonfinite_rows == 3
    assert got.n_sft + got.n_rl == 12 - 3 - 1
    assert_stats_match(got, direct_stats(logp, mask, adv, expert, ref))


def test_shuffling_advantages_across_tokens_changes_the_disagreement():
    rng = np.random.default_rng(0)
    logp = -rng.exponential(1.0, (16, 32))
    mask = np.ones_like(logp, dtype=bool)
    # Advantages that track phi closely: low disagreement.
    prob = np.exp(logp)
    adv = prob * (1 - prob) + 0.01 * rng.normal(size=logp.shape)
    aligned = batch_stats(logp, mask, adv).disagreement
    shuffled = batch_stats(logp, mask, rng.permutation(adv.ravel()).reshape(adv.shape)).disagreement
    assert aligned < 0.05
    assert shuffled > 1.5


def test_constant_coefficients_give_nan():
    logp = np.full((4, 6), -0.5)
    mask = np.ones((4, 6), dtype=bool)
    adv = np.arange(4.0)
    assert math.isnan(batch_stats(logp, mask, adv).disagreement)  # phi constant
    varied = logp - np.linspace(0, 1, 24).reshape(4, 6)
    assert math.isnan(batch_stats(varied, mask, np.ones(4)).disagreement)  # advantages constant
    assert batch_stats(varied, mask, np.ones(4)).var_rl == 0.0  # zero variance is valid


@pytest.mark.parametrize(
    "case",
    ["all_masked", "one_row", "no_expert_rows", "only_expert_rows", "one_token", "empty_batch"],
)
def test_edge_cases_give_nan_not_errors(case):
    logp, mask, adv, expert, ref = random_batch(1, 6, 5, poison=False)
    if case == "all_masked":
        mask[:] = False
    elif case == "one_row":
        logp, mask, adv, expert, ref = logp[:1], mask[:1], adv[:1], expert[:1], ref[:1]
    elif case == "no_expert_rows":
        expert[:] = False
    elif case == "only_expert_rows":
        expert[:] = True
    elif case == "one_token":
        mask[:] = False
        mask[0, 0] = True
        expert[0] = False
    elif case == "empty_batch":
        logp, mask, adv, expert, ref = logp[:0], mask[:0], adv[:0], expert[:0], ref[:0]
    got = batch_stats(logp, mask, adv, expert, ref_logp=ref)
    assert_stats_match(got, direct_stats(logp, mask, adv, expert, ref))


def test_without_expert_the_sft_statistic_uses_the_rl_rows():
    logp, mask, adv, _, _ = random_batch(5, 10, 7, poison=False)
    got = batch_stats(logp, mask, adv)
    assert got.n_sft == got.n_rl == int((mask.sum(1) > 0).sum())
    explicit = batch_stats(logp, mask, adv, np.zeros(10, dtype=bool))
    assert math.isnan(explicit.var_sft) and explicit.n_sft == 0


def test_trim_drops_exactly_k_values_with_ties():
    logp = np.zeros((10, 1))
    logp[:, 0] = -np.array([1, 1, 1, 2, 3, 4, 5, 9, 9, 9], dtype=float)
    mask = np.ones((10, 1), dtype=bool)
    got = batch_stats(logp, mask, np.zeros(10), np.ones(10, dtype=bool), trim=0.2)
    assert got.var_sft == pytest.approx(np.var([1, 2, 3, 4, 5, 9], ddof=1))


def test_a_micro_batch_of_expert_rows_needs_no_reference():
    logp, mask, adv, expert, ref = random_batch(8, 10, 6, poison=False)
    expert[:] = False
    with_ref = row_results(TokenBatch(logp, mask, adv, expert, ref_logp=ref), "phi")
    experts_only = row_results(TokenBatch(logp, mask, adv, ~expert), "phi")
    assert finalize(with_ref.merge(experts_only)).kl == pytest.approx(finalize(with_ref).kl, rel=1e-12)
    rl_without_ref = row_results(TokenBatch(logp, mask, adv, expert), "phi")
    assert math.isnan(finalize(with_ref.merge(rl_without_ref)).kl)


def test_kl_is_k3_and_stable_for_tiny_differences():
    logp = np.full((2, 3), -1.0)
    mask = np.ones((2, 3), dtype=bool)
    adv = np.array([1.0, -1.0])
    for x in (1e-9, 1e-4, 0.5):
        got = batch_stats(logp, mask, adv, ref_logp=logp + x).kl
        assert got == pytest.approx(math.expm1(x) - x, rel=1e-12)


@pytest.mark.parametrize(
    "args, error, match",
    [
        (dict(logp=np.zeros(3)), ValueError, r"logp must have shape \[B, T\]"),
        (dict(mask=np.ones((3, 5), bool)), ValueError, "mask must have the shape of logp"),
        (dict(adv=np.zeros(4)), ValueError, r"adv must have shape \[B\]"),
        (dict(expert=np.ones(2, bool)), ValueError, r"expert must have shape \[B\] = \[3\]"),
        (dict(ref_logp=np.zeros((3, 3))), ValueError, "ref_logp must have the shape"),
        (dict(logp=np.zeros((3, 4), dtype=np.int64)), TypeError, "logp must have a floating-point dtype"),
        (dict(expert=np.zeros(3)), TypeError, "expert must have a bool or integer dtype"),
        (dict(mask=[[1] * 4] * 3), TypeError, "mask must be a numpy array"),
        (dict(sft_coef="kl"), ValueError, "sft_coef"),
        (dict(trim=0.5), ValueError, "trim"),
    ],
)
def test_bad_inputs_name_the_argument(args, error, match):
    base = dict(
        logp=np.zeros((3, 4)),
        mask=np.ones((3, 4), bool),
        adv=np.zeros(3),
        expert=None,
        ref_logp=None,
    )
    base.update(args)
    options = {k: base.pop(k) for k in ("sft_coef", "trim") if k in base}
    with pytest.raises(error, match=match):
        batch_stats(base["logp"], base["mask"], base["adv"], base["expert"], ref_logp=base["ref_logp"], **options)


def test_low_precision_and_integer_masks_are_accepted():
    logp, mask, adv, expert, _ref = random_batch(2, 19, 11, poison=False)
    want = batch_stats(logp.astype(np.float32), mask, adv, expert)
    got = batch_stats(logp.astype(np.float32), mask.astype(np.int8), adv.astype(np.float32), expert.astype(int))
    assert_stats_match(got, {k: getattr(want, k) for k in ("n_sft", "n_rl", "n_tokens")})
    for name in ("var_sft", "var_rl", "disagreement"):
        assert math.isfinite(getattr(want, name))
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-6), name
