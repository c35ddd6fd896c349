"""A stateful fuzz of the Controller's public API (hypothesis RuleBasedStateMachine).

Rules interleave observe, step, update, update_stats (with kl and the
verifier rates, in both modes), state_dict /
load_state_dict through JSON (good and corrupted), and a fresh controller that
loads the state mid-stream, on numpy arrays and torch CPU tensors (some
requiring grad), with NaN/inf, empty and all-masked rows, per-row and
per-token advantages, ref_logp far from logp, bad shapes, bad dtypes and bad
kl or rates. After every rule:

- mu is finite and in [mu_min, mu_max], moved at most ``cap`` per step, and
  rho is in [rho_min, rho_max];
- a refused call raised TypeError/ValueError naming the argument (or, for
  update_stats after an observe, RuntimeError naming the call) and left
  ``state_dict()`` unchanged;
- the shadow, a controller fed the same calls but re-created from the JSON
  state now and then, has the bit-identical state and returned the same mu;
- no returned mu and no state tensor carries an autograd graph.

``CALLS`` counts the API calls on the fuzzed controller; the test asserts
that one run makes at least ``MIN_CALLS`` of them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

torch = pytest.importorskip("torch")

import gaccore  # noqa: E402
from gaccore import batch_stats as torch_batch_stats  # noqa: E402
from gaccore.config import MODES  # noqa: E402

EXAMPLES, STEPS_PER_EXAMPLE = 250, 50
MIN_CALLS = 10_000
CALLS: Counter[str] = Counter()

# --- inputs ----------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSpec:
    """What a drawn micro-batch looks like; ``build`` makes the arrays."""

    seed: int
    kind: str  # "numpy" or "torch"
    rows: int
    tokens: int
    logp_dtype: str
    mask_dtype: str
    adv_per_token: bool
    with_expert: bool
    ref: str  # "none", "near" or "far"
    poison: bool  # NaN/inf at some masked-in positions
    empty_rows: bool  # some rows have no masked-in token
    all_masked: bool
    requires_grad: bool
    bad: str  # "" or the name of a corruption in BAD_INPUTS

    def build(self) -> dict[str, Any]:
        rng = np.random.default_rng(self.seed)
        shape = (self.rows, self.tokens)
        logp = -(rng.exponential(1.0, shape) ** 2)
        mask = rng.random(shape) < 0.7
        if self.empty_rows and self.rows:
            mask[rng.integers(self.rows)] = False
        if self.all_masked:
            mask[:] = False
        logp = np.where(mask, logp, rng.choice([np.nan, -np.inf, 0.0], shape))  # padding never counts
        adv = rng.normal(size=shape if self.adv_per_token else (self.rows,)) * rng.choice([1e-3, 1.0, 1e3])
        ref = None
        if self.ref != "none":
            ref = np.minimum(logp + rng.normal(0, 0.1, shape), 0.0) if self.ref == "near" else np.zeros(shape)
            if self.ref == "far":
                logp = np.where(mask, -rng.choice([30.0, 200.0, 1000.0]), logp)  # k3 grows to inf
        if self.poison and mask.any():
            rows, cols = np.nonzero(mask)
            pick = rng.integers(len(rows))
            at = (rows[pick], cols[pick])
            target = [logp, adv if self.adv_per_token else logp] + ([] if ref is None else [ref])
            target[rng.integers(len(target))][at] = rng.choice([np.nan, np.inf, -np.inf])
            if not self.adv_per_token and rng.random() < 0.3:
                adv[at[0]] = np.nan
        batch = {
            "logp": logp.astype(self.logp_dtype if self.kind == "numpy" else np.float32),
            "mask": mask.astype(self.mask_dtype),
            "adv": adv,
            "expert": rng.random(self.rows) < 0.5 if self.with_expert else None,
            "ref_logp": ref,
        }
        if self.kind == "torch":
            batch = {k: None if v is None else torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
            batch["logp"] = batch["logp"].to(getattr(torch, self.logp_dtype))
            if self.requires_grad:
                weight = torch.zeros((), requires_grad=True)  # a trainer's tensors that were not detached
                for name in ("logp", "adv", "ref_logp"):
                    if batch[name] is not None:
                        batch[name] = batch[name] + weight.to(batch[name].dtype)
        if self.bad:
            BAD_INPUTS[self.bad][1](batch)
        return batch


def _astype(batch: dict[str, Any], name: str, dtype: str) -> None:
    value = batch[name]
    if isinstance(value, np.ndarray):
        with np.errstate(invalid="ignore"):  # NaN padding cast to an integer dtype
            batch[name] = value.astype(dtype)
    else:
        batch[name] = value.detach().to(getattr(torch, dtype))


# name -> (the argument the error must name, the corruption)
BAD_INPUTS = {
    "int_logp": ("logp", lambda b: _astype(b, "logp", "int32")),
    "complex_mask": ("mask", lambda b: _astype(b, "mask", "complex64")),
    "float_expert": ("expert", lambda b: _astype(b, "expert", "float32")),
    "int_ref_logp": ("ref_logp", lambda b: _astype(b, "ref_logp", "int64")),
    "short_mask": ("mask", lambda b: b.update(mask=b["mask"][:, :-1])),
    "long_adv": ("adv", lambda b: b.update(adv=b["adv"][[*range(len(b["adv"])), 0]])),
    "flat_logp": ("logp", lambda b: b.update(logp=b["logp"].reshape(-1))),
    "short_expert": ("expert", lambda b: b.update(expert=b["expert"][:-1])),
    "list_adv": ("adv", lambda b: b.update(adv=b["adv"].tolist())),
    "other_kind_mask": (
        "mask",
        lambda b: b.update(
            mask=b["mask"].numpy() if isinstance(b["mask"], torch.Tensor) else torch.from_numpy(b["mask"])
        ),
    ),
}
NEEDS = {"float_expert": "expert", "short_expert": "expert", "int_ref_logp": "ref_logp"}


@st.composite
def batches(draw: st.DrawFn, *, bad: bool = False) -> BatchSpec:
    kind = draw(st.sampled_from(["numpy", "torch"]))
    corruption = draw(st.sampled_from(sorted(BAD_INPUTS))) if bad else ""
    rows = draw(st.integers(1 if corruption else 0, 6))
    tokens = draw(st.integers(2 if corruption else 0, 7))
    needs = NEEDS.get(corruption)
    return BatchSpec(
        seed=draw(st.integers(0, 2**32 - 1)),
        kind=kind,
        rows=rows,
        tokens=tokens,
        logp_dtype=draw(st.sampled_from(["float32", "float64"] if kind == "numpy" else ["float32", "bfloat16"])),
        mask_dtype=draw(st.sampled_from(["bool", "int64", "float32"])),
        adv_per_token=draw(st.booleans()),
        with_expert=needs == "expert" or draw(st.booleans()),
        ref="near" if needs == "ref_logp" else draw(st.sampled_from(["none", "near", "far"])),
        poison=draw(st.booleans()),
        empty_rows=draw(st.booleans()),
        all_masked=draw(st.integers(0, 9)) == 0,
        requires_grad=kind == "torch" and draw(st.booleans()),
        bad=corruption,
    )


def _graph_scalar(value: float) -> Any:
    return torch.tensor(value, dtype=torch.float64, requires_grad=True) * 1.0


def _scalars(low: float, high: float) -> st.SearchStrategy[Any]:
    """A step's scalar observation (kl, a verifier rate): mostly in [low, high],
    as every type the API takes (a torch tensor with a graph included), or anything."""
    return st.one_of(
        st.none(),
        st.floats(low, high),
        st.floats(),
        st.floats(low, high).map(np.float64),
        st.floats(low, high).map(lambda v: torch.tensor(v, dtype=torch.float64)),
        st.floats(low, high).map(_graph_scalar),
        st.sampled_from([math.nan, math.inf]).map(torch.tensor),
        st.integers(0, 3),
    )


OBSERVATIONS = st.fixed_dictionaries(
    {"kl": _scalars(0.0, 0.1), "expert_success": _scalars(0.0, 1.0), "policy_success": _scalars(0.0, 1.0)}
)
OBSERVATION_NAMES = st.sampled_from(["kl", "expert_success", "policy_success"])
BAD_SCALARS = st.sampled_from(
    ["high", True, [0.01], np.zeros(2), np.array("x"), 1j, torch.zeros(2), torch.tensor(True)]
)


# var_sft, var_rl, disagreement, kl: anything, NaN/inf and negative included.
HOSTILE_PROXIES = st.lists(st.one_of(st.floats(), st.floats(0, 4)), min_size=4, max_size=4)

# name -> (what the refusal must name, the corruption of a JSON state dict)
STATE_CORRUPTIONS = {
    "version": ("version", lambda s: s.update(version=99)),
    "mu_out_of_bounds": ("state.mu", lambda s: s["state"].update(mu=2.0)),
    "rho_null": ("state.rho", lambda s: s["state"].update(rho=None)),
    "flag_not_bool": ("state.has_kl", lambda s: s["state"].update(has_kl=1)),
    "missing_key": ("ema_kl", lambda s: s["state"].pop("ema_kl")),
    "other_config": ("cap", lambda s: s["config"].update(cap=0.123)),
    "negative_step": ("step", lambda s: s.update(step=-1)),
}

# --- the machine -----------------------------------------------------------------


def _host_mu(mu: Any) -> float:
    if isinstance(mu, torch.Tensor):
        assert not mu.requires_grad and mu.grad_fn is None, "mu carries an autograd graph"
        assert mu.shape == () and mu.dtype == torch.float32
        return mu.item()
    assert isinstance(mu, float)
    return mu


def _json(state: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(state, allow_nan=False))


@dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None


def _call(fn: Any, *args: Any, **kwargs: Any) -> Outcome:
    try:
        return Outcome(fn(*args, **kwargs))
    except (TypeError, ValueError, RuntimeError) as error:
        return Outcome(error=error)


class ControllerApi(RuleBasedStateMachine):
    @initialize(
        mode=st.sampled_from(MODES),
        update_every=st.integers(1, 3),
        per_mean=st.booleans(),
        sft_coef=st.sampled_from(["phi", "nll"]),
        cap=st.sampled_from([0.01, 0.05, 0.3]),
    )
    def start(self, mode: str, update_every: int, per_mean: bool, sft_coef: str, cap: float) -> None:
        # Fast statistics and KL EMAs, so mu and rho move within a few dozen steps.
        self.overrides = dict(
            mode=mode,
            update_every=update_every,
            per_mean=per_mean,
            sft_coef=sft_coef,
            cap=cap,
            stat_beta=0.5,
            ema_beta=0.6,
            kl_beta=0.5,
            warmup_steps=3,
            decay_steps=20,
        )
        self.ctrl = gaccore.Controller(**self.overrides)
        self.shadow = gaccore.Controller(**self.overrides)
        self.config = self.ctrl.config
        self.pending = False  # micro-batches observed in the open step
        self.last_mu = self.ctrl.mu

    # -- helpers ------------------------------------------------------------------

    def both(self, method: str, *args: Any, **kwargs: Any) -> Outcome:
        """Call ``method`` on the controller and its shadow; they must agree."""
        CALLS[method] += 1
        before = self.ctrl.state_dict()
        got = _call(getattr(self.ctrl, method), *args, **kwargs)
        shadow = _call(getattr(self.shadow, method), *args, **kwargs)
        assert type(got.error) is type(shadow.error), (got.error, shadow.error)
        if got.error is None:
            if method in ("step", "update", "update_stats"):
                mu, shadow_mu = _host_mu(got.value), _host_mu(shadow.value)
                if type(got.value) is not type(shadow.value):  # a state placed on torch returns float32
                    mu, shadow_mu = np.float32(mu), np.float32(shadow_mu)
                assert mu == shadow_mu, "the reloaded shadow returned another mu"
        else:
            assert str(got.error) == str(shadow.error)
            assert self.ctrl.state_dict() == before, f"a refused {method} changed the state"
        return got

    def expect_refused(self, outcome: Outcome, argument: str) -> None:
        assert isinstance(outcome.error, (TypeError, ValueError)), f"expected a refusal naming {argument}: {outcome}"
        assert argument in str(outcome.error), f"{argument!r} not named in: {outcome.error}"

    def stepped(self, outcome: Outcome) -> None:
        if outcome.error is None:
            self.pending = False
            mu = self.ctrl.mu
            assert abs(mu - self.last_mu) <= self.config.cap + 1e-12, "mu moved more than cap in one step"
            self.last_mu = mu

    # -- rules --------------------------------------------------------------------

    @rule(spec=batches())
    def observe(self, spec: BatchSpec) -> None:
        batch = spec.build()
        outcome = self.both("observe", **batch)
        if outcome.error is not None:
            # Only mixing array kinds within one step may refuse a well-formed batch.
            self.expect_refused(outcome, "logp")
            assert "one kind" in str(outcome.error)
        elif self.ctrl.is_stats_step():
            self.pending = True

    @rule(observations=OBSERVATIONS)
    def step(self, observations: dict[str, Any]) -> None:
        outcome = self.both("step", **observations)
        assert outcome.error is None, outcome.error
        self.stepped(outcome)

    @rule(spec=batches(), observations=OBSERVATIONS)
    def update(self, spec: BatchSpec, observations: dict[str, Any]) -> None:
        outcome = self.both("update", **spec.build(), **observations)
        if outcome.error is not None:
            self.expect_refused(outcome, "logp")
            assert "one kind" in str(outcome.error)
        self.stepped(outcome)

    @rule(spec=batches(bad=True), call=st.sampled_from(["observe", "update"]))
    def bad_batch(self, spec: BatchSpec, call: str) -> None:
        outcome = self.both(call, **spec.build())
        self.expect_refused(outcome, BAD_INPUTS[spec.bad][0])

    @rule(name=OBSERVATION_NAMES, value=BAD_SCALARS, call=st.sampled_from(["step", "update_stats"]))
    def bad_observation(self, name: str, value: Any, call: str) -> None:
        args = (None,) if call == "update_stats" else ()
        self.expect_refused(self.both(call, *args, **{name: value}), name)

    @rule(spec=batches(), name=OBSERVATION_NAMES, value=BAD_SCALARS)
    def update_with_bad_observation(self, spec: BatchSpec, name: str, value: Any) -> None:
        """update is all or nothing: the batch observed before the refusal is forgotten."""
        outcome = self.both("update", **spec.build(), **{name: value})
        self.expect_refused(outcome, "logp" if "one kind" in str(outcome.error) else name)

    @rule(data=st.data(), observations=OBSERVATIONS)
    def update_stats(self, data: st.DataObject, observations: dict[str, Any]) -> None:
        source = data.draw(st.sampled_from(["none", "numpy", "torch", "hostile", "not-stats"]))
        if source == "none":
            stats = None
        elif source == "hostile":
            stats = gaccore.BatchStats(*data.draw(HOSTILE_PROXIES), n_sft=3, n_rl=3, n_tokens=30, n_nonfinite_rows=0)
        elif source == "not-stats":
            stats = {"var_sft": 0.1}
        else:
            spec = data.draw(batches().filter(lambda s: s.kind == source))
            compute = gaccore.batch_stats if source == "numpy" else torch_batch_stats
            stats = compute(**spec.build(), sft_coef=self.config.sft_coef, trim=self.config.trim)
        outcome = self.both("update_stats", stats, **observations)
        if source == "not-stats":
            self.expect_refused(outcome, "stats")
        elif self.pending:
            assert isinstance(outcome.error, RuntimeError) and "update_stats" in str(outcome.error)
        else:
            assert outcome.error is None, outcome.error
            self.stepped(outcome)

    @precondition(lambda self: not self.pending)
    @rule(device=st.sampled_from([None, "cpu"]))
    def reload_shadow(self, device: str | None) -> None:
        """A fresh controller takes over from the JSON state, mid-stream."""
        CALLS["state_dict"] += 1
        state = _json(self.ctrl.state_dict())
        self.shadow = gaccore.Controller(**self.overrides)
        self.shadow.load_state_dict(state, device=device)

    @precondition(lambda self: not self.pending)
    @rule(device=st.sampled_from([None, "cpu"]))
    def round_trip(self, device: str | None) -> None:
        """The controller reloads its own JSON state (the shadow does not): nothing changes."""
        CALLS["state_dict"] += 1
        CALLS["load_state_dict"] += 1
        state = _json(self.ctrl.state_dict())
        self.ctrl.load_state_dict(state, device=device)
        assert self.ctrl.state_dict() == state

    @rule(corruption=st.sampled_from(sorted(STATE_CORRUPTIONS)))
    def load_bad_state(self, corruption: str) -> None:
        named, corrupt = STATE_CORRUPTIONS[corruption]
        state = _json(self.ctrl.state_dict())  # a fresh copy
        corrupt(state)
        self.expect_refused(self.both("load_state_dict", state), named)

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def mu_and_rho_in_bounds(self) -> None:
        config = self.config
        mu, rho = self.ctrl.mu, self.ctrl.rho
        assert math.isfinite(mu) and config.mu_min <= mu <= config.mu_max, mu
        assert math.isfinite(rho) and config.rho_min <= rho <= config.rho_max, rho

    @invariant()
    def shadow_has_the_same_state(self) -> None:
        assert self.ctrl.state_dict() == self.shadow.state_dict()

    @invariant()
    def no_autograd_graph_in_the_state(self) -> None:
        for controller in (self.ctrl, self.shadow):
            for value in vars(controller._state).values():
                assert not getattr(value, "requires_grad", False), "the state holds an autograd graph"


def test_public_api_fuzz() -> None:
    CALLS.clear()
    run_state_machine_as_test(
        ControllerApi,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS_PER_EXAMPLE,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    total = sum(CALLS.values())
    print(f"fuzz: {total} API calls on the fuzzed controller: {dict(CALLS)}")
    assert total >= MIN_CALLS, f"only {total} API calls: raise EXAMPLES or STEPS_PER_EXAMPLE"
