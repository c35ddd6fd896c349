"""gaccore.kernels.close_step: finalize + advance in one Triton launch,
against the float64 numpy path and the torch ``close_step`` it replaces, and
as the eager update of a controller whose state lives on a device."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from dataclasses import fields

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from kernel_cases import make_batch  # noqa: E402

import gaccore  # noqa: E402
from gaccore._array import FLOAT_MAX  # noqa: E402
from gaccore.config import Config  # noqa: E402
from gaccore.kernels import TORCH_BACKEND, TorchBackend  # noqa: E402
from gaccore.kernels.close_step import launch, layout  # noqa: E402
from gaccore.rows import ROW_FIELDS, BatchStats, RowResults  # noqa: E402
from gaccore.state import ControllerState  # noqa: E402
from gaccore.stats import NUMPY_BACKEND  # noqa: E402
from gaccore.step import PlainRunner, close_step  # noqa: E402

CPU = torch.device("cpu")
PLAIN = TorchBackend("torch", host_on_cpu=False)  # the torch close_step, state as 0-d tensors
OBSERVATIONS = ("kl", "expert_success", "policy_success")


# -- random inputs ------------------------------------------------------------------


def random_rows(rng: np.random.Generator, n_rows: int, *, expert: bool, scored: float, hostile: bool, ties: bool):
    """Row results as the statistics paths leave them (roles and scores
    joined), float64 numpy. Invalid rows hold garbage (NaN, inf, huge
    values: the unspecified values finalize must never read); ``hostile``
    puts NaN and inf in valid rows too."""
    n_tokens = np.where(rng.random(n_rows) < 0.15, 0.0, rng.integers(1, 30, n_rows).astype(np.float64))
    valid = ((n_tokens > 0) & (rng.random(n_rows) > 0.15)).astype(np.float64)
    demo = valid * (rng.random(n_rows) < 0.4) if expert else valid * 0.0
    rl, sft = (valid - demo, demo) if expert else (valid, valid)
    nll = rng.choice([0.5, 1.0, 1.0, 2.0, -0.0, 0.0], n_rows) if ties else rng.gamma(2.0, 0.5, n_rows)
    min_a, max_a = np.sort(rng.normal(size=(2, n_rows)), axis=0)
    min_w, max_w = np.sort(rng.uniform(0.0, 0.25, size=(2, n_rows)), axis=0)
    if ties:  # a degenerate coefficient: every RL row's advantage the same
        min_a = max_a = np.full(n_rows, 0.5)
    score = np.where(rng.random(n_rows) < scored, rng.choice([0.0, 0.25, 1.0], n_rows), math.nan)
    columns = {
        "n_tokens": n_tokens,
        "valid": valid,
        "rl": rl,
        "sft": sft,
        "nll": nll,
        "seq_adv": rng.normal(size=n_rows),
        "mean_a": rng.normal(size=n_rows),
        "mean_w": rng.uniform(0.0, 0.25, n_rows),
        "m2_a": rng.gamma(1.0, 1.0, n_rows) * n_tokens,
        "m2_w": rng.gamma(1.0, 0.01, n_rows) * n_tokens,
        "c_aw": rng.normal(0.0, 0.05, n_rows) * n_tokens,
        "min_a": min_a,
        "max_a": max_a,
        "min_w": min_w,
        "max_w": max_w,
        "kl_sum": rng.gamma(1.0, 0.01, n_rows) * n_tokens,
        "demo": demo,
        "score": np.where(rng.random(n_rows) < 0.1, math.inf, score) if hostile else score,
    }
    for name in ROW_FIELDS:
        if name in ("n_tokens", "valid", "rl", "sft", "demo", "score"):
            continue
        column = np.where(valid == 0, rng.choice([math.nan, math.inf, -math.inf, 1e308, -1e308], n_rows), columns[name])
        if hostile:  # no huge finite values here: whether 1e308 + 1e308 - inf is NaN depends on the order of the sum
            column = np.where(rng.random(n_rows) < 0.1, rng.choice([math.nan, math.inf, -math.inf], n_rows), column)
        columns[name] = column
    return RowResults(**columns)


def random_state(rng: np.random.Generator, config: Config, kind: str) -> dict[str, float | bool]:
    """A state ``load_state_dict`` accepts: the initial one, random values,
    or accumulators and EMAs at the largest float64 (saturation)."""
    host = ControllerState.initial(config)
    if kind == "initial":
        return host
    for name in host:
        if ControllerState.is_flag(name):
            host[name] = bool(rng.random() < 0.7)
        elif name in ("mu",):
            host[name] = float(rng.uniform(config.mu_min, config.mu_max))
        elif name == "rho":
            host[name] = float(rng.uniform(config.rho_min, config.rho_max))
        elif name in ("mu_bar", "estimate"):
            host[name] = float(rng.uniform(0.0, 1.0))
        elif kind == "saturated":
            host[name] = float(rng.choice([FLOAT_MAX, -FLOAT_MAX, FLOAT_MAX * 0.75]))
        else:
            host[name] = float(rng.normal() * 0.1 if name.startswith("ema") else rng.integers(0, 5))
    return host


OBSERVATION_KINDS = ["none", "host", "host_nan", "host_inf", "tensor", "tensor_nan", "tensor_f32", "tensor_int", "huge"]


def observation(kind: str, value: float):
    return {
        "none": None,
        "host": value,
        "host_nan": math.nan,
        "host_inf": -math.inf,
        "tensor": torch.tensor(value, dtype=torch.float64),
        "tensor_nan": torch.tensor(math.nan, dtype=torch.float64),
        "tensor_f32": torch.tensor(value, dtype=torch.float32),
        "tensor_int": torch.tensor(1, dtype=torch.int64),
        "huge": FLOAT_MAX,
    }[kind]


# -- the three paths ------------------------------------------------------------


def numpy_close(host_state, config, observations, prior, rows):
    """gaccore.rows.finalize + gaccore.controller.advance on numpy float64."""
    state = ControllerState.place(host_state, NUMPY_BACKEND, None)
    placed = {k: None if v is None else NUMPY_BACKEND.scalar(v, None) for k, v in observations.items()}
    prior = None if prior is None else NUMPY_BACKEND.scalar(prior, None)
    return close_step(NUMPY_BACKEND, None, state, config, placed, prior, rows, None)


def torch_rows(rows: RowResults | None, device: torch.device = CPU) -> RowResults | None:
    if rows is None:
        return None
    return RowResults(**{f.name: torch.from_numpy(getattr(rows, f.name)).to(device) for f in fields(rows)})


def torch_close(host_state, config, observations, prior, rows, device=CPU):
    """The multi-op path the kernel replaces: close_step on 0-d tensors."""
    state = ControllerState.place(host_state, PLAIN, device)
    placed = {k: None if v is None else PLAIN.scalar(v, device) for k, v in observations.items()}
    prior = None if prior is None else PLAIN.scalar(prior, device)
    return close_step(PLAIN, device, state, config, placed, prior, torch_rows(rows, device), None)


def kernel_close(host_state, config, observations, prior, rows, *, poison=math.nan, device=CPU):
    """The fused kernel, its outputs poisoned first so an unwritten one shows."""
    state = ControllerState.place(host_state, PLAIN, device)
    out, out_flags, out_mu = layout.empty_outputs(device, has_rows=rows is not None)
    out.fill_(poison)
    out_flags.view(torch.uint8).fill_(2)  # neither False nor True
    out_mu.fill_(poison)
    new_state, batch, mu = launch.kernel_close_step(
        layout.pack_state(state), config, observations, prior, torch_rows(rows, device), out, out_flags, out_mu
    )
    assert int(out_flags.view(torch.uint8).max()) <= 1, "the kernel left a flag unwritten"
    assert mu is out_mu and torch.equal(mu, new_state.mu.to(torch.float32)), "mu as float32 is the state's, cast"
    return (new_state, batch), out, out_flags


def _values(state: ControllerState, batch: BatchStats | None) -> dict[str, float]:
    named = {f.name: getattr(state, f.name) for f in fields(state)}
    if batch is not None:
        named.update({f"batch_{f.name}": getattr(batch, f.name) for f in fields(batch)})
    return {name: float(value) for name, value in named.items()}


def assert_same(got, want, *, exact: bool, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    """Every state field and batch field: NaN where the reference has NaN,
    flags and counts equal, floats equal (``exact``) or within tolerance.
    The message names the first field that differs."""
    got_values, want_values = _values(*got), _values(*want)
    assert got_values.keys() == want_values.keys()
    for name, w in want_values.items():
        g = got_values[name]
        if math.isnan(w):
            assert math.isnan(g), f"{name}: got {g!r}, want NaN"
        elif exact or ControllerState.is_flag(name) or name.startswith(("batch_n_", "n_skipped", "n_large")):
            assert g == w, f"{name}: got {g!r}, want {w!r}"
        else:
            assert g == w or abs(g - w) <= rtol * abs(w) + atol, f"{name}: got {g!r}, want {w!r}"


CONFIGS = {
    "default": {},
    "verified": {"mode": "verified"},
    "per_mean": {"per_mean": True, "trim": 0.25},
    "filtered": {"mode": "verified", "filter_demos": 0.5, "trim": 0.0},
    "thresholded": {"mode": "verified", "filter_demos": 0.25, "success_threshold": 0.25},
    "success_prior": {"prior_from": "success", "success_target": 0.4, "mu_peak": 0.8, "mu_valley": 0.1},
    "odd": {"scale": (2.0, 0.5, 3.0), "trim": 0.49, "kl_band": 0.0, "cap": 1.0, "blend": 1, "large_shift": 0.0},
}


@settings(max_examples=60, deadline=None)
@given(
    n_rows=st.one_of(st.none(), st.integers(0, 3), st.integers(2, 20).map(lambda k: 2 * k + 1)),
    seed=st.integers(0, 2**32 - 1),
    config=st.sampled_from(sorted(CONFIGS)),
    expert=st.booleans(),
    scored=st.sampled_from([0.0, 0.5, 1.0]),
    hostile=st.booleans(),
    ties=st.booleans(),
    state=st.sampled_from(["initial", "random", "saturated"]),
    kinds=st.tuples(*[st.sampled_from(OBSERVATION_KINDS)] * 3),
    prior=st.sampled_from([None, 0.3, math.nan, math.inf, "tensor"]),
)
def test_kernel_matches_numpy_and_torch(n_rows, seed, config, expert, scored, hostile, ties, state, kinds, prior):
    """Any rows (none: a step without statistics), config, state and
    observation layout: the kernel's state and batch equal the torch
    close_step's, exactly where no sum over more than two rows is involved
    (element-wise float64 arithmetic in the same order), and both equal the
    float64 numpy path's."""
    rng = np.random.default_rng(seed)
    config = Config(**CONFIGS[config])
    rows = None
    if n_rows is not None:
        rows = random_rows(rng, n_rows, expert=expert, scored=scored, hostile=hostile, ties=ties)
    host_state = random_state(rng, config, state)
    observations = {
        name: observation(kind, v) for name, kind, v in zip(OBSERVATIONS, kinds, (0.03, 0.9, 0.4), strict=True)
    }

    # a prior as a 0-d tensor, as a CUDA graph passes it (the other paths take its value)
    kernel_prior = torch.tensor(0.3, dtype=torch.float64) if prior == "tensor" else prior
    prior = 0.3 if prior == "tensor" else prior
    got, _, _ = kernel_close(host_state, config, observations, kernel_prior, rows)
    assert all(math.isfinite(v) for v in _values(got[0], None).values()), "the state must stay finite"
    exact = n_rows is None or n_rows <= 2
    assert_same(got, torch_close(host_state, config, observations, prior, rows), exact=exact)
    assert_same(got, numpy_close(host_state, config, observations, prior, rows), exact=False)


def test_kernel_writes_every_output_and_is_bit_identical():
    """Outputs poisoned with NaN, then with a finite sentinel: both runs give
    the same bits, so no output was left unwritten, and repeats agree."""
    rng = np.random.default_rng(7)
    config = Config(mode="verified", filter_demos=0.5)
    rows = random_rows(rng, 37, expert=True, scored=0.5, hostile=True, ties=False)
    host_state = random_state(rng, config, "random")
    observations = {"kl": torch.tensor(0.05), "expert_success": 0.7, "policy_success": None}
    runs = [kernel_close(host_state, config, observations, 0.4, rows, poison=p) for p in (math.nan, 1234.5, math.nan)]
    for _, out, out_flags in runs[1:]:
        assert torch.equal(out.view(torch.int64), runs[0][1].view(torch.int64))
        assert torch.equal(out_flags, runs[0][2])


def test_no_rows_and_observations_as_none_or_nan():
    """Where advance tells None from NaN the kernel does too: a NaN kl on a
    step without statistics folds nothing but still clips kl_drift_area (a
    loaded state may hold a negative one), a None kl leaves it alone; None
    and NaN rewards and priors are the same step."""
    config = Config()
    host_state = {**ControllerState.initial(config), "kl_drift_area": -2.0, "has_kl": True, "ema_kl": 0.5}
    nan_kl = {"kl": math.nan, "expert_success": None, "policy_success": None}
    no_kl = {"kl": None, "expert_success": math.nan, "policy_success": torch.tensor(math.nan)}
    for observations in (nan_kl, no_kl):
        for prior in (None, math.nan, 0.2):
            got, _, _ = kernel_close(host_state, config, observations, prior, None)
            assert_same(got, torch_close(host_state, config, observations, prior, None), exact=True)
    assert float(kernel_close(host_state, config, nan_kl, None, None)[0][0].kl_drift_area) == 0.0
    assert float(kernel_close(host_state, config, no_kl, None, None)[0][0].kl_drift_area) == -2.0


def test_trimmed_variance_sorts_nan_after_inf():
    """SFT values NaN, 1, +inf, 1, 3, -0, 2 and two non-SFT rows (padded to
    +inf) sort as -0, 1, 1, 2, 3, +inf, +inf, +inf, NaN (torch.sort): trim
    0.3 keeps positions [2, 5), so 1, 2, 3 and a variance of exactly 1;
    smaller trims reach an +inf, so NaN."""
    n = 9
    nll = np.array([math.nan, 1.0, math.inf, 1.0, 3.0, -0.0, 0.0, 2.0, 5.0])
    sft = np.array([1, 1, 1, 1, 1, 1, 0, 1, 0], dtype=np.float64)
    rows = random_rows(np.random.default_rng(0), n, expert=True, scored=0.0, hostile=False, ties=False)
    rows = RowResults(**{**vars(rows), "nll": nll, "sft": sft, "demo": sft, "rl": 1.0 - sft, "valid": np.ones(n)})
    for trim, var_sft in ((0.0, math.nan), (0.1, math.nan), (0.15, math.nan), (0.3, 1.0)):
        config = Config(trim=trim)
        host_state = ControllerState.initial(config)
        observations = dict.fromkeys(OBSERVATIONS)
        got, _, _ = kernel_close(host_state, config, observations, None, rows)
        assert_same(got, torch_close(host_state, config, observations, None, rows), exact=True)
        assert float(got[1].var_sft) == var_sft or (math.isnan(var_sft) and math.isnan(float(got[1].var_sft)))


def test_more_than_max_rows_is_refused():
    rows = torch_rows(random_rows(np.random.default_rng(1), 5, expert=True, scored=0.0, hostile=False, ties=False))
    config = Config()
    state = ControllerState.place(ControllerState.initial(config), PLAIN, CPU)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(launch, "MAX_ROWS", 4)
        with pytest.raises(ValueError, match="at most MAX_ROWS = 4 rows, got 5"):
            launch.kernel_close_step(
                layout.pack_state(state),
                config,
                dict.fromkeys(OBSERVATIONS),
                None,
                rows,
                *layout.empty_outputs(CPU, has_rows=True),
            )
        assert launch.CloseStepKernel()(CPU, state, config, dict.fromkeys(OBSERVATIONS), None, rows) is None


COMPILE_FOR_A_GPU = r"""
import re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from gaccore.config import Config
from gaccore.kernels.close_step import kernel as cs, launch

fn = cs._close_step_kernel
scalars = {"n_rows": "i32", "kl_value": "fp64", "expert_success_value": "fp64", "policy_success_value": "fp64",
           "prior_value": "fp64", "p_flags": "*i1", "p_out_flags": "*i1", "p_kl": "*fp32", "p_out_mu": "*fp32"}
signature = {p.name: "constexpr" if p.is_constexpr else scalars.get(p.name, "*fp64") for p in fn.params}
variants = [
    (Config(mode="verified", filter_demos=0.5, per_mean=True, success_threshold=0.5), dict(HAS_ROWS=True, KL_FROM=2, EXPERT_SUCCESS_FROM=2, POLICY_SUCCESS_FROM=1, PRIOR_FROM=2, BLOCK_B=2048, CHUNK_B=4)),
    (Config(), dict(HAS_ROWS=False, KL_FROM=1, EXPERT_SUCCESS_FROM=0, POLICY_SUCCESS_FROM=0, PRIOR_FROM=1, BLOCK_B=1, CHUNK_B=1)),
    (Config(), dict(HAS_ROWS=False, KL_FROM=0, EXPERT_SUCCESS_FROM=1, POLICY_SUCCESS_FROM=2, PRIOR_FROM=0, BLOCK_B=1, CHUNK_B=1)),
]
for config, layout in variants:
    source = ASTSource(fn=fn, signature=signature, constexprs={**launch._constants(config), **layout})
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "enable_fp_fusion": False}).asm["ptx"]
    assert not re.search(r"\bfma\.\w+\.f64", ptx), "a product and a sum fused into an fma"
    assert not re.search(r"\b0f[0-9A-F]{8}\b", ptx), "an fp32 constant"
    assert not re.search(r"\b(div|sqrt|rcp)\.approx", ptx), "an approximate division or square root"
print("compiled", len(variants))
"""


def test_kernel_compiles_for_a_gpu_in_float64():
    """The interpreter runs the kernel as numpy code; this compiles it for
    sm_90 as a GPU would (no GPU needed), in a process without
    TRITON_INTERPRET: three variants covering every constexpr branch, with
    no fp32 constant, no fused multiply-add and no approximate division."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_A_GPU], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled 3" in done.stdout


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("n_rows", [None, 2, 37, 2048])
@pytest.mark.parametrize("config", ["default", "filtered"])
def test_cuda_kernel_matches_the_plain_step(n_rows, config):
    """On a GPU (compiled, not interpreted): the torch close_step's state and
    batch (exactly without sums of more than two terms), every output
    written, bit-identical repeats, and no host synchronization."""
    rng = np.random.default_rng(n_rows or 0)
    config = Config(**CONFIGS[config])
    rows = None if n_rows is None else random_rows(rng, n_rows, expert=True, scored=0.5, hostile=True, ties=False)
    host_state = random_state(rng, config, "random")
    cuda_device = torch.device("cuda")
    observations = {
        "kl": torch.tensor(0.03, device=cuda_device),
        "expert_success": 0.9,
        "policy_success": torch.tensor(math.nan, dtype=torch.float64, device=cuda_device),
    }
    state = layout.pack_state(ControllerState.place(host_state, PLAIN, cuda_device))
    on_gpu = torch_rows(rows, cuda_device)
    buffers = [layout.empty_outputs(cuda_device, has_rows=rows is not None) for _ in range(3)]
    for (out, out_flags, out_mu), poison in zip(buffers, (math.nan, 1234.5, math.nan), strict=True):
        out.fill_(poison)
        out_flags.view(torch.uint8).fill_(2)
        out_mu.fill_(poison)
    launch.kernel_close_step(state, config, observations, 0.3, on_gpu, *buffers[0])  # compiles outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        runs = [launch.kernel_close_step(state, config, observations, 0.3, on_gpu, *b) for b in buffers[1:]]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    (out_a, flags_a, mu_a), (out_b, flags_b, mu_b) = buffers[1:]
    assert torch.equal(out_a.view(torch.int64), out_b.view(torch.int64)) and torch.equal(flags_a, flags_b)
    assert int(flags_a.view(torch.uint8).max()) <= 1
    assert torch.equal(mu_a, mu_b) and torch.equal(mu_a, runs[0][0].mu.to(torch.float32))
    want = torch_close(host_state, config, observations, 0.3, rows, device=cuda_device)
    assert_same(runs[0][:2], want, exact=n_rows is None or n_rows <= 2)
    assert_same(runs[0][:2], numpy_close(host_state, config, observations, 0.3, rows), exact=False)


# -- the kernel as the controller's eager step ------------------------------------------

CONFIG = {"update_every": 2, "warmup_steps": 3, "decay_steps": 20, "stat_beta": 0.5, "kl_target": 1e-3}


@pytest.fixture
def kernel_state(monkeypatch):
    """CPU tensors handled as on a GPU with the Triton kernels (interpreted):
    state in 0-d tensors, statistics from the kernel, the fused close step."""
    monkeypatch.setattr(TORCH_BACKEND, "host_on_cpu", False)
    monkeypatch.setattr(TORCH_BACKEND, "implementation", "triton")


def plain(ctrl: gaccore.Controller) -> gaccore.Controller:
    """The same controller with the plain close_step: its torch steps run ``close_step`` as written."""
    ctrl._runners["torch"] = PlainRunner()
    return ctrl


def _schedule(n_steps: int):
    """Steps of every layout: with and without statistics (update_every 2),
    two batch sizes, micro-batches, per-row scores, a kl tensor or number,
    verifier rates, statistics given to update_stats (the plain step), and a
    state loaded mid-run (the kernel reads a state it did not write)."""
    for t in range(n_steps):
        batch = make_batch(5 if t % 4 < 2 else 9, 7, seed=t, adv_per_token=t % 3 == 0)
        scores = torch.linspace(0.0, 1.0, batch["logp"].shape[0]) if t % 3 else None
        kl = (torch.tensor(0.002 * t, dtype=torch.float64), 0.004, None)[t % 3]
        rewards = {"expert_success": 0.8, "policy_success": torch.tensor(0.1 + 0.02 * t)} if t % 5 == 1 else {}
        if t == 6:
            yield "update_stats", (gaccore.batch_stats(**batch, implementation="torch"),), {"kl": kl, **rewards}
        elif t == 8:
            yield "observe+step", (batch, make_batch(4, 7, seed=100 + t)), {"kl": kl, **rewards}
        elif t == 9:
            yield "reload", (), {}
        else:
            yield "update", (), {**batch, "scores": scores, "kl": kl, **rewards}


def _take(ctrl: gaccore.Controller, method: str, args, kwargs) -> float:
    """One step of ``_schedule``; mu as a Python float (torch or numpy inputs)."""
    if method == "observe+step":
        for batch in args:
            ctrl.observe(**batch)
        return float(ctrl.step(**kwargs))
    if method == "reload":
        ctrl.load_state_dict(ctrl.state_dict(), device=None if ctrl._device is None else "cpu")
        return ctrl.mu
    return float(getattr(ctrl, method)(*args, **kwargs))


@pytest.mark.parametrize(
    "config",
    [{}, {"mode": "verified"}, {"mode": "verified", "filter_demos": 0.5, "per_mean": True, "update_every": 1}],
    ids=["paper", "verified", "filtered"],
)
def test_trajectories_equal_the_plain_step(kernel_state, config):
    """14 steps of every layout: the fused controller's mu and metrics equal
    the plain close_step's on the same row statistics (to the last bits of a
    sum over rows), and the float64 numpy controller's (fp32 statistics)."""
    config = {**CONFIG, **config}
    fused, reference = gaccore.Controller(**config), plain(gaccore.Controller(**config))
    steps = list(_schedule(14))
    got = [_take(fused, *step) for step in steps]
    want = [_take(reference, *step) for step in steps]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert fused.metrics() == pytest.approx(reference.metrics(), rel=1e-12, nan_ok=True)
    assert fused._state.mu._base is not None, "the last step ran the kernel"
    host = gaccore.Controller(**config)
    numpy_mus = []
    for method, args, kwargs in steps:
        if method == "update_stats":
            (stats,) = args
            args = (gaccore.BatchStats(**{f.name: getattr(stats, f.name).item() for f in fields(stats)}),)
        kwargs = {k: v.detach().numpy() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        args = tuple(
            {k: None if v is None else v.numpy() for k, v in a.items()} if isinstance(a, dict) else a for a in args
        )
        numpy_mus.append(_take(host, method, args, kwargs))
    np.testing.assert_allclose(got, numpy_mus, rtol=1e-6)


class _FailingLaunch:
    """A kernel whose launch fails, as a real one may (out of memory, a compile error)."""

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise RuntimeError("launch failed")

        return launch


def test_a_failed_launch_leaves_the_controller_unchanged(kernel_state, monkeypatch):
    """Steps 3 and 5 fail inside the fused step: the state is what it was,
    and the controller then takes the steps of one that never failed."""
    steps = [step for step in _schedule(8) if step[0] == "update"]
    whole = gaccore.Controller(**CONFIG)
    want = [_take(whole, *step) for step in steps]
    ctrl = gaccore.Controller(**CONFIG)
    got = []
    for t, step in enumerate(steps):
        if t in (3, 5):
            before = ctrl.state_dict()
            with monkeypatch.context() as failing:
                failing.setattr(launch, "_close_step_kernel", _FailingLaunch())
                with pytest.raises(RuntimeError, match="launch failed"):
                    _take(ctrl, *step)
            assert ctrl.state_dict() == before and ctrl.step_count == before["step"]
        got.append(_take(ctrl, *step))
    assert got == want
    assert ctrl.metrics() == pytest.approx(whole.metrics(), rel=0, abs=0, nan_ok=True)


@pytest.mark.parametrize(
    "method, host_on_cpu, max_rows, runs",
    [
        ("triton", False, 2048, True),
        ("torch", False, 2048, False),
        ("auto", False, 2048, False),
        ("triton", True, 2048, False),
        ("triton", False, 4, False),
    ],
)
def test_which_steps_run_the_kernel(monkeypatch, method, host_on_cpu, max_rows, runs):
    """The kernel runs where the method runs Triton's kernels and the state
    lives on a device (CUDA with "auto"; CPU with "triton", interpreted), for
    at most MAX_ROWS rows; elsewhere the plain close_step gives the same mu."""
    monkeypatch.setattr(TORCH_BACKEND, "implementation", method)
    monkeypatch.setattr(TORCH_BACKEND, "host_on_cpu", host_on_cpu)
    monkeypatch.setattr(launch, "MAX_ROWS", max_rows)
    calls = []
    close = launch.kernel_close_step
    monkeypatch.setattr(launch, "kernel_close_step", lambda *a, **k: calls.append(1) or close(*a, **k))
    batch = make_batch(6, 9, seed=3)
    ctrl, reference = gaccore.Controller(update_every=1), plain(gaccore.Controller(update_every=1))
    for _ in range(2):
        assert ctrl.update(**batch, kl=0.01).item() == pytest.approx(
            reference.update(**batch, kl=0.01).item(), rel=1e-12
        )
    assert len(calls) == (2 if runs else 0)


class _Dispatches(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten ops a call dispatches and the Triton kernels it launches, in
    order (the interpreter's own tensor work inside a launch is not counted)."""

    def __init__(self, monkeypatch) -> None:
        super().__init__()
        self.ops: list[str] = []
        self._muted = False
        from triton.runtime.interpreter import InterpretedFunction

        run = InterpretedFunction.run

        def counted(fn, *args, **kwargs):
            self.ops.append(f"triton:{fn.fn.__name__}")
            self._muted = True
            try:
                return run(fn, *args, **kwargs)
            finally:
                self._muted = False

        monkeypatch.setattr(InterpretedFunction, "run", counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._muted:
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


# aten ops that only allocate or make views on the host: no device work.
HOST_ONLY = {"empty", "view", "detach", "unbind", "alias"}


def test_an_eager_device_update_is_two_launches(kernel_state, monkeypatch):
    """One update with expert rows, ref_logp and a kl tensor, state on the
    device: 13 dispatches, and the only device work is the two kernels.
    Observing the batch is 7: the allocation of the row results, the bool
    mask and expert flags viewed as bytes (a view and a detach each), the
    statistics kernel, which writes every row field, the rows' roles
    included, and the views of its rows. Closing the step is 6: three
    allocations (the state and the batch, the flags, mu as float32), the
    close-step kernel, which also writes mu as float32, and the views that
    become the state and the batch. (Before the roles and mu's cast moved
    into the kernels: 15 dispatches, 7 of them device work.) The plain
    close_step dispatches hundreds of 0-d ops for the same step."""
    batch, kl = make_batch(6, 11, seed=0), torch.tensor(0.01)
    ctrl = gaccore.Controller()
    ctrl.update(**batch, kl=kl)  # the state onto the device
    with _Dispatches(monkeypatch) as dispatched:
        ctrl.update(**batch, kl=kl)
    launches = [op for op in dispatched.ops if op not in HOST_ONLY]
    assert launches == ["triton:_row_stats_kernel", "triton:_close_step_kernel"], Counter(dispatched.ops)
    assert len(dispatched.ops) <= 13, Counter(dispatched.ops)

    reference = plain(gaccore.Controller())
    reference.update(**batch, kl=kl)
    with _Dispatches(monkeypatch) as dispatched_plain:
        reference.update(**batch, kl=kl)
    assert len(dispatched_plain.ops) > 100, Counter(dispatched_plain.ops)
