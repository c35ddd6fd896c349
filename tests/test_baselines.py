"""The baseline mixing rules: their formulas, bounds, and state round trips."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gaccore
from gaccore.baselines import FixedMu, HPTGate, KLProportional, MixingRule, RewardVariance, ScheduleMu, mean_k3

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)


def reward_arrays(size: int) -> st.SearchStrategy[list[list[float]]]:
    """The rollouts' rewards of one step, ``[n_groups, size]``."""
    return st.integers(1, 5).flatmap(
        lambda groups: st.lists(
            st.lists(st.one_of(st.sampled_from([0.0, 1.0]), any_float), min_size=size, max_size=size),
            min_size=groups,
            max_size=groups,
        )
    )


def reward_steps(max_steps: int) -> st.SearchStrategy[tuple[int, list[list[list[float]]]]]:
    """A group size and the rewards of 1 to ``max_steps`` steps with it."""
    return st.integers(1, 4).flatmap(
        lambda size: st.tuples(st.just(size), st.lists(reward_arrays(size), min_size=1, max_size=max_steps))
    )


def make_rules(group_size: int = 2) -> list[MixingRule]:
    return [
        FixedMu(0.3),
        ScheduleMu(3, 5, mu_peak=0.85, mu_valley=0.15),
        KLProportional(10.0, mu_min=0.1, mu_max=0.8),
        RewardVariance(0.05, group_size=group_size, mu_min=0.1, mu_max=0.8),
        HPTGate(group_size=group_size),
    ]


def test_exported_from_gaccore() -> None:
    for name in ("FixedMu", "ScheduleMu", "KLProportional", "RewardVariance", "HPTGate", "MixingRule"):
        assert name in gaccore.__all__ and getattr(gaccore, name) is getattr(gaccore.baselines, name)


def test_fixed_mu_is_constant_and_pure_rl_sft() -> None:
    for value in (0.0, 0.5, 1.0):
        rule = FixedMu(value)
        assert rule.mu == value
        assert [rule.update() for _ in range(3)] == [value] * 3
    with pytest.raises(ValueError, match="mu"):
        FixedMu(1.5)


def test_schedule_follows_warmup_cosine_from_zero() -> None:
    rule = ScheduleMu(4, 4, mu_peak=0.8, mu_valley=0.2)
    prior = gaccore.warmup_cosine(4, 4, 0.8, 0.2, mu_start=0.0)
    assert [rule.update() for _ in range(12)] == pytest.approx([prior(t) for t in range(12)])
    assert rule.mu == pytest.approx(0.2)


def test_kl_proportional_formula_and_ema() -> None:
    rule = KLProportional(10.0, mu_min=0.05, mu_max=0.9, beta=0.5)
    assert rule.update(kl=0.02) == pytest.approx(0.2)  # first value initializes the EMA
    assert rule.update(kl=0.06) == pytest.approx(10.0 * 0.04)
    assert rule.update(kl=1.0) == pytest.approx(0.9)  # clipped at mu_max
    before = rule.mu
    assert rule.update(kl=math.nan) == before  # no information: unchanged


def test_kl_proportional_reads_ref_logp_over_rl_rows() -> None:
    logp = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    ref = np.log(np.array([[0.25, 0.5], [0.2, 0.2]]))
    mask = np.array([[1, 1], [1, 0]])
    expert = np.array([False, True])
    x = ref[0] - logp[0]
    expected = float(np.mean(np.expm1(x) - x))
    assert mean_k3(logp, mask, ref, expert) == pytest.approx(expected)
    rule = KLProportional(2.0, mu_max=1.0, mu_min=0.0)
    assert rule.update(logp, mask, np.zeros(2), expert, ref_logp=ref) == pytest.approx(2.0 * expected)


def test_reward_variance_is_inverse_in_group_variance() -> None:
    rule = RewardVariance(0.02, group_size=4, mu_min=0.05, mu_max=0.9, beta=0.0)
    mixed = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # variances 0.25 and 0
    assert rule.update(scores=mixed.reshape(-1)) == pytest.approx(0.02 / 0.125)
    assert rule.update(scores=np.zeros(8)) == 0.9  # no signal: most imitation
    with pytest.raises(ValueError, match="scores"):
        rule.update()


def test_hpt_gates_prompts_without_success() -> None:
    rule = HPTGate(group_size=3)
    rewards = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, math.nan, 0.0]])
    assert rule.update(scores=rewards.reshape(-1)) == pytest.approx(0.5)
    np.testing.assert_array_equal(rule.sft_weights, [1.0, 0.0, 0.0, 1.0])


def test_torch_inputs_are_converted() -> None:
    torch = pytest.importorskip("torch")
    rule = HPTGate(group_size=2)
    assert rule.update(scores=torch.tensor([1.0, 0.0, 0.0, 0.0])) == 0.5
    kl_rule = KLProportional(10.0)
    assert kl_rule.update(kl=torch.tensor(0.03)) == pytest.approx(0.3)


def test_the_rules_take_the_controllers_arguments() -> None:
    """A loop calls every rule as it calls gaccore.Controller: same names, same kinds."""
    ours = inspect.signature(MixingRule.update).parameters
    controllers = inspect.signature(gaccore.Controller.update).parameters
    assert list(ours) == [name for name in controllers if name in ours]
    assert all(ours[name].kind == controllers[name].kind for name in ours)


def test_grouped_rules_read_the_rollout_rows_in_the_batchs_order() -> None:
    rollouts = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # groups of 2: failed, solved, failed
    # Demonstrations anywhere in the batch, scored (even as a success) or not: only the flags pick the rollouts.
    scores = np.array([1.0, 0.0, 0.0, math.nan, 1.0, 0.0, 1.0, 0.0, 0.0])
    expert = np.array([True, False, False, True, False, False, True, False, False])
    gate = HPTGate(group_size=2)
    assert gate.update(scores=scores, expert=expert) == pytest.approx(2 / 3)
    np.testing.assert_array_equal(gate.sft_weights, [1.0, 0.0, 1.0])
    alone = HPTGate(group_size=2)
    assert alone.update(scores=rollouts) == gate.mu  # without expert flags every row is a rollout
    np.testing.assert_array_equal(alone.sft_weights, gate.sft_weights)
    variance, by_rollouts = (RewardVariance(0.05, group_size=2, beta=0.0) for _ in range(2))
    assert variance.update(scores=scores, expert=expert) == by_rollouts.update(scores=rollouts)
    assert variance.metrics()["var_ema"] == pytest.approx(0.25 / 3)
    torch = pytest.importorskip("torch")
    flags = HPTGate(group_size=2)
    assert flags.update(scores=torch.tensor(scores), expert=torch.tensor(expert)) == gate.mu


@pytest.mark.parametrize("make", [lambda g: HPTGate(group_size=g), lambda g: RewardVariance(0.05, group_size=g)])
def test_grouped_rules_refuse_a_bad_group_size(make) -> None:
    for bad in (0, -2, 2.5, True, "4", None):
        with pytest.raises(ValueError, match=r"group_size must be a whole number >= 1 \(the rollouts per prompt\)"):
            make(bad)


def test_grouped_rules_need_their_group_size() -> None:
    with pytest.raises(TypeError, match="group_size"):
        HPTGate()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="group_size"):
        RewardVariance(0.05)  # type: ignore[call-arg]


def test_grouped_rules_refuse_scores_they_cannot_group_and_change_nothing() -> None:
    for rule in (HPTGate(group_size=3), RewardVariance(0.05, group_size=3)):
        before = rule.state_dict()
        with pytest.raises(ValueError, match=r"scores is required: an array \[B\]"):
            rule.update(kl=0.1)
        with pytest.raises(ValueError, match=r"scores must have shape \[B\], one score per row, got shape \(2, 3\)"):
            rule.update(scores=np.zeros((2, 3)))  # the old [n_groups, group_size] layout
        with pytest.raises(ValueError, match=r"expert must have the shape of scores, \(6,\), one flag per row"):
            rule.update(scores=np.zeros(6), expert=np.zeros(5, dtype=bool))
        with pytest.raises(ValueError, match=r"the 4 rollout rows .* do not split into prompt groups of group_size=3"):
            rule.update(scores=np.zeros(6), expert=np.array([True, False, False, True, False, False]))
        with pytest.raises(TypeError, match="scores must be a numeric array or tensor"):
            rule.update(scores=["a", "b", "c"])
        assert rule.state_dict() == before and rule.step_count == 0


def test_every_rule_reports_its_estimate_and_only_the_gate_weighs_prompts() -> None:
    for rule in make_rules(group_size=2):
        rule.update(kl=0.05, scores=np.array([0.0, 1.0, 0.0, 0.0]))
        assert rule.metrics()["estimate"] == rule.mu
        assert (rule.sft_weights is None) == (not isinstance(rule, HPTGate))


@settings(max_examples=60, deadline=None)
@given(kls=st.lists(any_float, min_size=1, max_size=8), steps=reward_steps(4))
def test_mu_stays_in_bounds_whatever_the_inputs(kls: list[float], steps: tuple[int, list]) -> None:
    group_size, rewards = steps
    for rule in make_rules(group_size):
        low, high = (0.1, 0.8) if isinstance(rule, (KLProportional, RewardVariance)) else (0.0, 1.0)
        for step, kl in enumerate(kls):
            mu = rule.update(kl=kl, scores=np.array(rewards[step % len(rewards)]).reshape(-1))
            assert math.isfinite(mu) and low <= mu <= high and mu == rule.mu


@settings(max_examples=40, deadline=None)
@given(
    kls=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=10),
    steps=reward_steps(3),
    split=st.integers(0, 10),
)
def test_state_round_trip_continues_the_same_sequence(kls: list[float], steps: tuple[int, list], split: int) -> None:
    split = min(split, len(kls))
    group_size, rewards = steps
    inputs = [{"kl": kl, "scores": np.array(rewards[i % len(rewards)]).reshape(-1)} for i, kl in enumerate(kls)]
    rules = [make_rules(group_size) for _ in range(3)]
    for original, resumed, fresh in zip(*rules, strict=False):
        uninterrupted = [original.update(**x) for x in inputs]
        for x in inputs[:split]:
            resumed.update(**x)
        state = json.loads(json.dumps(resumed.state_dict()))  # JSON-ready
        fresh.load_state_dict(state)
        assert fresh.step_count == split
        assert [fresh.update(**x) for x in inputs[split:]] == uninterrupted[split:]


def test_bad_state_is_refused_and_changes_nothing() -> None:
    rule = KLProportional(10.0)
    rule.update(kl=0.05)
    snapshot = rule.state_dict()
    good = KLProportional(10.0).state_dict()
    cases = {
        "format": {**good, "format": "gaccore.baselines.FixedMu"},
        "version": {**good, "version": 99},
        "missing keys": {k: v for k, v in good.items() if k != "state"},
        "different config": {**good, "config": {**good["config"], "gain": 3.0}},
        "state.ema_kl": {**good, "state": {"mu": 0.5, "ema_kl": "x"}},
        "state.mu": {**good, "state": {"mu": 2.0, "ema_kl": None}},
        "unknown keys": {**good, "state": {**good["state"], "extra": 1.0}},
        "step": {**good, "step": -1},
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            rule.load_state_dict(bad)
        assert rule.state_dict() == snapshot
    with pytest.raises(TypeError):
        rule.load_state_dict([1, 2])  # type: ignore[arg-type]


def test_import_gaccore_does_not_import_torch_or_the_demo() -> None:
    import subprocess
    import sys

    code = "import sys, gaccore; print('torch' in sys.modules, 'gaccore.demo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_float64_tensor_scores_keep_their_digits() -> None:
    """A reward given as a float64 tensor reaches the rule unrounded (float32 would round 0.1 + 1e-9)."""
    torch = pytest.importorskip("torch")
    rule = RewardVariance(0.01, group_size=2)
    rewards = [0.1, 0.1 + 1e-9]
    rule.update(None, None, None, torch.zeros(2, dtype=torch.bool), scores=torch.tensor(rewards, dtype=torch.float64))
    assert rule.ema == pytest.approx(float(np.var(rewards)), rel=1e-6, abs=0.0)
