"""The few array functions the shared arithmetic needs, for numpy and torch alike.

The closed forms and the controller's update are written once with plain
operators plus ``where``/``clip``/``isfinite`` from here, so the same code runs
on Python floats, numpy arrays and 0-d torch tensors on any device. torch is
never imported here: a torch tensor is recognised by its type's module and its
own functions are looked up lazily, which keeps ``import gaccore`` numpy-only.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, Protocol

import numpy as np


class Scalar(Protocol):
    """What the shared arithmetic needs of a value: a numpy float64/bool
    scalar or a 0-d torch tensor (operators return the same kind)."""

    def __add__(self, other: Any, /) -> Any: ...
    def __radd__(self, other: Any, /) -> Any: ...
    def __sub__(self, other: Any, /) -> Any: ...
    def __rsub__(self, other: Any, /) -> Any: ...
    def __mul__(self, other: Any, /) -> Any: ...
    def __rmul__(self, other: Any, /) -> Any: ...
    def __truediv__(self, other: Any, /) -> Any: ...
    def __and__(self, other: Any, /) -> Any: ...
    def __rand__(self, other: Any, /) -> Any: ...
    def __or__(self, other: Any, /) -> Any: ...
    def __lt__(self, other: Any, /) -> Any: ...
    def __gt__(self, other: Any, /) -> Any: ...


FLOAT_MAX = float(np.finfo(np.float64).max)


# Whether a type is torch's, by type: the shared arithmetic asks this of
# every operand, and the string test below costs more than the arithmetic
# on host scalars. Few distinct types ever reach it.
_TORCH_TYPES: dict[type, bool] = {}


def is_torch(value: object) -> bool:
    """True for a torch.Tensor, without importing torch."""
    kind = type(value)
    known = _TORCH_TYPES.get(kind)
    if known is None:
        known = _TORCH_TYPES[kind] = kind.__module__.partition(".")[0] == "torch"
    return known


def torch_module() -> Any:
    """The torch module, already imported by whoever made the tensor at hand."""
    return sys.modules["torch"]


def _any_torch(*values: object) -> bool:
    for value in values:
        if is_torch(value):
            return True
    return False


# Host scalars take plain Python paths: a numpy ufunc call on a 0-d value
# costs about a microsecond, ten times the arithmetic, and the controller's
# step is a hundred such calls.
_HOST_FLAGS = (bool, np.bool_)
_HOST_NUMBERS = (float, int, np.floating, np.integer)


def _is_host_number(x: Any) -> bool:
    return isinstance(x, _HOST_NUMBERS) and type(x) is not bool


def where(cond: Any, a: Any, b: Any) -> Any:
    """Elementwise ``a if cond else b``; both branches are evaluated."""
    if type(cond) in _HOST_FLAGS and _is_host_number(a) and _is_host_number(b):
        return np.float64(a if cond else b)
    if _any_torch(cond, a, b):
        return torch_module().where(cond, a, b)
    return np.where(cond, a, b)


def clip(x: Any, lo: float, hi: float) -> Any:
    """Clamp to [lo, hi]; NaN stays NaN, so callers clear it first."""
    if isinstance(x, _HOST_NUMBERS):
        return np.float64(min(max(x, lo), hi))  # max/min keep a NaN first argument
    if is_torch(x):
        return torch_module().clamp(x, min=lo, max=hi)
    return np.clip(x, lo, hi)


def isfinite(x: Any) -> Any:
    if isinstance(x, _HOST_NUMBERS):
        return np.bool_(math.isfinite(x))
    if is_torch(x):
        return torch_module().isfinite(x)
    return np.isfinite(x)


def absolute(x: Any) -> Any:
    if isinstance(x, _HOST_NUMBERS):
        return np.float64(abs(x))
    if is_torch(x):
        return torch_module().abs(x)
    return np.abs(x)


def expm1(x: Any) -> Any:
    if is_torch(x):
        return torch_module().expm1(x)
    return np.expm1(x)


def quiet(*values: Any) -> Any:
    """A context that silences numpy's floating-point warnings for host
    values (NaN and inf are data here, masked by the caller); a no-op for
    torch tensors, which never warn, so ``torch.compile`` traces through it."""
    if _any_torch(*values):
        return contextlib.nullcontext()
    return np.errstate(all="ignore")


def as_float64(*values: Any) -> tuple[Any, ...]:
    """Numbers and numpy arrays as float64 arrays; torch tensors unchanged.

    Doing arithmetic in numpy float64 (not Python floats) makes division by
    zero and overflow produce inf/NaN, which the callers then mask, instead
    of raising ZeroDivisionError.
    """
    if _any_torch(*values):
        return values
    return tuple(np.asarray(v, dtype=np.float64) for v in values)


def to_python(value: Any) -> Any:
    """A 0-d numpy result as a Python float; arrays and tensors unchanged."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return float(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
