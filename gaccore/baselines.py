"""Baseline mixing rules with the ``Controller`` interface, for comparisons.

These are the schedules and rule-based controllers that hybrid SFT/RL runs
use today (and that the GAC paper compares against), written so that a
training loop can swap them for ``gaccore.Controller`` without other changes:

    ``update(logp, mask, adv, expert=None, *, kl=None, ref_logp=None,
    scores=None) -> mu``, the ``mu`` property, ``metrics()`` (with
    ``"estimate"``, the value the rule proposes this step, as the
    controller's), ``state_dict()`` / ``load_state_dict()``.

They are numpy-only and deliberately simple: torch inputs are converted to
host numpy arrays (a synchronization), and only the rules that need a tensor
look at one. They are reference points for experiments, not something to put
in the hot path of a GPU run.

Rules and the information each one reads:

- ``FixedMu(mu)``: a constant; ``FixedMu(0.0)`` is pure RL, ``FixedMu(1.0)``
  pure SFT. Reads nothing.
- ``ScheduleMu(...)``: the warmup-cosine schedule alone (CHORD's global
  schedule with ``mu_start=0``). Reads nothing but the step.
- ``KLProportional(gain, ...)``: ``mu = clip(gain * ema_kl, mu_min,
  mu_max)``, more imitation as the policy drifts ("KL-ctrl"). Reads ``kl=``,
  or computes the k3 KL of the non-expert rows from ``ref_logp``.
- ``RewardVariance(var_ref, ...)``: ``mu = clip(var_ref / var_ema, mu_min,
  mu_max)``, inversely proportional to the within-group reward variance
  ("RewVar-ctrl"): little reward signal, more imitation. Reads ``scores=``
  of the rollouts, in groups of ``group_size``.
- ``HPTGate(group_size=...)``: per prompt, SFT only for prompts none of
  whose rollouts succeed, RL for the others (HPT's accuracy gate). Reads
  ``scores=`` of the rollouts, in groups of ``group_size``.

Decision on HPT: its mixing is per prompt, not one scalar, so ``HPTGate``
exposes ``sft_weights`` (one weight per prompt group, 1.0 = train on the
demonstration, 0.0 = train on the rollouts) and ``update`` returns the
scalar ``mu`` = the fraction of gated prompts, which is what to log and what
the scalar loss ``mu * L_SFT + (1 - mu) * L_RL`` would use if a loop cannot
apply per-prompt weights. The scalar rules leave ``sft_weights`` at None.

``scores`` is what ``Controller.update`` takes: an array ``[B]`` (numpy or
torch), one verifier score per row of the batch, in the batch's order (a
rollout's reward; NaN where a row is not scored). The rules that compare
the rollouts of one prompt (``RewardVariance``, ``HPTGate``) read the
scores of the non-expert rows (every row when ``expert`` is None), in the
batch's order, as consecutive groups of ``group_size`` rollouts per prompt
(GRPO's groups), ``group_size`` being given at construction; the scores of
expert rows are never read.

State dicts are JSON-ready (``format``, ``version``, ``step``, ``config``,
``state``; non-finite numbers as ``None``). ``load_state_dict`` refuses a
state of another rule, version, or configuration, or with missing or
malformed values, with an error naming what is wrong, and changes nothing.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from gaccore.persistence import check_envelope, check_same_config, json_number, parse_values
from gaccore.schedules import warmup_cosine
from gaccore.stats import k3

STATE_VERSION = 1

FloatArray = npt.NDArray[np.float64]


def _to_numpy(value: Any, name: str) -> FloatArray:
    """A numpy float64 copy of an array or tensor (torch is never imported here)."""
    if hasattr(value, "detach"):  # a torch tensor: to host numpy, float64 (float32 would round a float64 reward)
        value = value.detach().cpu().double().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a numeric array or tensor, got {type(value).__name__}") from error


def _to_float(value: Any, name: str) -> float:
    if hasattr(value, "detach") or isinstance(value, np.ndarray):
        array = _to_numpy(value, name)
        if array.shape != ():
            raise ValueError(f"{name} must be a scalar (0-d), got shape {array.shape}")
        return float(array)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{name} must be a real number or a 0-d array/tensor, got {type(value).__name__}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_unit_interval(**values: float) -> None:
    for name, value in values.items():
        _require(
            isinstance(value, numbers.Real) and math.isfinite(value) and 0.0 <= value <= 1.0,
            f"{name} must be a finite number in [0, 1], got {value!r}",
        )


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        _require(
            isinstance(value, numbers.Real) and math.isfinite(value) and value > 0.0,
            f"{name} must be a finite number > 0, got {value!r}",
        )


def _check_beta(beta: float) -> None:
    _require(
        isinstance(beta, numbers.Real) and math.isfinite(beta) and 0.0 <= beta < 1.0,
        f"beta must be a finite number in [0, 1), got {beta!r}",
    )


def mean_k3(logp: Any, mask: Any, ref_logp: Any, expert: Any = None) -> float:
    """Mean k3 KL (``gaccore.stats.k3``), ``x = ref_logp - logp``, over
    masked-in tokens of non-expert rows with finite values (NaN when there
    are none). Unlike the controller's statistics, a non-finite token drops
    only itself: this rule needs no per-row bookkeeping."""
    logp_np = np.minimum(_to_numpy(logp, "logp"), 0.0)
    ref_np = _to_numpy(ref_logp, "ref_logp")
    keep = _to_numpy(mask, "mask") != 0
    if logp_np.shape != ref_np.shape or keep.shape != logp_np.shape:
        raise ValueError(
            f"logp, mask and ref_logp must share one shape [B, T], got {logp_np.shape}, {keep.shape}, {ref_np.shape}"
        )
    if expert is not None:
        keep &= ~(_to_numpy(expert, "expert") != 0)[:, None]
    x = np.where(keep, ref_np - logp_np, 0.0)
    keep &= np.isfinite(x)
    if not keep.any():
        return math.nan
    return float(k3(x[keep]).mean())


@dataclass(frozen=True)
class StepInputs:
    """What ``update`` received, for the rule to read what it needs."""

    logp: Any
    mask: Any
    adv: Any
    expert: Any
    kl: Any
    ref_logp: Any
    scores: Any


class MixingRule:
    """Shared plumbing: the step counter, ``mu``, and state (de)serialisation.

    A subclass names its configuration in ``_config()`` and its evolving
    numbers in ``_state()`` / ``_set_state()`` and implements ``_next_mu``.
    """

    kind: ClassVar[str]
    # One SFT weight per prompt group for a rule that mixes per prompt
    # (``HPTGate``), set by ``update``; None for a rule that mixes one scalar.
    sft_weights: FloatArray | None = None

    def __init__(self, mu_init: float) -> None:
        self._step = 0
        self._mu = float(mu_init)

    @property
    def mu(self) -> float:
        """The current mixing weight: weight the next loss with it."""
        return self._mu

    @property
    def step_count(self) -> int:
        return self._step

    def update(
        self,
        logp: Any = None,
        mask: Any = None,
        adv: Any = None,
        expert: Any = None,
        *,
        kl: Any = None,
        ref_logp: Any = None,
        scores: Any = None,
    ) -> float:
        """One optimizer step; returns the mixing weight for this step's loss.

        The arguments match ``Controller.update`` (``scores``: ``[B]``, each
        row's verifier score, NaN where not scored); a rule ignores the ones
        it does not need (they may be ``None``).
        """
        self._mu = self._next_mu(StepInputs(logp, mask, adv, expert, kl, ref_logp, scores))
        self._step += 1
        return self._mu

    def _next_mu(self, inputs: StepInputs) -> float:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        """The step count, ``mu``, and ``estimate``: the value the rule
        proposes this step before any smoothing, under the controller's key
        (these rules apply theirs as it is, so it is ``mu``)."""
        return {"step": float(self._step), "mu": self._mu, "estimate": self._mu}

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _state(self) -> dict[str, float]:
        return {}

    def _set_state(self, values: dict[str, float]) -> None:
        """Install parsed values (all keys of ``_state()`` present)."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": f"gaccore.baselines.{self.kind}",
            "version": STATE_VERSION,
            "step": self._step,
            "config": self._config(),
            "state": {"mu": self._mu, **{k: json_number(v) for k, v in self._state().items()}},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from ``state_dict()``; a bad state raises and changes nothing."""
        step = check_envelope(state, f"gaccore.baselines.{self.kind}", STATE_VERSION)
        saved = state["config"]
        _require(isinstance(saved, Mapping), f"state dict config must be a dict, got {saved!r}")
        check_same_config(saved, self._config(), "this rule")
        parsed = {k: float(v) for k, v in parse_values(state["state"], ["mu", *self._state()]).items()}
        _require(
            math.isfinite(parsed["mu"]) and 0.0 <= parsed["mu"] <= 1.0,
            f"state dict 'state.mu' must be a number in [0, 1], got {state['state']['mu']!r}",
        )
        # Everything is checked: commit.
        self._step = step
        self._mu = parsed.pop("mu")
        self._set_state(parsed)


class FixedMu(MixingRule):
    """A constant mixing weight: ``FixedMu(0.0)`` is pure RL, ``FixedMu(1.0)`` pure SFT."""

    kind = "FixedMu"

    def __init__(self, mu: float) -> None:
        _check_unit_interval(mu=mu)
        super().__init__(mu)
        self.value = float(mu)

    def _next_mu(self, inputs: StepInputs) -> float:
        return self.value

    def _config(self) -> dict[str, Any]:
        return {"mu": self.value}


class ScheduleMu(MixingRule):
    """The warmup-cosine schedule alone, no feedback: CHORD's global schedule
    with the default ``mu_start=0`` (``gaccore.warmup_cosine``)."""

    kind = "ScheduleMu"

    def __init__(
        self,
        warmup_steps: int,
        decay_steps: int,
        mu_peak: float,
        mu_valley: float,
        mu_start: float = 0.0,
    ) -> None:
        _check_unit_interval(mu_peak=mu_peak, mu_valley=mu_valley, mu_start=mu_start)
        self.schedule = warmup_cosine(warmup_steps, decay_steps, mu_peak, mu_valley, mu_start)
        super().__init__(self.schedule(0))

    def _next_mu(self, inputs: StepInputs) -> float:
        return float(self.schedule(self._step))

    def _config(self) -> dict[str, Any]:
        s = self.schedule
        return {
            "warmup_steps": s.warmup_steps,
            "decay_steps": s.decay_steps,
            "mu_peak": float(s.mu_peak),
            "mu_valley": float(s.mu_valley),
            "mu_start": float(s.mu_start),
        }


class _SignalRule(MixingRule):
    """A rule that maps an EMA (``beta``) of one observed signal to ``mu``
    inside [mu_min, mu_max]; ``mu`` keeps its value (``mu_init`` at the
    start) on steps without a finite observation."""

    signal: ClassVar[str]  # the EMA's name in state dicts and metrics

    def __init__(self, *, mu_min: float, mu_max: float, mu_init: float, beta: float) -> None:
        _check_unit_interval(mu_min=mu_min, mu_max=mu_max, mu_init=mu_init)
        _require(mu_min <= mu_init <= mu_max, f"need mu_min <= mu_init <= mu_max, got {mu_min}, {mu_init}, {mu_max}")
        _check_beta(beta)
        super().__init__(mu_init)
        self.mu_min, self.mu_max = float(mu_min), float(mu_max)
        self.mu_init, self.beta = float(mu_init), float(beta)
        self.ema = math.nan

    def _fold(self, observed: float) -> float:
        """Fold a finite observation into the EMA (the first one initializes it)."""
        self.ema = observed if not math.isfinite(self.ema) else self.beta * self.ema + (1.0 - self.beta) * observed
        return self.ema

    def _bounds(self) -> dict[str, Any]:
        return {"mu_min": self.mu_min, "mu_max": self.mu_max, "mu_init": self.mu_init, "beta": self.beta}

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), self.signal: self.ema}

    def _state(self) -> dict[str, float]:
        return {self.signal: self.ema}

    def _set_state(self, values: dict[str, float]) -> None:
        self.ema = values[self.signal]


class KLProportional(_SignalRule):
    """KL-ctrl: ``mu = clip(gain * ema_kl, mu_min, mu_max)``.

    ``ema_kl`` is an EMA (``beta``) of the step's KL: the ``kl`` argument when
    finite, else the k3 KL of the non-expert rows from ``ref_logp``. Until
    the first finite KL, and on steps without one, ``mu`` keeps its value
    (``mu_init`` at the start).
    """

    kind = "KLProportional"
    signal = "ema_kl"

    def __init__(
        self,
        gain: float,
        *,
        mu_min: float = 0.05,
        mu_max: float = 0.9,
        mu_init: float = 0.5,
        beta: float = 0.9,
    ) -> None:
        _check_positive(gain=gain)
        super().__init__(mu_min=mu_min, mu_max=mu_max, mu_init=mu_init, beta=beta)
        self.gain = float(gain)

    def _next_mu(self, inputs: StepInputs) -> float:
        observed = math.nan if inputs.kl is None else _to_float(inputs.kl, "kl")
        if not math.isfinite(observed) and inputs.ref_logp is not None:
            observed = mean_k3(inputs.logp, inputs.mask, inputs.ref_logp, inputs.expert)
        if not math.isfinite(observed):
            return self._mu
        return float(np.clip(self.gain * self._fold(observed), self.mu_min, self.mu_max))

    def _config(self) -> dict[str, Any]:
        return {"gain": self.gain, **self._bounds()}


def _check_group_size(group_size: Any) -> int:
    _require(
        isinstance(group_size, numbers.Integral) and not isinstance(group_size, bool) and group_size >= 1,
        f"group_size must be a whole number >= 1 (the rollouts per prompt), got {group_size!r}",
    )
    return int(group_size)


def _rollout_groups(inputs: StepInputs, group_size: int) -> FloatArray:
    """The rollouts' scores as ``[n_groups, group_size]``: the scores of the
    non-expert rows in the batch's order, ``group_size`` consecutive ones
    per prompt."""
    if inputs.scores is None:
        raise ValueError("scores is required: an array [B] of each row's verifier score (a rollout's reward)")
    scores = _to_numpy(inputs.scores, "scores")
    _require(scores.ndim == 1, f"scores must have shape [B], one score per row, got shape {scores.shape}")
    if inputs.expert is not None:
        expert = _to_numpy(inputs.expert, "expert")
        _require(
            expert.shape == scores.shape,
            f"expert must have the shape of scores, {scores.shape}, one flag per row, got {expert.shape}",
        )
        scores = scores[expert == 0]
    _require(
        scores.size % group_size == 0,
        f"the {scores.size} rollout rows (rows not flagged expert) do not split into prompt groups of "
        f"group_size={group_size}",
    )
    return scores.reshape(-1, group_size)


class RewardVariance(_SignalRule):
    """RewVar-ctrl: ``mu = clip(var_ref / var_ema, mu_min, mu_max)``.

    ``var_ema`` is an EMA (``beta``) of the mean over prompt groups of the
    within-group reward variance (population, ddof=0) of the rollouts'
    ``scores``, ``group_size`` per prompt; groups whose variance is not
    finite are skipped, a step without any is ignored.
    A variance of 0 (no group has a mixed outcome: nothing for GRPO to learn
    from) gives ``mu_max``.
    """

    kind = "RewardVariance"
    signal = "var_ema"

    def __init__(
        self,
        var_ref: float,
        *,
        group_size: int,
        mu_min: float = 0.05,
        mu_max: float = 0.9,
        mu_init: float = 0.5,
        beta: float = 0.9,
    ) -> None:
        _check_positive(var_ref=var_ref)
        self.group_size = _check_group_size(group_size)
        super().__init__(mu_min=mu_min, mu_max=mu_max, mu_init=mu_init, beta=beta)
        self.var_ref = float(var_ref)

    def _next_mu(self, inputs: StepInputs) -> float:
        groups = _rollout_groups(inputs, self.group_size)
        with np.errstate(over="ignore", invalid="ignore"):
            variances = groups.var(axis=1)
        # Groups with a non-finite reward (or a variance beyond float range) carry no usable information.
        variances = variances[np.isfinite(variances)]
        if variances.size == 0:
            return self._mu
        with np.errstate(over="ignore"):
            observed = float(variances.mean())
        if not math.isfinite(observed):
            return self._mu
        if self._fold(observed) <= 0.0:
            return self.mu_max
        return float(np.clip(self.var_ref / self.ema, self.mu_min, self.mu_max))

    def _config(self) -> dict[str, Any]:
        return {"var_ref": self.var_ref, "group_size": self.group_size, **self._bounds()}


class HPTGate(MixingRule):
    """HPT's accuracy gate: SFT for prompts none of whose rollouts succeed.

    The rollouts' ``scores`` form prompt groups of ``group_size``; a
    rollout succeeds when its score is ``>= success_reward``. After
    ``update``, ``sft_weights[g]`` is 1.0 for prompt group ``g`` when all of
    its rollouts failed (train on its demonstration) and 0.0 otherwise (train
    on its rollouts with the RL loss); ``mu`` is the mean of ``sft_weights``,
    the fraction of gated prompts. A rollout with a non-finite score counts
    as failed. Stateless between steps apart from the last gate.
    """

    kind = "HPTGate"

    def __init__(self, success_reward: float = 1.0, *, group_size: int) -> None:
        _require(
            isinstance(success_reward, numbers.Real) and math.isfinite(success_reward),
            f"success_reward must be a finite number, got {success_reward!r}",
        )
        self.group_size = _check_group_size(group_size)
        super().__init__(0.0)
        self.success_reward = float(success_reward)
        self.sft_weights = np.zeros(0)

    def _next_mu(self, inputs: StepInputs) -> float:
        groups = _rollout_groups(inputs, self.group_size)
        solved = (np.where(np.isfinite(groups), groups, -math.inf) >= self.success_reward).any(axis=1)
        self.sft_weights = np.where(solved, 0.0, 1.0)
        return float(self.sft_weights.mean()) if self.sft_weights.size else 0.0

    def _config(self) -> dict[str, Any]:
        return {"success_reward": self.success_reward, "group_size": self.group_size}
