"""The guarded update of SPEC.md §3: invariants, a plain-Python model, persistence."""

from __future__ import annotations

import copy
import json
import math
import typing
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaccore import BatchStats, Config, Controller, batch_stats, mu_star

# --- a plain-Python model of the update, with ifs, written from the spec ----

FLOAT_MAX = float(np.finfo(np.float64).max)


def saturate(x: float) -> float:
    """Accumulators saturate instead of overflowing (SPEC §3 invariant)."""
    return min(max(x, -FLOAT_MAX), FLOAT_MAX)


@dataclass
class Model:
    config: Config
    prior: object
    t: int = 0
    mu: float = math.nan
    mu_bar: float = math.nan
    rho: float = math.nan
    ema: dict | None = None
    ema_kl: float | None = None
    expert_success: float | None = None
    policy_success: float | None = None
    last_estimate: float | None = None
    large_shifts: int = 0
    drift_area: float = 0.0

    def __post_init__(self):
        self.mu = self.mu_bar = self.config.mu_init
        self.rho = self.config.rho_init
        self.ema = {"D": None, "S": None, "R": None}

    def _fold_reward(self, name, x):
        if x is not None and math.isfinite(x):
            old = getattr(self, name)
            beta = self.config.stat_beta
            setattr(self, name, x if old is None else saturate(beta * old + (1 - beta) * x))

    def step(self, stats, kl=None, expert_success=None, policy_success=None):
        c = self.config
        batch_kl = None
        if stats is not None:
            var_sft, var_rl = stats.var_sft, stats.var_rl
            if c.per_mean:
                var_sft = var_sft / stats.n_sft if stats.n_sft else math.nan
                var_rl = var_rl / stats.n_rl if stats.n_rl else math.nan
            for key, x in (("D", stats.disagreement), ("S", var_sft), ("R", var_rl)):
                if math.isfinite(x):
                    old = self.ema[key]
                    self.ema[key] = x if old is None else saturate(c.stat_beta * old + (1 - c.stat_beta) * x)
            batch_kl = stats.kl
        observation = None
        if kl is not None and math.isfinite(kl):
            observation = kl
        elif batch_kl is not None and math.isfinite(batch_kl):
            observation = batch_kl
        if observation is not None:
            self.ema_kl = (
                observation
                if self.ema_kl is None
                else saturate(c.kl_beta * self.ema_kl + (1 - c.kl_beta) * observation)
            )
            if self.ema_kl > c.kl_target * (1 + c.kl_band):
                self.rho += c.eta_up * (c.rho_max - self.rho)
            elif self.ema_kl < c.kl_target * (1 - c.kl_band):
                self.rho -= c.eta_down * (self.rho - c.rho_min)
            self.rho = min(max(self.rho, c.rho_min), c.rho_max)
            self.drift_area = saturate(self.drift_area + max(0.0, observation - c.kl_target))
        self._fold_reward("expert_success", expert_success)
        self._fold_reward("policy_success", policy_success)
        if c.mode == "verified" and self.expert_success is not None and self.policy_success is not None:
            failures = max(1.0 - self.policy_success, 1e-6)
            advantage = min(max((self.expert_success - self.policy_success) / failures, 0.0), 1.0)
            self.rho = min(max(advantage, c.rho_min), c.rho_max)
        estimate = None
        if all(v is not None for v in self.ema.values()):
            kD, kS, kR = c.scale
            raw = mu_star(kD * self.ema["D"], kS * self.ema["S"], kR * self.ema["R"], self.rho)
            if math.isfinite(raw):
                estimate = min(max(raw, 0.0), 1.0)
        if estimate is not None:
            self.mu_bar = c.ema_beta * self.mu_bar + (1 - c.ema_beta) * estimate
            if self.last_estimate is not None and abs(estimate - self.last_estimate) > c.large_shift:
                self.large_shifts += 1
            self.last_estimate = estimate
        target = self.mu_bar
        if self.prior is not None:
            p = self.prior(self.t)
            if math.isfinite(p):
                target = c.blend * self.mu_bar + (1 - c.blend) * p
        delta = min(max(target - self.mu, -c.cap), c.cap)
        self.mu = min(max(self.mu + delta, c.mu_min), c.mu_max)
        self.t += 1
        return self.mu


# --- strategies ---------------------------------------------------------------

wild = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 5),
    st.floats(0, 5),
    st.just(0.0),
)
stats_strategy = st.builds(
    BatchStats,
    var_sft=wild,
    var_rl=wild,
    disagreement=wild,
    kl=st.one_of(wild, st.floats(0, 0.1)),
    n_sft=st.integers(0, 64),
    n_rl=st.integers(0, 64),
    n_tokens=st.integers(0, 1000),
    n_nonfinite_rows=st.integers(0, 5),
)
rewards = st.one_of(st.none(), wild, st.floats(0, 1), st.just(1.0))
step_inputs = st.tuples(
    st.one_of(st.none(), stats_strategy), st.one_of(st.none(), wild, st.floats(0, 0.1)), rewards, rewards
)
configs = st.builds(
    Config,
    ema_beta=st.sampled_from([0.0, 0.5, 0.99]),
    stat_beta=st.sampled_from([0.0, 0.9]),
    cap=st.sampled_from([0.01, 0.2, 1.0]),
    blend=st.sampled_from([0.0, 0.5, 1.0]),
    per_mean=st.booleans(),
    warmup_steps=st.integers(0, 5),
    decay_steps=st.integers(0, 10),
    kl_band=st.sampled_from([0.0, 0.2]),
    eta_up=st.sampled_from([0.02, 1.0]),
    eta_down=st.sampled_from([0.03, 1.0]),
    mode=st.sampled_from(["paper", "verified"]),
)
hostile_priors = st.sampled_from(
    [None, lambda t: math.nan, lambda t: math.inf, lambda t: -1e300, lambda t: 1e300, lambda t: (t % 3) - 1.0]
)


@settings(max_examples=150, deadline=None)
@given(config=configs, prior=hostile_priors, steps=st.lists(step_inputs, min_size=1, max_size=40))
def test_invariants_hold_for_any_inputs(config, prior, steps):
    ctrl = Controller(config, prior=prior)
    previous = ctrl.mu
    for stats, kl, expert_success, policy_success in steps:
        mu = ctrl.update_stats(stats, kl=kl, expert_success=expert_success, policy_success=policy_success)
        assert isinstance(mu, float) and math.isfinite(mu)
        assert config.mu_min <= mu <= config.mu_max
        assert abs(mu - previous) <= config.cap + 1e-12
        assert config.rho_min <= ctrl.rho <= config.rho_max
        state = ctrl.state_dict()["state"]
        assert all(v is not None for v in state.values()), "state must stay finite"
        previous = mu


@settings(max_examples=150, deadline=None)
@given(config=configs, prior=hostile_priors, steps=st.lists(step_inputs, min_size=1, max_size=40))
def test_controller_equals_the_plain_python_model(config, prior, steps):
    ctrl = Controller(config, prior=prior)
    model = Model(config, prior)
    for stats, kl, expert_success, policy_success in steps:
        got = ctrl.update_stats(stats, kl=kl, expert_success=expert_success, policy_success=policy_success)
        want = model.step(stats, kl, expert_success, policy_success)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
        assert ctrl.rho == pytest.approx(model.rho, rel=1e-12, abs=1e-12)
    metrics = ctrl.metrics()
    assert metrics["n_large_shifts"] == model.large_shifts
    assert metrics["kl_drift_area"] == pytest.approx(model.drift_area, rel=1e-9)


def _batch(rng, rows=12, tokens=9, poison=False):
    logp = -rng.exponential(1.0, (rows, tokens))
    mask = rng.random((rows, tokens)) < 0.8
    if poison:
        logp[rng.random((rows, tokens)) < 0.05] = np.nan
        mask[rng.integers(rows)] = False
    adv = rng.normal(size=rows)
    expert = rng.random(rows) < 0.5
    ref = logp + 0.2 * rng.normal(size=(rows, tokens))
    return logp, mask, adv, expert, ref


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 9))
def test_invariants_with_real_batches_including_poisoned_ones(seed, rows):
    rng = np.random.default_rng(seed)
    ctrl = Controller(cap=0.05)
    previous = ctrl.mu
    for _ in range(25):
        logp, mask, adv, expert, ref = _batch(rng, rows=rows, poison=True)
        mu = ctrl.update(logp, mask, adv, expert, ref_logp=ref)
        assert math.isfinite(mu) and 0.05 <= mu <= 0.9 and abs(mu - previous) <= 0.05 + 1e-12
        previous = mu


def test_constant_statistics_without_prior_converge_to_mu_star():
    stats = BatchStats(0.3, 0.8, 1.2, math.nan, 10, 10, 100, 0)
    ctrl = Controller(prior=None)
    for _ in range(3000):
        ctrl.update_stats(stats)
    assert ctrl.mu == pytest.approx(mu_star(1.2, 0.3, 0.8, 0.5), abs=1e-6)
    # mu* outside [mu_min, mu_max] converges to the bound.
    low = BatchStats(0.001, 5.0, 0.0, math.nan, 10, 10, 100, 0)  # disagreement 0: vR/(vS+vR) ~ 1
    ctrl = Controller(prior=None)
    for _ in range(3000):
        ctrl.update_stats(low)
    assert ctrl.mu == pytest.approx(0.9, abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(kls=st.lists(st.floats(0.02 * 0.8, 0.02 * 1.2), min_size=1, max_size=50))
def test_kl_inside_the_band_never_moves_rho(kls):
    ctrl = Controller()
    for kl in kls:
        ctrl.update_stats(None, kl=kl)
        assert ctrl.rho == 0.5


@pytest.mark.parametrize("edge", [0.8, 1.2])
def test_kl_exactly_on_the_band_edge_does_not_move_rho(edge):
    ctrl = Controller(kl_beta=0.0)
    ctrl.update_stats(None, kl=0.02 * edge)
    assert ctrl.rho == 0.5
    ctrl.update_stats(None, kl=0.02 * edge * (1.01 if edge > 1 else 0.99))
    assert ctrl.rho != 0.5


def test_kl_above_the_band_raises_rho_and_below_lowers_it():
    ctrl = Controller()
    for _ in range(50):
        ctrl.update_stats(None, kl=0.1)
    high = ctrl.rho
    assert 0.5 < high <= 0.95
    for _ in range(200):
        ctrl.update_stats(None, kl=0.0)
    assert 0.1 <= ctrl.rho < high
    assert ctrl.metrics()["kl_drift_area"] == pytest.approx(50 * (0.1 - 0.02))


def test_without_a_kl_source_rho_stays_at_rho_init():
    rng = np.random.default_rng(0)
    ctrl = Controller(rho_init=0.3)
    for _ in range(20):
        logp, mask, adv, expert, _ = _batch(rng)
        ctrl.update(logp, mask, adv, expert)
    assert ctrl.rho == 0.3


def test_kl_argument_wins_over_the_batch_kl_unless_not_finite():
    rng = np.random.default_rng(1)
    logp, mask, adv, expert, ref = _batch(rng)
    batch_kl = batch_stats(logp, mask, adv, expert, ref_logp=ref).kl
    a, b, c = Controller(), Controller(), Controller()
    a.update(logp, mask, adv, expert, ref_logp=ref, kl=0.7)
    b.update(logp, mask, adv, expert, ref_logp=ref, kl=math.nan)
    c.update(logp, mask, adv, expert, ref_logp=ref)
    assert a.metrics()["ema_kl"] == 0.7
    assert b.metrics()["ema_kl"] == c.metrics()["ema_kl"] == pytest.approx(batch_kl)


def test_micro_batches_observed_separately_equal_one_update():
    rng = np.random.default_rng(2)
    logp, mask, adv, expert, ref = _batch(rng, rows=20)
    whole, split = Controller(), Controller()
    for _ in range(3):
        mu_whole = whole.update(logp, mask, adv, expert, ref_logp=ref)
        split.observe(logp[:7], mask[:7], adv[:7], expert[:7], ref_logp=ref[:7])
        split.observe(logp[7:], mask[7:], adv[7:], expert[7:], ref_logp=ref[7:])
        assert split.step() == pytest.approx(mu_whole, rel=1e-12)
    assert split.metrics()["ema_var_sft"] == pytest.approx(whole.metrics()["ema_var_sft"], rel=1e-12)


def test_update_every_skips_statistics_between_statistics_steps():
    rng = np.random.default_rng(3)
    ctrl = Controller(update_every=3, prior=None)
    seen = []
    for _ in range(7):
        logp, mask, adv, expert, _ = _batch(rng)
        ctrl.update(logp, mask, adv, expert)
        seen.append(ctrl.metrics().get("batch_var_sft"))
    assert [s is not None for s in seen] == [True, False, False, True, False, False, True]


def test_telemetry_counts_skipped_statistics_and_dropped_rows():
    ctrl = Controller()
    ctrl.update_stats(BatchStats(math.nan, 1.0, math.inf, math.nan, 0, 5, 10, 3))
    m = ctrl.metrics()
    assert (m["n_skipped_var_sft"], m["n_skipped_var_rl"], m["n_skipped_disagreement"]) == (1, 0, 1)
    assert m["n_nonfinite_rows"] == 3 and math.isnan(m["estimate"])


# --- persistence ---------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), split=st.integers(0, 30), steps=st.integers(1, 30))
def test_state_round_trip_through_json_continues_the_same_trajectory(seed, split, steps):
    rng = np.random.default_rng(seed)
    batches = [_batch(rng, poison=True) for _ in range(split + steps)]
    kls = [float(x) for x in rng.uniform(0, 0.05, split + steps)]
    ref = Controller(update_every=2)
    resumed = Controller(update_every=2)
    for (logp, mask, adv, expert, _), kl in zip(batches[:split], kls, strict=False):
        ref.update(logp, mask, adv, expert, kl=kl)
    resumed.load_state_dict(json.loads(json.dumps(ref.state_dict())))
    for (logp, mask, adv, expert, _), kl in zip(batches[split:], kls[split:], strict=False):
        assert resumed.update(logp, mask, adv, expert, kl=kl) == ref.update(logp, mask, adv, expert, kl=kl)
    assert resumed.state_dict() == ref.state_dict()


def _trained(steps=5):
    rng = np.random.default_rng(4)
    ctrl = Controller()
    for _ in range(steps):
        logp, mask, adv, expert, ref = _batch(rng)
        ctrl.update(logp, mask, adv, expert, ref_logp=ref)
    return ctrl


def _corrupt(state, path, value):
    state = copy.deepcopy(state)
    target = state
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return state


@pytest.mark.parametrize(
    "path, value, match",
    [
        (("version",), 99, "version"),
        (("format",), "other", "format"),
        (("step",), KeyError, "missing keys: \\['step'\\]"),
        (("state", "ema_kl"), KeyError, "missing keys: \\['ema_kl'\\]"),
        (("state", "mu"), "0.5", "state.mu"),
        (("state", "has_kl"), 1.0, "state.has_kl"),
        (("config", "cap"), 0.05, "cap: saved 0.05"),
        (("config", "bogus"), 1, "bogus"),
        (("state", "mu"), None, "state.mu"),
        (("state", "mu"), 0.95, "state.mu"),
        (("state", "rho"), 7.0, "state.rho"),
        (("state", "mu_bar"), -0.1, "state.mu_bar"),
        (("state", "ema_kl"), None, "state.ema_kl"),
    ],
)
def test_bad_state_dicts_are_refused_and_change_nothing(path, value, match):
    ctrl = _trained()
    good = ctrl.state_dict()
    bad = _corrupt(good, path, value)
    target = Controller()
    before = target.state_dict()
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(bad)
    assert target.state_dict() == before
    target.load_state_dict(good)
    assert target.state_dict() == good


# --- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda b: b.update(logp=b["logp"][0]), ValueError, "logp must have shape"),
        (lambda b: b.update(mask=b["mask"][:, :3]), ValueError, "mask must have the shape"),
        (lambda b: b.update(adv=b["adv"][:3]), ValueError, "adv must have shape"),
        (lambda b: b.update(expert=b["expert"][:3]), ValueError, "expert must have shape"),
        (lambda b: b.update(logp=b["logp"].astype(int)), TypeError, "logp must have a floating-point"),
        (lambda b: b.update(kl=np.zeros(2)), TypeError, "kl must be"),
        (lambda b: b.update(kl="high"), TypeError, "kl must be"),
        (lambda b: b.update(expert_success=np.ones(3)), TypeError, "expert_success must be"),
        (lambda b: b.update(policy_success=True), TypeError, "policy_success must be"),
    ],
)
def test_bad_input_names_the_argument_and_leaves_the_controller_unchanged(mutate, error, match):
    rng = np.random.default_rng(5)
    ctrl, twin = _trained(), _trained()
    logp, mask, adv, expert, _ = _batch(rng)
    args = dict(logp=logp, mask=mask, adv=adv, expert=expert, kl=None, expert_success=None, policy_success=None)
    mutate(args)
    before = ctrl.state_dict()
    with pytest.raises(error, match=match):
        ctrl.update(
            args["logp"],
            args["mask"],
            args["adv"],
            args["expert"],
            kl=args["kl"],
            expert_success=args["expert_success"],
            policy_success=args["policy_success"],
        )
    assert ctrl.state_dict() == before
    assert ctrl.update(logp, mask, adv, expert) == twin.update(logp, mask, adv, expert)


@pytest.mark.parametrize(
    "name, bad, error, match",
    [
        ("logp", lambda b: b["logp"].astype(int), TypeError, "logp must have a floating-point"),
        ("mask", lambda b: b["mask"].astype(complex), TypeError, "mask must have a bool, integer"),
        ("adv", lambda b: b["adv"].tolist(), TypeError, "adv must be a numpy array"),
        ("expert", lambda b: b["expert"].astype(float), TypeError, "expert must have a bool or integer"),
        ("ref_logp", lambda b: b["ref_logp"].astype(np.int32), TypeError, "ref_logp must have a floating-point"),
        ("mask", lambda b: b["mask"][:, :3], ValueError, "mask must have the shape"),
    ],
)
def test_steps_without_statistics_check_inputs_like_statistics_steps(name, bad, error, match):
    """update_every=2: step 1 computes nothing, but refuses what step 0 would."""
    logp, mask, adv, expert, ref = _batch(np.random.default_rng(8))
    good = dict(logp=logp, mask=mask, adv=adv, expert=expert, ref_logp=ref)
    args = {**good, name: bad(good)}
    for stats_step in (True, False):
        ctrl = Controller(update_every=2)
        if not stats_step:
            ctrl.update(**good)
        before = ctrl.state_dict()
        with pytest.raises(error, match=match):
            ctrl.update(**args)
        assert ctrl.state_dict() == before


def test_update_stats_accepts_none_by_its_signature():
    hints = typing.get_type_hints(Controller.update_stats)
    assert type(None) in typing.get_args(hints["stats"])


@pytest.mark.parametrize(
    "make, kl",
    [
        (lambda: Controller(prior=lambda t: "high"), None),
        (lambda: Controller(), np.array("x")),
        (lambda: Controller(), True),
        (lambda: Controller(process_group=object()), None),
    ],
    ids=["prior-not-a-number", "kl-string-array", "kl-bool", "process-group-with-numpy"],
)
def test_a_refused_update_forgets_its_micro_batch(make, kl):
    """update is all or nothing: a retry must not count the batch twice."""
    rng = np.random.default_rng(6)
    logp, mask, adv, expert, _ = _batch(rng)
    ctrl = make()
    with pytest.raises((TypeError, ValueError)):
        ctrl.update(logp, mask, adv, expert, kl=kl)
    ctrl.prior, ctrl.process_group = None, None
    fresh = Controller(ctrl.config, prior=None)
    assert ctrl.update(logp, mask, adv, expert) == fresh.update(logp, mask, adv, expert)
    assert ctrl.metrics()["batch_n_rl"] == fresh.metrics()["batch_n_rl"]


def test_a_prior_that_returns_a_non_number_is_refused_without_side_effects():
    ctrl = Controller(prior=lambda t: "high")
    before = ctrl.state_dict()
    with pytest.raises(TypeError, match="prior"):
        ctrl.update_stats(None)
    assert ctrl.state_dict() == before


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(ema_beta=1.0), "ema_beta"),
        (dict(cap=0.0), "cap"),
        (dict(mu_init=0.95), "mu_max"),
        (dict(mu_min=0.9, mu_init=0.5), "mu_init"),
        (dict(rho_init=0.05), "rho_init"),
        (dict(blend=1.5), "blend"),
        (dict(eta_up=0.0), "eta_up"),
        (dict(scale=(1.0, 0.0, 1.0)), "scale"),
        (dict(update_every=0), "update_every"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(trim=0.5), "trim"),
        (dict(kl_target=0.0), "kl_target"),
        (dict(sft_coef="kl"), "sft_coef"),
        (dict(mode="bias"), "mode"),
        (dict(stat_beta=math.nan), "stat_beta"),
        (dict(scale=1.0), "scale"),
        (dict(scale=None), "scale"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        Config(**overrides)
    with pytest.raises(ValueError, match=field):
        Controller(**overrides)


def test_unknown_override_is_a_type_error():
    with pytest.raises(TypeError, match="emma_beta"):
        Controller(emma_beta=0.5)


def test_import_gaccore_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, gaccore; gaccore.Controller().update_stats(None); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- mode "verified": rho from the verifier's success rates --------------------


@pytest.mark.parametrize(
    "expert_success, policy_success, rho",
    [
        (1.0, 0.0, 0.95),  # a perfect expert: rho_max whatever the policy's level
        (1.0, 0.9, 0.95),
        (0.65, 0.0, 0.65),  # the policy knows nothing: the expert's success rate
        (0.65, 0.3, 0.5),  # (0.65 - 0.3) / 0.7
        (0.2, 0.5, 0.10),  # an expert worse than the policy: rho_min
        (0.5, 1.0, 0.10),  # the policy never fails: nothing left to teach
    ],
)
def test_verified_rho_is_the_experts_advantage_over_the_policy(expert_success, policy_success, rho):
    ctrl = Controller(mode="verified", stat_beta=0.0)
    ctrl.update_stats(None, expert_success=expert_success, policy_success=policy_success)
    assert ctrl.rho == pytest.approx(rho, abs=1e-12)
    metrics = ctrl.metrics()
    assert (metrics["ema_expert_success"], metrics["ema_policy_success"]) == (expert_success, policy_success)


def test_verified_mode_keeps_the_kl_rho_until_both_rewards_are_known():
    ctrl = Controller(mode="verified", stat_beta=0.0)
    ctrl.update_stats(None, kl=0.1, expert_success=1.0)  # no policy reward yet: the KL controller moves rho
    assert ctrl.rho == pytest.approx(0.5 + 0.02 * (0.95 - 0.5))
    ctrl.update_stats(None, kl=0.1, policy_success=0.5)  # both known (EMAs): the verifier sets rho
    assert ctrl.rho == pytest.approx(0.95)


@settings(max_examples=25, deadline=None)
@given(steps=st.lists(step_inputs, min_size=1, max_size=30))
def test_the_paper_mode_only_reports_the_rewards(steps):
    with_rewards, without = Controller(), Controller()
    for stats, kl, expert_success, policy_success in steps:
        got = with_rewards.update_stats(stats, kl=kl, expert_success=expert_success, policy_success=policy_success)
        assert got == without.update_stats(stats, kl=kl)
        assert with_rewards.rho == without.rho


@settings(max_examples=20, deadline=None)
@given(steps=st.lists(step_inputs, min_size=2, max_size=30), split=st.integers(1, 29))
def test_verified_state_round_trip_continues_the_same_trajectory(steps, split):
    split = min(split, len(steps) - 1)
    ref, resumed = Controller(mode="verified"), Controller(mode="verified")
    for stats, kl, expert_success, policy_success in steps[:split]:
        ref.update_stats(stats, kl=kl, expert_success=expert_success, policy_success=policy_success)
    resumed.load_state_dict(json.loads(json.dumps(ref.state_dict())))
    for stats, kl, expert_success, policy_success in steps[split:]:
        inputs = dict(kl=kl, expert_success=expert_success, policy_success=policy_success)
        assert resumed.update_stats(stats, **inputs) == ref.update_stats(stats, **inputs)
        assert resumed.rho == ref.rho


# -- prior_from="success": the prior from the rollouts' success rate, no run length ---------------------------


@given(success=st.floats(0.0, 1.0), target=st.floats(0.05, 1.0), has=st.booleans())
def test_the_success_prior_hands_over_from_mu_peak_to_mu_valley(success, target, has):
    from gaccore.step import success_prior

    config = Config(prior_from="success", success_target=target)
    value = float(success_prior(np.float64(success), np.bool_(has), config))
    if not has:
        assert value == config.mu_peak
        return
    assert config.mu_valley <= value <= config.mu_peak
    if success >= target:
        assert value == pytest.approx(config.mu_valley, abs=1e-12)
    lower = float(success_prior(np.float64(success * 0.5), np.bool_(True), config))
    assert lower >= value  # less success, more imitation


def test_a_success_prior_controller_follows_the_rollouts_not_the_step():
    """Two controllers at different steps but with the same success history
    blend toward the same prior; the schedule's warmup and decay play no part."""
    rng = np.random.default_rng(0)
    logp = -rng.random((8, 5)).astype(np.float32)
    mask, adv, expert = np.ones((8, 5), bool), rng.standard_normal(8).astype(np.float32), np.arange(8) >= 6

    def run(warmup, decay, successes):
        ctrl = Controller(prior_from="success", warmup_steps=warmup, decay_steps=decay, cap=1.0, blend=0.0)
        for rate in successes:
            scores = np.where(np.arange(8) < 6, float(rate), np.nan)
            ctrl.update(logp, mask, adv, expert, scores=scores)
        return ctrl.mu

    failing = run(0, 1, [0.0] * 5)
    assert failing == pytest.approx(Config().mu_peak)  # no success yet: imitate (mu_max caps nothing here)
    assert run(0, 1, [1.0] * 5) == pytest.approx(Config().mu_valley)
    assert run(5, 500, [0.6] * 5) == run(0, 1, [0.6] * 5)
    with pytest.raises(TypeError, match="prior_from='success' computes the prior"):
        Controller(prior_from="success", prior=lambda step: 0.5)
    with pytest.raises(ValueError, match=r"scores: prior_from='success' reads each score as a success rate"):
        Controller(prior_from="success").update(logp, mask, adv, expert, scores=np.full(8, 2.0))
