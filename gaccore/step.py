"""One optimizer step of the controller as pure functions: SPEC.md §3 (Eq. 11-13, 16).

``advance`` is the whole per-step arithmetic, written once with plain
operators and the ``where``/``clip`` shim: the same code runs on numpy
float64 scalars and on 0-d torch tensors on any device, branch-free, so the
torch path never synchronizes. ``close_step`` is everything a step does once
its row results are complete: finalize them, place the proxies where the
state lives, ``advance``. Like optax's ``update`` functions, neither keeps
anything: ``gaccore.Controller`` holds the state and passes it in.

How a step runs is a ``StepRunner`` (``gaccore.registry``): ``PlainRunner``
here calls ``close_step`` as written; the torch side has runners that run
the same arithmetic compiled or fused into one kernel
(``gaccore.kernels.runners``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from gaccore._array import FLOAT_MAX, Scalar, absolute, clip, isfinite, quiet, where
from gaccore.closed_form import mu_star
from gaccore.config import Config
from gaccore.rows import BATCH_FIELDS, BatchStats
from gaccore.state import ControllerState

if TYPE_CHECKING:
    from gaccore.batch import TokenBatch
    from gaccore.registry import StatsBackend

A = TypeVar("A", bound=Scalar)

# Below this share of failures left to the policy, the expert's advantage is 0/0: treated as none.
MIN_FAILURE_RATE = 1e-6
# A step's scalar observations: each None, a real number or a 0-d array/tensor.
OBSERVATIONS = ("kl", "expert_success", "policy_success")
# What a step returns: the new state, the step's batch statistics as state
# scalars (None on a step without statistics), and the mu that update returns.
Closed = tuple[ControllerState[Any], BatchStats[Any, Any] | None, Any]


def fold(ema: A, has: A, value: A, beta: float) -> tuple[A, A, A]:
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


def verified_rho(expert_success: A, policy_success: A, config: Config) -> A:
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
    failures = clip(1.0 - policy_success, MIN_FAILURE_RATE, FLOAT_MAX)
    advantage = clip((expert_success - policy_success) / failures, 0.0, 1.0)
    return clip(advantage, config.rho_min, config.rho_max)


def success_prior(policy_success: A, has_policy_success: A, config: Config) -> A:
    """The prior of ``prior_from="success"``: ``mu_peak`` while the rollouts
    fail, ``mu_valley`` once their success rate's EMA reaches
    ``success_target``, a smoothstep between (``3 x^2 - 2 x^3`` of the rate
    over the target), and ``mu_peak`` before any rate is known. The
    warmup-cosine's shape with the policy's progress in place of the step:
    imitate while the rollouts give GRPO nothing to learn from, hand over
    to RL as they start to succeed, whatever the run's length."""
    progress = clip(policy_success / config.success_target, 0.0, 1.0)
    handed_over = progress * progress * (3.0 - 2.0 * progress)
    value = config.mu_peak - (config.mu_peak - config.mu_valley) * handed_over
    return where(has_policy_success, value, config.mu_peak)


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
    expert_success: A | None = None,
    policy_success: A | None = None,
) -> ControllerState[A]:
    """One optimizer step of the controller (SPEC.md §3, steps 1-7, without ``t += 1``).

    ``batch`` holds this step's proxies as state scalars (``None`` on steps
    without statistics), ``kl`` the caller's KL observation, ``prior_value``
    the prior at this step as a state scalar (``None`` or non-finite: no
    blend), and ``expert_success``/``policy_success`` the step's verifier
    success rates of the demonstrations and of the rollouts, where finite,
    else the batch's rates from its per-row scores (folded into EMAs in
    every mode; they steer rho in ``mode="verified"``). Branch-free in the
    values (only ``None`` picks a branch), so ``torch.compile`` traces it into
    one graph per combination of ``None``s.
    """
    with quiet(state.mu):  # NaN/inf are data here, masked below
        return _advance_steps(state, config, batch, kl, prior_value, expert_success, policy_success)


def _advance_steps(
    state: ControllerState[A],
    config: Config,
    batch: BatchStats[A, A] | None,
    kl: A | None,
    prior_value: A | None,
    expert_success: A | None,
    policy_success: A | None,
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
            ema, has, finite = fold(s[f"ema_{name}"], s[f"has_{name}"], value, config.stat_beta)
            s[f"ema_{name}"], s[f"has_{name}"] = ema, has
            s[f"n_skipped_{name}"] = s[f"n_skipped_{name}"] + where(finite, 0.0, 1.0)
        s["n_nonfinite_rows"] = clip(s["n_nonfinite_rows"] + batch.n_nonfinite_rows, 0.0, FLOAT_MAX)

    # 2. KL-controlled rho: the caller's kl when finite, else the batch's.
    observation = kl
    if batch is not None:
        observation = batch.kl if kl is None else where(isfinite(kl), kl, batch.kl)
    if observation is not None:
        ema_kl, has_kl, observed = fold(s["ema_kl"], s["has_kl"], observation, config.kl_beta)
        excess = clip(where(observed, observation, 0.0) - config.kl_target, 0.0, FLOAT_MAX)
        s["ema_kl"], s["has_kl"] = ema_kl, has_kl
        s["rho"] = rho_step(s["rho"], ema_kl, observed, config)
        s["kl_drift_area"] = clip(s["kl_drift_area"] + where(observed, excess, 0.0), 0.0, FLOAT_MAX)

    # 2b. The verifier's success rates (the caller's when finite, else the batch's
    # from its scores); in mode "verified" they set rho once both are known.
    for name, reward in (("expert_success", expert_success), ("policy_success", policy_success)):
        if batch is not None:
            measured = getattr(batch, name)
            reward = measured if reward is None else where(isfinite(reward), reward, measured)
        if reward is not None:
            s[f"ema_{name}"], s[f"has_{name}"], _ = fold(s[f"ema_{name}"], s[f"has_{name}"], reward, config.stat_beta)
    if config.mode == "verified":
        verified = s["has_expert_success"] & s["has_policy_success"]
        rho = verified_rho(s["ema_expert_success"], s["ema_policy_success"], config)
        s["rho"] = where(verified, rho, s["rho"])

    # 3. Estimate (Eq. 12, with Eq. 3).
    ready = s["has_disagreement"] & s["has_var_sft"] & s["has_var_rl"]
    raw = mu_star(kD * s["ema_disagreement"], kS * s["ema_var_sft"], kR * s["ema_var_rl"], s["rho"])
    defined = ready & isfinite(raw)
    estimate = clip(where(defined, raw, 0.0), 0.0, 1.0)

    # 4. EMA of the estimate; 5. prior blend; 6. cap (Eq. 13).
    if config.prior_from == "success":
        prior_value = success_prior(s["ema_policy_success"], s["has_policy_success"], config)
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
    ``advance`` with the step's observations (``kl``, ``expert_success``,
    ``policy_success`` as state scalars or ``None``). The whole device-side
    update, and what a compiling runner hands to ``torch.compile``; returns the
    new state and the placed batch (detached state scalars, never the
    caller's tensors)."""
    if rows is not None:
        batch = backend.finalize(
            rows, trim=config.trim, filter_demos=config.filter_demos, success_threshold=config.success_threshold
        )
    placed = None
    if batch is not None:
        placed = BatchStats(**{name: backend.scalar(getattr(batch, name), device) for name in BATCH_FIELDS})
    new_state = advance(
        state,
        config,
        placed,
        observations["kl"],
        prior_value,
        expert_success=observations["expert_success"],
        policy_success=observations["policy_success"],
    )
    return new_state, placed


def place_and_close(
    backend: StatsBackend,
    device: Any,
    state: ControllerState[Any],
    config: Config,
    observations: dict[str, Any],
    prior_value: float | None,
    rows: Any = None,
    batch: BatchStats[Any, Any] | None = None,
    *,
    close: Any = close_step,
) -> Closed:
    """``close`` (``close_step`` or a compiled copy of it) with the caller's
    observations and prior placed as state scalars first, outside it, so a
    compiled ``close`` sees tensors whose values change, never new constants."""
    placed = {name: None if value is None else backend.scalar(value, device) for name, value in observations.items()}
    placed_prior = None if prior_value is None else backend.scalar(prior_value, device)
    new_state, placed_batch = close(backend, device, state, config, placed, placed_prior, rows, batch)
    return new_state, placed_batch, backend.output(new_state.mu)


class PlainRunner:
    """Runs ``close_step`` as written, wherever the state lives: how every
    step runs on numpy, and on torch where nothing faster applies."""

    def step(
        self,
        backend: StatsBackend,
        device: Any,
        state: ControllerState[Any],
        config: Config,
        observations: dict[str, Any],
        prior_value: float | None,
        rows: Any = None,
        batch: BatchStats[Any, Any] | None = None,
    ) -> Closed:
        return place_and_close(backend, device, state, config, observations, prior_value, rows, batch)

    def replays(self, device: Any, rows: int | None) -> bool:
        """Never: the controller observes, then steps."""
        return False

    def update(
        self,
        backend: StatsBackend,
        device: Any,
        state: ControllerState[Any],
        config: Config,
        batch: TokenBatch[Any] | None,
        observations: dict[str, Any],
        prior_value: float | None,
    ) -> Closed:
        raise NotImplementedError("PlainRunner replays nothing: observe, then step")
