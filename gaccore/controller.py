"""The GAC controller: the public API over the pure step of ``gaccore.step``.

``Controller`` holds the only state there is: the step counter (a host
integer), the ``ControllerState`` of SPEC.md §3, and the row results of the
step's micro-batches observed so far. It checks what callers pass, once,
and hands the arithmetic to the step's runner, as ``torch.optim.Adam.step``
hands it to a functional ``adam``: the backend of the inputs' array library
(``gaccore.registry``) computes the statistics and makes the runner, which
``compile_step`` selects when the controller is built.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gaccore.batch import TokenBatch
from gaccore.config import Config
from gaccore.registry import StatsBackend, StepRunner, backend, backend_for, checked
from gaccore.rows import BatchStats
from gaccore.state import ControllerState, parse_state, read_metrics, saved_state
from gaccore.step import Closed, success_prior
from gaccore.verifier import RatesWatch, check_success_scores

Prior = Callable[[int], float]
_PRIOR_FROM_CONFIG: Any = object()


class Controller:
    """Noise-aware SFT/RL mixing weight, one ``update`` per optimizer step.

    ``overrides`` replace fields of ``config`` (validated). ``prior``
    defaults to ``config.schedule_prior()``; any callable ``step -> mu``
    replaces it and ``None`` disables the blend. Without a KL source (``kl=``
    or ``ref_logp=``) rho stays at ``rho_init``. On a step whose ``observe``
    was never called, no statistics are folded.

    numpy inputs return Python floats; torch inputs return a 0-d float32
    tensor on their device, computed without host-device synchronization (the
    state moves to the device of the inputs on first use; CPU tensors keep it
    in host scalars). ``compile_step`` says how the torch side runs a step
    whose state lives on a device: ``False`` eagerly, ``True`` through
    ``torch.compile``, ``"reduce-overhead"`` replayed from recordings
    (``gaccore.kernels.runners``): the same arithmetic.
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
        config = _resolve_config(config, overrides)
        prior = _resolve_prior(prior, config)
        if compile_step is not False and compile_step is not True and compile_step != "reduce-overhead":
            raise TypeError(f'compile_step must be False, True or "reduce-overhead", got {compile_step!r}')
        self.config, self.prior, self.process_group = config, prior, process_group
        self._compile_step = compile_step
        self._runners: dict[str, StepRunner] = {}  # one per array library, made by its backend
        if compile_step is not False:
            self._runner(backend("torch"))  # compiling is torch's: imported now, not mid-run
        self._step, self._observed = 0, _Observed()
        self._side, self._device = backend("numpy"), None  # where the state lives: a backend and its device
        self._state: ControllerState[Any] = ControllerState.place(ControllerState.initial(config), self._side, None)
        self._last_batch: BatchStats[Any, Any] | None = None
        self._rates_watch = RatesWatch(config)

    # -- the per-step API ----------------------------------------------------

    @property
    def step_count(self) -> int:
        """Optimizer steps taken so far (the ``t`` of the next step)."""
        return self._step

    def is_stats_step(self) -> bool:
        return self._step % self.config.update_every == 0

    def observe(
        self, logp: Any, mask: Any, adv: Any, expert: Any = None, *, ref_logp: Any = None, scores: Any = None
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
        batch = TokenBatch(logp, mask, adv, expert, ref_logp, scores)
        self._observe(_checked(batch, self.config, first_step=self._step == 0), batch)

    def step(self, *, kl: Any = None, expert_success: Any = None, policy_success: Any = None) -> Any:
        """Close the optimizer step: fold statistics, update rho and mu.

        ``expert_success``/``policy_success``: this step's verifier success
        rates (in [0, 1]) of the expert's demonstrations and of the policy's
        rollouts, when the reward function can score both; ``mode="verified"``
        steers rho with them, every mode reports their EMAs.

        With a ``process_group``, the step's row results are gathered from
        every rank (in rank order) and ``kl`` and the rewards are averaged
        over the group, so every rank computes the same ``mu``; every rank
        must call ``step``.
        """
        observations = _check_observations(kl=kl, expert_success=expert_success, policy_success=policy_success)
        observed = self._observed
        if observed.side is None:
            return self._close(self._side, self._device, observations)
        rows = observed.rows if self.process_group is None else observed.side.reduce(observed.rows, self.process_group)
        return self._close(observed.side, observed.device, observations, rows=rows)

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
        expert_success: Any = None,
        policy_success: Any = None,
    ) -> Any:
        """``observe`` + ``step``: the mixing weight for this step's loss.

        All or nothing: if the step is refused (a bad ``kl``, a prior that
        raises...), the micro-batch observed here is forgotten again, so a
        retry does not count it twice. An update that is the whole step
        (nothing observed before it, no process group) runs in one go where
        the step's runner can (``StepRunner.update``).
        """
        batch = TokenBatch(logp, mask, adv, expert, ref_logp, scores)
        side = _checked(batch, self.config, first_step=self._step == 0)
        observations = _check_observations(kl=kl, expert_success=expert_success, policy_success=policy_success)
        runner, device = self._runner(side), side.device_of(logp)
        rows = batch.rows if self.is_stats_step() else None
        if self._observed.side is None and self.process_group is None and runner.replays(device, rows):
            state, prior_value = self._state_on(side, device), _prior_at(self.prior, self._step)
            closed = runner.update(
                side, device, state, self.config, batch if rows is not None else None, observations, prior_value
            )
            return self._take(side, device, closed, observations, scored=scores is not None)
        observed = self._observed
        self._observe(side, batch)
        try:
            return self.step(**observations)
        except BaseException:
            self._observed = observed
            raise

    def update_stats(
        self,
        stats: BatchStats[Any, Any] | None,
        *,
        kl: Any = None,
        expert_success: Any = None,
        policy_success: Any = None,
    ) -> Any:
        """A step from statistics computed elsewhere (``gaccore.batch_stats``);
        ``stats=None`` steps without statistics. With a ``process_group``,
        ``stats`` are used as given (they are not gathered) and ``kl`` and
        the rewards are averaged over the group."""
        observations = _check_observations(kl=kl, expert_success=expert_success, policy_success=policy_success)
        if stats is not None and not isinstance(stats, BatchStats):
            raise TypeError(f"stats must be a gaccore.BatchStats or None, got {type(stats).__name__}")
        if self._observed.side is not None:
            raise RuntimeError("update_stats: this step already has observed micro-batches; call step()")
        if stats is None:
            return self._close(self._side, self._device, observations)
        side = backend_for(stats.var_sft)
        device = side.device_of(stats.var_sft)
        return self._close(side, device, observations, batch=stats, scored=_carries_rates(stats))

    def _observe(self, side: StatsBackend, batch: TokenBatch[Any]) -> None:
        rows = side.row_results(batch, self.config.sft_coef) if self.is_stats_step() else None
        self._observed = self._observed.add(side, rows, side.device_of(batch.logp), batch.scores is not None)

    def _close(
        self,
        side: StatsBackend,
        device: Any,
        observations: dict[str, Any],
        *,
        rows: Any = None,
        batch: BatchStats[Any, Any] | None = None,
        scored: bool = False,
    ) -> Any:
        if self.process_group is not None:
            # SPEC: a caller's kl (and rates) are averaged over the group, so every
            # rank steers rho with the same observation.
            group = self.process_group
            observations = {
                k: v if v is None else side.mean_over_group(v, group, device) for k, v in observations.items()
            }
        state, prior_value = self._state_on(side, device), _prior_at(self.prior, self._step)
        closed = self._runner(side).step(side, device, state, self.config, observations, prior_value, rows, batch)
        return self._take(side, device, closed, observations, scored=scored)

    def _take(
        self, side: StatsBackend, device: Any, closed: Closed, observations: dict[str, Any], *, scored: bool
    ) -> Any:
        """Take the step, once everything before it succeeded: a rejected call leaves no trace."""
        self._state, self._last_batch, mu = closed
        self._side, self._device = side, device
        self._step += 1
        rates_given = observations["expert_success"] is not None and observations["policy_success"] is not None
        self._rates_watch.count(self._observed.scored or scored or rates_given)
        self._observed = _Observed()
        return mu

    def _runner(self, side: StatsBackend) -> StepRunner:
        if side.name not in self._runners:
            self._runners[side.name] = side.runner(self._compile_step)
        return self._runners[side.name]

    def _state_on(self, side: StatsBackend, device: Any) -> ControllerState[Any]:
        if side is self._side and device == self._device:
            return self._state
        return ControllerState.place(self._state.to_host(self._side), side, device)

    # -- reading the state (may synchronize) ---------------------------------

    @property
    def mu(self) -> float:
        """The current mixing weight: weight the next micro-batches with it."""
        return float(self._side.to_host(self._state.mu))

    @property
    def rho(self) -> float:
        return float(self._side.to_host(self._state.rho))

    def mu_tensor(self, device: Any = None) -> Any:
        """The current ``mu`` as a 0-d float32 torch tensor on ``device``
        (default: where the state lives, the CPU for host state), without a
        host read: trainers weight their loss with it on the device. A state
        on the host is copied to ``device``; one on a device stays there."""
        return backend("torch").as_tensor(self._state.mu, device)

    def metrics(self) -> dict[str, float]:
        """Everything worth logging, as Python floats (NaN where undefined),
        read from the device in one transfer: the state, the last step's
        batch statistics as ``batch_<name>``, ``demos_kept``, the share of
        that step's demonstrations the filter kept, and ``prior``, the value
        the last step blended toward (NaN without one)."""
        read = read_metrics(self._side, self._state, self._last_batch, self._step)
        return {**read, "prior": _last_prior(self.prior, self.config, self._step, read)}

    # -- persistence ---------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data (non-finite numbers as ``None``).

        It is taken between steps: micro-batches observed for a step that was
        not yet closed with ``step()`` are not included. The prior callable is
        not saved; pass it again to the controller that loads this.
        """
        return saved_state(self._state.to_host(self._side), self._step, self.config)

    def load_state_dict(self, state: Mapping[str, Any], *, device: Any = None) -> None:
        """Restore from ``state_dict()``; refuse (changing nothing) a state of
        another format or version, with missing keys, or of another config.

        ``device=None`` keeps the state where this controller keeps its own;
        a torch device (or its name) places it there.
        """
        host, step = parse_state(state, self.config)
        side = self._side if device is None else backend("torch")
        placement = self._device if device is None else side.placement(device)
        self._state, self._side, self._device = ControllerState.place(host, side, placement), side, placement
        self._step, self._observed, self._last_batch = step, _Observed(), None


@dataclass(frozen=True)
class _Observed:
    """What the step being observed has seen: the merged row results of its
    micro-batches (``side`` is ``None`` until one computed rows: steps without
    statistics compute none), and whether any of them carried scores."""

    side: StatsBackend | None = None
    rows: Any = None
    device: Any = None
    scored: bool = False

    def add(self, side: StatsBackend, rows: Any, device: Any, scored: bool) -> _Observed:
        scored = self.scored or scored
        if rows is None:
            return replace(self, scored=scored)
        if self.side is None:
            return _Observed(side, rows, device, scored)
        if self.side is not side:
            raise TypeError(
                "logp: all micro-batches of one step must be of one kind "
                f"(this step started with {self.side.name} arrays, got {side.name})"
            )
        return _Observed(side, side.merge(self.rows, rows), device, scored)


def _resolve_config(config: Config | None, overrides: dict[str, Any]) -> Config:
    """``config`` (default: ``Config()``) with ``overrides`` of its fields, validated."""
    config = config if config is not None else Config()
    if not isinstance(config, Config):
        raise TypeError(f"config must be a gaccore.Config, got {type(config).__name__}")
    if not overrides:
        return config
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise TypeError(f"unknown Config fields in overrides: {unknown}")
    return dataclasses.replace(config, **overrides)


def _resolve_prior(prior: Any, config: Config) -> Prior | None:
    """The prior callable: ``config``'s schedule by default (none with
    ``prior_from="success"``, whose prior the step computes itself)."""
    if prior is _PRIOR_FROM_CONFIG:
        return config.schedule_prior()
    if prior is not None and config.prior_from == "success":
        raise TypeError("prior: prior_from='success' computes the prior from the success rate; pass no prior callable")
    if prior is not None and not callable(prior):
        raise TypeError(f"prior must be a callable step -> mu or None, got {prior!r}")
    return prior  # type: ignore[no-any-return]


def _checked(batch: TokenBatch[Any], config: Config, *, first_step: bool) -> StatsBackend:
    """The backend of ``batch``, once it and the verifier's scores in it are checked."""
    side = checked(batch)
    check_success_scores(batch.scores, config, first_step=first_step)
    return side


def _prior_at(prior: Prior | None, step: int) -> float | None:
    value = None if prior is None else prior(step)
    if value is not None and not isinstance(value, numbers.Real):
        raise TypeError(f"prior({step}) must return a real number, got {value!r}")
    return None if value is None else float(value)


def _last_prior(prior: Prior | None, config: Config, step: int, read: dict[str, float]) -> float:
    """The prior the last step blended toward: the callable's at that step, or
    with ``prior_from="success"`` the success prior of the rate it read."""
    if step == 0:
        return math.nan
    if config.prior_from == "success":
        rate = read["ema_policy_success"]
        known = not math.isnan(rate)
        return float(success_prior(np.float64(rate if known else 0.0), np.bool_(known), config))
    value = _prior_at(prior, step - 1)
    return math.nan if value is None else value


def _carries_rates(stats: BatchStats[Any, Any]) -> bool:
    """Whether statistics computed elsewhere bring the verifier's two rates:
    host values are checked; device tensors are taken to (reading them would
    synchronize), as a trainer that scores its rows passes them on."""
    rates = (stats.expert_success, stats.policy_success)
    if all(isinstance(rate, numbers.Real) for rate in rates):
        return all(math.isfinite(rate) for rate in rates)
    return True


def _check_observations(**observations: Any) -> dict[str, Any]:
    """The scalar observations of a step (``kl``, the rates), each ``None``,
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
