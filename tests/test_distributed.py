"""Controller(process_group=...) over two real gloo processes on the CPU.

Every rank must get the same mu at every step, equal to one process that
holds the concatenated batches (rank order), with the caller's kl averaged.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")

import gaccore  # noqa: E402

WORLD_SIZE = 2
STEPS = 50
MICRO_BATCHES = 2  # observe twice per step: merge within a rank, then gather across ranks
ROWS, TOKENS = 6, 9
# A config under which the estimate moves mu visibly within 50 steps.
CONFIG = {"ema_beta": 0.5, "stat_beta": 0.5, "cap": 0.05, "kl_target": 0.01, "warmup_steps": 5, "decay_steps": 30}


def micro_batch(step: int, rank: int, micro: int) -> dict[str, torch.Tensor | None]:
    """Random rows of one rank's micro-batch: experts, token advantages on
    some steps, padding rows (all-zero mask) on rank 1, NaN in padding."""
    gen = torch.Generator().manual_seed(10_000 * step + 100 * rank + micro)
    logp = -torch.rand(ROWS, TOKENS, generator=gen, dtype=torch.float64).mul(3).to(torch.float32)
    lengths = torch.randint(1, TOKENS + 1, (ROWS,), generator=gen)
    mask = torch.arange(TOKENS)[None, :] < lengths[:, None]
    if rank == 1 and micro == 0:
        mask[-2:] = False  # padding rows: this rank had fewer real rows
    logp = torch.where(mask, logp, torch.tensor(float("nan")))
    adv_shape = (ROWS, TOKENS) if step % 4 == 0 else (ROWS,)
    adv = torch.randn(adv_shape, generator=gen) * (1 + rank)
    expert = torch.rand(ROWS, generator=gen) < 0.4
    ref_logp = (logp + 0.1 * torch.randn(ROWS, TOKENS, generator=gen)).clamp(max=0) if step % 3 else None
    return {"logp": logp, "mask": mask, "adv": adv, "expert": expert, "ref_logp": ref_logp}


def caller_kl(step: int, rank: int) -> float | None:
    return None if step % 5 == 0 else 0.004 * (1 + step % 7) * (1 + rank)


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        ctrl = gaccore.Controller(process_group=dist.group.WORLD, **CONFIG)
        mus = []
        for step in range(STEPS):
            for micro in range(MICRO_BATCHES):
                ctrl.observe(**micro_batch(step, rank, micro))
            mus.append(float(ctrl.step(kl=caller_kl(step, rank))))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"mu": mus, "metrics": ctrl.metrics()}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_mus() -> list[float]:
    """One controller fed every rank's micro-batches, concatenated in rank order."""
    ctrl = gaccore.Controller(**CONFIG)
    mus = []
    for step in range(STEPS):
        for rank in range(WORLD_SIZE):
            for micro in range(MICRO_BATCHES):
                ctrl.observe(**micro_batch(step, rank, micro))
        kls = [caller_kl(step, rank) for rank in range(WORLD_SIZE)]
        kl = None if kls[0] is None else sum(kls) / WORLD_SIZE
        mus.append(float(ctrl.step(kl=kl)))
    return mus


def test_every_rank_gets_the_mu_of_the_concatenated_batch(tmp_path: Path) -> None:
    mp.start_processes(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert ranks[0]["mu"] == ranks[1]["mu"]  # bit-identical across ranks
    want = _single_process_mus()
    assert max(abs(a - b) for a, b in zip(ranks[0]["mu"], want, strict=False)) <= 1e-6
    assert max(want) - min(want) > 0.05  # mu really moved, so the comparison means something
    metrics = ranks[0]["metrics"]
    assert metrics["batch_n_sft"] > 0 and metrics["batch_n_rl"] > 0
    assert metrics["rho"] != CONFIG.get("rho_init", 0.5)  # the averaged kl steered rho


# Uneven ranks: rank 0 holds 10 rows in one micro-batch, rank 1 13 rows in two
# (6 + 7); on UNEVEN_EMPTY_STEP rank 0 has no rows at all, on BOTH_EMPTY_STEP
# neither has. Rank 0's inputs and kl carry an autograd graph.
UNEVEN_ROWS = {0: (10,), 1: (6, 7)}
UNEVEN_STEPS, UNEVEN_EMPTY_STEP, BOTH_EMPTY_STEP = 12, 4, 7


def uneven_micro_batches(step: int, rank: int) -> list[dict[str, torch.Tensor | None]]:
    batches = []
    for micro, rows in enumerate(UNEVEN_ROWS[rank]):
        if step == BOTH_EMPTY_STEP or (step == UNEVEN_EMPTY_STEP and rank == 0):
            rows = 0
        gen = torch.Generator().manual_seed(1000 * step + 10 * rank + micro)
        logp = -torch.rand(rows, TOKENS, generator=gen).mul(3)
        mask = torch.arange(TOKENS)[None, :] < torch.randint(1, TOKENS + 1, (rows, 1), generator=gen)
        adv = torch.randn(rows, generator=gen) * (1 + rank)
        expert = torch.rand(rows, generator=gen) < 0.4
        ref_logp = (logp + 0.1 * torch.randn(rows, TOKENS, generator=gen)).clamp(max=0)
        batches.append({"logp": logp, "mask": mask, "adv": adv, "expert": expert, "ref_logp": ref_logp})
    return batches


def _uneven_rank_main(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        ctrl = gaccore.Controller(process_group=dist.group.WORLD, **CONFIG)
        weight = torch.nn.Parameter(torch.zeros(()))  # a trainer's logp that was not detached
        mus, graphs = [], []
        for step in range(UNEVEN_STEPS):
            for batch in uneven_micro_batches(step, rank):
                if rank == 0:
                    batch = {**batch, "logp": batch["logp"] + weight}
                ctrl.observe(**batch)
            kl = caller_kl(step, rank)
            mu = ctrl.step(kl=None if kl is None else weight + kl)
            mus.append(mu.item())
            # On CPU the state is host scalars (no graph possible); on a GPU, tensors.
            kept = vars(ctrl._state).values()
            graphs.append(mu.requires_grad or any(getattr(t, "requires_grad", False) for t in kept))
        result = {"mu": mus, "graphs": graphs, "metrics": ctrl.metrics()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_uneven_row_counts_equal_one_process_on_the_concatenated_rows(tmp_path: Path) -> None:
    mp.start_processes(_uneven_rank_main, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    ctrl = gaccore.Controller(**CONFIG)
    want = []
    for step in range(UNEVEN_STEPS):
        for rank in range(WORLD_SIZE):
            for batch in uneven_micro_batches(step, rank):
                ctrl.observe(**batch)
        kls = [caller_kl(step, rank) for rank in range(WORLD_SIZE)]
        want.append(ctrl.step(kl=None if kls[0] is None else sum(kls) / WORLD_SIZE).item())
    assert ranks[0]["mu"] == ranks[1]["mu"] == want  # bit for bit
    assert len(set(want)) > UNEVEN_STEPS // 2  # mu moved, so equality means something
    assert ranks[0]["metrics"]["batch_n_rl"] + ranks[0]["metrics"]["batch_n_sft"] > 13  # both ranks' rows counted
    assert not any(ranks[0]["graphs"] + ranks[1]["graphs"])


def test_no_reduction_without_a_group() -> None:
    # A controller without process_group never touches torch.distributed.
    assert not dist.is_initialized()
    ctrl = gaccore.Controller(**CONFIG)
    mu = ctrl.update(**micro_batch(0, 0, 0), kl=0.01)
    assert float(mu) == pytest.approx(ctrl.mu)


def test_all_gather_rejects_ragged_rows() -> None:
    from dataclasses import dataclass

    from gaccore.kernels.distributed import all_gather_row_results

    @dataclass(frozen=True)
    class Rows:
        a: torch.Tensor
        b: torch.Tensor

    with pytest.raises(ValueError, match=r"rows\.b"):
        all_gather_row_results(Rows(torch.zeros(3), torch.zeros(4)), None)
