"""The demo: the task's reward and expert, a tiny suite end to end, reuse of
run records, determinism, the command line, and the verdict's arithmetic."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from gaccore.baselines import FixedMu, HPTGate
from gaccore.demo import __main__ as cli
from gaccore.demo import runner, train
from gaccore.demo.report import SCHEMA, build_report, deterministic_view, suite_table, verdict
from gaccore.demo.runner import run_identity, run_key, run_suite
from gaccore.demo.task import EQUALS, MINUS, PLUS, SUITE, make_suite_task, make_task, reward
from gaccore.demo.train import (
    QUICK_SUITE_METHODS,
    QUICK_SUITE_TASKS,
    SUITE_METHODS,
    RunResult,
    RunSettings,
    group_advantages,
    hybrid_loss,
    method_sources,
)

TINY = RunSettings(steps=12, prompts_per_step=4, group_size=4, eval_every=6)
TINY_LONGER = RunSettings(steps=13, prompts_per_step=4, group_size=4, eval_every=6)


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


TINY_TASKS, TINY_METHODS = ["perfect", "sub-borrow"], ["gac", "hpt"]


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("suite")
    return run_suite(TINY_TASKS, TINY_METHODS, [0], TINY, out, command="test", show_progress=False), out


def test_tiny_suite_writes_every_output(tiny_suite: tuple[dict, Path]) -> None:
    report, out = tiny_suite
    figures = ["mu.png", "gac_proxies.png", "kl.png", *(f"accuracy-{task}.png" for task in TINY_TASKS)]
    for name in ("report.md", "report.json", *figures):
        assert (out / name).stat().st_size > 0
    assert len(list((out / "runs").glob("*.json"))) == len(TINY_TASKS) * len(TINY_METHODS)
    stored = json.loads((out / "report.json").read_text())
    assert stored["schema"] == SCHEMA
    assert list(stored["tasks"]) == TINY_TASKS
    assert stored["environment"]["torch_threads"] == TINY.threads
    for task in stored["tasks"].values():
        assert set(task["methods"]) == set(TINY_METHODS)
        for summary in task["methods"].values():
            for key in (
                "final_accuracy_mean",
                "regret",
                "kl_drift_area_mean",
                "wall_s_mean",
                "controller_overhead_pct",
            ):
                assert isinstance(summary[key], float)
            assert summary["final_accuracy_std"] is None  # one seed: no spread, not a spread of 0
            assert 0.0 <= summary["final_accuracy_mean"] <= 1.0
        assert min(s["regret"] for s in task["methods"].values()) == 0.0
    assert set(stored["aggregate"]) == set(TINY_METHODS)
    gac_run = next(r for r in stored["runs"] if r["method"] == "gac")
    assert set(gac_run["proxies"]) == {"ema_disagreement", "ema_var_sft", "ema_var_rl", "rho", "estimate"}
    assert gac_run["eval_steps"] == [6, 12]
    assert all(0.05 <= mu <= 0.9 for mu in gac_run["mu"])
    markdown = (out / "report.md").read_text()
    assert "Cannot decide: 1 seed(s)" in markdown and "### sub-borrow" in markdown
    assert report["verdict"]["decided"] is False


def test_worker_processes_give_the_same_numbers(tiny_suite: tuple[dict, Path], tmp_path: Path) -> None:
    serial, _ = tiny_suite
    parallel = run_suite(TINY_TASKS, TINY_METHODS, [0], TINY, tmp_path, command="test", jobs=2, show_progress=False)
    assert deterministic_view(serial) == deterministic_view(parallel)


def _no_training(*args: object, **kwargs: object) -> RunResult:
    raise AssertionError("trained a run that has a record")


def test_reuse_loads_records_instead_of_training(
    tiny_suite: tuple[dict, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, out = tiny_suite
    copy = tmp_path / "copy"
    shutil.copytree(out / "runs", copy / "runs")
    monkeypatch.setattr(runner, "train_one", _no_training)
    again = run_suite(TINY_TASKS, TINY_METHODS, [0], TINY, copy, command="test", reuse=True, show_progress=False)
    assert again["runs_reused"] == len(TINY_TASKS) * len(TINY_METHODS)
    assert deterministic_view(again) == deterministic_view(first)
    # Other settings are other runs: nothing to reuse.
    with pytest.raises(AssertionError, match="trained a run"):
        run_suite(TINY_TASKS, TINY_METHODS, [0], TINY_LONGER, copy, command="test", reuse=True, show_progress=False)
    # Without --reuse every run trains again.
    with pytest.raises(AssertionError, match="trained a run"):
        run_suite(TINY_TASKS, TINY_METHODS, [0], TINY, copy, command="test", show_progress=False)


def test_a_controller_edit_changes_the_gac_key_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "gaccore/controller.py" in method_sources("gac")
    assert "gaccore/kernels/reference.py" in method_sources("gac-no-prior")
    assert "gaccore/controller.py" not in method_sources("chord")
    assert {"gaccore/baselines.py", "gaccore/demo/train.py", "gaccore/bindings/losses.py"} <= set(method_sources("hpt"))
    copies = {package: tmp_path / package for package in train.SOURCE_DIRS}
    for package, source in train.SOURCE_DIRS.items():
        shutil.copytree(source, copies[package], ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(train, "SOURCE_DIRS", copies)

    def key(method: str) -> str:
        return run_key(run_identity("perfect", method, 0, TINY))

    before = {method: key(method) for method in ("gac", "gac-no-prior", "chord", "pure-sft")}
    with (copies["gaccore"] / "controller.py").open("a") as controller:
        controller.write("# an edit\n")
    after = {method: key(method) for method in before}
    assert after["gac"] != before["gac"] and after["gac-no-prior"] != before["gac-no-prior"]
    assert after["chord"] == before["chord"] and after["pure-sft"] == before["pure-sft"]
    with (copies["gaccore"] / "demo" / "report.py").open("a") as report:
        report.write("# an edit\n")
    assert {method: key(method) for method in after} == after  # reporting code retrains nothing
    for edited in (copies["gaccore.bindings"] / "losses.py", copies["gaccore"] / "demo" / "train.py"):
        with edited.open("a") as source:
            source.write("# an edit\n")
        assert all(key(method) != after[method] for method in after)
        after = {method: key(method) for method in after}


def test_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--task", "carry-drop", "--steps", "4", "--methods", "pure-rl", "--out", str(tmp_path)]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert "No verdict: " in capsys.readouterr().out  # printed even without progress display
    stored = json.loads((tmp_path / "report.json").read_text())
    assert stored["settings"]["steps"] == 4 and list(stored["tasks"]) == ["carry-drop"]
    for option in ("--steps", "--seeds", "--jobs"):
        with pytest.raises(SystemExit):
            cli.main(["demo", option, "0"])
        assert f"argument {option}: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--suite", "--task", "perfect"])
    assert "not allowed with" in capsys.readouterr().err

    calls: list[tuple] = []

    def planned(*args: object, **kwargs: object) -> dict:
        calls.append((*args, kwargs))
        return {"verdict": {"text": "planned only"}}

    monkeypatch.setattr(cli, "run_suite", planned)
    for args in ([], ["--suite"], ["--suite", "--full"], ["--task", "perfect", "--full"]):
        cli.main(["demo", *args])
    quick, suite, full, one_task = calls
    quick_plan = (QUICK_SUITE_TASKS, QUICK_SUITE_METHODS, range(1), RunSettings(steps=1000, eval_every=50))
    assert quick[:4] == suite[:4] == quick_plan
    assert full[:4] == (list(SUITE), SUITE_METHODS, range(3), RunSettings(steps=1000, eval_every=50))
    assert one_task[0] == ["perfect"] and one_task[3].steps == 2000 and "gac-no-prior" in one_task[1]


# -- the verdict and the regret arithmetic, on synthetic records ---------------------


def _record(task: str, method: str, seed: int, accuracy: float) -> RunResult:
    return RunResult(
        method=method,
        seed=seed,
        task=task,
        eval_steps=[1],
        accuracy=[accuracy],
        accuracy_carry=[accuracy],
        accuracy_no_carry=[accuracy],
        mu=[0.5],
        kl=[0.1],
        train_reward=[0.0],
        step_s=1.0,
    )


def _records(accuracy: dict[str, dict[str, list[float]]]) -> list[RunResult]:
    """``accuracy[task][method]`` = final accuracy per seed 0, 1, ..."""
    return [
        _record(task, method, seed, value)
        for task, by_method in accuracy.items()
        for method, values in by_method.items()
        for seed, value in enumerate(values)
    ]


def test_regret_and_spread_arithmetic() -> None:
    runs = _records(
        {
            "perfect": {"gac": [0.8, 0.6], "chord": [0.9, 0.9], "pure-sft": [1.0, 1.0]},
            "mostly-wrong": {"gac": [0.6, 0.4], "chord": [0.2, 0.4], "pure-sft": [0.1, 0.1]},
        }
    )
    report = build_report(runs, RunSettings(steps=1), command="test", total_wall_s=0.0)
    regret = {task: {m: s["regret"] for m, s in t["methods"].items()} for task, t in report["tasks"].items()}
    assert regret["perfect"] == pytest.approx({"gac": 0.3, "chord": 0.1, "pure-sft": 0.0})
    assert regret["mostly-wrong"] == pytest.approx({"gac": 0.0, "chord": 0.2, "pure-sft": 0.4})
    gac, chord = report["aggregate"]["gac"], report["aggregate"]["chord"]
    assert gac["mean_regret"] == pytest.approx(0.15) and gac["worst_regret"] == pytest.approx(0.3)
    assert gac["worst_task"] == "perfect" and chord["worst_task"] == "mostly-wrong"
    # Per-seed means over tasks: gac 0.7 and 0.5, chord 0.55 and 0.65.
    assert gac["mean_accuracy"] == pytest.approx(0.6) and gac["mean_accuracy_std"] == pytest.approx(math.sqrt(0.02))
    assert chord["mean_accuracy"] == pytest.approx(0.6) and chord["mean_accuracy_std"] == pytest.approx(
        math.sqrt(0.005)
    )
    with pytest.raises(ValueError, match=r"lacks \(perfect, chord, seed 1\)"):
        suite_table([r for r in runs if (r.task, r.method, r.seed) != ("perfect", "chord", 1)])


def _three_seeds(gac: float, best_baseline: float, noise: float = 0.01) -> dict[str, dict[str, list[float]]]:
    """Two tasks; gac's and chord's seeds spread by ``noise``."""
    offsets = [-noise, 0.0, noise]
    return {
        "perfect": {
            "gac": [gac + o for o in offsets],
            "chord": [best_baseline + o for o in offsets],
            "pure-rl": [0.0] * 3,
        },
        "carry-drop": {
            "gac": [gac + o for o in offsets],
            "chord": [best_baseline + o for o in offsets],
            "pure-rl": [0.0] * 3,
        },
    }


def test_verdict_cannot_decide_with_fewer_than_three_seeds() -> None:
    accuracy = {task: {m: v[:2] for m, v in by.items()} for task, by in _three_seeds(0.9, 0.5).items()}
    judged = verdict(suite_table(_records(accuracy)))
    assert not judged.decided and judged.text.startswith("Cannot decide: 2 seed(s)")
    assert " beats " not in judged.text.split("\n", 1)[1]  # past the rule it states
    assert [check.clears for check in judged.bar] == [None]


def test_verdict_claims_a_win_only_beyond_the_seed_spread() -> None:
    clear = verdict(suite_table(_records(_three_seeds(0.9, 0.8))))
    assert clear.decided and clear.best_gac == "gac"
    assert "- gac beats chord" in clear.text and "- gac beats pure-rl" in clear.text
    (check,) = clear.bar
    assert check.clears and check.closest_baseline == "chord"
    assert check.accuracy_margin == pytest.approx(0.1 - 0.01)
    assert "gac: clears the bar" in clear.text
    json.dumps(asdict(clear), allow_nan=False)  # the report stores it

    close = verdict(suite_table(_records(_three_seeds(0.805, 0.8))))
    assert "gac beats chord" not in close.text and "within the seed spread" in close.text
    assert close.bar[0].clears is False and "does not clear the bar" in close.text

    behind = verdict(suite_table(_records(_three_seeds(0.5, 0.8))))
    assert "- chord beats gac" in behind.text and behind.bar[0].clears is False


def test_verdict_bar_needs_the_worst_regret_too() -> None:
    accuracy = _three_seeds(0.9, 0.5)
    # A task where chord wins by a lot: gac's mean stays higher, its worst regret is not.
    accuracy["mostly-wrong"] = {"gac": [0.1, 0.1, 0.1], "chord": [0.5, 0.5, 0.5], "pure-rl": [0.4, 0.4, 0.4]}
    judged = verdict(suite_table(_records(accuracy)))
    (check,) = judged.bar
    assert check.accuracy_margin > 0 and check.worst_regret == pytest.approx(0.4)
    assert check.worst_regret_limit == pytest.approx(0.4)  # chord's worst: 0.4 on perfect and carry-drop
    assert check.clears  # equal worst regret is allowed
    accuracy["mostly-wrong"]["gac"] = [0.09, 0.09, 0.09]
    assert verdict(suite_table(_records(accuracy))).bar[0].clears is False


def test_verdict_needs_both_sides() -> None:
    only_baselines = {"perfect": {"chord": [0.5], "hpt": [0.6]}}
    assert verdict(suite_table(_records(only_baselines))).text.startswith("No verdict: ")
