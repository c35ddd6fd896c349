"""Controller.update on torch tensors: same mu as on numpy, device state,
no host synchronization, state dicts across devices and backends."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from kernel_cases import make_batch  # noqa: E402

import gaccore  # noqa: E402

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


def test_torch_and_numpy_controllers_agree():
    mus = _run_torch(gaccore.Controller(**CONFIG), 30)
    assert all(m.dtype == torch.float32 and m.shape == () and m.device.type == "cpu" for m in mus)
    want = _run_numpy(gaccore.Controller(**CONFIG), 30)
    np.testing.assert_allclose([m.item() for m in mus], want, rtol=1e-6)


def test_state_lives_on_the_device_as_float64():
    ctrl = gaccore.Controller(**CONFIG)
    _run_torch(ctrl, 3)
    assert ctrl._state.mu.dtype == torch.float64 and ctrl._state.has_kl.dtype == torch.bool
    metrics = ctrl.metrics()
    assert isinstance(metrics["mu"], float) and isinstance(ctrl.mu, float)
    assert metrics["batch_n_rl"] >= 0
