"""The baseline mixing rules: their formulas, bounds, and state round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gaccore
from gaccore.baselines import FixedMu, HPTGate, KLProportional, MixingRule, RewardVariance, ScheduleMu, mean_k3

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
reward_arrays = st.integers(1, 5).flatmap(
    lambda groups: st.integers(1, 4).flatmap(
        lambda size: st.lists(
            st.lists(st.one_of(st.sampled_from([0.0, 1.0]), any_float), min_size=size, max_size=size),
            min_size=groups,
            max_size=groups,
        )
    )
)


def make_rules() -> list[MixingRule]:
    return [
        FixedMu(0.3),
        ScheduleMu(3, 5, mu_peak=0.85, mu_valley=0.15),
        KLProportional(10.0, mu_min=0.1, mu_max=0.8),
        RewardVariance(0.05, mu_min=0.1, mu_max=0.8),
        HPTGate(),
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
    rule = RewardVariance(0.02, mu_min=0.05, mu_max=0.9, beta=0.0)
    mixed = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # variances 0.25 and 0
    assert rule.update(rewards=mixed) == pytest.approx(0.02 / 0.125)
    assert rule.update(rewards=np.zeros((2, 4))) == 0.9  # no signal: most imitation
    with pytest.raises(ValueError, match="rewards"):
        rule.update()


def test_hpt_gates_prompts_without_success() -> None:
    rule = HPTGate()
    rewards = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, math.nan, 0.0]])
    assert rule.update(rewards=rewards) == pytest.approx(0.5)
    np.testing.assert_array_equal(rule.sft_weights, [1.0, 0.0, 0.0, 1.0])


def test_torch_inputs_are_converted() -> None:
    torch = pytest.importorskip("torch")
    rule = HPTGate()
    assert rule.update(rewards=torch.tensor([[1.0, 0.0], [0.0, 0.0]])) == 0.5
    kl_rule = KLProportional(10.0)
    assert kl_rule.update(kl=torch.tensor(0.03)) == pytest.approx(0.3)


@settings(max_examples=60, deadline=None)
@given(kls=st.lists(any_float, min_size=1, max_size=8), rewards=st.lists(reward_arrays, min_size=1, max_size=4))
def test_mu_stays_in_bounds_whatever_the_inputs(kls: list[float], rewards: list) -> None:
    for rule in make_rules():
        low, high = (0.1, 0.8) if isinstance(rule, (KLProportional, RewardVariance)) else (0.0, 1.0)
        for step, kl in enumerate(kls):
            mu = rule.update(kl=kl, rewards=np.array(rewards[step % len(rewards)]))
            assert math.isfinite(mu) and low <= mu <= high and mu == rule.mu


@settings(max_examples=40, deadline=None)
@given(
    kls=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=10),
    rewards=st.lists(reward_arrays, min_size=1, max_size=3),
    split=st.integers(0, 10),
)
def test_state_round_trip_continues_the_same_sequence(kls: list[float], rewards: list, split: int) -> None:
    split = min(split, len(kls))
    inputs = [{"kl": kl, "rewards": np.array(rewards[i % len(rewards)])} for i, kl in enumerate(kls)]
    for original, resumed, fresh in zip(make_rules(), make_rules(), make_rules(), strict=False):
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
