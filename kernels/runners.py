"""How a step runs on torch: the runners the torch backend makes for a
controller's ``compile_step`` (each a ``gaccore.registry.StepRunner``).

Where the state lives on the host (CPU tensors, the default), every runner
runs ``gaccore.step.close_step`` as written: there is no device to launch
on, and a host scalar operation costs a tenth of a 0-d tensor operation.
Where it lives on a device:

- ``EagerRunner`` (``compile_step=False``): where the implementation runs
  the Triton kernels on that device, the close step (finalize and
  ``advance``, some 300 element-wise operations, each a launch) is one
  launch of the close-step kernel (``close_step/launch.py``), so an eager
  update is two launches; elsewhere (the twin's statistics, statistics given
  to ``update_stats``, more than ``MAX_ROWS`` rows) ``close_step`` as written.
- ``CompiledRunner`` (``True``): ``close_step`` through ``torch.compile``.
- ``ReplayRunner`` (``"reduce-overhead"``): an update of one micro-batch
  replayed from one CUDA graph of the statistics kernel and the close-step
  kernel (``close_step/graphs.py``, ``UpdateGraphs``); every other step's
  compiled ``close_step`` replayed from a CUDA graph per layout of its
  arguments (``CloseStepGraphs``). The first compile or recording of each
  layout takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from gaccore.batch import TokenBatch
from gaccore.config import Config
from gaccore.registry import StatsBackend
from gaccore.rows import BatchStats
from gaccore.state import ControllerState
from gaccore.step import Closed, close_step, place_and_close

if TYPE_CHECKING:
    from .backend import TorchBackend
    from .close_step.graphs import UpdateGraphs
    from .close_step.launch import CloseStepKernel


class EagerRunner:
    """``compile_step=False``: the close-step kernel where it applies, ``close_step`` as written elsewhere."""

    def __init__(self, backend: TorchBackend) -> None:
        self._backend = backend
        self._kernel: CloseStepKernel | None = None  # made at the first step it runs

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
        if device is not None and batch is None and self._backend.implementation_on(device).name == "triton":
            if self._kernel is None:
                from .close_step.launch import CloseStepKernel  # lazy: imports triton

                self._kernel = CloseStepKernel()
            closed = self._kernel(device, state, config, observations, prior_value, rows)
            if closed is not None:
                return closed
        return place_and_close(backend, device, state, config, observations, prior_value, rows, batch)

    def replays(self, device: Any, rows: int | None) -> bool:
        return False

    def update(self, *args: Any) -> Closed:
        raise NotImplementedError("EagerRunner replays nothing: observe, then step")


class CompiledRunner:
    """``compile_step=True``: ``close_step`` through ``close`` (``torch.compile`` of it) on a device."""

    def __init__(self, close: Callable[..., Any]) -> None:
        self._close = close

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
        close = close_step if device is None else self._close
        return place_and_close(backend, device, state, config, observations, prior_value, rows, batch, close=close)

    def replays(self, device: Any, rows: int | None) -> bool:
        return False

    def update(self, *args: Any) -> Closed:
        raise NotImplementedError("CompiledRunner replays nothing: observe, then step")


class ReplayRunner(CompiledRunner):
    """``compile_step="reduce-overhead"``: whole updates and compiled close steps replayed from CUDA graphs."""

    def __init__(self, backend: TorchBackend) -> None:
        from .close_step.graphs import CloseStepGraphs, UpdateGraphs  # lazy: only this runner records

        super().__init__(CloseStepGraphs(torch.compile(close_step)))
        self._updates: UpdateGraphs = UpdateGraphs(backend)

    def replays(self, device: Any, rows: int | None) -> bool:
        return self._updates.accepts(device, rows)

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
        return self._updates(device, state, config, batch, observations, prior_value)
