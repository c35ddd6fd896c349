"""The GAC controller: the guarded update of SPEC.md §3 (Eq. 11-13, 16).

``advance`` is the whole per-step arithmetic, a pure function written once
with plain operators and the ``where``/``clip`` shim: the same code runs on
numpy float64 scalars and on 0-d torch tensors on any device, branch-free, so
the torch path never synchronizes. ``Controller`` holds the only state: the
step counter (a host integer), the state arrays, and the row results of the
step's micro-batches observed so far.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

import numpy as np

from gaccore._array import FLOAT_MAX, Scalar, absolute, clip, isfinite, quiet, where
from gaccore.backend import NUMPY_BACKEND, StatsBackend, backend_for, torch_backend
from gaccore.closed_form import mu_star
from gaccore.config import Config
from gaccore.persistence import check_envelope, check_same_config, json_number, parse_values
from gaccore.rows import BatchStats
from gaccore.schedules import warmup_cosine

A = TypeVar("A", bound=Scalar)
Prior = Callable[[int], float]

STATE_FORMAT = "gaccore.Controller"
# 2: the verifier reward EMAs (``ema_expert_reward``, ``ema_policy_reward``).
# 3: the KL's EMA is ``ema_kl``, named like every other EMA.
STATE_VERSION = 3
# Below this share of failures left to the policy, the expert's advantage is 0/0: treated as none.
_MIN_FAILURE_RATE = 1e-6


@dataclass(frozen=True)
class ControllerState(Generic[A]):
    """Every number the controller carries between steps, as backend scalars.

    All values stay finite: EMAs start at 0 with a ``has_*`` flag, and
    accumulators saturate at the largest float64 instead of overflowing.
    """

    mu: A
    mu_bar: A
    rho: A
    ema_disagreement: A
    ema_var_sft: A
    ema_var_rl: A
    ema_kl: A
    ema_expert_reward: A
    ema_policy_reward: A
    estimate: A  # the last defined clipped estimate mu^ (Eq. 12)
    has_disagreement: A
    has_var_sft: A
    has_var_rl: A
    has_kl: A
    has_expert_reward: A
    has_policy_reward: A
    has_estimate: A
    n_large_shifts: A
    kl_drift_area: A
    n_skipped_disagreement: A
    n_skipped_var_sft: A
    n_skipped_var_rl: A
    n_dropped: A

    @staticmethod
    def is_flag(name: str) -> bool:
        return name.startswith("has_")

    @classmethod
    def initial(cls, config: Config) -> dict[str, float | bool]:
        """The starting state as host values."""
        host: dict[str, float | bool] = {f.name: False if cls.is_flag(f.name) else 0.0 for f in fields(cls)}
        host.update(mu=config.mu_init, mu_bar=config.mu_init, rho=config.rho_init)
        return host

    @classmethod
    def place(cls, host: Mapping[str, float | bool], backend: StatsBackend, device: Any) -> ControllerState[Any]:
        return cls(
            **{
                f.name: backend.flag(bool(host[f.name]), device)
                if cls.is_flag(f.name)
                else backend.scalar(float(host[f.name]), device)
                for f in fields(cls)
            }
        )

    def to_host(self, backend: StatsBackend) -> dict[str, float | bool]:
        """Every value on the host, read in one transfer."""
        names = [f.name for f in fields(self)]
        values = backend.to_host_all([getattr(self, name) for name in names])
        return {name: bool(value) if self.is_flag(name) else value for name, value in zip(names, values, strict=True)}


def _fold(ema: A, has: A, value: A, beta: float) -> tuple[A, A, A]:
    """Fold a finite ``value`` into an EMA (the first one initializes it).

    Returns the new EMA, its flag, and whether ``value`` was finite."""
    finite = isfinite(value)
    value = where(finite, value, 0.0)
    folded = clip(where(has, beta * ema + (1.0 - beta) * value, value), -FLOAT_MAX, FLOAT_MAX)
    return where(finite, folded, ema), has | finite, finite


def rho_step(rho: A, ema_kl: A, active: A, config: Config) -> A:
    """KL-controlled target ratio with hysteresis (Eq. 11/16).

    Above ``kl_target (1 + kl_band)`` rho moves up towards ``rho_max`` by
    ``eta_up``, below ``kl_target (1 - kl_band)`` down towards ``rho_min`` by
    ``eta_down``; inside the band, or where ``active`` is false, it stays.
    """
    high = active & (ema_kl > config.kl_target * (1.0 + config.kl_band))
    low = active & (ema_kl < config.kl_target * (1.0 - config.kl_band))
    raised = rho + config.eta_up * (config.rho_max - rho)
    lowered = rho - config.eta_down * (rho - config.rho_min)
    return clip(where(high, raised, where(low, lowered, rho)), config.rho_min, config.rho_max)


def verified_rho(expert_reward: A, policy_reward: A, config: Config) -> A:
    """The target ratio of ``mode="verified"``: the expert's advantage over the policy.

    ``(r_E - r_P) / (1 - r_P)``, clipped to [rho_min, rho_max], where ``r_E``
    and ``r_P`` are the smoothed verifier success rates of the expert's
    demonstrations and of the policy's rollouts: the share of the policy's
    failures that imitating the expert would fix, net of the expert's own
    failures. A perfect expert gives 1 whatever the policy's level; an expert
    no better than the policy gives 0 (its demonstrations teach nothing the
    rewards do not, and pull towards its mistakes). An extension of the
    paper: Eq. 6's expert bias has no proxy there, the verifier measures it.
    """
    failures = clip(1.0 - policy_reward, _MIN_FAILURE_RATE, FLOAT_MAX)
    advantage = clip((expert_reward - policy_reward) / failures, 0.0, 1.0)
    return clip(advantage, config.rho_min, config.rho_max)


def capped_step(mu: A, target: A, config: Config) -> A:
    """Eq. 13: move at most ``cap`` towards ``target``, inside [mu_min, mu_max]."""
    return clip(mu + clip(target - mu, -config.cap, config.cap), config.mu_min, config.mu_max)


def advance(
    state: ControllerState[A],
    config: Config,
    batch: BatchStats[A, A] | None,
    kl: A | None,
    prior_value: A | None,
    *,
    expert_reward: A | None = None,
    policy_reward: A | None = None,
) -> ControllerState[A]:
    """One optimizer step of the controller (SPEC.md §3, steps 1-7, without ``t += 1``).

    ``batch`` holds this step's proxies as state scalars (``None`` on steps
    without statistics), ``kl`` the caller's KL observation, ``prior_value``
    the prior at this step as a state scalar (``None`` or non-finite: no
    blend), and ``expert_reward``/``policy_reward`` the step's verifier
    success rates of the demonstrations and of the rollouts, where finite,
    else the batch's rates from its per-row scores (folded into EMAs in
    every mode; they steer rho in ``mode="verified"``). Branch-free in the
    values (only ``None`` picks a branch), so ``torch.compile`` traces it into
    one graph per combination of ``None``s.
    """
    with quiet(state.mu):  # NaN/inf are data here, masked below
        return _advance_steps(state, config, batch, kl, prior_value, expert_reward, policy_reward)


def _advance_steps(
    state: ControllerState[A],
    config: Config,
    batch: BatchStats[A, A] | None,
    kl: A | None,
    prior_value: A | None,
    expert_reward: A | None,
    policy_reward: A | None,
) -> ControllerState[A]:
    # The new state's values by name, filled in step by step and read back by
    # the later steps; one ControllerState at the end (each dataclasses.replace
    # of its 23 fields costs more than a step's arithmetic on host scalars).
    s = dict(vars(state))
    kD, kS, kR = config.scale

    # 1. Proxies into their EMAs.
    if batch is not None:
        var_sft, var_rl = batch.var_sft, batch.var_rl
        if config.per_mean:
            var_sft, var_rl = var_sft / batch.n_sft, var_rl / batch.n_rl
        for name, value in (
            ("disagreement", batch.disagreement),
            ("var_sft", var_sft),
            ("var_rl", var_rl),
        ):
            ema, has, finite = _fold(s[f"ema_{name}"], s[f"has_{name}"], value, config.stat_beta)
            s[f"ema_{name}"], s[f"has_{name}"] = ema, has
            s[f"n_skipped_{name}"] = s[f"n_skipped_{name}"] + where(finite, 0.0, 1.0)
        s["n_dropped"] = clip(s["n_dropped"] + batch.n_dropped, 0.0, FLOAT_MAX)

    # 2. KL-controlled rho: the caller's kl when finite, else the batch's.
    observation = kl
    if batch is not None:
        observation = batch.kl if kl is None else where(isfinite(kl), kl, batch.kl)
    if observation is not None:
        ema_kl, has_kl, observed = _fold(s["ema_kl"], s["has_kl"], observation, config.kl_beta)
        excess = clip(where(observed, observation, 0.0) - config.kl_target, 0.0, FLOAT_MAX)
        s["ema_kl"], s["has_kl"] = ema_kl, has_kl
        s["rho"] = rho_step(s["rho"], ema_kl, observed, config)
        s["kl_drift_area"] = clip(s["kl_drift_area"] + where(observed, excess, 0.0), 0.0, FLOAT_MAX)

    # 2b. The verifier's success rates (the caller's when finite, else the batch's
    # from its scores); in mode "verified" they set rho once both are known.
    for name, reward in (("expert_reward", expert_reward), ("policy_reward", policy_reward)):
        if batch is not None:
            measured = getattr(batch, name)
            reward = measured if reward is None else where(isfinite(reward), reward, measured)
        if reward is not None:
            s[f"ema_{name}"], s[f"has_{name}"], _ = _fold(s[f"ema_{name}"], s[f"has_{name}"], reward, config.stat_beta)
    if config.mode == "verified":
        verified = s["has_expert_reward"] & s["has_policy_reward"]
        rho = verified_rho(s["ema_expert_reward"], s["ema_policy_reward"], config)
        s["rho"] = where(verified, rho, s["rho"])

    # 3. Estimate (Eq. 12, with Eq. 3).
    ready = s["has_disagreement"] & s["has_var_sft"] & s["has_var_rl"]
    raw = mu_star(kD * s["ema_disagreement"], kS * s["ema_var_sft"], kR * s["ema_var_rl"], s["rho"])
    defined = ready & isfinite(raw)
    estimate = clip(where(defined, raw, 0.0), 0.0, 1.0)

    # 4. EMA of the estimate; 5. prior blend; 6. cap (Eq. 13).
    beta = config.ema_beta
    mu_bar = where(defined, beta * s["mu_bar"] + (1.0 - beta) * estimate, s["mu_bar"])
    target = mu_bar
    if prior_value is not None:
        has_prior = isfinite(prior_value)
        blended = config.blend * mu_bar + (1.0 - config.blend) * where(has_prior, prior_value, 0.0)
        target = where(has_prior, blended, mu_bar)

    # 7. Telemetry: large jumps of the defined estimate.
    jump = defined & s["has_estimate"] & (absolute(estimate - s["estimate"]) > config.large_shift)
    s["mu"] = capped_step(s["mu"], target, config)
    s["mu_bar"] = mu_bar
    s["n_large_shifts"] = s["n_large_shifts"] + where(jump, 1.0, 0.0)
    s["estimate"] = where(defined, estimate, s["estimate"])
    s["has_estimate"] = s["has_estimate"] | defined
    return ControllerState(**s)


def close_step(
    backend: StatsBackend,
    device: Any,
    state: ControllerState[A],
    config: Config,
    observations: dict[str, A | None],
    prior_value: A | None,
    rows: Any = None,
    batch: BatchStats[Any, Any] | None = None,
) -> tuple[ControllerState[A], BatchStats[Any, Any] | None]:
    """Everything a step does after its row results are complete: finalize
    them (when given) into ``batch``, place the proxies as state scalars and
    ``advance`` with the step's observations (``kl``, ``expert_reward``,
    ``policy_reward`` as state scalars or ``None``). The whole device-side
    update, and what ``compile_step`` hands to ``torch.compile``; returns the
    new state and the placed batch (detached state scalars, never the
    caller's tensors)."""
    if rows is not None:
        batch = backend.finalize(rows, trim=config.trim, filter_demos=config.filter_demos)
    placed = None
    if batch is not None:
        placed = BatchStats(**{f.name: backend.scalar(getattr(batch, f.name), device) for f in fields(batch)})
    new_state = advance(
        state,
        config,
        placed,
        observations["kl"],
        prior_value,
        expert_reward=observations["expert_reward"],
        policy_reward=observations["policy_reward"],
    )
    return new_state, placed


def _check_compile_step(compile_step: object) -> None:
    if compile_step is not False and compile_step is not True and compile_step != "reduce-overhead":
        raise TypeError(f'compile_step must be False, True or "reduce-overhead", got {compile_step!r}')


_PRIOR_FROM_CONFIG: Any = object()


class Controller:
    """Noise-aware SFT/RL mixing weight, one ``update`` per optimizer step.

    ``Controller(config=None, *, prior=..., process_group=None,
    compile_step=False, **overrides)``: ``overrides`` replace fields of
    ``config`` (validated). ``prior`` defaults to the warmup-cosine schedule
    of the config starting at ``mu_init``; any callable ``step -> mu``
    replaces it and ``None`` disables the blend.

    numpy inputs return Python floats; torch inputs return a 0-d float32
    tensor on their device, computed without host-device synchronization (the
    state moves to the device of the inputs on first use; CPU tensors keep it
    in host scalars, see ``gaccore.kernels.TorchBackend``). ``compile_step``
    runs the device-side rest of each step (``close_step``: finalize and
    ``advance``, the same code) through ``torch.compile`` (``True``);
    ``"reduce-overhead"`` replays an ``update`` of one micro-batch, its
    statistics kernel and its closing step, from one CUDA graph recorded
    per layout of its inputs, and on other steps (several micro-batches, a
    process group, ``update_stats``) replays the compiled rest from a CUDA
    graph per layout of its arguments; the default ``False`` is eager, and
    runs that rest as one fused kernel where the torch side has one for the
    state's device (``gaccore.kernels.close_step``). It applies where the
    state lives on a device (the first compile or recording of each layout
    takes seconds). Without a KL
    source (``kl=`` or ``ref_logp=``) rho stays at ``rho_init``. On a step
    whose ``observe`` was never called, no statistics are folded.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        prior: Prior | None = _PRIOR_FROM_CONFIG,
        process_group: Any = None,
        compile_step: bool | str = False,
        **overrides: Any,
    ) -> None:
        config = config if config is not None else Config()
        if not isinstance(config, Config):
            raise TypeError(f"config must be a gaccore.Config, got {type(config).__name__}")
        if overrides:
            known = {f.name for f in fields(Config)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(f"unknown Config fields in overrides: {unknown}")
            config = dataclasses.replace(config, **overrides)
        if prior is _PRIOR_FROM_CONFIG:
            prior = warmup_cosine(
                config.warmup_steps,
                config.decay_steps,
                config.mu_peak,
                config.mu_valley,
                mu_start=config.mu_init,
            )
        if prior is not None and not callable(prior):
            raise TypeError(f"prior must be a callable step -> mu or None, got {prior!r}")
        self.config = config
        self.prior = prior
        self.process_group = process_group
        _check_compile_step(compile_step)
        # torch is imported only when compiling is asked for.
        self._compiled_close = (
            None if compile_step is False else torch_backend().compile_close_step(close_step, compile_step)
        )
        self._update_replay = None if compile_step != "reduce-overhead" else torch_backend().update_replay()
        self._fused_close: Any = None  # the torch side's fused close_step, made at the first device step
        self._step = 0
        self._backend: StatsBackend = NUMPY_BACKEND
        self._device: Any = None
        self._state: ControllerState[Any] = ControllerState.place(ControllerState.initial(config), NUMPY_BACKEND, None)
        self._pending: Any = None
        self._last_batch: BatchStats[Any, Any] | None = None
        self._scored = False  # this step observed per-row verifier scores
        self._steps_without_rates = 0  # consecutive steps of mode "verified" with no source of its rates
        self._warned_without_rates = False

    # -- the per-step API ----------------------------------------------------

    @property
    def step_count(self) -> int:
        """Optimizer steps taken so far (the ``t`` of the next step)."""
        return self._step

    def is_stats_step(self) -> bool:
        return self._step % self.config.update_every == 0

    def observe(
        self,
        logp: Any,
        mask: Any,
        adv: Any,
        expert: Any = None,
        *,
        ref_logp: Any = None,
        scores: Any = None,
    ) -> None:
        """Add one micro-batch's row results to this step's statistics.

        ``scores`` ``[B]``: the verifier's score of each row where the reward
        function can score it (a demonstration's score, a rollout's reward;
        NaN: not scored). They give the two success rates of
        ``mode="verified"``, and with ``Config.filter_demos`` a demonstration
        scored below it leaves the SFT statistics (``gaccore.kept_demos``).

        On steps that compute no statistics (``t % update_every != 0``) the
        inputs are checked as on every step (types, shapes, dtypes, device)
        and ignored: nothing launches.
        """
        backend = backend_for(logp)
        options = {"ref_logp": ref_logp, "sft_coef": self.config.sft_coef, "scores": scores}
        if not self.is_stats_step():
            backend.check(logp, mask, adv, expert, **options)
            self._scored |= scores is not None
            return
        rows = backend.row_results(logp, mask, adv, expert, **options)
        if self._pending is not None and self._pending[0] is not backend:
            raise TypeError(
                "logp: all micro-batches of one step must be of one kind "
                f"(this step started with {self._pending[0].name} arrays, got {backend.name})"
            )
        merged = rows if self._pending is None else backend.merge(self._pending[1], rows)
        self._pending = (backend, merged, backend.device_of(logp))
        self._scored |= scores is not None

    def step(self, *, kl: Any = None, expert_reward: Any = None, policy_reward: Any = None) -> Any:
        """Close the optimizer step: fold statistics, update rho and mu.

        ``expert_reward``/``policy_reward``: this step's verifier success
        rates (in [0, 1]) of the expert's demonstrations and of the policy's
        rollouts, when the reward function can score both; ``mode="verified"``
        steers rho with them, every mode reports their EMAs.

        With a ``process_group``, the step's row results are gathered from
        every rank (in rank order) and ``kl`` and the rewards are averaged
        over the group, so every rank computes the same ``mu``; every rank
        must call ``step``.
        """
        observations = _check_observations(kl=kl, expert_reward=expert_reward, policy_reward=policy_reward)
        rows: Any = None
        backend, device = self._backend, self._device
        if self._pending is not None:
            backend, rows, device = self._pending
            if self.process_group is not None:
                rows = backend.reduce(rows, self.process_group)
        return self._finish_step(backend, device, observations, rows=rows)

    def update(
        self,
        logp: Any,
        mask: Any,
        adv: Any,
        expert: Any = None,
        *,
        kl: Any = None,
        ref_logp: Any = None,
        scores: Any = None,
        expert_reward: Any = None,
        policy_reward: Any = None,
    ) -> Any:
        """``observe`` + ``step``: the mixing weight for this step's loss.

        All or nothing: if the step is refused (a bad ``kl``, a prior that
        raises...), the micro-batch observed here is forgotten again, so a
        retry does not count it twice.

        With ``compile_step="reduce-overhead"``, an update that is the whole
        step (nothing observed before it, no process group) replays its
        statistics and its closing step from one CUDA graph where the torch
        side can (``TorchSide.update_replay``).
        """
        replayed = self._replayed_update(
            logp,
            mask,
            adv,
            expert,
            ref_logp,
            scores,
            {"kl": kl, "expert_reward": expert_reward, "policy_reward": policy_reward},
        )
        if replayed is not None:
            return replayed
        pending, scored = self._pending, self._scored
        self.observe(logp, mask, adv, expert, ref_logp=ref_logp, scores=scores)
        try:
            return self.step(kl=kl, expert_reward=expert_reward, policy_reward=policy_reward)
        except BaseException:
            self._pending, self._scored = pending, scored
            raise

    def update_stats(
        self,
        stats: BatchStats[Any, Any] | None,
        *,
        kl: Any = None,
        expert_reward: Any = None,
        policy_reward: Any = None,
    ) -> Any:
        """A step from statistics computed elsewhere (``batch_stats`` of
        either backend); ``stats=None`` steps without statistics. With a
        ``process_group``, ``stats`` are used as given (they are not gathered)
        and ``kl`` and the rewards are averaged over the group."""
        observations = _check_observations(kl=kl, expert_reward=expert_reward, policy_reward=policy_reward)
        if stats is not None and not isinstance(stats, BatchStats):
            raise TypeError(f"stats must be a gaccore.BatchStats or None, got {type(stats).__name__}")
        if self._pending is not None:
            raise RuntimeError("update_stats: this step already has observed micro-batches; call step()")
        if stats is None:
            return self._finish_step(self._backend, self._device, observations)
        backend = backend_for(stats.var_sft)
        self._scored = _carries_rates(stats)
        try:
            return self._finish_step(backend, backend.device_of(stats.var_sft), observations, batch=stats)
        except BaseException:
            self._scored = False
            raise

    def _finish_step(
        self,
        backend: StatsBackend,
        device: Any,
        observations: dict[str, Any],
        *,
        rows: Any = None,
        batch: BatchStats[Any, Any] | None = None,
    ) -> Any:
        if self.process_group is not None:
            # SPEC: a caller's kl (and reward) is averaged over the group, so every
            # rank steers rho with the same observation.
            group_mean = torch_backend().mean_over_group
            observations = {
                name: None if value is None else group_mean(value, self.process_group, device)
                for name, value in observations.items()
            }
        prior_value = self._prior_value()
        state = self._state_on(backend, device)
        fused = self._fused_close_step(device, state, observations, prior_value, rows, batch)
        if fused is None:
            # Host values become state scalars here, outside close_step, so a
            # compiled close_step sees tensors whose values change, never new constants.
            placed = {
                name: None if value is None else backend.scalar(value, device) for name, value in observations.items()
            }
            placed_prior = None if prior_value is None else backend.scalar(prior_value, device)
            close = close_step if device is None or self._compiled_close is None else self._compiled_close
            new_state, batch = close(backend, device, state, self.config, placed, placed_prior, rows, batch)
            mu = backend.output(new_state.mu)
        else:
            new_state, batch, mu = fused
        self._commit(backend, device, new_state, batch, observations)
        return mu

    def _replayed_update(
        self,
        logp: Any,
        mask: Any,
        adv: Any,
        expert: Any,
        ref_logp: Any,
        scores: Any,
        observed: dict[str, Any],
    ) -> Any:
        """``update`` as one replay of the torch side's recording of the whole
        step (``compile_step="reduce-overhead"``); ``None`` where that does not
        apply, and ``observe`` + ``step`` run instead: several micro-batches,
        a process group, a host state, or steps the torch side declines."""
        replay = self._update_replay
        if replay is None or self._pending is not None or self.process_group is not None:
            return None
        backend = backend_for(logp)
        device = backend.device_of(logp)
        if backend is NUMPY_BACKEND or device is None:
            return None
        backend.check(logp, mask, adv, expert, ref_logp=ref_logp, sft_coef=self.config.sft_coef, scores=scores)
        has_rows = self.is_stats_step()
        if not replay.accepts(device, logp.shape[0] if has_rows else None):
            return None
        observations = _check_observations(**observed)
        prior_value = self._prior_value()
        state = self._state_on(backend, device)
        inputs = None
        if has_rows:
            inputs = {"logp": logp, "mask": mask, "adv": adv, "expert": expert, "ref_logp": ref_logp, "scores": scores}
        new_state, batch, mu = replay(device, state, self.config, inputs, observations, prior_value)
        self._scored |= scores is not None
        self._commit(backend, device, new_state, batch, observations)
        return mu

    def _commit(
        self,
        backend: StatsBackend,
        device: Any,
        state: ControllerState[Any],
        batch: BatchStats[Any, Any] | None,
        observations: dict[str, Any],
    ) -> None:
        """Take the step, once everything before it succeeded: a rejected call leaves no trace."""
        self._state, self._backend, self._device = state, backend, device
        self._pending = None
        self._last_batch = batch
        self._step += 1
        rates_given = None not in (observations["expert_reward"], observations["policy_reward"])
        self._count_rate_sources(self._scored or rates_given)
        self._scored = False

    def _fused_close_step(
        self,
        device: Any,
        state: ControllerState[Any],
        observations: dict[str, Any],
        prior_value: float | None,
        rows: Any,
        batch: BatchStats[Any, Any] | None,
    ) -> tuple[ControllerState[Any], BatchStats[Any, Any] | None, Any] | None:
        """The eager step of a state on a device in one kernel launch, where
        the torch side has one for it (``TorchSide.fused_close_step``):
        ``close_step`` launches some 300 tiny kernels. The new state, the
        placed batch and the ``mu`` to return; ``None`` for a host state,
        with ``compile_step``, or where the kernel does not apply."""
        if device is None or self._compiled_close is not None:
            return None
        if self._fused_close is None:
            self._fused_close = torch_backend().fused_close_step()
        return self._fused_close(device, state, self.config, observations, prior_value, rows, batch)

    def _count_rate_sources(self, had_rates: bool) -> None:
        """Warn once when ``mode="verified"`` goes ``verified_patience`` steps
        without a source of its two success rates: it then steers rho like no
        mode at all, and a user should not find that out from the results."""
        if self.config.mode != "verified":
            return
        self._steps_without_rates = 0 if had_rates else self._steps_without_rates + 1
        if self._steps_without_rates == self.config.verified_patience and not self._warned_without_rates:
            self._warned_without_rates = True
            warnings.warn(
                f"mode='verified' has had no verifier success rates for {self.config.verified_patience} steps, so "
                "rho stays where it is: pass scores=[B] (each row's verifier score) to observe/update, or "
                "expert_reward= and policy_reward= to step",
                RuntimeWarning,
                stacklevel=4,
            )

    def _prior_value(self) -> float | None:
        if self.prior is None:
            return None
        value = self.prior(self._step)
        if not isinstance(value, numbers.Real):
            raise TypeError(f"prior({self._step}) must return a real number, got {value!r}")
        return float(value)

    def _state_on(self, backend: StatsBackend, device: Any) -> ControllerState[Any]:
        if backend is self._backend and device == self._device:
            return self._state
        return ControllerState.place(self._state.to_host(self._backend), backend, device)

    # -- reading the state (may synchronize) ---------------------------------

    @property
    def mu(self) -> float:
        """The current mixing weight: weight the next micro-batches with it."""
        return float(self._backend.to_host(self._state.mu))

    @property
    def rho(self) -> float:
        return float(self._backend.to_host(self._state.rho))

    def mu_tensor(self, device: Any = None) -> Any:
        """The current ``mu`` as a 0-d float32 torch tensor on ``device``
        (default: where the state lives, the CPU for host state), without a
        host read: trainers weight their loss with it on the device. A state
        on the host is copied to ``device``; one on a device stays there."""
        return torch_backend().as_tensor(self._state.mu, device)

    def metrics(self) -> dict[str, float]:
        """Everything worth logging, as Python floats (NaN where undefined),
        read from the device in one transfer: the state, the last step's
        batch statistics as ``batch_<name>``, and ``demos_kept``, the share
        of that step's demonstrations the filter kept."""
        names = [f.name for f in fields(ControllerState)]
        values = [getattr(self._state, name) for name in names]
        batch_names = [] if self._last_batch is None else [f.name for f in fields(self._last_batch)]
        values += [getattr(self._last_batch, name) for name in batch_names]
        read = self._backend.to_host_all(values)  # the placed batch lives where the state does
        host = {name: bool(v) if ControllerState.is_flag(name) else v for name, v in zip(names, read, strict=False)}

        out: dict[str, float] = {"step": float(self._step)}
        for name in names:
            if ControllerState.is_flag(name):
                continue
            # An EMA (or the estimate) that nothing has initialized yet reads NaN.
            flag = f"has_{name.removeprefix('ema_')}"
            out[name] = float(host[name]) if host.get(flag, True) else math.nan
        for name, value in zip(batch_names, read[len(names) :], strict=True):
            out[f"batch_{name}"] = float(value)
        # The share of the last step's demonstrations that the filter kept.
        demos = out.get("batch_n_demos", 0.0)
        out["demos_kept"] = out["batch_n_sft"] / demos if demos > 0 else math.nan
        return out

    # -- persistence ---------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data (non-finite numbers as ``None``).

        It is taken between steps: micro-batches observed for a step that was
        not yet closed with ``step()`` are not included. The prior callable is
        not saved; pass it again to the controller that loads this.
        """
        host = self._state.to_host(self._backend)
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self._step,
            "config": self.config.to_dict(),
            "state": {k: json_number(v) for k, v in host.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], *, device: Any = None) -> None:
        """Restore from ``state_dict()``; refuse (changing nothing) a state of
        another format or version, with missing keys, or of another config.

        ``device=None`` keeps the state where this controller keeps its own;
        a torch device (or its name) places it there.
        """
        host, step = _parse_state(state, self.config)
        if device is None:
            backend, placement = self._backend, self._device
        else:
            backend = torch_backend()
            placement = backend.device_of_name(device)
        placed = ControllerState.place(host, backend, placement)
        self._state, self._backend, self._device = placed, backend, placement
        self._step = step
        self._pending = None
        self._scored = False
        self._last_batch = None


def _carries_rates(stats: BatchStats[Any, Any]) -> bool:
    """Whether statistics computed elsewhere bring the verifier's two rates:
    host values are checked; device tensors are taken to (reading them would
    synchronize), as a trainer that scores its rows passes them on."""
    rates = (stats.expert_reward, stats.policy_reward)
    if all(isinstance(rate, numbers.Real) for rate in rates):
        return all(math.isfinite(rate) for rate in rates)
    return True


def _check_observations(**observations: Any) -> dict[str, Any]:
    """The scalar observations of a step (``kl``, the rewards), each ``None``,
    a real number or a 0-d real array/tensor; checked before any collective,
    so a rejected call does not leave peers waiting."""
    for name, value in observations.items():
        if value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
            continue
        if getattr(value, "shape", None) == () and _is_real_dtype(value.dtype):
            continue
        raise TypeError(
            f"{name} must be a real number or a 0-d real array/tensor, got {type(value).__name__} "
            f"{getattr(value, 'dtype', '')}".rstrip()
        )
    return observations


def _is_real_dtype(dtype: Any) -> bool:
    """Integer or floating numpy/torch dtype (not bool, complex, string...)."""
    if isinstance(dtype, np.dtype):
        return dtype.kind in "iuf"
    return bool(getattr(dtype, "is_floating_point", False)) or str(dtype).startswith(("torch.int", "torch.uint"))


def _parse_state(state: Mapping[str, Any], config: Config) -> tuple[dict[str, float | bool], int]:
    step = check_envelope(state, STATE_FORMAT, STATE_VERSION)
    saved = state["config"]
    if not isinstance(saved, Mapping):
        raise ValueError(f"state dict config must be a dict, got {saved!r}")
    check_same_config(saved, config.to_dict(), "this controller")
    names = [f.name for f in fields(ControllerState)]
    flags = [name for name in names if ControllerState.is_flag(name)]
    host = parse_values(state["state"], names, flags)
    # A state the controller could have reached: finite, and inside the bounds it keeps.
    bounds = {
        "mu": (config.mu_min, config.mu_max),
        "rho": (config.rho_min, config.rho_max),
        "mu_bar": (0.0, 1.0),
        "estimate": (0.0, 1.0),
    }
    for name in names:
        value = host[name]
        if ControllerState.is_flag(name):
            continue
        low, high = bounds.get(name, (-FLOAT_MAX, FLOAT_MAX))
        if not low <= value <= high:  # NaN fails too
            raise ValueError(f"state dict 'state.{name}' must be a finite number in [{low}, {high}], got {value!r}")
    return host, step
