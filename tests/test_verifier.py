"""The verifier's per-row scores: the two success rates, and the filter that
keeps a rejected demonstration out of the SFT loss and the SFT statistics.

One design for every path: ``scores [B]`` enter the row results
(``gaccore.rows.with_scores``), ``finalize`` applies ``filter_demos`` and
computes the rates, and the controller folds the rates like any observation.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gaccore
from gaccore import Config, Controller, batch_stats, kept_demos

PROXIES = ("var_sft", "var_rl", "disagreement", "kl", "n_sft", "n_rl", "n_tokens", "n_nonfinite_rows")


def numpy_batch(seed: int, rows: int = 12, tokens: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = rng.random((rows, tokens)) > 0.2
    mask[:, 0] = True  # every row has a token
    logp = np.where(mask, -(rng.random((rows, tokens)) ** 2) * 3, np.nan)
    return {
        "logp": logp,
        "mask": mask,
        "adv": rng.normal(size=rows),
        "expert": np.arange(rows) % 3 == 0,
        "ref_logp": np.where(mask, logp + 0.05 * rng.normal(size=(rows, tokens)), np.nan),
    }


def subset(batch: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    return {name: value[keep] for name, value in batch.items()}


def assert_same_proxies(got: gaccore.BatchStats, want: gaccore.BatchStats) -> None:
    for name in PROXIES:
        g, w = getattr(got, name), getattr(want, name)
        assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w, rel=1e-12, abs=1e-15), name


def test_kept_demos_keeps_unscored_rows_and_everything_without_a_threshold() -> None:
    scores = np.array([0.0, 0.5, 1.0, np.nan])
    assert kept_demos(scores, 0.5).tolist() == [False, True, True, True]
    assert kept_demos(scores, None).tolist() == [True, True, True, True]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(0.0, 1.0), unscored=st.floats(0.0, 0.5))
def test_a_rejected_demonstration_changes_no_statistic(seed: int, threshold: float, unscored: float) -> None:
    """Filtering = the batch without the rejected demonstrations, for every
    proxy (the SFT ones and the RL ones alike)."""
    batch = numpy_batch(seed)
    rng = np.random.default_rng(seed + 1)
    scores = np.where(rng.random(len(batch["adv"])) < unscored, np.nan, rng.random(len(batch["adv"])))
    filtered = batch_stats(**batch, scores=scores, filter_demos=threshold)
    rejected = batch["expert"] & (scores < threshold)
    assert_same_proxies(filtered, batch_stats(**subset(batch, ~rejected)))
    assert filtered.n_demos == int(batch["expert"].sum())
    assert filtered.n_sft == int((batch["expert"] & ~rejected).sum())


def test_the_success_rates_are_the_mean_scores_of_scored_rows() -> None:
    batch = numpy_batch(3)
    scores = np.linspace(0.0, 1.0, len(batch["adv"]))
    scores[1] = np.nan  # an unscored rollout
    scores[3] = np.inf  # a non-finite score counts as unscored
    expert = batch["expert"]
    stats = batch_stats(**batch, scores=scores, filter_demos=0.5)
    scored = np.isfinite(scores)
    assert stats.expert_success == pytest.approx(scores[expert & scored].mean())  # the filter does not change it
    assert stats.policy_success == pytest.approx(scores[~expert & scored].mean())
    unscored = batch_stats(**batch)
    assert math.isnan(unscored.expert_success) and math.isnan(unscored.policy_success)
    no_experts = batch_stats(**{**batch, "expert": None}, scores=scores, filter_demos=0.5)
    assert math.isnan(no_experts.expert_success) and no_experts.n_demos == 0
    assert no_experts.n_sft == stats.n_rl + stats.n_demos  # the fallback: no row is a demonstration


def test_scores_are_validated_by_name() -> None:
    batch = numpy_batch(0)
    with pytest.raises(ValueError, match=r"scores must have shape \[B\] = \[12\]"):
        batch_stats(**batch, scores=np.zeros(3))
    with pytest.raises(TypeError, match="scores must have a floating-point dtype"):
        batch_stats(**batch, scores=np.zeros(12, dtype=int))
    with pytest.raises(ValueError, match="filter_demos must be None or a finite number"):
        batch_stats(**batch, filter_demos=math.nan)
    with pytest.raises(ValueError, match="filter_demos"):
        Config(filter_demos=math.inf)


def test_the_controller_folds_the_rates_of_its_scores() -> None:
    """update(scores=...) steers mode "verified" exactly as the same rates passed by hand."""
    config = Config(mode="verified")
    from_scores, by_hand = Controller(config), Controller(config)
    for step in range(6):
        batch = numpy_batch(step)
        scores = np.random.default_rng(step).random(len(batch["adv"]))
        expert = batch["expert"]
        mu = from_scores.update(**batch, scores=scores)
        assert mu == by_hand.update(
            **batch, expert_success=scores[expert].mean(), policy_success=scores[~expert].mean()
        )
    assert from_scores.metrics()["rho"] == by_hand.metrics()["rho"] != config.rho_init


def test_metrics_report_the_rates_and_the_share_of_demonstrations_kept() -> None:
    ctrl = Controller(filter_demos=0.5)
    batch = numpy_batch(1)
    scores = np.where(batch["expert"], np.resize([0.0, 1.0, 1.0, 1.0], len(batch["adv"])), 1.0)
    ctrl.update(**batch, scores=scores)
    metrics = ctrl.metrics()
    expert = batch["expert"]
    assert metrics["demos_kept"] == pytest.approx((scores[expert] >= 0.5).mean())
    assert metrics["ema_expert_success"] == pytest.approx(scores[expert].mean())
    assert metrics["ema_policy_success"] == 1.0
    assert math.isnan(Controller().metrics()["demos_kept"])


def test_verified_mode_without_rates_warns_once() -> None:
    ctrl = Controller(mode="verified", verified_patience=3)
    batch = numpy_batch(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctrl.update(**batch)
        ctrl.update(**batch)
    with pytest.warns(RuntimeWarning, match="no verifier success rates for 3 steps"):
        ctrl.update(**batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            ctrl.update(**batch)  # once only
        fed = Controller(mode="verified", verified_patience=2)
        for _ in range(4):
            fed.update(**batch, scores=np.ones(len(batch["adv"])))
        paper = Controller(verified_patience=1)
        paper.update(**batch)  # the paper mode never needs the rates


def test_a_rejected_call_forgets_its_scores() -> None:
    ctrl = Controller(mode="verified", verified_patience=1)
    batch = numpy_batch(0)
    with pytest.raises(ValueError, match="scores"):
        ctrl.observe(**batch, scores=np.ones(2))
    with pytest.warns(RuntimeWarning, match="no verifier success rates"):
        ctrl.step()


def test_the_state_round_trip_keeps_the_filtered_trajectory() -> None:
    config = Config(mode="verified", filter_demos=0.3)
    whole, first = Controller(config), Controller(config)
    batches = [numpy_batch(step) for step in range(8)]
    scores = [np.random.default_rng(step).random(12) for step in range(8)]
    want = [whole.update(**b, scores=s) for b, s in zip(batches, scores, strict=True)]
    got = [first.update(**b, scores=s) for b, s in zip(batches[:4], scores[:4], strict=True)]
    second = Controller(config)
    second.load_state_dict(first.state_dict())
    got += [second.update(**b, scores=s) for b, s in zip(batches[4:], scores[4:], strict=True)]
    assert got == want


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("method", ["torch", "triton"])
def test_the_torch_paths_agree_with_numpy(method: str) -> None:
    from gaccore import batch_stats as torch_batch_stats

    batch = numpy_batch(5, rows=9, tokens=13)
    scores = np.random.default_rng(5).random(9)
    scores[2] = np.nan
    want = batch_stats(**batch, scores=scores, filter_demos=0.4)
    tensors = {name: torch.from_numpy(value) for name, value in batch.items()}
    tensors = {**tensors, "logp": tensors["logp"].float(), "ref_logp": tensors["ref_logp"].float()}
    got = torch_batch_stats(**tensors, scores=torch.from_numpy(scores), filter_demos=0.4, implementation=method)
    for field in dataclasses.fields(want):
        g, w = getattr(got, field.name).item(), getattr(want, field.name)
        assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w, rel=1e-5, abs=1e-6), field.name


def test_a_rejected_demonstration_adds_nothing_to_the_sft_loss() -> None:
    from gaccore.bindings.losses import sft_loss

    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(6, 5, generator=gen)
    mask = torch.ones(6, 5)
    scores = torch.tensor([1.0, 0.0, 1.0, math.nan, 0.2, 1.0])
    kept = kept_demos(scores, 0.5)
    assert kept.tolist() == [True, False, True, True, False, True]
    filtered = sft_loss(logp, mask * kept[:, None])
    assert filtered == sft_loss(logp[kept], mask[kept])


def test_statistics_computed_elsewhere_bring_their_rates() -> None:
    batch = numpy_batch(0)
    scored = batch_stats(**batch, scores=np.ones(12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctrl = Controller(mode="verified", verified_patience=2)
        for _ in range(4):
            ctrl.update_stats(scored)  # rates from the scores: no warning
    assert ctrl.metrics()["ema_expert_success"] == 1.0
    unscored = Controller(mode="verified", verified_patience=2)
    unscored.update_stats(batch_stats(**batch))
    with pytest.warns(RuntimeWarning, match="no verifier success rates for 2 steps"):
        unscored.update_stats(batch_stats(**batch))


def test_observed_scores_and_advantages_are_copied_not_viewed() -> None:
    """numpy buffers refilled between observe() and step() change nothing."""
    rng = np.random.default_rng(3)
    logp, mask = -rng.random((9, 13)), rng.random((9, 13)) < 0.7
    adv, expert, scores = rng.normal(size=9), rng.random(9) < 0.3, (np.arange(9) % 3) / 2
    kept = [x.copy() for x in (logp, mask, adv, expert, scores)]
    reused, fresh = Controller(), Controller()
    reused.observe(logp, mask, adv, expert, scores=scores)
    for buffer in (logp, adv, scores):
        buffer *= -2.0
    reused.step(kl=0.1)
    fresh.update(*kept[:4], scores=kept[4], kl=0.1)
    got, want = reused.metrics(), fresh.metrics()
    assert [
        name for name in want if not (got[name] == want[name] or (np.isnan(got[name]) and np.isnan(want[name])))
    ] == []


# -- verified mode reads success rates: scores outside [0, 1] are refused or turned into successes --------------


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("bad", [[2.0], [-1.0, 1.0], [0.5, 1.5]])
def test_verified_mode_refuses_scores_that_are_no_success_rates(kind, bad):
    """A summed format + accuracy reward, or rewards of -1/+1: the error says what to pass, nothing changes."""
    inputs = _verified_inputs()
    scores = np.resize(np.asarray(bad, dtype=np.float64), inputs["logp"].shape[0])
    if kind == "torch":
        torch = pytest.importorskip("torch")
        inputs = {k: None if v is None else torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
        scores = torch.from_numpy(scores)
    ctrl = gaccore.Controller(mode="verified")
    before = ctrl.state_dict()
    for call in (ctrl.update, ctrl.observe):
        with pytest.raises(ValueError, match=r"scores: mode='verified' reads each score as a success rate in \[0, 1\]"):
            call(**inputs, scores=scores)
        with pytest.raises(ValueError, match=r"pass Config\(success_threshold=t\)"):
            call(**inputs, scores=scores)
    assert ctrl.state_dict() == before
    gaccore.Controller().update(**inputs, scores=scores)  # the paper's mode only reports the rates


def test_success_threshold_turns_scores_into_successes_for_the_rates_only():
    """Rewards of -1/+1 with success_threshold 0: the rates are those of 0/1 successes; the
    filter keeps reading the scores as they are (filter_demos on the reward's scale)."""
    inputs = _verified_inputs()
    rows = inputs["logp"].shape[0]
    rewards = np.where(np.arange(rows) % 3 == 0, -1.0, 1.0)
    rewards[-1] = np.nan  # not scored
    successes = np.where(np.isnan(rewards), np.nan, (rewards >= 0.0).astype(np.float64))
    got = gaccore.batch_stats(**inputs, scores=rewards, success_threshold=0.0, filter_demos=0.5)
    want = gaccore.batch_stats(**inputs, scores=successes, filter_demos=0.5)
    assert (got.expert_success, got.policy_success) == (want.expert_success, want.policy_success)
    assert got.n_sft == want.n_sft  # -1 < 0.5 < +1 and 0 < 0.5 < 1: the same demonstrations kept
    ctrl = gaccore.Controller(mode="verified", success_threshold=0.0)
    ctrl.update(**inputs, scores=rewards)
    assert ctrl.metrics()["ema_expert_success"] == want.expert_success


def _verified_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    rows, tokens = 9, 6
    return {
        "logp": -rng.random((rows, tokens)).astype(np.float32),
        "mask": np.ones((rows, tokens), dtype=bool),
        "adv": rng.standard_normal(rows).astype(np.float32),
        "expert": np.arange(rows) >= 5,
    }
