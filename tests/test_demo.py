"""The demo: the task's reward and expert, a tiny end-to-end run, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from gaccore.baselines import FixedMu, HPTGate
from gaccore.demo.__main__ import main
from gaccore.demo.report import SCHEMA, deterministic_view
from gaccore.demo.runner import run_demo
from gaccore.demo.task import EQUALS, MINUS, PLUS, SUITE, make_suite_task, make_task, reward
from gaccore.demo.train import RunSettings, group_advantages, hybrid_loss

TINY = RunSettings(steps=12, prompts_per_step=4, group_size=4, eval_every=6)


def _decode(prompt: np.ndarray) -> tuple[int, int]:
    a1, a0, plus, b1, b0, equals = prompt
    assert (plus, equals) == (PLUS, EQUALS)
    return 10 * a1 + a0, 10 * b1 + b0


def test_task_answers_and_reward_are_right() -> None:
    task = make_task(0, n_train=300, n_test=100)
    for prompt, answer in zip(task.test_prompts, task.test_answers, strict=False):
        a, b = _decode(prompt)
        assert 10 * answer[0] + answer[1] == a + b
    assert reward(task.test_answers, task.test_answers).tolist() == [1.0] * 100
    wrong = task.test_answers.copy()
    wrong[:, 1] = (wrong[:, 1] + 1) % 10  # one wrong digit is no reward
    assert reward(wrong, task.test_answers).tolist() == [0.0] * 100
    train = {_decode(p) for p in task.train_prompts}
    assert train.isdisjoint(_decode(p) for p in task.test_prompts)


def test_expert_drops_the_carry_on_the_expected_share() -> None:
    task = make_task(0)
    wrong = (task.train_demos != task.train_answers).any(axis=1)
    # Only carries are dropped, only in the tens digit, by exactly one.
    assert not wrong[~task.train_carry].any()
    assert np.array_equal(task.train_demos[:, 1], task.train_answers[:, 1])
    assert np.all(task.train_answers[wrong, 0] - task.train_demos[wrong, 0] == 1)
    carry_drop_rate = wrong[task.train_carry].mean()
    assert 0.70 < carry_drop_rate < 0.80  # 75% of the carry pairs
    assert 0.30 < task.demo_error_rate < 0.38  # about a third of all demos
    # Some carry demos stay right: RL can find the carry from them.
    assert (task.train_carry & ~wrong).sum() > 100
    assert make_task(0, error_rate=0.0).demo_error_rate == 0.0


@pytest.mark.parametrize("name", sorted(SUITE))
def test_suite_experts_err_in_their_declared_pattern(name: str) -> None:
    spec, task = SUITE[name], make_suite_task(name)
    wrong = task.train_demo_reward == 0.0
    assert np.array_equal(wrong, (task.train_demos != task.train_answers).any(axis=1))
    operator = PLUS if spec.operation == "add" else MINUS
    assert (task.train_prompts[:, 2] == operator).all()
    for prompt, answer, carry in zip(task.train_prompts[:50], task.train_answers, task.train_carry, strict=False):
        a, b = 10 * prompt[0] + prompt[1], 10 * prompt[3] + prompt[4]
        assert 10 * answer[0] + answer[1] == (a + b if spec.operation == "add" else a - b)
        assert carry == ((a % 10 + b % 10 >= 10) if spec.operation == "add" else (a % 10 < b % 10))
    if spec.expert_error == "none":
        assert not wrong.any()
    elif spec.expert_error == "drop-carry":
        assert not wrong[~task.train_carry].any()
        step = -1 if spec.operation == "add" else 1
        assert np.all(task.train_demos[wrong, 0] - task.train_answers[wrong, 0] == step)
        assert abs(wrong[task.train_carry].mean() - spec.error_rate) < 0.05
    elif spec.expert_error == "units-off":
        assert np.array_equal(task.train_demos[:, 0], task.train_answers[:, 0])
        assert np.all((task.train_demos[wrong, 1] - task.train_answers[wrong, 1]) % 10 == 1)
        assert abs(wrong.mean() - spec.error_rate) < 0.05
    else:
        assert abs(wrong.mean() - spec.error_rate) < 0.05
        assert len({tuple(d) for d in task.train_demos[wrong]}) > 50  # unstructured
    # The expert leaves correct hard demonstrations for RL to build on, except where it errs at random.
    assert (task.train_carry & ~wrong).sum() > 100


def test_group_advantages_and_hpt_loss() -> None:
    torch = pytest.importorskip("torch")
    advantages = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(advantages[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3)
    assert torch.equal(advantages[1], torch.zeros(4))  # no signal in a uniform group

    gate = HPTGate()
    mu = gate.update(rewards=np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.9, 0.9], [0.2, 0.6], [0.3, 0.3]]))
    rl_loss = torch.tensor(0.7)
    loss = hybrid_loss(gate, mu, logp, rl_loss, "nll")
    # SFT only on the demos of prompts 0 and 2, weighted by their share (1/2 of the prompts).
    expected = -(logp[0].sum() + logp[2].sum()) / 4 * 0.5 + rl_loss
    assert torch.allclose(loss, expected)
    assert torch.allclose(hybrid_loss(FixedMu(0.25), 0.25, logp, rl_loss, "nll"), 0.25 * -logp.mean() + 0.75 * rl_loss)


def _tiny_run(out: Path) -> dict:
    return run_demo(["gac", "hpt"], [0], TINY, out, command="test", show_progress=False)


def test_tiny_run_writes_every_output(tmp_path: Path) -> None:
    report = _tiny_run(tmp_path)
    for name in ("report.md", "report.json", "mu.png", "gac_proxies.png", "accuracy.png", "kl.png"):
        assert (tmp_path / name).stat().st_size > 0
    stored = json.loads((tmp_path / "report.json").read_text())
    assert stored["schema"] == SCHEMA
    assert set(stored["methods"]) == {"gac", "hpt"}
    for summary in stored["methods"].values():
        for key in (
            "final_accuracy_mean",
            "final_accuracy_std",
            "kl_drift_area_mean",
            "large_shifts_mean",
            "wall_s_mean",
            "controller_overhead_pct",
        ):
            assert isinstance(summary[key], float)
        assert 0.0 <= summary["final_accuracy_mean"] <= 1.0
    gac_run = next(r for r in stored["runs"] if r["method"] == "gac")
    assert set(gac_run["proxies"]) == {"ema_disagreement", "ema_var_sft", "ema_var_rl", "rho", "estimate"}
    assert gac_run["eval_steps"] == [6, 12]
    assert all(0.05 <= mu <= 0.9 for mu in gac_run["mu"])
    assert "gac" in (tmp_path / "report.md").read_text()
    assert report["verdict"].startswith("GAC")


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    first = deterministic_view(_tiny_run(tmp_path / "a"))
    second = deterministic_view(_tiny_run(tmp_path / "b"))
    assert first == second


def test_command_line(tmp_path: Path) -> None:
    assert main(["demo", "--steps", "4", "--methods", "pure-rl", "--out", str(tmp_path), "--no-progress"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["settings"]["steps"] == 4


def test_worker_processes_give_the_same_numbers(tmp_path: Path) -> None:
    methods, seeds = ["gac", "pure-sft"], [0, 1]
    serial = run_demo(methods, seeds, TINY, tmp_path / "serial", command="test", jobs=1, show_progress=False)
    parallel = run_demo(methods, seeds, TINY, tmp_path / "parallel", command="test", jobs=2, show_progress=False)
    assert deterministic_view(serial) == deterministic_view(parallel)
