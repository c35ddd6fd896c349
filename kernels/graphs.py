"""``close_step`` replayed from CUDA graphs: ``Controller(compile_step="reduce-overhead")``.

A step's device-side rest (finalize and ``advance``) is some fifty tiny
kernels; launched one by one from Python it costs milliseconds of host time
on a GPU. ``CloseStepGraphs`` records it once per layout of its arguments
(which observations are given, the batch's rows) into a CUDA graph over
static input buffers. The graph writes the new state over the static state
inputs and the placed batch into static outputs, and a call returns those:
the controller passes that state back in next step, so only the step's
statistics, observations and prior are copied in (one foreach copy per
dtype) before the replay.

Why not ``torch.compile(mode="reduce-overhead")``: its CUDA graph trees
overwrite a replay's outputs at the next replay, and the controller feeds
each step's output state into the next step (measured on an H200: "accessing
tensor output of CUDAGraphs that has been overwritten").

Without CUDA (CPU tensors with ``TorchBackend(host_on_cpu=False)``, how the
tests run it) the same buffers are used and "replaying" runs the step on the
static inputs, so the copying, the layouts and the in-place state are tested
without a GPU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from gaccore.controller import ControllerState
from gaccore.rows import BatchStats, RowResults

OBSERVATIONS = ("kl", "expert_reward", "policy_reward")
STATE_NAMES = tuple(f.name for f in fields(ControllerState))
ROW_NAMES = tuple(f.name for f in fields(RowResults))
BATCH_NAMES = tuple(f.name for f in fields(BatchStats))
# Graphs kept per controller; a run whose batch size keeps changing records
# again once its oldest layouts are dropped, instead of holding memory for each.
MAX_GRAPHS = 16
# Calls before capture, on a side stream: torch.compile compiles, and lazy
# initialization happens, outside the graph.
WARMUP_CALLS = 2

CloseStep = Callable[..., tuple[ControllerState[Any], BatchStats[Any, Any] | None]]


@dataclass
class _Arguments:
    """close_step's tensor arguments, one step's worth."""

    state: ControllerState[Any]
    observations: dict[str, Any]
    prior: Any
    rows: RowResults | None
    batch: BatchStats[Any, Any] | None

    def flat(self) -> list[torch.Tensor]:
        tensors = [getattr(self.state, name) for name in STATE_NAMES]
        tensors += [self.observations[name] for name in OBSERVATIONS if self.observations[name] is not None]
        tensors += [] if self.prior is None else [self.prior]
        tensors += [] if self.rows is None else [getattr(self.rows, name) for name in ROW_NAMES]
        tensors += [] if self.batch is None else [getattr(self.batch, name) for name in BATCH_NAMES]
        return tensors

    def layout(self) -> tuple[Any, ...]:
        """What a graph is recorded for: the given observations, the prior,
        and the rows' count or the batch's dtypes (the state's shape is fixed)."""
        given = tuple(self.observations[name] is not None for name in OBSERVATIONS)
        rows = None if self.rows is None else tuple(self.rows.n_tokens.shape)
        batch = None if self.batch is None else tuple(getattr(self.batch, n).dtype for n in BATCH_NAMES)
        return given, self.prior is not None, rows, batch

    def like(self, tensors: Sequence[torch.Tensor]) -> _Arguments:
        """The same structure over ``tensors`` (as ``flat()`` orders them)."""
        values = iter(tensors)
        state = ControllerState(**{name: next(values) for name in STATE_NAMES})
        observations = {name: None if self.observations[name] is None else next(values) for name in OBSERVATIONS}
        prior = None if self.prior is None else next(values)
        rows = None if self.rows is None else RowResults(**{name: next(values) for name in ROW_NAMES})
        batch = None if self.batch is None else BatchStats(**{name: next(values) for name in BATCH_NAMES})
        return _Arguments(state, observations, prior, rows, batch)


@dataclass
class _Recording:
    inputs: list[torch.Tensor]  # static: every call copies its arguments here
    state: ControllerState[Any]  # the static state inputs, which every replay overwrites
    batch: BatchStats[Any, Any] | None  # static outputs
    replay: Callable[[], None]


class CloseStepGraphs:
    """``close`` (``close_step`` or a compiled version of it) with the same
    signature, replayed from a CUDA graph per argument layout.

    The returned state is the recording's static state and the batch its
    static outputs: both are valid until the next call, which is all the
    controller needs (it reads them, or passes the state back in).
    """

    def __init__(self, close: CloseStep) -> None:
        self._close = close
        self._recordings: OrderedDict[tuple[Any, ...], _Recording] = OrderedDict()

    def __call__(
        self,
        backend: Any,
        device: torch.device,
        state: ControllerState[Any],
        config: Any,
        observations: dict[str, Any],
        prior_value: Any,
        rows: RowResults | None = None,
        batch: BatchStats[Any, Any] | None = None,
    ) -> tuple[ControllerState[Any], BatchStats[Any, Any] | None]:
        arguments = _Arguments(state, observations, prior_value, rows, batch)
        key = (device, arguments.layout())
        recording = self._recordings.get(key)
        if recording is None:
            recording = self._record(backend, device, config, arguments)
            self._recordings[key] = recording
            if len(self._recordings) > MAX_GRAPHS:
                self._recordings.popitem(last=False)
        else:
            self._recordings.move_to_end(key)
            _copy_into(recording.inputs, arguments.flat())
        recording.replay()
        return recording.state, recording.batch

    def _record(self, backend: Any, device: torch.device, config: Any, arguments: _Arguments) -> _Recording:
        inputs = [tensor.detach().clone() for tensor in arguments.flat()]
        static = arguments.like(inputs)
        state_inputs = inputs[: len(STATE_NAMES)]
        input_storage = {tensor.untyped_storage().data_ptr() for tensor in inputs}

        def run() -> list[torch.Tensor]:
            """The step on the static inputs; the new state overwrites the
            static state (so the next call, passing it back, copies nothing
            for it), the batch is returned."""
            new_state, new_batch = self._close(
                backend, device, static.state, config, static.observations, static.prior, static.rows, static.batch
            )
            state = [getattr(new_state, name) for name in STATE_NAMES]
            # A field passed on from another input would be overwritten while
            # still being read: own it first. One left alone is not copied at all.
            state = [
                t if t is old or t.untyped_storage().data_ptr() not in input_storage else t.clone()
                for t, old in zip(state, state_inputs, strict=True)
            ]
            _copy_into(state_inputs, state)
            return [] if new_batch is None else [getattr(new_batch, name) for name in BATCH_NAMES]

        has_batch = arguments.rows is not None or arguments.batch is not None
        if device.type == "cuda":
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_CALLS):
                    _copy_into(inputs, arguments.flat())  # the warm-up steps overwrote the state
                    run()
            torch.cuda.current_stream(device).wait_stream(side)
            _copy_into(inputs, arguments.flat())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                batch_outputs = run()
            replay = graph.replay
        else:
            batch_outputs = [t.clone() for t in run()]
            _copy_into(inputs, arguments.flat())  # run() took this call's step already

            def replay() -> None:
                _copy_into(batch_outputs, run())

        batch = BatchStats(**dict(zip(BATCH_NAMES, batch_outputs, strict=True))) if has_batch else None
        return _Recording(inputs, static.state, batch, replay)


def _copy_into(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """Copy every source that is not already its target, one foreach copy per
    pair of dtypes (a list of one dtype takes the single-launch path)."""
    groups: dict[tuple[torch.dtype, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for target, source in zip(targets, sources, strict=True):
        if target is not source:
            into, out_of = groups.setdefault((target.dtype, source.dtype), ([], []))
            into.append(target)
            out_of.append(source)
    for into, out_of in groups.values():
        torch._foreach_copy_(into, out_of)
