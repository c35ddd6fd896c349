"""Checks shared by every ``load_state_dict`` in gaccore (the Controller and
the baseline rules): the envelope, the config, and the saved numbers.

Each check raises ValueError naming what differs and changes nothing, so a
caller that runs them all before assigning anything leaves its object
untouched by a refused state.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping
from typing import Any

ENVELOPE_KEYS = ("format", "version", "step", "config", "state")


def check_envelope(state: object, expected_format: str, version: int, *, oldest: int | None = None) -> int:
    """Validate format, version and keys of a state dict; return its step.

    ``version`` is the one this gaccore writes; ``oldest`` the oldest it
    reads (default: ``version`` alone). A newer version is refused with an
    error naming both: it was written by a newer gaccore."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
    missing = sorted(set(ENVELOPE_KEYS) - set(state))
    if missing:
        raise ValueError(f"state dict is missing keys: {missing}")
    if state["format"] != expected_format:
        raise ValueError(f"state dict format is {state['format']!r}, expected {expected_format!r}")
    saved, oldest = state["version"], version if oldest is None else oldest
    readable = f"version {version}" if oldest == version else f"versions {oldest} to {version}"
    if isinstance(saved, int) and not isinstance(saved, bool) and saved > version:
        raise ValueError(
            f"state dict version {saved} was written by a newer gaccore; this gaccore reads {readable}: "
            "upgrade gaccore to resume from it"
        )
    if isinstance(saved, bool) or not isinstance(saved, int) or not oldest <= saved <= version:
        raise ValueError(f"state dict version is {saved!r}; this gaccore reads {readable}")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"state dict step must be an integer >= 0, got {step!r}")
    return step


def check_same_config(
    saved: Mapping[str, Any], ours: Mapping[str, Any], owner: str, *, may_differ: Collection[str] = ()
) -> None:
    """Refuse a state made under another configuration, naming each field
    (but those in ``may_differ``)."""
    differs = sorted(set(ours) ^ set(saved) | {k for k in set(ours) & set(saved) if ours[k] != saved[k]})
    differs = [k for k in differs if k not in may_differ]
    if differs:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r}, {owner} {ours.get(k)!r}" for k in differs)
        raise ValueError(f"state dict was made under a different config ({detail})")


def parse_values(values: object, names: Collection[str], flags: Collection[str] = ()) -> dict[str, float | bool]:
    """The saved numbers (``None`` read as NaN) and flags, exactly ``names``."""
    if not isinstance(values, Mapping):
        raise ValueError(f"state dict 'state' must be a dict, got {values!r}")
    missing = sorted(set(names) - set(values))
    if missing:
        raise ValueError(f"state dict 'state' is missing keys: {missing}")
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"state dict 'state' has unknown keys: {unknown}")
    parsed: dict[str, float | bool] = {}
    for name in names:
        value = values[name]
        if name in flags:
            if not isinstance(value, bool):
                raise ValueError(f"state dict 'state.{name}' must be a bool, got {value!r}")
            parsed[name] = value
        elif value is None:
            parsed[name] = math.nan
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            parsed[name] = float(value)
        else:
            raise ValueError(f"state dict 'state.{name}' must be a number or null, got {value!r}")
    return parsed


def json_number(value: float | bool) -> float | bool | None:
    """A value for JSON: non-finite floats as ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
