"""gaccore against the public GAC implementation's statistics path, on CPU, in one run.

    ./dev bench bench/test_bench_public_gac.py

Each (B, T) times, side by side in one pytest-benchmark group, one step of:
the public implementation's re-implementation (``bench/public_gac.py``: statistics and
its mu update, with its ``.item()`` calls), gaccore's ``Controller.update`` on
torch CPU tensors (statistics from the numba pass, what "auto" runs on CPU
where numba is installed, and from the torch twin, what it runs without
numba), and on the same batch as numpy arrays. One torch thread;
logp float32 with 10% right padding (zeros, which the public implementation's ``m * x``
needs), a quarter expert rows, advantages one per row ``[B]`` and per token
``[B, T]``, no ref_logp. Compare the ratios of one run: the machine is shared,
absolute times are not steady.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from public_gac import PublicGACController  # noqa: E402

from gaccore import Controller  # noqa: E402
from gaccore.kernels import TORCH_BACKEND  # noqa: E402

SHAPES = [(64, 1024, False), (64, 1024, True), (256, 4096, False), (256, 4096, True)]
IDS = [f"{b}x{t}-adv{'BT' if per_token else 'B'}" for b, t, per_token in SHAPES]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(rows: int, tokens: int, per_token: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(rows + tokens)
    mask = (torch.arange(tokens) < tokens - tokens // 10).expand(rows, tokens).contiguous()
    logp = torch.where(mask, -(torch.rand(rows, tokens, generator=gen) ** 3) * 4.0, 0.0)
    return {
        "logp": logp,
        "mask": mask,
        "adv": torch.randn(rows, tokens, generator=gen) if per_token else torch.randn(rows, generator=gen),
        "expert": torch.rand(rows, generator=gen) < 0.25,
    }


def _run(benchmark, rows: int, tokens: int, per_token: bool, step) -> None:
    benchmark.group = f"update {rows}x{tokens} adv {'[B, T]' if per_token else '[B]'}"
    benchmark.pedantic(step, rounds=30 if rows * tokens > 100_000 else 200, warmup_rounds=3)


@pytest.mark.parametrize("rows,tokens,per_token", SHAPES, ids=IDS)
def test_public_gac_update_stats(benchmark, rows, tokens, per_token):
    batch = _batch(rows, tokens, per_token)
    public = PublicGACController()
    _run(
        benchmark,
        rows,
        tokens,
        per_token,
        lambda: public.update_stats(batch["logp"], batch["mask"], batch["adv"], batch["expert"]),
    )
    assert 0.05 <= public.mu <= 0.9


@pytest.mark.parametrize("rows,tokens,per_token", SHAPES, ids=IDS)
def test_gaccore_update_torch_cpu(benchmark, rows, tokens, per_token):
    pytest.importorskip("numba")  # else "auto" runs the twin, timed below
    batch = _batch(rows, tokens, per_token)
    ctrl = Controller()
    _run(benchmark, rows, tokens, per_token, lambda: ctrl.update(**batch))
    assert 0.05 <= ctrl.mu <= 0.9


@pytest.mark.parametrize("rows,tokens,per_token", SHAPES, ids=IDS)
def test_gaccore_update_torch_cpu_without_numba(benchmark, rows, tokens, per_token, monkeypatch):
    monkeypatch.setattr(TORCH_BACKEND, "implementation", "torch")
    batch = _batch(rows, tokens, per_token)
    ctrl = Controller()
    _run(benchmark, rows, tokens, per_token, lambda: ctrl.update(**batch))
    assert 0.05 <= ctrl.mu <= 0.9


@pytest.mark.parametrize("rows,tokens,per_token", SHAPES, ids=IDS)
def test_gaccore_update_numpy(benchmark, rows, tokens, per_token):
    batch = {name: value.numpy() for name, value in _batch(rows, tokens, per_token).items()}
    ctrl = Controller()
    _run(benchmark, rows, tokens, per_token, lambda: ctrl.update(**batch))
    assert 0.05 <= ctrl.mu <= 0.9
