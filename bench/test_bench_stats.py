"""Batch statistics on CPU: the torch twin against the float64 numpy path.

Run from the repo root:

    python -m pytest bench/test_bench_stats.py --benchmark-columns=min,median,max,rounds

Both compute the same float64 statistics from the same float32 inputs
(``adv`` per sequence, expert rows, ``ref_logp``); the twin is what
``Controller.update`` runs on torch CPU tensors.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import gaccore  # noqa: E402

SHAPES = [(64, 1024), (256, 4096)]


@pytest.fixture(autouse=True)
def one_thread():
    """numpy's element-wise work is single-threaded; so is the twin's here,
    which also keeps the numbers steady on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(rows: int, tokens: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logp = -(torch.rand(rows, tokens, generator=gen) ** 3) * 4.0
    lengths = torch.randint(tokens // 4, tokens + 1, (rows, 1), generator=gen)
    mask = torch.arange(tokens)[None, :] < lengths  # right-padded responses
    return {
        "logp": torch.where(mask, logp, math.nan),
        "mask": mask,
        "adv": torch.randn(rows, generator=gen),
        "expert": torch.rand(rows, generator=gen) < 0.25,
        "ref_logp": logp + 0.05 * torch.randn(rows, tokens, generator=gen),
    }


@pytest.mark.parametrize("rows,tokens", SHAPES, ids=[f"{b}x{t}" for b, t in SHAPES])
def test_torch_twin(benchmark, rows, tokens):
    batch = _batch(rows, tokens)
    stats = benchmark.pedantic(lambda: gaccore.batch_stats(**batch, implementation="torch"), rounds=10, warmup_rounds=1)
    assert stats.n_rl.item() > 0


@pytest.mark.parametrize("rows,tokens", SHAPES, ids=[f"{b}x{t}" for b, t in SHAPES])
def test_numpy(benchmark, rows, tokens):
    batch = {k: v.numpy() for k, v in _batch(rows, tokens).items()}
    stats = benchmark.pedantic(lambda: gaccore.batch_stats(**batch), rounds=10, warmup_rounds=1)
    assert stats.n_rl > 0
