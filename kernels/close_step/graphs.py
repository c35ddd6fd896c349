"""Replays from CUDA graphs: ``Controller(compile_step="reduce-overhead")``.

Launched one by one from Python, each kernel of an update costs host time on
a GPU (some 10 us on an H200's host), and Triton's launcher more (about
125 us for the statistics kernel). A CUDA graph replays a recorded sequence
of launches in one call. Two recordings live here.

``UpdateGraphs``: a whole single-micro-batch ``update``, the statistics
kernel (``row_stats/fused.py``) and the closing step (``kernel.py`` beside
this file) in one graph per layout of the step: the
token tensors' shapes and dtypes, which of them and of the observations are
given, whether the prior is. A graph reads fixed addresses, so each call
copies the caller's tensors into static buffers first, in one
``torch._foreach_copy_`` of their bytes whatever their dtypes (a tensor
that is not contiguous is copied on its own), and fills a static 0-d
buffer per host number (the prior, a ``kl`` given as a float). The static
token buffers of a layout are shared by every recording with those tokens.
The controller's state lives in one home per device that every recording
reads and rewrites, so consecutive steps of different layouts copy nothing
for it; a state from elsewhere (loaded, or closed by the path below) is
copied in once. The returned ``mu`` is a copy of the graph's output: the
next replay rewrites that output, and a caller may keep last step's ``mu``.
Copies rather than a graph per input address: see docs/decisions.md.

``CloseStepGraphs``: ``close_step`` alone (finalize and ``advance``, some
fifty tiny kernels through ``torch.compile``) per layout of its arguments,
for the steps ``UpdateGraphs`` leaves to ``observe`` + ``step``: several
micro-batches, a process group, statistics given to ``update_stats``, the
torch twin's statistics. The graph writes the new state over the static
state inputs and the placed batch into static outputs, and a call returns
those: the controller passes that state back in next step, so only the
step's statistics, observations and prior are copied in (one foreach copy
per dtype) before the replay.

Why not ``torch.compile(mode="reduce-overhead")``: its CUDA graph trees
overwrite a replay's outputs at the next replay, and the controller feeds
each step's output state into the next step (measured on an H200: "accessing
tensor output of CUDAGraphs that has been overwritten").

Without CUDA (CPU tensors with ``TorchBackend(host_on_cpu=False)``, how the
tests run it) the same buffers are used and "replaying" runs the recorded
step on the static buffers, so the copying, the layouts, the shared state
and the eviction are tested without a GPU.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gaccore.batch import INPUT_NAMES, TokenBatch
from gaccore.rows import BATCH_FIELDS, ROW_FIELDS, BatchStats, RowResults, with_scores
from gaccore.state import STATE_FIELDS, ControllerState
from gaccore.step import OBSERVATIONS, Closed

# Graphs kept per controller by each of the two recorders; a run whose batch
# size keeps changing records again once its oldest layouts are dropped,
# instead of holding memory (static token buffers included) for each.
MAX_GRAPHS = 16
# Calls before capture, on a side stream: torch.compile and Triton compile,
# and lazy initialization happens, outside the graph.
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
        tensors = [getattr(self.state, name) for name in STATE_FIELDS]
        tensors += [self.observations[name] for name in OBSERVATIONS if self.observations[name] is not None]
        tensors += [] if self.prior is None else [self.prior]
        tensors += [] if self.rows is None else [getattr(self.rows, name) for name in ROW_FIELDS]
        tensors += [] if self.batch is None else [getattr(self.batch, name) for name in BATCH_FIELDS]
        return tensors

    def layout(self) -> tuple[Any, ...]:
        """What a graph is recorded for: the given observations, the prior,
        and the rows' count or the batch's dtypes (the state's shape is fixed)."""
        given = tuple(self.observations[name] is not None for name in OBSERVATIONS)
        rows = None if self.rows is None else tuple(self.rows.n_tokens.shape)
        batch = None if self.batch is None else tuple(getattr(self.batch, n).dtype for n in BATCH_FIELDS)
        return given, self.prior is not None, rows, batch

    def like(self, tensors: Sequence[torch.Tensor]) -> _Arguments:
        """The same structure over ``tensors`` (as ``flat()`` orders them)."""
        values = iter(tensors)
        state = ControllerState(**{name: next(values) for name in STATE_FIELDS})
        observations = {name: None if self.observations[name] is None else next(values) for name in OBSERVATIONS}
        prior = None if self.prior is None else next(values)
        rows = None if self.rows is None else RowResults(**{name: next(values) for name in ROW_FIELDS})
        batch = None if self.batch is None else BatchStats(**{name: next(values) for name in BATCH_FIELDS})
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
        state_inputs = inputs[: len(STATE_FIELDS)]
        input_storage = {tensor.untyped_storage().data_ptr() for tensor in inputs}

        def run() -> list[torch.Tensor]:
            """The step on the static inputs; the new state overwrites the
            static state (so the next call, passing it back, copies nothing
            for it), the batch is returned."""
            new_state, new_batch = self._close(
                backend, device, static.state, config, static.observations, static.prior, static.rows, static.batch
            )
            state = [getattr(new_state, name) for name in STATE_FIELDS]
            # A field passed on from another input would be overwritten while
            # still being read: own it first. One left alone is not copied at all.
            state = [
                t if t is old or t.untyped_storage().data_ptr() not in input_storage else t.clone()
                for t, old in zip(state, state_inputs, strict=True)
            ]
            _copy_into(state_inputs, state)
            return [] if new_batch is None else [getattr(new_batch, name) for name in BATCH_FIELDS]

        has_batch = arguments.rows is not None or arguments.batch is not None
        if device.type == "cuda":
            # the warm-up steps overwrote the state: put the step's arguments back
            replay, batch_outputs = _capture(device, run, lambda: _copy_into(inputs, arguments.flat()))
        else:
            batch_outputs = [t.clone() for t in run()]
            _copy_into(inputs, arguments.flat())  # run() took this call's step already

            def replay() -> None:
                _copy_into(batch_outputs, run())

        batch = BatchStats(**dict(zip(BATCH_FIELDS, batch_outputs, strict=True))) if has_batch else None
        return _Recording(inputs, static.state, batch, replay)


# Offsets of the static token buffers inside their one allocation: the
# caching allocator's alignment, so a kernel sees the alignment (and compiles
# the variant) it sees for a caller's fresh tensor.
ALIGN_BYTES = 512


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's memory as uint8, the last dimension in bytes (0-d: one
    dimension), for a contiguous tensor whose last stride is 1. One view
    (two for 0-d), as views cost host time too."""
    return tensor.view(torch.uint8) if tensor.dim() else tensor.reshape(1).view(torch.uint8)


def _kind(value: Any) -> Any:
    """What a graph is recorded for, of one observation or the prior: absent,
    a host number (filled into a float64 buffer), or a tensor of a dtype."""
    if value is None:
        return None
    return value.dtype if isinstance(value, torch.Tensor) else "host"


class _Tokens:
    """Static buffers for one layout of the token tensors, in one allocation,
    and the statistics kernel's output; shared by the recordings of every
    layout with these tokens (held weakly by ``UpdateGraphs``)."""

    def __init__(self, layout: tuple[Any, ...], device: torch.device) -> None:
        from ..row_stats.launch import empty_out  # lazy: imports triton

        spans: dict[str, tuple[int, int, torch.Size, torch.dtype]] = {}
        size = 0
        for name, given in zip(INPUT_NAMES, layout, strict=True):
            if given is not None:
                shape, dtype = given
                nbytes = shape.numel() * dtype.itemsize
                spans[name] = (size, nbytes, shape, dtype)
                size += -(-nbytes // ALIGN_BYTES) * ALIGN_BYTES
        self.memory = torch.empty(size, dtype=torch.uint8, device=device)
        self.tensors: dict[str, torch.Tensor | None] = dict.fromkeys(INPUT_NAMES)
        self.bytes: dict[str, torch.Tensor] = {}
        for name, (start, n, shape, dtype) in spans.items():
            static = self.memory[start : start + n].view(dtype).view(shape)
            self.tensors[name], self.bytes[name] = static, _bytes(static)
        self.rows_out = empty_out(layout[0][0][0], device)  # logp's [B, T]


@dataclass
class _Home:
    """One device's controller state, which every recording of that device
    reads and rewrites (so a step of another layout copies nothing for it),
    and the closing kernel's outputs (the batch of the last step)."""

    floats: torch.Tensor  # float64 [16], the kernel's STATE_FLOATS order
    flags: torch.Tensor  # bool [7], STATE_FLAGS order
    out: torch.Tensor
    out_flags: torch.Tensor
    out_mu: torch.Tensor
    state: ControllerState[Any]  # 0-d views of floats and flags
    batch: BatchStats[Any, Any]  # 0-d views of out

    @classmethod
    def on(cls, device: torch.device) -> _Home:
        from .layout import empty_outputs, views  # lazy: imports triton

        out, out_flags, out_mu = empty_outputs(device, has_rows=True)
        floats, flags = torch.empty_like(out[: -len(BATCH_FIELDS)]), torch.empty_like(out_flags)
        state, _ = views(floats, flags, has_rows=False)
        _, batch = views(out, out_flags, has_rows=True)
        assert batch is not None
        return cls(floats, flags, out, out_flags, out_mu, state, batch)

    def load(self, state: ControllerState[Any]) -> None:
        """Make ``state`` the home's, unless it already is."""
        if state is not self.state:
            _copy_into([getattr(self.state, n) for n in STATE_FIELDS], [getattr(state, n) for n in STATE_FIELDS])

    def save(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.floats.clone(), self.flags.clone()

    def restore(self, saved: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.floats.copy_(saved[0])
        self.flags.copy_(saved[1])

    def take_new_state(self) -> None:
        """The closing kernel's new state over the home's (a copy: the kernel
        reads the state while other threads of it may be storing)."""
        self.floats.copy_(self.out[: self.floats.shape[0]])
        self.flags.copy_(self.out_flags)


@dataclass
class _UpdateRecording:
    tokens: _Tokens | None  # None: a step without statistics
    observations: dict[str, torch.Tensor | None]  # static 0-d buffers of the given observations
    observation_bytes: dict[str, torch.Tensor]  # the tensor observations' buffers as bytes
    prior: torch.Tensor | None
    replay: Callable[[], None] | None = None  # None until captured (CUDA); the step itself on CPU


class UpdateGraphs:
    """One controller's single-micro-batch ``update`` (statistics kernel and
    closing step) replayed from a CUDA graph per layout (see the module's
    docstring); the CPU stand-in runs the same step on the same buffers.

    ``accepts`` says whether a step can be replayed: where ``backend``'s
    method runs the Triton kernels on the device and the close-step kernel
    takes the rows (``MAX_ROWS``). A call takes the inputs as checked by the
    caller and returns the new state (the home's), the batch (``None``
    without statistics) and ``mu`` as float32, a fresh tensor.
    """

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._recordings: OrderedDict[tuple[Any, ...], _UpdateRecording] = OrderedDict()
        self._tokens: weakref.WeakValueDictionary[tuple[Any, ...], _Tokens] = weakref.WeakValueDictionary()
        self._homes: dict[torch.device, _Home] = {}

    def accepts(self, device: torch.device, rows: int | None) -> bool:
        """Whether a step on ``device`` with ``rows`` rows (``None``: a step
        without statistics) runs here."""
        if device is None or self._backend.implementation_on(device).name != "triton":
            return False
        from .launch import MAX_ROWS  # lazy: imports triton

        return rows is None or rows <= MAX_ROWS

    def __call__(
        self,
        device: torch.device,
        state: ControllerState[Any],
        config: Any,
        inputs: TokenBatch[torch.Tensor] | None,
        observations: dict[str, Any],
        prior_value: float | None,
    ) -> Closed:
        tokens = None
        if inputs is not None:
            tokens = tuple(None if v is None else (v.shape, v.dtype) for v in (getattr(inputs, n) for n in INPUT_NAMES))
        key = (device, tokens, tuple(map(_kind, map(observations.get, OBSERVATIONS))), prior_value is not None)
        recording = self._recordings.get(key)
        if recording is None:
            recording = self._new_recording(device, tokens, observations, prior_value)
            self._recordings[key] = recording
            if len(self._recordings) > MAX_GRAPHS:
                self._recordings.popitem(last=False)
        else:
            self._recordings.move_to_end(key)
        home = self._homes.get(device)
        if home is None:
            home = self._homes[device] = _Home.on(device)
        _load(recording, inputs, observations, prior_value)
        home.load(state)
        if recording.replay is None:
            recording.replay = self._record(device, home, config, recording)
        recording.replay()
        return home.state, None if tokens is None else home.batch, home.out_mu.clone()

    def _new_recording(
        self, device: torch.device, tokens: tuple[Any, ...] | None, observations: dict[str, Any], prior: float | None
    ) -> _UpdateRecording:
        arena = None
        if tokens is not None:
            arena = self._tokens.get((device, tokens))
            if arena is None:
                arena = self._tokens.setdefault((device, tokens), _Tokens(tokens, device))
        static = {
            name: None
            if kind is None
            else torch.empty((), dtype=torch.float64 if kind == "host" else kind, device=device)
            for name, kind in ((n, _kind(observations[n])) for n in OBSERVATIONS)
        }
        as_bytes = {name: _bytes(buffer) for name, buffer in static.items() if buffer is not None}
        static_prior = None if prior is None else torch.empty((), dtype=torch.float64, device=device)
        return _UpdateRecording(arena, static, as_bytes, static_prior)

    def _record(
        self, device: torch.device, home: _Home, config: Any, recording: _UpdateRecording
    ) -> Callable[[], None]:
        """The step on the recording's buffers, as a CUDA graph (or, on CPU,
        as the function that runs it)."""
        from ..row_stats import fused  # lazy: imports triton
        from .launch import kernel_close_step

        # Locals, not the recording: the recording holds run (no reference cycle
        # keeps a dropped recording's buffers alive).
        arena, observations, prior = recording.tokens, recording.observations, recording.prior

        def run() -> None:
            rows = None
            if arena is not None:
                batch = TokenBatch(**arena.tensors)
                rows = with_scores(fused.row_results(batch, config.sft_coef, out=arena.rows_out), batch.scores)
            packed = (home.floats, home.flags)
            outputs = (home.out, home.out_flags, home.out_mu)
            kernel_close_step(packed, config, observations, prior, rows, *outputs)
            home.take_new_state()

        if device.type != "cuda":
            return run
        saved = home.save()
        try:
            replay, _ = _capture(device, run, lambda: home.restore(saved))
        except BaseException:
            home.restore(saved)  # a failed warm-up may have taken a step
            raise
        return replay


def _load(
    recording: _UpdateRecording,
    inputs: TokenBatch[torch.Tensor] | None,
    observations: dict[str, Any],
    prior: float | None,
) -> None:
    """This step's values into the recording's static buffers: every tensor
    whose memory is dense as bytes, in one foreach copy; any other by its
    own copy; host numbers by a fill each. Written for host time: this runs
    on every replayed step, and each Python call counts."""
    targets: list[torch.Tensor] = []
    sources: list[torch.Tensor] = []
    arena = recording.tokens
    if arena is not None and inputs is not None:
        for name, static_bytes in arena.bytes.items():  # the given tensors: they are the layout
            value = getattr(inputs, name)
            if value.requires_grad:  # statistics: no caller's graph reaches the buffers
                value = value.detach()
            # on the buffers' device: the inputs were checked to share logp's
            if value.is_contiguous() and value.stride(-1) == 1:
                targets.append(static_bytes)
                sources.append(value.view(torch.uint8))
            else:
                arena.tensors[name].copy_(value)
    for name, static in recording.observations.items():
        if static is None:
            continue
        value = observations[name]
        if not isinstance(value, torch.Tensor):
            static.fill_(float(value))
            continue
        if value.requires_grad:
            value = value.detach()
        if value.device == static.device:  # 0-d: always contiguous
            targets.append(recording.observation_bytes[name])
            sources.append(_bytes(value))
        else:
            static.copy_(value)
    if recording.prior is not None:
        recording.prior.fill_(float(prior))
    if targets:
        torch._foreach_copy_(targets, sources)


def _capture(device: torch.device, run: Callable[[], Any], reset: Callable[[], None]) -> tuple[Callable[[], None], Any]:
    """A CUDA graph of ``run`` and what the captured call returned. Before
    the capture, ``WARMUP_CALLS`` calls on a side stream compile and
    initialize lazily outside the graph; ``reset`` puts back what a call
    overwrote, before each warm-up and before the capture (which runs
    nothing), so the first replay starts from the caller's values."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            reset()
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    return graph.replay, captured


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
