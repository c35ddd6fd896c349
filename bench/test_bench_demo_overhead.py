"""Controller overhead against one training step of the demo's loop.

    pytest bench/test_bench_demo_overhead.py --benchmark-only

Both benchmarks run on the same warmed-up trainer: ``training_step`` is one
full step of ``gaccore demo`` (sample 16 x 8 rollouts, forward, backward,
AdamW, the GAC update included); ``controller_update`` replays the GAC
``Controller.update`` of that step on the same inputs. Their ratio is the
share of a step the controller costs; the result is in bench/RESULTS.md.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from gaccore.demo.task import make_task
from gaccore.demo.train import RunSettings, Trainer

WARMUP_STEPS = 20


@pytest.fixture(scope="module")
def trainer() -> Trainer:
    trainer = Trainer("gac", 0, make_task(0), RunSettings())
    for _ in range(WARMUP_STEPS):  # past the controller's first steps and torch's first calls
        trainer.step()
    return trainer


def test_training_step(benchmark, trainer: Trainer) -> None:
    benchmark.group = "demo-step"
    benchmark.pedantic(trainer.step, rounds=60, iterations=1, warmup_rounds=5)


def test_controller_update(benchmark, trainer: Trainer) -> None:
    benchmark.group = "demo-step"
    args, kwargs = trainer.last_rule_inputs
    benchmark.pedantic(trainer.rule.update, args=args, kwargs=kwargs, rounds=300, iterations=1, warmup_rounds=10)
