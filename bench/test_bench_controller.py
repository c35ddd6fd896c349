"""Cost of the numpy path: a whole ``Controller.update`` and the scalar step alone.

Run: ``./dev bench bench/test_bench_controller.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from gaccore import Controller, batch_stats

SHAPES = [(64, 1024), (256, 4096)]


def _inputs(rows: int, tokens: int):
    rng = np.random.default_rng(0)
    logp = -rng.exponential(1.0, (rows, tokens)).astype(np.float32)
    mask = rng.random((rows, tokens)) < 0.9
    adv = rng.normal(size=rows).astype(np.float32)
    expert = rng.random(rows) < 0.25
    ref = (logp + 0.05 * rng.normal(size=(rows, tokens))).astype(np.float32)
    return logp, mask, adv, expert, ref


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}xT{s[1]}")
def test_update_numpy(benchmark, shape):
    logp, mask, adv, expert, ref = _inputs(*shape)
    ctrl = Controller()
    mu = benchmark(ctrl.update, logp, mask, adv, expert, ref_logp=ref)
    assert 0.05 <= mu <= 0.9


def test_scalar_step(benchmark):
    stats = batch_stats(*_inputs(64, 1024)[:4])
    ctrl = Controller()
    mu = benchmark(ctrl.update_stats, stats, kl=0.02)
    assert 0.05 <= mu <= 0.9
