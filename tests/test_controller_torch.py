"""Controller.update on torch tensors: same mu as on numpy, device state,
no host synchronization, state dicts across devices and backends."""

from __future__ import annotations

import json
import math
import warnings

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from kernel_cases import make_batch  # noqa: E402

import gaccore  # noqa: E402
from gaccore.kernels import TORCH_BACKEND  # noqa: E402

CONFIG = {"update_every": 2, "warmup_steps": 3, "decay_steps": 20, "stat_beta": 0.5, "kl_target": 1e-3}


def _host(x):
    return None if x is None else x.detach().cpu().float().numpy() if x.is_floating_point() else x.cpu().numpy()


def _steps(n_steps, *, device="cpu", seed=0):
    """Batches of a run with expert rows, ref_logp and a kl argument on odd steps."""
    for t in range(n_steps):
        batch = make_batch(6, 11, seed=seed + t, adv_per_token=bool(t % 3 == 0))
        batch = {k: None if v is None else v.to(device) for k, v in batch.items()}
        kl = torch.tensor(0.002 * (t % 4), dtype=torch.float64, device=device) if t % 2 else None
        yield batch, kl


def _run_torch(ctrl, n_steps, **kwargs):
    return [ctrl.update(**batch, kl=kl) for batch, kl in _steps(n_steps, **kwargs)]


def _run_numpy(ctrl, n_steps, **kwargs):
    out = []
    for batch, kl in _steps(n_steps, **kwargs):
        host = {k: _host(v) for k, v in batch.items()}
        out.append(ctrl.update(**host, kl=None if kl is None else float(kl)))
    return out


@pytest.fixture
def device_state(monkeypatch):
    """CPU tensors handled exactly as on a GPU: state in 0-d tensors, finalize
    in torch (by default CPU state lives in host scalars), statistics from the
    twin, which runs on any device (the numba pass reads CPU memory through numpy)."""
    monkeypatch.setattr(TORCH_BACKEND, "host_on_cpu", False)
    monkeypatch.setattr(TORCH_BACKEND, "implementation", "torch")


@pytest.fixture(params=["host", "device"])
def cpu_state(request, monkeypatch):
    """Both placements of a CPU controller's state (the device one as in ``device_state``)."""
    monkeypatch.setattr(TORCH_BACKEND, "host_on_cpu", request.param == "host")
    if request.param == "device":
        monkeypatch.setattr(TORCH_BACKEND, "implementation", "torch")
    return request.param


def test_torch_and_numpy_controllers_agree(cpu_state):
    mus = _run_torch(gaccore.Controller(**CONFIG), 30)
    assert all(m.dtype == torch.float32 and m.shape == () and m.device.type == "cpu" for m in mus)
    want = _run_numpy(gaccore.Controller(**CONFIG), 30)
    np.testing.assert_allclose([m.item() for m in mus], want, rtol=1e-6)


def test_cpu_state_lives_on_the_host_and_mu_comes_back_as_a_tensor():
    ctrl = gaccore.Controller(**CONFIG)
    mus = _run_torch(ctrl, 3)
    assert isinstance(ctrl._state.mu, np.float64) and isinstance(ctrl._state.has_kl, np.bool_)
    assert all(isinstance(m, torch.Tensor) and m.dtype == torch.float32 and m.shape == () for m in mus)


def test_state_lives_on_the_device_as_float64(device_state):
    ctrl = gaccore.Controller(**CONFIG)
    _run_torch(ctrl, 3)
    assert ctrl._state.mu.dtype == torch.float64 and ctrl._state.has_kl.dtype == torch.bool
    metrics = ctrl.metrics()
    assert isinstance(metrics["mu"], float) and isinstance(ctrl.mu, float)
    host = gaccore.Controller(**CONFIG)
    _run_numpy(host, 3)
    assert metrics == pytest.approx(host.metrics(), rel=1e-6, nan_ok=True)


# Every torch.Tensor method that reads a value back to the host. On CUDA each
# is a device synchronization; on CPU they are cheap, so patching them to
# raise shows that the update path never calls one.
HOST_READS = (
    "item",
    "tolist",
    "numpy",
    "cpu",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__complex__",
    "__array__",
)


def _forbid_host_reads(monkeypatch):
    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"torch.Tensor.{name} called during update: a host sync on a GPU")

        return method

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse(name))


def test_update_never_reads_device_values(monkeypatch, device_state):
    """50 steps (25 with statistics), expert rows, ref_logp and a kl tensor."""
    steps = list(_steps(50))
    with monkeypatch.context() as patched:
        _forbid_host_reads(patched)
        ctrl = gaccore.Controller(**CONFIG)
        mus = [ctrl.update(**batch, kl=kl) for batch, kl in steps]
        with pytest.raises(AssertionError, match="host sync"):
            bool(mus[0] > 0)  # the patch is live
    numpy_ctrl = gaccore.Controller(**CONFIG)
    want = _run_numpy(numpy_ctrl, 50)
    np.testing.assert_allclose([m.item() for m in mus], want, rtol=1e-6)
    got_metrics, want_metrics = ctrl.metrics(), numpy_ctrl.metrics()
    assert got_metrics.keys() == want_metrics.keys()
    np.testing.assert_allclose(list(got_metrics.values()), list(want_metrics.values()), rtol=1e-6)


def _count_host_reads(monkeypatch):
    calls = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_metrics_and_state_dict_read_the_device_once(monkeypatch, device_state):
    ctrl = gaccore.Controller(**CONFIG)
    _run_torch(ctrl, 5)  # the last step computed statistics: metrics() reads the batch's too
    want_metrics, want_state = ctrl.metrics(), ctrl.state_dict()
    with monkeypatch.context() as patched:
        calls = _count_host_reads(patched)
        metrics = ctrl.metrics()
        assert len(calls) == 1, calls
        state = ctrl.state_dict()
        assert len(calls) == 2, calls
    assert metrics == pytest.approx(want_metrics, nan_ok=True) and state == want_state
    assert "batch_var_sft" in metrics and isinstance(state["state"]["has_kl"], bool)


def test_mu_tensor_stays_on_the_device(monkeypatch, cpu_state):
    ctrl = gaccore.Controller(**CONFIG)
    fresh = ctrl.mu_tensor("cpu")  # host state before any torch input
    assert fresh.dtype == torch.float32 and fresh.shape == () and fresh.item() == pytest.approx(ctrl.mu)
    _run_torch(ctrl, 3)
    if cpu_state == "device":
        with monkeypatch.context() as patched:
            _forbid_host_reads(patched)
            mu = ctrl.mu_tensor()
    else:
        mu = ctrl.mu_tensor()
    assert mu.dtype == torch.float32 and mu.device.type == "cpu" and mu.item() == pytest.approx(ctrl.mu)


def test_observe_and_step_never_read_device_values(monkeypatch, device_state):
    """Gradient accumulation: several observes, one step, a Python-float kl."""
    steps = list(_steps(12))
    with monkeypatch.context() as patched:
        _forbid_host_reads(patched)
        ctrl = gaccore.Controller(**CONFIG)
        mus = []
        for i in range(0, 12, 3):
            for batch, _ in steps[i : i + 3]:
                ctrl.observe(**batch)
            mus.append(ctrl.step(kl=0.01))
        with pytest.raises(AssertionError, match="host sync"):
            bool(mus[0] > 0)  # the patch is live
    numpy_ctrl = gaccore.Controller(**CONFIG)
    want = []
    for i in range(0, 12, 3):
        for batch, _ in steps[i : i + 3]:
            numpy_ctrl.observe(**{k: _host(v) for k, v in batch.items()})
        want.append(numpy_ctrl.step(kl=0.01))
    np.testing.assert_allclose([m.item() for m in mus], want, rtol=1e-6)
    assert ctrl.metrics() == pytest.approx(numpy_ctrl.metrics(), rel=1e-6, nan_ok=True)


def _carries_no_graph(ctrl, mu):
    """Neither mu nor anything the controller keeps between steps is part of an autograd graph."""
    kept = [*vars(ctrl._state).values()]
    if ctrl._last_batch is not None:
        kept += vars(ctrl._last_batch).values()
    return not mu.requires_grad and not any(
        getattr(t, "requires_grad", False) or getattr(t, "grad_fn", None) is not None for t in kept
    )


@pytest.mark.parametrize("backend, compile_step", [("torch", False), ("triton", False), ("triton", "reduce-overhead")])
def test_inputs_with_an_autograd_graph_never_reach_the_controller(backend, compile_step, monkeypatch):
    """A trainer's logp that was not detached (and a kl with a graph): five
    updates, and no graph chains from step to step (the issue's repro), nor
    reaches the replayed update's static buffers."""
    from gaccore.kernels import TORCH_BACKEND

    monkeypatch.setattr(TORCH_BACKEND, "implementation", backend)
    monkeypatch.setattr(TORCH_BACKEND, "host_on_cpu", False)  # the state as tensors, as on a GPU
    weight = torch.nn.Parameter(torch.zeros(()))
    ctrl = gaccore.Controller(**CONFIG, compile_step=compile_step)
    for t, (batch, kl) in enumerate(_steps(5)):
        graphed = {k: v + weight if v is not None and v.is_floating_point() else v for k, v in batch.items()}
        if t == 2:  # not contiguous: the replay copies it on its own, not as bytes
            graphed["logp"] = graphed["logp"].t().contiguous().t()
        mu = ctrl.update(**graphed, kl=None if kl is None else kl + weight)
        assert _carries_no_graph(ctrl, mu), f"step {t}"
    assert ctrl._state.mu_bar.grad_fn is None
    if compile_step:
        recordings = ctrl._runners["torch"]._updates._recordings.values()
        tokens = [t for r in recordings if r.tokens for t in r.tokens.tensors.values()]
        static = [t for t in (*tokens, *(o for r in recordings for o in r.observations.values())) if t is not None]
        assert static and not any(t.requires_grad for t in static)


def test_statistics_with_an_autograd_graph_never_reach_the_controller():
    """update_stats with BatchStats and a kl made from tensors that require grad."""
    weight = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    stats = gaccore.BatchStats(*(weight * v for v in (0.3, 0.8, 1.2, 0.01)), *(torch.tensor(n) for n in (4, 4, 40, 0)))
    ctrl = gaccore.Controller(**CONFIG)
    for _ in range(5):
        mu = ctrl.update_stats(stats, kl=weight * 0.1)
        assert _carries_no_graph(ctrl, mu)


def test_a_kl_tensor_with_a_graph_steps_a_host_controller_quietly():
    """A numpy-state controller reads a torch kl's value without touching its graph (no warning)."""
    ctrl = gaccore.Controller(**CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mu = ctrl.step(kl=torch.tensor(0.05, dtype=torch.float64, requires_grad=True) * 1.0)
    assert isinstance(mu, float) and ctrl.metrics()["ema_kl"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    "name, bad, match",
    [
        ("logp", lambda b: b["logp"].to(torch.int32), "logp must have a floating-point"),
        ("mask", lambda b: b["mask"].to(torch.complex64), "mask must have a bool, integer"),
        ("expert", lambda b: b["expert"].float(), "expert must have a bool or integer"),
        ("adv", lambda b: _host(b["adv"]), r"adv must be a torch\.Tensor"),
    ],
)
def test_steps_without_statistics_check_tensors_like_statistics_steps(name, bad, match):
    batch, _ = next(_steps(1))
    args = {**batch, name: bad(batch)}
    for stats_step in (True, False):
        ctrl = gaccore.Controller(**CONFIG)  # update_every=2
        if not stats_step:
            ctrl.update(**batch)
        before = ctrl.state_dict()
        with pytest.raises(TypeError, match=match):
            ctrl.update(**args)
        assert ctrl.state_dict() == before


def _json_round_trip(state):
    return json.loads(json.dumps(state, allow_nan=False))


@pytest.mark.parametrize("load_on", ["numpy", "torch"])
def test_state_dict_round_trip_across_backends(load_on, cpu_state):
    """Stop a torch controller after 13 steps, resume on numpy or torch: the
    same mu sequence as the controller that never stopped."""
    steps = list(_steps(26))
    whole = gaccore.Controller(**CONFIG)
    want = [whole.update(**batch, kl=kl).item() for batch, kl in steps]

    first = gaccore.Controller(**CONFIG)
    for batch, kl in steps[:13]:
        first.update(**batch, kl=kl)
    state = _json_round_trip(first.state_dict())
    second = gaccore.Controller(**CONFIG)
    if load_on == "numpy":
        second.load_state_dict(state)
        rest = [
            second.update(**{k: _host(v) for k, v in batch.items()}, kl=None if kl is None else float(kl))
            for batch, kl in steps[13:]
        ]
    else:
        second.load_state_dict(state, device="cpu")
        assert isinstance(second._state.mu, torch.Tensor if cpu_state == "device" else np.float64)
        rest = [second.update(**batch, kl=kl).item() for batch, kl in steps[13:]]
    np.testing.assert_allclose(rest, want[13:], rtol=1e-6)


def test_numpy_state_loads_onto_a_torch_device(device_state):
    ctrl = gaccore.Controller(**CONFIG)
    for batch, _kl in _steps(3):
        ctrl.update(**{k: _host(v) for k, v in batch.items()})
    resumed = gaccore.Controller(**CONFIG)
    resumed.load_state_dict(_json_round_trip(ctrl.state_dict()), device=torch.device("cpu"))
    assert resumed.mu == pytest.approx(ctrl.mu) and resumed.step_count == 3
    assert isinstance(resumed._state.rho, torch.Tensor)


def test_non_finite_kl_tensor_keeps_state_finite(cpu_state):
    ctrl = gaccore.Controller(**CONFIG)
    batch, _ = next(_steps(1))
    for kl in (math.nan, math.inf, -math.inf):
        mu = ctrl.update(**batch, kl=torch.tensor(kl))
        assert torch.isfinite(mu)
    metrics = ctrl.metrics()
    assert all(math.isfinite(metrics[k]) for k in ("mu", "rho", "mu_bar", "kl_drift_area"))


@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_compiled_step_gives_the_eager_mu_sequence(device_state, mode):
    """compile_step: close_step (finalize + advance) through torch.compile on
    CPU (inductor's C++ backend) takes the same steps as eager, also replayed
    from static buffers. One layout: statistics, a kl and the prior on every
    step, the same batch shape."""
    config = {**CONFIG, "update_every": 1}
    steps = [(batch, torch.tensor(0.003 * t, dtype=torch.float64)) for t, (batch, _) in enumerate(_steps(6))]
    eager = gaccore.Controller(**config)
    compiled = gaccore.Controller(**config, compile_step=mode)
    want = [eager.update(**batch, kl=kl).item() for batch, kl in steps]
    got = [compiled.update(**batch, kl=kl).item() for batch, kl in steps]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert compiled.metrics() == pytest.approx(eager.metrics(), rel=1e-12, nan_ok=True)


def test_compile_step_must_be_a_flag_or_a_mode():
    for bad in (1, "max-autotune"):
        with pytest.raises(TypeError, match="compile_step must be"):
            gaccore.Controller(compile_step=bad)


def _varied_steps(n_steps, device="cpu"):
    """Every layout a replayed step meets: with and without statistics
    (update_every 2), two batch sizes, a kl, verifier rates, statistics from
    update_stats, and a step with nothing at all."""
    for t in range(n_steps):
        batch = make_batch(6 if t % 4 < 2 else 9, 11, seed=t, adv_per_token=t % 3 == 0)
        batch = {k: None if v is None else v.to(device) for k, v in batch.items()}
        kl = torch.tensor(0.002 * (t % 4), dtype=torch.float64, device=device) if t % 3 else None
        policy = torch.tensor(0.1 + 0.02 * t, device=device)
        rewards = {"expert_success": 0.8, "policy_success": policy} if t % 5 == 1 else {}
        if t % 7 == 6:
            yield "update_stats", (gaccore.batch_stats(**batch, implementation="torch"),), {"kl": kl, **rewards}
        else:
            yield "update", (), {**batch, "kl": kl, **rewards}


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile as the identity: the replay machinery around eager close_step."""
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)


@pytest.mark.parametrize("mode", ["paper", "verified"])
def test_replayed_step_gives_the_eager_trajectory(device_state, eager_compile, mode):
    """compile_step="reduce-overhead" without a GPU, statistics from the
    torch twin, so every step replays close_step alone (the whole-update
    replay runs the Triton kernels; tests below): static inputs, the state
    rewritten in place by every replay, one recording per layout, states
    passed between recordings. Bit for bit the eager mu and metrics, through
    a state loaded mid-run."""
    config = {**CONFIG, "mode": mode}
    eager, replayed = gaccore.Controller(**config), gaccore.Controller(**config, compile_step="reduce-overhead")
    for t, (method, args, kwargs) in enumerate(_varied_steps(40)):
        want = getattr(eager, method)(*args, **kwargs)
        got = getattr(replayed, method)(*args, **kwargs)
        assert got.item() == want.item(), f"step {t}"
        assert replayed.metrics() == pytest.approx(eager.metrics(), rel=0, abs=0, nan_ok=True), f"step {t}"
        if t == 20:
            state = _json_round_trip(replayed.state_dict())
            eager.load_state_dict(state)
            replayed.load_state_dict(state)
    assert len(replayed._runners["torch"]._close._recordings) >= 4
    # Same layout twice (no statistics, no kl): the state is the recording's static state.
    replayed.update_stats(None)
    first = replayed._state
    replayed.update_stats(None)
    assert replayed._state is first


def test_replayed_step_records_again_after_dropping_a_layout(device_state, eager_compile, monkeypatch):
    """At most MAX_GRAPHS layouts of close_step are kept (twin statistics, as
    above); a dropped one is recorded again and still gives the eager mu."""
    from gaccore.kernels.close_step import graphs

    monkeypatch.setattr(graphs, "MAX_GRAPHS", 2)
    config = {**CONFIG, "update_every": 1}
    eager, replayed = gaccore.Controller(**config), gaccore.Controller(**config, compile_step="reduce-overhead")
    for t, rows in enumerate([3, 5, 7, 3, 5, 3]):
        batch = make_batch(rows, 9, seed=t)
        assert replayed.update(**batch).item() == eager.update(**batch).item()
    assert [key[1][2] for key in replayed._runners["torch"]._close._recordings] == [(5,), (3,)]


# -- compile_step="reduce-overhead": the whole update replayed ------------------------


@pytest.fixture
def triton_state(monkeypatch):
    """CPU tensors handled as on a GPU with its Triton kernels (interpreted):
    state in 0-d tensors, statistics from the kernel, the fused close step.
    Where the whole-update replay applies."""
    monkeypatch.setattr(TORCH_BACKEND, "host_on_cpu", False)
    monkeypatch.setattr(TORCH_BACKEND, "implementation", "triton")


def _replay_steps(n_steps, device="cpu"):
    """update() arguments of every layout the whole-update replay meets. With
    CONFIG's update_every of 2, odd steps have no statistics; the even ones
    (u = t // 2) vary: two batch shapes, advantages per row or per token,
    expert flags or none, ref_logp or none, a non-contiguous logp and mask
    (copied one by one). Every step varies: per-row scores (float32,
    float64) or none, a kl as a float64 or float32 tensor, a number or none,
    and verifier rates on some."""
    for t in range(n_steps):
        u = t // 2
        rows, tokens = (5, 9) if u % 2 == 0 else (7, 12)
        batch = make_batch(rows, tokens, seed=t, adv_per_token=u % 3 == 0, expert=u % 5 != 2, ref=u % 4 != 3)
        if u % 4 == 1:
            batch["logp"] = torch.stack([batch["logp"], batch["logp"]], dim=2)[:, :, 0]
            batch["mask"] = batch["mask"].t().contiguous().t()
        scores = (None, torch.linspace(0.0, 1.0, rows), torch.linspace(1.0, 0.0, rows, dtype=torch.float64))[t % 3]
        kl = (
            torch.tensor(0.002 * t, dtype=torch.float64),
            0.004,
            None,
            torch.tensor(0.003, dtype=torch.float32),
        )[(t + u) % 4]
        rewards = {"expert_success": 0.8, "policy_success": torch.tensor(0.1 + 0.02 * t)} if t % 5 == 1 else {}
        step = {**batch, "scores": scores, "kl": kl, **rewards}
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in step.items()}


def _same_metrics(got, want):
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name] == value or (math.isnan(got[name]) and math.isnan(value)), name


@pytest.mark.parametrize("config", [{}, {"mode": "verified", "filter_demos": 0.5}], ids=["paper", "verified"])
def test_replayed_update_gives_the_eager_trajectory(triton_state, config):
    """compile_step="reduce-overhead" without a GPU: each update is one
    "replay" of the statistics kernel and the close-step kernel over static
    buffers, per layout, the state in one home every recording rewrites. Bit
    for bit the eager (fused) mu and metrics at every step, through a state
    loaded mid-run; no step took the close_step-only replay."""
    config = {**CONFIG, **config}
    eager = gaccore.Controller(**config)
    replayed = gaccore.Controller(**config, compile_step="reduce-overhead")
    for t, step in enumerate(_replay_steps(16)):
        want = eager.update(**step)
        got = replayed.update(**step)
        assert got.item() == want.item() and got.dtype == torch.float32, f"step {t}"
        _same_metrics(replayed.metrics(), eager.metrics())
        if t == 9:
            state = _json_round_trip(replayed.state_dict())
            eager.load_state_dict(state)
            replayed.load_state_dict(state)
    assert len(replayed._runners["torch"]._updates._recordings) >= 8
    assert not replayed._runners["torch"]._close._recordings


def test_replayed_updates_hand_over_to_observe_and_step(triton_state, eager_compile, monkeypatch):
    """Steps the whole-update replay leaves to observe + step and the
    close_step replay: two micro-batches, statistics given to update_stats,
    and more rows than the close-step kernel takes (MAX_ROWS lowered to 8).
    The state passes between the two replays both ways; the eager
    controller's mu at every step (its fused close step and the plain
    close_step differ in the last bits of their sums over rows)."""
    from gaccore.kernels.close_step import launch

    monkeypatch.setattr(launch, "MAX_ROWS", 8)
    config = {**CONFIG, "update_every": 1}
    eager = gaccore.Controller(**config)
    replayed = gaccore.Controller(**config, compile_step="reduce-overhead")
    for t in range(8):
        batch = make_batch(9 if t == 5 else 5, 9, seed=t)
        for ctrl in (eager, replayed):
            if t == 2:
                ctrl.observe(**batch)
                ctrl.observe(**make_batch(4, 9, seed=50))
                mu = ctrl.step(kl=0.01)
            elif t == 4:
                mu = ctrl.update_stats(gaccore.batch_stats(**batch, implementation="torch"), kl=0.01)
            else:
                mu = ctrl.update(**batch, kl=0.01)
            if ctrl is eager:
                want = mu.item()
        assert mu.item() == pytest.approx(want, rel=1e-12, abs=0), f"step {t}"
    assert replayed.metrics() == pytest.approx(eager.metrics(), rel=1e-12, nan_ok=True)
    assert len(replayed._runners["torch"]._updates._recordings) == 1  # 5 rows, a kl and the prior: steps 0, 1, 3, 6, 7
    assert len(replayed._runners["torch"]._close._recordings) >= 2  # steps 2, 4 and 5


def test_replayed_update_reuses_a_recorded_layout(triton_state, monkeypatch):
    """A layout met again replays its recording: nothing is recorded or
    allocated again, and the state, the home's, is not copied. A layout that
    differs only in an observation shares the static token buffers."""
    from gaccore.kernels.close_step import graphs

    ctrl = gaccore.Controller(**{**CONFIG, "update_every": 1}, compile_step="reduce-overhead")
    ctrl.update(**make_batch(5, 9, seed=1), kl=0.01)
    replay = ctrl._runners["torch"]._updates
    (recording,) = replay._recordings.values()
    state = ctrl._state
    copies = []
    monkeypatch.setattr(graphs, "_copy_into", lambda *args: copies.append(args))
    ctrl.update(**make_batch(5, 9, seed=2), kl=0.02)
    assert list(replay._recordings.values()) == [recording] and ctrl._state is state and not copies
    ctrl.update(**make_batch(5, 9, seed=3), kl=torch.tensor(0.02))  # a kl tensor: another layout
    first, second = replay._recordings.values()
    assert first is recording and second.tokens is first.tokens and len(replay._tokens) == 1


def test_replayed_update_records_again_after_dropping_a_layout(triton_state, monkeypatch):
    """At most MAX_GRAPHS recordings are kept; the token buffers of a dropped
    one are freed with it, and a dropped layout is recorded again with the
    eager mu."""
    from gaccore.kernels.close_step import graphs

    monkeypatch.setattr(graphs, "MAX_GRAPHS", 2)
    config = {**CONFIG, "update_every": 1}
    eager = gaccore.Controller(**config)
    replayed = gaccore.Controller(**config, compile_step="reduce-overhead")
    for t, rows in enumerate([3, 5, 7, 3, 5, 3]):
        batch = make_batch(rows, 9, seed=t)
        assert replayed.update(**batch).item() == eager.update(**batch).item()
    recordings = replayed._runners["torch"]._updates._recordings
    assert [key[1][0][0][0] for key in recordings] == [5, 3]  # logp's rows, oldest first
    assert len(replayed._runners["torch"]._updates._tokens) == 2


def test_replayed_update_never_aliases_its_inputs(triton_state):
    """The step's tensors are copied into the recording's buffers: changing
    them after update (a trainer refilling its buffers) changes neither this
    step's state nor the next step's, and the mu handed back stays what it
    was after the next update, which rewrites the graph's own output."""
    config = {**CONFIG, "update_every": 1}
    eager = gaccore.Controller(**config)
    replayed = gaccore.Controller(**config, compile_step="reduce-overhead")
    batch, kl = make_batch(5, 9, seed=4), torch.tensor(0.01, dtype=torch.float64)
    want = eager.update(**{k: v.clone() for k, v in batch.items()}, kl=kl.clone()).item()
    mu = replayed.update(**batch, kl=kl)
    metrics = replayed.metrics()
    (recording,) = replayed._runners["torch"]._updates._recordings.values()
    inputs = [v for v in (*batch.values(), kl) if v is not None]
    static = [t for t in (*recording.tokens.tensors.values(), *recording.observations.values()) if t is not None]
    ours = {t.untyped_storage().data_ptr() for t in static}
    assert not ours & {t.untyped_storage().data_ptr() for t in inputs}
    for value in inputs:
        value.fill_(False if value.dtype == torch.bool else math.nan)
    _same_metrics(replayed.metrics(), metrics)
    following = make_batch(5, 9, seed=5)
    assert replayed.update(**following, kl=0.02).item() == eager.update(**following, kl=0.02).item()
    assert mu.item() == want


def test_replayed_update_never_reads_device_values(monkeypatch, triton_state):
    """Replayed updates of every layout, with every host read patched to
    raise: none happens (recordings included); the eager trajectory."""
    steps = list(_replay_steps(12))
    with monkeypatch.context() as patched:
        _forbid_host_reads(patched)
        replayed = gaccore.Controller(**CONFIG, compile_step="reduce-overhead")
        mus = [replayed.update(**step) for step in steps]
    eager = gaccore.Controller(**CONFIG)
    assert [m.item() for m in mus] == [eager.update(**step).item() for step in steps]


class _DeviceWork(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten ops a call dispatches outside the recording's replay, which is
    logged as "replay" (on a GPU, one graph launch)."""

    def __init__(self, recording) -> None:
        super().__init__()
        self.ops: list[str] = []
        self._muted = False
        inner = recording.replay

        def replay():
            self.ops.append("replay")
            self._muted = True
            try:
                inner()
            finally:
                self._muted = False

        recording.replay = replay

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._muted:
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_a_replayed_update_launches_four_things(triton_state):
    """Host side of a replayed update with expert rows, ref_logp, a kl tensor
    and the prior: a fill of the prior's buffer, one foreach copy of every
    token tensor and the kl (as bytes, whatever their dtypes), the replay,
    and the copy of mu handed back. Everything else it dispatches only makes
    views: each tensor's bytes (a view, and a detach for a change of dtype)."""
    ctrl = gaccore.Controller(compile_step="reduce-overhead")
    batch, kl = make_batch(6, 11, seed=0), torch.tensor(0.01)
    ctrl.update(**batch, kl=kl)  # records
    (recording,) = ctrl._runners["torch"]._updates._recordings.values()
    with _DeviceWork(recording) as dispatched:
        ctrl.update(**batch, kl=kl)
    assert [op for op in dispatched.ops if op not in ("view", "detach")] == [
        "fill_",
        "_foreach_copy_",
        "replay",
        "clone",
    ]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_update_is_sync_free():
    """torch.cuda.set_sync_debug_mode('error') around 100 updates."""
    steps = list(_steps(100, device="cuda"))
    ctrl = gaccore.Controller(**CONFIG)
    ctrl.update(**steps[0][0])  # compile the kernel outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mus = [ctrl.update(**batch, kl=kl) for batch, kl in steps]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(m.device.type == "cuda" and m.dtype == torch.float32 for m in mus)
    assert 0.0 < ctrl.mu < 1.0


@cuda
@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_cuda_compiled_step_is_sync_free_and_matches_eager(mode):
    """compile_step on a GPU (inductor; "reduce-overhead" adds CUDA graphs):
    no host sync under set_sync_debug_mode('error') once compiled, the eager
    mu sequence."""
    config = {**CONFIG, "update_every": 1}
    steps = [
        (batch, torch.tensor(0.003 * t, dtype=torch.float64, device="cuda"))
        for t, (batch, _) in enumerate(_steps(20, device="cuda"))
    ]
    eager = gaccore.Controller(**config)
    want = [eager.update(**batch, kl=kl).item() for batch, kl in steps]
    compiled = gaccore.Controller(**config, compile_step=mode)
    # compile (and record graphs) outside the checked region
    got = [compiled.update(**batch, kl=kl).item() for batch, kl in steps[:3]]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mus = [compiled.update(**batch, kl=kl).clone() for batch, kl in steps[3:]]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    got += [m.item() for m in mus]
    np.testing.assert_allclose(got, want, rtol=1e-9)


@cuda
def test_cuda_replayed_step_across_layouts():
    """compile_step="reduce-overhead" on a GPU over every layout of
    _varied_steps (whole updates and, for update_stats, close_step alone,
    states passed between the CUDA graphs, a state loaded mid-run): the
    eager mu sequence."""
    eager, replayed = gaccore.Controller(**CONFIG), gaccore.Controller(**CONFIG, compile_step="reduce-overhead")
    for t, (method, args, kwargs) in enumerate(_varied_steps(40, device="cuda")):
        want = getattr(eager, method)(*args, **kwargs).item()
        got = getattr(replayed, method)(*args, **kwargs).item()
        assert got == pytest.approx(want, rel=1e-9), f"step {t}"
        if t == 20:
            state = _json_round_trip(replayed.state_dict())
            eager.load_state_dict(state)
            replayed.load_state_dict(state)
    assert len(replayed._runners["torch"]._updates._recordings) >= 4 and replayed._runners["torch"]._close._recordings


@cuda
def test_cuda_replayed_update_is_the_eager_update_without_syncs():
    """Whole updates replayed from CUDA graphs over every layout of
    _replay_steps, twice: the first pass records (Triton compiles), the
    second runs under set_sync_debug_mode("error"). Bit for bit the eager
    (fused) mu at every step: the same kernels on the same values; a mu
    handed back survives later replays; no step took the other path."""
    steps = list(_replay_steps(16, device="cuda"))
    eager = gaccore.Controller(**CONFIG)
    replayed = gaccore.Controller(**CONFIG, compile_step="reduce-overhead")
    want = [eager.update(**step).item() for step in steps]
    got = [replayed.update(**step).item() for step in steps]
    assert got == want
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mus = [replayed.update(**step) for step in steps]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [m.item() for m in mus] == [eager.update(**step).item() for step in steps]
    assert all(m.device.type == "cuda" and m.dtype == torch.float32 for m in mus)
    assert (
        len(replayed._runners["torch"]._updates._recordings) >= 8 and not replayed._runners["torch"]._close._recordings
    )


@cuda
def test_cuda_state_moves_between_devices():
    """Save on GPU, load on CPU and back: the same mu sequence."""
    steps = list(_steps(20, device="cuda"))
    whole = gaccore.Controller(**CONFIG)
    want = [whole.update(**batch, kl=kl).item() for batch, kl in steps]
    ctrl = gaccore.Controller(**CONFIG)
    got = [ctrl.update(**batch, kl=kl).item() for batch, kl in steps[:7]]
    on_cpu = gaccore.Controller(**CONFIG)
    on_cpu.load_state_dict(_json_round_trip(ctrl.state_dict()), device="cpu")
    for batch, kl in steps[7:14]:
        host = {k: None if v is None else v.cpu() for k, v in batch.items()}
        got.append(on_cpu.update(**host, kl=None if kl is None else kl.cpu()).item())
    back = gaccore.Controller(**CONFIG)
    back.load_state_dict(_json_round_trip(on_cpu.state_dict()), device="cuda")
    got += [back.update(**batch, kl=kl).item() for batch, kl in steps[14:]]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("adv_per_token", [False, True])
def test_observed_rows_do_not_alias_the_callers_tensors(adv_per_token: bool) -> None:
    """A caller may reuse its buffers between observe() and step(): the
    observed statistics are the batch as it was when observed."""
    batch = make_batch(9, 13, seed=5, adv_per_token=adv_per_token)
    batch = {name: value.double() if name in ("logp", "adv") else value for name, value in batch.items()}
    batch["scores"] = (torch.arange(9, dtype=torch.float64) % 3) / 2
    kept = {name: value.clone() for name, value in batch.items()}
    reused, fresh = gaccore.Controller(), gaccore.Controller()
    reused.observe(**batch)
    batch["adv"].mul_(-3.0).add_(1.0)
    batch["logp"].mul_(0.5)
    batch["scores"].fill_(1.0)
    reused.step(kl=0.1)
    fresh.update(**kept, kl=0.1)
    got, want = reused.metrics(), fresh.metrics()
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name] == value or (math.isnan(got[name]) and math.isnan(value)), name
