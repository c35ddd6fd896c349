"""GPU benchmark of the batch statistics and of Controller.update.

    python bench/gpu.py [--out results.json]          # on one CUDA GPU, about 2 min
    python bench/gpu.py --device cpu --quick          # smoke test of every code path

For each (B, T) and logp dtype it times, per call: the fused Triton kernel
(its device time from CUDA-graph replays of 20 back-to-back calls, and one
call timed with CUDA events, host launch cost included), the kernel with its
finalize, the torch twin (eager), ``torch.compile`` of the twin (at the
target shapes only), and a naive baseline written the way per-statistic
implementations usually are (separate torch ops with boolean indexing and
``.item()`` per statistic) and the public GAC implementation's statistics path
(``bench/public_gac.py``: its ``update_stats``, mu update included, against
a whole eager ``update``, both as host wall time per call). It reports the
kernel's GB/s (every input byte once plus its outputs), that as a percentage of a device-to-device copy
measured in the same run, the host syncs of one ``Controller.update`` and of
one naive call, the time of a whole ``update`` (device time between events,
host wall time per call when many run back to back, and the summed duration
of the GPU work it causes beyond the statistics kernel and the number of GPU
kernels and copies it launches, from ``torch.profiler``; eager, an update
is two launches: the statistics kernel and ``gaccore.kernels.close_step``'s kernel),
the same for ``compile_step="reduce-overhead"`` (both kernels replayed from
one CUDA graph, after a copy of the inputs into its buffers) at every shape
and for ``Controller(compile_step=True)`` (finalize + advance through
inductor) at the target shapes (64, 1024) and (256, 4096), and the cost
of ``update`` relative to computing the log-probs
it reads: an LM-head matmul plus log-softmax gather over a 150k vocabulary
for the same tokens (one chunk of tokens is timed and scaled linearly). A
second table times the kernel on few long rows, (8, 131072) and
(4, 524288), split into ``chunk_count(B, T)`` chunks and unsplit. The sweep
of the kernel's block size, chunk count and warps per program at two shapes
runs first: it is short, and it holds the kernel's bandwidth at
(1024, 32768), the row a change of the kernel moves, should a later part
run out of time.

``bench/gpu_summary.py`` reads the JSON (with ``bench/gpu_host.py``'s and
``bench/cpu_public_gac.py``'s) and prints the targets' table; ``TARGET_SHAPES``
says at which shapes it reads each row.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

FULL_SHAPES = [(64, 1024), (256, 4096), (512, 8192), (1024, 32768)]
# Each interpreted kernel call takes about a second on CPU: few, small rows.
QUICK_SHAPES = [(4, 64), (8, 128)]
# Where the summary reads the update's rows and the kernel's bandwidth.
TARGET_SHAPES = {"update": (256, 4096), "kernel": (1024, 32768)}
QUICK_TARGET_SHAPES = {"update": (8, 128), "kernel": (8, 128)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test: kernel interpreted)")
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip torch.compile (of the twin, and compile_step=True)"
    )
    parser.add_argument("--vocab", type=int, help="LM-head vocabulary (default 151936; 8192 with --quick)")
    parser.add_argument("--hidden", type=int, help="LM-head hidden size (default 4096; 256 with --quick)")
    args = parser.parse_args(argv)
    args.vocab = args.vocab or (8192 if args.quick else 151_936)
    args.hidden = args.hidden or (256 if args.quick else 4096)
    return args


ARGS = parse_args()
if ARGS.device == "cpu":
    # The Triton kernel runs on CPU only in the interpreter, which must be
    # chosen before triton is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

# -P (gpu-run.sh) keeps the script's folder off sys.path; the public implementation lives there.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from public_gac import PublicGACController  # noqa: E402

import gaccore  # noqa: E402
from gaccore.batch import TokenBatch  # noqa: E402
from gaccore.kernels import TORCH_BACKEND  # noqa: E402
from gaccore.kernels.row_stats import fused, launch, twin  # noqa: E402
from gaccore.rows import ROW_FIELDS, finalize  # noqa: E402

# -- timing ----------------------------------------------------------------------


class Timer:
    """Median time per call: CUDA events on a GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device, reps: int, warmup: int) -> None:
        self.device, self.reps, self.warmup = device, reps, warmup
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def median_s(self, fn: Callable[[], Any], reps: int | None = None) -> float:
        reps = reps or self.reps
        for _ in range(self.warmup):
            fn()
        self.sync()
        times = []
        for _ in range(reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def wall_per_call_s(self, fn: Callable[[], Any], calls: int) -> float:
        """Host time per call of ``calls`` back-to-back calls, then one sync."""
        for _ in range(self.warmup):
            fn()
        self.sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / calls


# -- the workloads ---------------------------------------------------------------------


def make_inputs(rows: int, tokens: int, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """GRPO-like batch: right-padded responses, one advantage per row, a
    quarter expert rows, ref_logp for the KL."""
    gen = torch.Generator(device="cpu").manual_seed(rows * 7 + tokens)
    lengths = torch.randint(tokens // 4, tokens + 1, (rows, 1), generator=gen)
    mask = torch.arange(tokens)[None, :] < lengths
    logp = -(torch.rand(rows, tokens, generator=gen) ** 3) * 4.0
    ref = logp + 0.05 * torch.randn(rows, tokens, generator=gen)
    batch = {
        "logp": logp.to(dtype),
        "mask": mask,
        "adv": torch.randn(rows, generator=gen),
        "expert": torch.rand(rows, generator=gen) < 0.25,
        "ref_logp": ref.to(dtype),
    }
    return {k: v.to(device) for k, v in batch.items()}


def kernel_bytes(batch: dict[str, torch.Tensor]) -> int:
    """What the kernel moves: every element of its inputs once (padding
    included), plus its outputs."""
    rows = batch["logp"].shape[0]
    read = sum(batch[k].numel() * batch[k].element_size() for k in ("logp", "mask", "adv", "ref_logp"))
    return read + len(ROW_FIELDS) * rows * 8


def naive_stats(logp, mask, adv, expert, ref_logp, trim=0.1):
    """Per-statistic torch ops with boolean indexing and a host read per
    number, the usual way such proxies are written (the baseline)."""
    on = mask.bool()
    lp = logp.float().clamp(max=0.0)
    lp = torch.where(on, lp, torch.zeros_like(lp))
    lengths = on.sum(dim=1)
    valid = lengths > 0
    rl_rows = valid & ~expert
    sft_rows = valid & expert
    out = {}
    out["n_rl"] = int(rl_rows.sum().item())
    out["n_sft"] = int(sft_rows.sum().item())
    seq_adv = adv[rl_rows]
    out["var_rl"] = seq_adv.var().item() if seq_adv.numel() >= 2 else math.nan
    nll = -(lp.sum(dim=1) / lengths.clamp(min=1))[sft_rows]
    nll, _ = torch.sort(nll)
    drop = int(trim * nll.numel())
    kept = nll[drop : nll.numel() - drop]
    out["var_sft"] = kept.var().item() if kept.numel() >= 2 else math.nan
    tokens = on & rl_rows[:, None]
    a = adv[:, None].expand_as(lp)[tokens]
    p = lp[tokens].exp()
    w = p * (1 - p)
    out["n_tokens"] = int(a.numel())
    if a.std().item() > 0 and w.std().item() > 0:
        za = (a - a.mean()) / a.std(unbiased=False)
        zw = (w - w.mean()) / w.std(unbiased=False)
        out["disagreement"] = ((za - zw) ** 2).mean().item()
    else:
        out["disagreement"] = math.nan
    x = ref_logp.float()[tokens] - lp[tokens]
    out["kl"] = (torch.exp(x) - x - 1).mean().item()
    return out


class SyncCounter:
    """Host syncs of a call: CUDA's sync debug mode on a GPU (it sees
    boolean indexing too); on CPU, calls of the host-reading Tensor methods
    from code outside torch. torch.compile's guards read 0-d CPU tensors'
    values (18 reads an update with compile_step); on a GPU the same state
    is in CUDA tensors, which guards do not read, and the debug mode counts
    no sync there, so counting them would make the CPU proxy disagree with
    what it stands for."""

    SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
    TORCH_DIR = os.path.dirname(torch.__file__)

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def count(self, fn: Callable[[], Any]) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    fn()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            return sum("synchroniz" in str(w.message) for w in caught)
        calls = 0
        originals = {name: getattr(torch.Tensor, name) for name in self.SYNC_METHODS}

        def counting(original):
            def method(self, *args, **kwargs):
                nonlocal calls
                caller = sys._getframe(1).f_code.co_filename
                # Generated code ("<string>": guards) and torch's own files are torch's machinery.
                if not (caller.startswith("<") or caller.startswith(SyncCounter.TORCH_DIR)):
                    calls += 1
                return original(self, *args, **kwargs)

            return method

        try:
            for name, original in originals.items():
                setattr(torch.Tensor, name, counting(original))
            fn()
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)
        return calls


def logprob_cost_s(timer: Timer, tokens: int, args: argparse.Namespace, device: torch.device) -> float:
    """Time of an LM-head matmul + log-softmax + gather for ``tokens`` tokens,
    from one timed chunk scaled linearly (the full logits would not fit)."""
    chunk = min(tokens, 256 if args.quick else 4096)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hidden = torch.randn(chunk, args.hidden, dtype=dtype, device=device)
    head = torch.randn(args.vocab, args.hidden, dtype=dtype, device=device) / math.sqrt(args.hidden)
    labels = torch.randint(0, args.vocab, (chunk, 1), device=device)

    def logprobs() -> torch.Tensor:
        logits = hidden @ head.t()
        return torch.log_softmax(logits.float(), dim=-1).gather(1, labels)

    per_chunk = timer.median_s(logprobs, reps=3 if args.quick else 5)
    return per_chunk * tokens / chunk


def copy_bandwidth_gbs(timer: Timer, nbytes: int, device: torch.device) -> float:
    """Device-to-device copy: bytes read plus bytes written per second."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch of dst's pages outside the timing
    seconds = timer.median_s(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / seconds / 1e9


def graph_time_s(fn: Callable[[], Any], timer: Timer, calls: int = 20) -> float:
    """Device time per call without the host's launch overhead: ``calls``
    back-to-back calls captured in one CUDA graph, its replays timed (CPU:
    the plain median)."""
    if not timer.cuda:
        return timer.median_s(fn)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return timer.median_s(graph.replay) / calls


STATS_KERNELS = ("_row_stats_kernel", "_merge_chunks_kernel")


def device_busy_s(fn: Callable[[], Any], calls: int = 10) -> tuple[float, float, float]:
    """Per call: the summed durations of every GPU kernel and copy it causes,
    of the statistics kernels among them, and their number (``torch.profiler``/CUPTI)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    on_device = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    total = sum(e.time_range.elapsed_us() for e in on_device)
    stats = sum(e.time_range.elapsed_us() for e in on_device if any(k in e.name for k in STATS_KERNELS))
    return total / 1e6 / calls, stats / 1e6 / calls, len(on_device) / calls


def record_busy(row: dict[str, Any], name: str, fn: Callable[[], Any], timer: Timer) -> None:
    """``{name}_busy_s``, ``{name}_busy_beyond_kernel_s`` and ``{name}_launches`` on a GPU."""
    if not timer.cuda:
        return
    try:
        total, stats, launches = device_busy_s(fn)
        row[f"{name}_busy_s"], row[f"{name}_busy_beyond_kernel_s"] = total, total - stats
        row[f"{name}_launches"] = launches
    except Exception as exc:  # report, keep measuring the rest
        row[f"{name}_busy_error"] = f"{type(exc).__name__}: {exc}"[:200]


def measure_shape(
    rows: int,
    tokens: int,
    dtype: torch.dtype,
    args: argparse.Namespace,
    timer: Timer,
    syncs: SyncCounter,
    copy_gbs: float,
    compiled: Any,
) -> dict[str, Any]:
    """One table row: every timing of one (B, T, logp dtype)."""
    device = torch.device(args.device)
    batch = make_inputs(rows, tokens, dtype, device)
    nbytes = kernel_bytes(batch)
    row: dict[str, Any] = {"B": rows, "T": tokens, "logp": str(dtype).removeprefix("torch."), "MB": nbytes / 1e6}
    out = launch.empty_out(rows, device)
    row["kernel_call_s"] = timer.median_s(lambda: fused.row_results(TokenBatch(**batch), "phi", out=out))
    row["kernel_s"] = graph_time_s(lambda: fused.row_results(TokenBatch(**batch), "phi", out=out), timer)
    row["kernel_GBps"] = nbytes / row["kernel_s"] / 1e9
    row["kernel_pct_copy"] = 100 * row["kernel_GBps"] / copy_gbs
    row["triton_stats_s"] = timer.median_s(lambda: finalize(fused.row_results(TokenBatch(**batch), "phi", out=out)))
    row["twin_s"] = timer.median_s(lambda: finalize(twin.row_results(TokenBatch(**batch), "phi")))
    if compiled is not None and (rows, tokens) in compile_step_shapes(args):
        try:
            compiled(**batch)  # compiles outside the timing, whatever the timer's warm-up
            row["compiled_s"] = timer.median_s(lambda: finalize(compiled(**batch)))
        except Exception as exc:  # report, keep measuring the rest
            row["compiled_s"] = math.nan
            row["compiled_error"] = f"{type(exc).__name__}: {exc}"[:200]
    row["naive_s"] = timer.median_s(lambda: naive_stats(**batch), reps=3 if args.quick else 10)
    row["naive_syncs"] = syncs.count(lambda: naive_stats(**batch))
    row["speedup_vs_naive"] = row["naive_s"] / row["triton_stats_s"]

    calls = 10 if args.quick else 100
    ctrl = gaccore.Controller()
    kl = torch.zeros((), device=device)
    ctrl.update(**batch, kl=kl)  # state onto the device, kernel compiled
    row["update_syncs"] = syncs.count(lambda: ctrl.update(**batch, kl=kl))
    row["update_s"] = timer.median_s(lambda: ctrl.update(**batch, kl=kl))
    row["update_wall_s"] = timer.wall_per_call_s(lambda: ctrl.update(**batch, kl=kl), calls)
    row["update_beyond_kernel_s"] = row["update_s"] - row["kernel_s"]
    # Both sides as host wall time per call: the public implementation waits for the GPU
    # at each .item(), the update never does, so only the wall clock charges
    # each for what it makes the host wait.
    public = PublicGACController()
    ref_args = (batch["logp"], batch["mask"], batch["adv"], batch["expert"])
    row["public_wall_s"] = timer.wall_per_call_s(lambda: public.update_stats(*ref_args), calls)
    row["speedup_vs_public"] = row["public_wall_s"] / row["update_wall_s"]
    record_busy(row, "update", lambda: ctrl.update(**batch, kl=kl), timer)
    # The replayed update records a graph per layout and compiles nothing
    # with torch.compile, so it is timed at every shape: its device time
    # beyond the kernel holds the copy of the inputs into the graph's
    # buffers, which grows with the batch.
    measure_compiled_update(row, "graphs", "reduce-overhead", batch, kl, args, timer, syncs)
    if not args.no_compile and (rows, tokens) in compile_step_shapes(args):
        measure_compiled_update(row, "compiled", True, batch, kl, args, timer, syncs)
    row["logprob_s"] = logprob_cost_s(timer, rows * tokens, args, device)
    row["update_pct_logprob"] = 100 * max(row["update_s"], row["update_wall_s"]) / row["logprob_s"]
    return row


# Each new shape compiles again, seconds each (a minute on CPU): the
# compiled twin and Controller(compile_step=True) (inductor-fused finalize +
# advance) are timed at the target shapes only.
COMPILE_STEP_SHAPES = {(64, 1024), (256, 4096)}


def compile_step_shapes(args: argparse.Namespace) -> set[tuple[int, int]]:
    return {QUICK_TARGET_SHAPES["update"]} if args.quick else COMPILE_STEP_SHAPES


def measure_compiled_update(
    row: dict[str, Any],
    name: str,
    mode: bool | str,
    batch: dict[str, torch.Tensor],
    kl: torch.Tensor,
    args: argparse.Namespace,
    timer: Timer,
    syncs: SyncCounter,
) -> None:
    """Device time, host wall time per call and host syncs of one ``update``
    with ``compile_step=mode`` (compiled, or recorded, and warmed up first).
    ``"reduce-overhead"``: one graph replay of the statistics kernel and the
    close-step kernel per update (``gaccore.kernels.close_step.graphs.UpdateGraphs``;
    on CPU its stand-in, the same buffers and copies)."""
    try:
        ctrl = gaccore.Controller(compile_step=mode)
        for _ in range(3):
            ctrl.update(**batch, kl=kl)
        row[f"update_{name}_syncs"] = syncs.count(lambda: ctrl.update(**batch, kl=kl))
        row[f"update_{name}_s"] = timer.median_s(lambda: ctrl.update(**batch, kl=kl))
        row[f"update_{name}_wall_s"] = timer.wall_per_call_s(
            lambda: ctrl.update(**batch, kl=kl), 10 if args.quick else 100
        )
        row[f"update_{name}_beyond_kernel_s"] = row[f"update_{name}_s"] - row["kernel_s"]
        record_busy(row, f"update_{name}", lambda: ctrl.update(**batch, kl=kl), timer)
    except Exception as exc:  # report, keep measuring the rest
        row[f"update_{name}_error"] = f"{type(exc).__name__}: {exc}"[:200]


def measure_split(rows: int, tokens: int, args: argparse.Namespace, timer: Timer, copy_gbs: float) -> dict[str, Any]:
    """The kernel on few long rows, split into ``chunk_count(B, T)`` chunks and
    unsplit (one program per row), bf16 logp, against copy bandwidth."""
    device = torch.device(args.device)
    batch = make_inputs(rows, tokens, torch.bfloat16, device)
    nbytes = kernel_bytes(batch)
    out = launch.empty_out(rows, device)
    chunks = launch.chunk_count(rows, tokens)
    row: dict[str, Any] = {"B": rows, "T": tokens, "MB": nbytes / 1e6, "chunks": chunks}
    for name, count in (("split", chunks), ("unsplit", 1)):
        seconds = graph_time_s(
            lambda count=count: fused.row_results(TokenBatch(**batch), "phi", out=out, chunks=count), timer
        )
        row[f"{name}_s"] = seconds
        row[f"{name}_GBps"] = nbytes / seconds / 1e9
        row[f"{name}_pct_copy"] = 100 * row[f"{name}_GBps"] / copy_gbs
    return row


# Kernel launch settings tried at two shapes, bf16: (block_t, chunks, warps);
# None takes the launcher's default (block_size(T), chunk_count(B, T),
# fused.warps(block_t)). The default comes first, then 8 warps per 1024-token
# block: with per-lane accumulators the kernel needs 184 registers a thread
# at 4 warps, 99 at 8 (bench/kernel_ops.py), so 8 warps keep twice the warps
# on an SM. Fewer tokens a thread (more warps, smaller blocks) is the
# direction the register count points; more than 8 tokens a thread is not
# tried, as it already needs the most registers.
SWEEP = {
    (1024, 32768): [
        (None, None, None),
        (1024, 1, 8),
        (1024, 1, 16),
        (2048, 1, 16),
        (2048, 1, 8),
        (512, 1, 4),
        (1024, 4, 8),
    ],
    (256, 4096): [(None, None, None), (1024, 1, 8), (1024, 1, 16), (512, 1, 4), (2048, 1, 8)],
}
QUICK_SWEEP = {(4, 256): [(None, None, None), (64, 1, 4), (64, 2, None)]}


@contextlib.contextmanager
def launch_warps(count: int | None):
    """Launches inside use ``count`` warps per program. The launcher has no
    such argument; it asks ``fused.warps(block)`` at each launch, so that is
    what is replaced, and a launcher that no longer asks it is an error
    rather than a sweep that silently times the default."""
    if count is None:
        yield
        return
    asked = []
    original = fused.warps

    def forced(block: int) -> int:
        asked.append(block)
        return count

    fused.warps = forced
    try:
        yield
    finally:
        fused.warps = original
    if not asked:
        raise RuntimeError("row_results did not ask fused.warps: the warp count was not applied")


def measure_sweep(args: argparse.Namespace, timer: Timer, copy_gbs: float) -> list[dict[str, Any]]:
    """Device time of the kernel per launch setting (graph-replayed)."""
    device = torch.device(args.device)
    rows_out = []
    for (rows, tokens), settings in (QUICK_SWEEP if args.quick else SWEEP).items():
        batch = make_inputs(rows, tokens, torch.bfloat16, device)
        nbytes = kernel_bytes(batch)
        out = launch.empty_out(rows, device)
        for block_t, chunks, warps in settings:
            block_t = block_t or launch.block_size(tokens)
            chunks = chunks or launch.chunk_count(rows, tokens)
            warps = warps or fused.warps(block_t)
            default = (block_t, chunks, warps) == (
                launch.block_size(tokens),
                launch.chunk_count(rows, tokens),
                fused.warps(launch.block_size(tokens)),
            )
            row: dict[str, Any] = {"B": rows, "T": tokens, "block_t": block_t, "chunks": chunks, "warps": warps}
            row["default"] = "yes" if default else ""
            run = functools.partial(
                fused.row_results, TokenBatch(**batch), "phi", out=out, block_t=block_t, chunks=chunks
            )
            try:
                with launch_warps(None if default else warps):
                    seconds = graph_time_s(run, timer)
                row["kernel_s"], row["GBps"] = seconds, nbytes / seconds / 1e9
                row["pct_copy"] = 100 * row["GBps"] / copy_gbs
            except Exception as exc:  # one setting may not fit the GPU; time the rest
                row["error"] = f"{type(exc).__name__}: {exc}"[:200]
            rows_out.append(row)
            print_row(row, SWEEP_COLUMNS, first=len(rows_out) == 1)
    return rows_out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --quick for a smoke test")
    # The smoke test runs the GPU code path: controller state in 0-d tensors,
    # not the host scalars CPU tensors get by default, and the Triton kernels
    # (interpreted) for the statistics and the closing step, not the twin.
    TORCH_BACKEND.host_on_cpu = False
    TORCH_BACKEND.implementation = "triton"
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    # Quick: one call per timing, since on CPU each is an interpreted kernel.
    timer = Timer(device, reps=1 if args.quick else 20, warmup=0 if args.quick else 3)
    syncs = SyncCounter(device)
    copy_gbs = copy_bandwidth_gbs(timer, (1 << 20) if args.quick else (1 << 30), device)
    compiled = None
    if not args.no_compile:
        compiled = torch.compile(twin.row_results, dynamic=True)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "copy_GBps": copy_gbs,
        "quick": args.quick,
        "target_shapes": QUICK_TARGET_SHAPES if args.quick else TARGET_SHAPES,
        "sweep": [],
        "rows": [],
    }
    results["sweep"] = measure_sweep(args, timer, copy_gbs)
    save(results, args.out)
    for rows, tokens in shapes:
        for dtype in (torch.bfloat16, torch.float32):
            row = measure_shape(rows, tokens, dtype, args, timer, syncs, copy_gbs, compiled)
            results["rows"].append(row)
            print_row(row, COLUMNS, first=len(results["rows"]) == 1)
            save(results, args.out)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    results["split"] = []
    for rows, tokens in QUICK_SPLIT_SHAPES if args.quick else SPLIT_SHAPES:
        row = measure_split(rows, tokens, args, timer, copy_gbs)
        results["split"].append(row)
        print_row(row, SPLIT_COLUMNS, first=len(results["split"]) == 1)
        save(results, args.out)
    return results


def save(results: dict[str, Any], out: Path | None) -> None:
    """Written after every row, so a run stopped by a time limit keeps what it measured."""
    if out is not None:
        out.write_text(json.dumps(results, indent=2))


# (result key, column title, width, decimals); times are printed in microseconds.
COLUMNS = [
    ("B", "B", 5, None),
    ("T", "T", 6, None),
    ("logp", "logp", 9, None),
    ("MB", "MB", 7, 1),
    ("kernel_call_s", "call us", 8, 1),
    ("kernel_s", "kernel us", 10, 1),
    ("kernel_GBps", "GB/s", 7, 0),
    ("kernel_pct_copy", "%copy", 6, 0),
    ("triton_stats_s", "k+fin us", 9, 1),
    ("twin_s", "twin us", 10, 1),
    ("compiled_s", "compiled us", 12, 1),
    ("naive_s", "naive us", 10, 1),
    ("speedup_vs_naive", "x naive", 8, 1),
    ("naive_syncs", "naive syncs", 11, None),
    ("public_wall_s", "public wall us", 11, 1),
    ("speedup_vs_public", "x public", 6, 2),
    ("update_syncs", "upd syncs", 9, None),
    ("update_s", "upd us", 8, 1),
    ("update_wall_s", "upd wall us", 11, 1),
    ("update_beyond_kernel_s", "upd-k us", 9, 1),
    ("update_busy_beyond_kernel_s", "upd busy-k", 10, 1),
    ("update_launches", "upd launches", 12, 1),
    ("update_compiled_s", "cmp us", 8, 1),
    ("update_compiled_wall_s", "cmp wall", 9, 1),
    ("update_compiled_beyond_kernel_s", "cmp-k us", 9, 1),
    ("update_compiled_syncs", "cmp syncs", 9, None),
    ("update_compiled_busy_beyond_kernel_s", "cmp busy-k", 10, 1),
    ("update_graphs_s", "graph us", 9, 1),
    ("update_graphs_wall_s", "graph wall", 10, 1),
    ("update_graphs_beyond_kernel_s", "graph-k us", 10, 1),
    ("update_graphs_syncs", "graph syncs", 11, None),
    ("update_graphs_busy_beyond_kernel_s", "graph busy-k", 12, 1),
    ("update_pct_logprob", "%logprob", 9, 4),
]
SPLIT_SHAPES = [(8, 131072), (4, 524288)]
QUICK_SPLIT_SHAPES = [(1, 16400)]  # 3 chunks: the fewest tokens that split
SPLIT_COLUMNS = [
    ("B", "B", 5, None),
    ("T", "T", 7, None),
    ("MB", "MB", 7, 1),
    ("chunks", "chunks", 6, None),
    ("split_s", "split us", 10, 1),
    ("split_GBps", "GB/s", 7, 0),
    ("split_pct_copy", "%copy", 6, 0),
    ("unsplit_s", "unsplit us", 11, 1),
    ("unsplit_GBps", "GB/s", 7, 0),
    ("unsplit_pct_copy", "%copy", 6, 0),
]


SWEEP_COLUMNS = [
    ("B", "B", 5, None),
    ("T", "T", 7, None),
    ("block_t", "block_t", 7, None),
    ("chunks", "chunks", 6, None),
    ("warps", "warps", 5, None),
    ("default", "default", 7, None),
    ("kernel_s", "kernel us", 10, 1),
    ("GBps", "GB/s", 7, 0),
    ("pct_copy", "%copy", 6, 0),
]


def print_row(row: dict[str, Any], columns: list[tuple[str, str, int, int | None]], *, first: bool) -> None:
    if first:
        print(" ".join(f"{title:>{width}}" for _, title, width, _ in columns))
    cells = []
    for key, _, width, decimals in columns:
        value = row.get(key, math.nan)
        if decimals is None and isinstance(value, float):
            cells.append(f"{'-':>{width}}")
        elif decimals is None:
            cells.append(f"{value:>{width}}")
        else:
            scale = 1e6 if key.endswith("_s") else 1.0
            cells.append(f"{value * scale:>{width}.{decimals}f}")
    print(" ".join(cells), flush=True)


def main() -> None:
    started = time.perf_counter()
    results = measure(ARGS)
    results["seconds"] = time.perf_counter() - started
    print(f"device: {results['device']}; copy {results['copy_GBps']:.0f} GB/s; {results['seconds']:.0f} s in all")
    for row in results["rows"]:
        for key in [k for k in row if k.endswith("error")]:
            print(f"{key} at B={row['B']} T={row['T']} {row['logp']}: {row[key]}")
    for row in results["sweep"]:
        if "error" in row:
            print(f"sweep at B={row['B']} T={row['T']} block_t={row['block_t']} warps={row['warps']}: {row['error']}")
    if ARGS.out:
        save(results, ARGS.out)
        print(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
