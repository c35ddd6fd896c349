"""The controller's state: every number it carries from one step to the next,
and its saved form.

``ControllerState`` is plain data, frozen: ``gaccore.step.advance`` makes the
next one from it, and ``Controller`` holds the current one. Its values are
scalars of the backend where the state lives (numpy float64/bool on the
host, 0-d torch tensors on a device). ``parse_state`` reads a saved state
back (``Controller.state_dict``'s ``"state"`` and ``"config"``), refusing
what the controller could not have written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from gaccore._array import FLOAT_MAX, Scalar
from gaccore.config import Config
from gaccore.persistence import check_envelope, check_same_config, json_number, parse_values
from gaccore.rows import BATCH_FIELDS, BatchStats

if TYPE_CHECKING:
    from gaccore.registry import StatsBackend

A = TypeVar("A", bound=Scalar)

STATE_FORMAT = "gaccore.Controller"
# 2: the verifier's success-rate EMAs (then ``ema_expert_reward``, ``ema_policy_reward``).
# 3: the KL's EMA is ``ema_kl``, named like every other EMA (was ``kl_ema``).
# 4: the success rates' EMAs are ``ema_expert_success``, ``ema_policy_success``,
#    and ``n_nonfinite_rows`` counts the rows dropped for a non-finite value (was ``n_dropped``).
STATE_VERSION = 4
OLDEST_STATE_VERSION = 1
# Config fields added after the first saved states, each with the value an
# older state's controller had in effect (the field did not exist yet).
ADDED_CONFIG_FIELDS: dict[str, Any] = {
    "mode": "paper",
    "filter_demos": None,
    "verified_patience": 20,
    "prior_from": "steps",
    "success_target": 0.5,
    "success_threshold": None,
}
# Settings a resumed run may change: they decide no number of the state or of
# mu, only when a warning comes and what the telemetry counts as a large shift.
RESUME_MAY_CHANGE = ("verified_patience", "large_shift")


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
    ema_expert_success: A
    ema_policy_success: A
    estimate: A  # the last defined clipped estimate mu^ (Eq. 12)
    has_disagreement: A
    has_var_sft: A
    has_var_rl: A
    has_kl: A
    has_expert_success: A
    has_policy_success: A
    has_estimate: A
    n_large_shifts: A
    kl_drift_area: A
    n_skipped_disagreement: A
    n_skipped_var_sft: A
    n_skipped_var_rl: A
    n_nonfinite_rows: A

    @staticmethod
    def is_flag(name: str) -> bool:
        return name.startswith("has_")

    @classmethod
    def initial(cls, config: Config) -> dict[str, float | bool]:
        """The starting state as host values."""
        host: dict[str, float | bool] = {name: False if cls.is_flag(name) else 0.0 for name in STATE_FIELDS}
        host.update(mu=config.mu_init, mu_bar=config.mu_init, rho=config.rho_init)
        return host

    @classmethod
    def place(cls, host: Mapping[str, float | bool], backend: StatsBackend, device: Any) -> ControllerState[Any]:
        return cls(
            **{
                name: backend.flag(bool(host[name]), device)
                if cls.is_flag(name)
                else backend.scalar(float(host[name]), device)
                for name in STATE_FIELDS
            }
        )

    def to_host(self, backend: StatsBackend) -> dict[str, float | bool]:
        """Every value on the host, read in one transfer."""
        values = backend.to_host_all([getattr(self, name) for name in STATE_FIELDS])
        return {
            name: bool(value) if self.is_flag(name) else value for name, value in zip(STATE_FIELDS, values, strict=True)
        }


STATE_FIELDS = tuple(f.name for f in fields(ControllerState))
# The numbers and the flags, each in the order of the fields: how buffers that
# hold a state (the close-step kernel's) lay it out.
STATE_FLOATS = tuple(name for name in STATE_FIELDS if not ControllerState.is_flag(name))
STATE_FLAGS = tuple(name for name in STATE_FIELDS if ControllerState.is_flag(name))


def read_metrics(
    side: StatsBackend, state: ControllerState[Any], batch: BatchStats[Any, Any] | None, step: int
) -> dict[str, float]:
    """``Controller.metrics()``: the state and the last step's ``batch`` (as
    ``batch_<name>``) as Python floats, read from where they live in one
    transfer; NaN for an EMA (or the estimate) that nothing has initialized
    yet, and ``demos_kept``, the share of the step's demonstrations the
    filter kept."""
    values = [getattr(state, name) for name in STATE_FIELDS]
    batch_values = {} if batch is None else {name: getattr(batch, name) for name in BATCH_FIELDS}
    read = side.to_host_all(values + list(batch_values.values()))
    host = dict(zip(STATE_FIELDS, read, strict=False))
    out: dict[str, float] = {"step": float(step)}
    for name in STATE_FLOATS:
        flag = f"has_{name.removeprefix('ema_')}"
        out[name] = float(host[name]) if bool(host.get(flag, True)) else math.nan
    out.update({f"batch_{name}": float(value) for name, value in zip(batch_values, read[len(values) :], strict=True)})
    demos = out.get("batch_n_demos", 0.0)
    out["demos_kept"] = out["batch_n_sft"] / demos if demos > 0 else math.nan
    return out


def saved_state(host: Mapping[str, float | bool], step: int, config: Config) -> dict[str, Any]:
    """``Controller.state_dict()``: plain, JSON-ready data (non-finite numbers as ``None``)."""
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "step": step,
        "config": config.to_dict(),
        "state": {name: json_number(value) for name, value in host.items()},
    }


def parse_state(saved: Mapping[str, Any], config: Config) -> tuple[dict[str, float | bool], int]:
    """The host values and the step of a ``Controller.state_dict()`` of this
    or an earlier version (migrated, ``MIGRATIONS``), made under ``config``
    (up to ``RESUME_MAY_CHANGE``); refuses, with an error naming what
    differs, another format, a newer version, missing keys, another config,
    and a state the controller could not have reached."""
    step = check_envelope(saved, STATE_FORMAT, STATE_VERSION, oldest=OLDEST_STATE_VERSION)
    for name in ("config", "state"):
        if not isinstance(saved[name], Mapping):
            raise ValueError(f"state dict {name} must be a dict, got {saved[name]!r}")
    for version in range(saved["version"], STATE_VERSION):
        saved = MIGRATIONS[version](saved)
    saved_config = {**ADDED_CONFIG_FIELDS, **saved["config"]}
    check_same_config(saved_config, config.to_dict(), "this controller", may_differ=RESUME_MAY_CHANGE)
    host = parse_values(saved["state"], STATE_FIELDS, STATE_FLAGS)
    # A state the controller could have reached: finite, and inside the bounds it keeps.
    bounds = {
        "mu": (config.mu_min, config.mu_max),
        "rho": (config.rho_min, config.rho_max),
        "mu_bar": (0.0, 1.0),
        "estimate": (0.0, 1.0),
    }
    for name in STATE_FLOATS:
        value = host[name]
        low, high = bounds.get(name, (-FLOAT_MAX, FLOAT_MAX))
        if not low <= value <= high:  # NaN fails too
            raise ValueError(f"state dict 'state.{name}' must be a finite number in [{low}, {high}], got {value!r}")
    return host, step


# -- earlier versions: each function makes the next version's state dict ---------


def _renamed(values: Mapping[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    return {renames.get(name, name): value for name, value in values.items()}


def _from_v1(saved: Mapping[str, Any]) -> dict[str, Any]:
    """2 added the verifier's two success-rate EMAs: a version-1 state has
    none yet (not initialized, as a fresh controller's)."""
    unset = {"ema_expert_reward": 0.0, "ema_policy_reward": 0.0, "has_expert_reward": False, "has_policy_reward": False}
    return {**saved, "version": 2, "state": {**saved["state"], **unset}}


def _from_v2(saved: Mapping[str, Any]) -> dict[str, Any]:
    return {**saved, "version": 3, "state": _renamed(saved["state"], {"kl_ema": "ema_kl"})}


def _from_v3(saved: Mapping[str, Any]) -> dict[str, Any]:
    renames = {
        "ema_expert_reward": "ema_expert_success",
        "ema_policy_reward": "ema_policy_success",
        "has_expert_reward": "has_expert_success",
        "has_policy_reward": "has_policy_success",
        "n_dropped": "n_nonfinite_rows",
    }
    return {**saved, "version": 4, "state": _renamed(saved["state"], renames)}


MIGRATIONS = {1: _from_v1, 2: _from_v2, 3: _from_v3}
