"""Where statistics are computed and where the controller's numbers live, declared as data.

``IMPLEMENTATIONS`` lists every way to reduce a token batch to its row
results: its name, the array library it reads, the device types ``"auto"``
picks it for and those it runs on when named, the module that holds it (each
defines ``row_results(batch, sft_coef)`` for a checked ``TokenBatch``) and
the optional package it needs. ``choose`` picks one for a batch, and says
clearly why a named one cannot run. ``BACKENDS`` names, per array library,
the module of its ``StatsBackend``: what the controller uses to check,
merge, reduce and finalize rows and to hold its state in that library's
scalars. Modules are imported on first use, by name, so ``import gaccore``
imports numpy and nothing else, and the core never imports the torch side.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gaccore._array import is_torch

if TYPE_CHECKING:
    from gaccore.batch import TokenBatch
    from gaccore.config import Config
    from gaccore.rows import BatchStats
    from gaccore.state import ControllerState
    from gaccore.step import Closed

ANY_DEVICE = "*"


@dataclass(frozen=True)
class Implementation:
    """One way to compute row results."""

    name: str
    library: str  # the array library of its inputs: "numpy" or "torch"
    module: str  # defines row_results(batch, sft_coef)
    auto_on: tuple[str, ...]  # device types where "auto" picks it (registry order decides ties)
    runs_on: tuple[str, ...]  # device types it runs on when named
    needs: str | None = None  # an optional package it imports
    extra: str | None = None  # the gaccore extra that installs ``needs``

    def runs_where(self, device_type: str) -> bool:
        return ANY_DEVICE in self.runs_on or device_type in self.runs_on

    def picked_where(self, device_type: str) -> bool:
        return ANY_DEVICE in self.auto_on or device_type in self.auto_on

    @property
    def row_results(self) -> Callable[[TokenBatch[Any], str], Any]:
        """The implementation's ``row_results(batch, sft_coef)``, its module imported on first use."""
        return importlib.import_module(self.module).row_results  # type: ignore[no-any-return]


IMPLEMENTATIONS = (
    Implementation("numpy", "numpy", "gaccore.stats", auto_on=(ANY_DEVICE,), runs_on=(ANY_DEVICE,)),
    # Named on CPU, the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1).
    Implementation(
        "triton",
        "torch",
        "gaccore.kernels.row_stats.fused",
        auto_on=("cuda",),
        runs_on=(ANY_DEVICE,),
        needs="triton",
        extra="torch",
    ),
    Implementation(
        "numba",
        "torch",
        "gaccore.kernels.row_stats.cpu_pass",
        auto_on=("cpu",),
        runs_on=("cpu",),
        needs="numba",
        extra="cpu",
    ),
    Implementation("torch", "torch", "gaccore.kernels.row_stats.twin", auto_on=(ANY_DEVICE,), runs_on=(ANY_DEVICE,)),
)


def implementation_names(library: str) -> tuple[str, ...]:
    """What ``implementation=`` accepts for inputs of ``library``."""
    return ("auto", *(entry.name for entry in IMPLEMENTATIONS if entry.library == library))


@functools.cache
def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def check_implementation(name: str, library: str) -> None:
    """Refuse a name that is not an implementation for ``library``, or one whose package is missing."""
    names = implementation_names(library)
    if name not in names:
        raise ValueError(f"implementation must be one of {names} for {library} inputs, got {name!r}")
    entry = _entry(name)
    if entry is not None and entry.needs is not None and not installed(entry.needs):
        raise ValueError(f'implementation="{name}" needs {entry.needs}: pip install gaccore[{entry.extra}]')


def choose(name: str, library: str, device_type: str) -> Implementation:
    """The implementation that computes row results of ``library`` arrays on
    ``device_type``: the first of ``IMPLEMENTATIONS`` that "auto" picks
    there and whose package is installed, or the one ``name`` names."""
    check_implementation(name, library)
    if name == "auto":
        for entry in IMPLEMENTATIONS:
            if entry.library == library and entry.picked_where(device_type):
                if entry.needs is None or installed(entry.needs):
                    return entry
        raise ValueError(f"no statistics implementation runs {library} arrays on {device_type}")
    entry = _entry(name)
    assert entry is not None  # check_implementation knows every name but "auto"
    if not entry.runs_where(device_type):
        raise ValueError(
            f'implementation="{name}" runs on {" or ".join(d.upper() for d in entry.runs_on)} tensors, '
            f"got tensors on {device_type}"
        )
    return entry


def _entry(name: str) -> Implementation | None:
    return next((entry for entry in IMPLEMENTATIONS if entry.name == name), None)


# -- the backends: where the controller's numbers live --------------------------

# Per array library, the module and the name of its backend object.
BACKENDS = {
    "numpy": ("gaccore.stats", "NUMPY_BACKEND"),
    "torch": ("gaccore.kernels.backend", "TORCH_BACKEND"),
}


class StepRunner(Protocol):
    """How a step runs once its inputs are known: ``close_step`` as written
    (``gaccore.step.PlainRunner``), or the same arithmetic compiled, fused
    into one kernel, or replayed (the torch side's runners). The backend
    makes one per controller, from its ``compile_step``."""

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
        """Close a step: finalize ``rows`` (or take ``batch``), advance the
        state with the observations and the prior as the caller gave them."""

    def replays(self, device: Any, rows: int | None) -> bool:
        """Whether ``update`` runs a whole step on ``device`` with ``rows``
        rows (``None``: a step without statistics) in one go."""

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
        """A whole update of one micro-batch (``batch``: checked; ``None`` on
        a step without statistics) in one go, where ``replays`` says so (the
        controller observes, then steps, elsewhere)."""


class StatsBackend(Protocol):
    """What the Controller needs from an array library."""

    name: str

    def check(self, batch: TokenBatch[Any]) -> None:
        """Refuse a batch this backend cannot read (types, shapes, dtypes, devices), reading no value."""

    def row_results(self, batch: TokenBatch[Any], sft_coef: str) -> Any:
        """Mergeable row results of one checked micro-batch, its scores joined."""

    def batch_stats(
        self,
        batch: TokenBatch[Any],
        *,
        sft_coef: str,
        trim: float,
        filter_demos: float | None,
        success_threshold: float | None,
        implementation: str,
    ) -> BatchStats[Any, Any]:
        """``gaccore.batch_stats`` of one checked batch."""

    def merge(self, a: Any, b: Any) -> Any:
        """Exact combination of two micro-batches' row results."""

    def reduce(self, rows: Any, process_group: Any) -> Any:
        """Row results merged over every rank of ``process_group``, in rank order."""

    def mean_over_group(self, value: Any, process_group: Any, device: Any) -> Any:
        """The mean of a scalar over every rank of ``process_group``."""

    def finalize(
        self, rows: Any, *, trim: float, filter_demos: float | None, success_threshold: float | None
    ) -> BatchStats[Any, Any]:
        """The proxies from merged row results (``gaccore.rows.finalize``)."""

    def device_of(self, value: Any) -> Any:
        """The placement key of an input (``None`` for host scalars)."""

    def placement(self, device: Any) -> Any:
        """The placement key of a device or its name (``load_state_dict(device=)``)."""

    def scalar(self, value: Any, device: Any) -> Any:
        """A number or 0-d array as a float64 state scalar on ``device``."""

    def flag(self, value: bool, device: Any) -> Any:
        """A Python bool as a boolean state scalar on ``device``."""

    def to_host(self, value: Any) -> float | bool:
        """A state scalar as a Python float or bool (may synchronize)."""

    def to_host_all(self, values: Sequence[Any]) -> list[float]:
        """Scalars as Python floats (flags as 0.0/1.0), in one transfer."""

    def output(self, mu: Any) -> Any:
        """The ``mu`` handed back by ``update``/``step``."""

    def as_tensor(self, value: Any, device: Any) -> Any:
        """A state scalar as a 0-d float32 torch tensor on ``device`` (its own
        device when ``None``): the torch side's, which the numpy backend asks."""

    def runner(self, compile_step: bool | str) -> StepRunner:
        """How one controller's steps run, for its ``compile_step``."""


@functools.cache
def backend(library: str) -> StatsBackend:
    """The backend of an array library, its module imported on first use."""
    module, name = BACKENDS[library]
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def checked(batch: TokenBatch[Any]) -> StatsBackend:
    """The backend of ``batch``'s array library (``logp``'s: an input of
    another kind is the one the error names), once it has checked ``batch``."""
    side = backend_for(batch.logp)
    side.check(batch)
    return side


def library_of(value: object) -> str:
    return "torch" if is_torch(value) else "numpy"


def backend_for(value: object) -> StatsBackend:
    """The backend for an input: torch tensors go to the torch side."""
    return backend(library_of(value))
