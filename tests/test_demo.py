"""The demo: the task's reward and expert, a tiny suite end to end, reuse of
run records, determinism, the command line, and the verdict's arithmetic."""

from __future__ import annotations

import ast
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from gaccore.baselines import FixedMu, HPTGate
from gaccore.demo import __main__ as cli
from gaccore.demo import runner, sources
from gaccore.demo.markdown import _left_out, _schedule_grid
from gaccore.demo.methods import (
    GAC_RECORDED,
    METHODS,
    QUICK_METHODS,
    QUICK_SEEDS,
    QUICK_TASKS,
    SCHEDULE_METHODS,
    SCHEDULE_TASKS,
    TRACK_U,
    TRACK_V,
    is_gac_method,
)
from gaccore.demo.report import SCHEMA, deterministic_view
from gaccore.demo.runner import grid_plan, run_identity, run_key, run_suite
from gaccore.demo.settings import RunResult, RunSettings
from gaccore.demo.sources import method_sources
from gaccore.demo.summaries import track_title
from gaccore.demo.task import EQUALS, MINUS, PLUS, SUITE, make_suite_task, make_task, reward
from gaccore.demo.train import Trainer, group_advantages, hybrid_loss
from gaccore.demo.verdict import compare, track_verdict

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

    gate = HPTGate(group_size=2)
    mu = gate.update(scores=np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]).reshape(-1))
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.9, 0.9], [0.2, 0.6], [0.3, 0.3]]))
    rl_loss = torch.tensor(0.7)
    everything = torch.ones(4, dtype=torch.bool)
    loss = hybrid_loss(gate.sft_weights, mu, logp, rl_loss, "nll", everything)
    # SFT only on the demos of prompts 0 and 2, weighted by their share (1/2 of the prompts).
    expected = -(logp[0].sum() + logp[2].sum()) / 4 * 0.5 + rl_loss
    assert torch.allclose(loss, expected)
    fixed = hybrid_loss(FixedMu(0.25).sft_weights, 0.25, logp, rl_loss, "nll", everything)
    assert torch.allclose(fixed, 0.25 * -logp.mean() + 0.75 * rl_loss)


def test_every_rule_gets_each_rows_score_and_only_the_checked_ones_see_the_checkers() -> None:
    torch = pytest.importorskip("torch")
    task = make_suite_task("carry-drop")
    rollouts = TINY.prompts_per_step * TINY.group_size
    for method in ("gac", "hpt", "rewvar-ctrl", "sft-filtered", "gac-verified", "gac-verified-filtered"):
        trainer = Trainer(method, 0, task, TINY)
        trainer.step()
        _, kwargs = trainer.last_rule_inputs
        scores = kwargs["scores"]
        assert scores.shape == (rollouts + TINY.prompts_per_step,)
        assert set(scores[:rollouts].tolist()) <= {0.0, 1.0}  # the rollouts' rewards, in the batch's order
        demos = scores[rollouts:]
        if METHODS[method].reads_scores:
            assert set(demos.tolist()) <= {0.0, 1.0}  # the checker's verdicts
        else:
            assert bool(torch.isnan(demos).all())  # not scored: the expert cannot be checked


def test_gac_methods_record_their_proxies_and_the_baselines_nothing() -> None:
    for name, method in METHODS.items():
        assert method.recorded == (GAC_RECORDED if is_gac_method(name) else ()), name


TINY_TASKS = ["perfect", "sub-borrow"]
TINY_METHODS = ["gac", "hpt", "gac-verified-filtered", "sft-filtered"]
TINY_PLAN = grid_plan(TINY_TASKS, TINY_METHODS, [0])


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("suite")
    return run_suite(TINY_PLAN, TINY, out, command="test", show_progress=False), out


def test_tiny_suite_writes_every_output(tiny_suite: tuple[dict, Path]) -> None:
    _, out = tiny_suite
    figures = ["mu.png", "gac_proxies.png", "kl.png", *(f"accuracy-{task}.png" for task in TINY_TASKS)]
    for name in ("report.md", "report.json", *figures):
        assert (out / name).stat().st_size > 0
    records = list((out / "runs").glob("*.json"))
    assert len(records) == len(TINY_PLAN)
    stored = json.loads((out / "report.json").read_text())
    assert stored["schema"] == SCHEMA and "runs" not in stored  # the curves live in runs/ only
    run_times = [json.loads(p.read_text())["result"]["wall_s"] for p in records]
    assert stored["runs_wall_s"] == pytest.approx(sum(run_times))  # the suite's cost, whatever the sittings
    assert list(stored["tasks"]) == TINY_TASKS
    assert stored["environment"]["torch_threads"] == TINY.threads
    assert list(stored["tracks"]) == ["U", "V"]
    assert list(stored["tracks"]["U"]["methods"]) == ["gac", "hpt"]
    assert list(stored["tracks"]["V"]["methods"]) == ["gac-verified-filtered", "sft-filtered"]
    for task in stored["tasks"].values():
        assert set(task["methods"]) == set(TINY_METHODS)
        for summary in task["methods"].values():
            assert summary["final_accuracy_std"] is None  # one seed: no spread, not a spread of 0
            assert 0.0 <= summary["final_accuracy_mean"] <= 1.0 and 0.0 <= summary["area_mean"] <= 1.0
        assert 0.0 < task["accepted_share"] <= 1.0
    for track in stored["tracks"].values():
        assert min(m["mean_regret"] for m in track["methods"].values()) >= 0.0
        assert track["verdict"]["recommended"] is None  # one seed decides nothing
    gac_record = json.loads(next(p for p in records if "--gac--" in p.name).read_text())["result"]
    assert set(gac_record["proxies"]) == {
        "ema_disagreement",
        "ema_var_sft",
        "ema_var_rl",
        "rho",
        "estimate",
        "prior",
        "ema_policy_success",
    }
    assert gac_record["eval_steps"] == [6, 12] and all(0.05 <= mu <= 0.9 for mu in gac_record["mu"])
    markdown = (out / "report.md").read_text()
    assert "Cannot decide: 1 seed" in markdown and "### sub-borrow" in markdown and "issue" not in markdown
    left_out = markdown.split("## Not in this suite", 1)[1].split("## Per task", 1)[0]
    assert "`pure-rl`" in left_out and "30% false accepts" in left_out  # an absence is said, not left to guess
    assert "schedule question" not in left_out  # this plan has no schedule runs to be short of seeds


def test_worker_processes_give_the_same_numbers(tiny_suite: tuple[dict, Path], tmp_path: Path) -> None:
    serial, _ = tiny_suite
    parallel = run_suite(TINY_PLAN, TINY, tmp_path, command="test", jobs=2, show_progress=False)
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
    again = run_suite(TINY_PLAN, TINY, copy, command="test", reuse=True, show_progress=False)
    assert again["runs_reused"] == len(TINY_PLAN)
    assert deterministic_view(again) == deterministic_view(first)
    # Other settings are other runs: nothing to reuse.
    with pytest.raises(AssertionError, match="trained a run"):
        run_suite(TINY_PLAN, TINY_LONGER, copy, command="test", reuse=True, show_progress=False)
    # Without --reuse every run trains again.
    with pytest.raises(AssertionError, match="trained a run"):
        run_suite(TINY_PLAN, TINY, copy, command="test", show_progress=False)


def test_a_run_is_keyed_by_the_code_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "gaccore/controller.py" in method_sources("gac")
    assert "gaccore/kernels/row_stats/twin.py" in method_sources("gac-no-prior")
    assert "gaccore/kernels/row_stats/cpu_pass.py" in method_sources("gac")
    assert "gaccore/kernels/row_stats/fused.py" not in method_sources("gac")  # never runs on the demo's CPU tensors
    assert "gaccore/controller.py" not in method_sources("chord")
    assert {"gaccore/baselines.py", "gaccore/demo/train.py", "gaccore/bindings/losses.py"} <= set(method_sources("hpt"))
    copies = {package: tmp_path / package for package in sources.SOURCE_DIRS}
    for package, source in sources.SOURCE_DIRS.items():
        shutil.copytree(source, copies[package], ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sources, "SOURCE_DIRS", copies)

    def key(method: str) -> str:
        return run_key(run_identity("perfect", method, 0, TINY))

    def edit(path: Path, old: str, new: str) -> None:
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))

    # Which CPU path computes the statistics depends on numba: the GAC methods' keys name it.
    assert run_identity("perfect", "gac", 0, TINY)["numba"] == runner.numba_version()
    assert "numba" not in run_identity("perfect", "chord", 0, TINY)
    installed = {method: key(method) for method in ("gac", "chord")}
    with monkeypatch.context() as patched:
        patched.setattr(runner, "numba_version", lambda: None)
        assert key("gac") != installed["gac"] and key("chord") == installed["chord"]
    before = {method: key(method) for method in ("gac", "gac-no-prior", "chord", "pure-sft")}
    controller, step = copies["gaccore"] / "controller.py", copies["gaccore"] / "step.py"
    # Docstrings, comments and layout change no number: nothing retrains.
    edit(controller, '"""The GAC controller', '"""The GAC controller (an edited docstring)')
    edit(step, "# 1. Proxies into their EMAs.", "# 1. The proxies go into their EMAs (an edited comment).")
    controller.write_text(controller.read_text() + "\n\n# a trailing comment\n")
    edit(copies["gaccore.kernels"] / "row_stats" / "launch.py", "MAX_BLOCK_T = ", "UNUSED_HERE = 1\nMAX_BLOCK_T = ")
    assert {method: key(method) for method in before} == before
    # Code does: the GAC methods retrain, the baselines do not.
    edit(step, "MIN_FAILURE_RATE = 1e-6", "MIN_FAILURE_RATE = 1e-7")
    after = {method: key(method) for method in before}
    assert after["gac"] != before["gac"] and after["gac-no-prior"] != before["gac-no-prior"]
    assert after["chord"] == before["chord"] and after["pure-sft"] == before["pure-sft"]
    report = copies["gaccore.demo"] / "report.py"
    report.write_text(report.read_text() + "\nEDITED = True\n")
    assert {method: key(method) for method in after} == after  # reporting code retrains nothing
    for edited in (copies["gaccore.bindings"] / "losses.py", copies["gaccore.demo"] / "train.py"):
        edited.write_text(edited.read_text() + "\nEDITED = True\n")
        assert all(key(method) != after[method] for method in after)
        after = {method: key(method) for method in after}


def test_the_run_key_covers_the_training_files_and_never_the_reporting_ones() -> None:
    kernels = sources.SOURCE_DIRS["gaccore.kernels"]
    for entry in sources.TORCH_SIDE_NOT_RUN_ON_CPU:  # kept in step with kernels/
        assert (kernels / entry).exists(), f"TORCH_SIDE_NOT_RUN_ON_CPU names {entry}, which kernels/ does not hold"
    demo = {p.name for p in sources.SOURCE_DIRS["gaccore.demo"].glob("*.py")}
    assert set(sources.DEMO_REPORTING_FILES) < demo
    training = demo - set(sources.DEMO_REPORTING_FILES)
    assert {"settings.py", "methods.py", "train.py", "task.py", "model.py"} <= training
    core = {p.name for p in sources.SOURCE_DIRS["gaccore"].glob("*.py")}
    torch_side = {p.relative_to(kernels).as_posix() for p in kernels.rglob("*.py")}
    for method in ("gac", "gac-verified-filtered", "chord", "hpt", "sft-filtered"):
        keyed = method_sources(method)
        assert all(path.exists() for path in keyed.values())
        assert {f"gaccore/demo/{name}" for name in training} <= set(keyed)
        assert not {f"gaccore/demo/{name}" for name in sources.DEMO_REPORTING_FILES} & set(keyed)
        assert [name for name in keyed if name.startswith("gaccore/bindings/")] == ["gaccore/bindings/losses.py"]
        if is_gac_method(method):
            assert {f"gaccore/{name}" for name in core} <= set(keyed)
            assert {name for name in keyed if name.startswith("gaccore/kernels/")} == {
                f"gaccore/kernels/{name}"
                for name in torch_side
                if not any(name == entry or name.startswith(entry + "/") for entry in sources.TORCH_SIDE_NOT_RUN_ON_CPU)
            }
        else:  # the rules, what they import, and kept_demos (rows.py): the filter of the filtered baselines
            assert {"gaccore/baselines.py", "gaccore/stats.py", "gaccore/rows.py"} <= set(keyed)
            assert not any(name.startswith("gaccore/kernels/") or name == "gaccore/controller.py" for name in keyed)


def test_the_run_key_names_the_same_files_in_a_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed from a wheel, demo/, kernels/ and bindings/ sit inside gaccore/: each file still keys once."""
    source_layout = {method: set(method_sources(method)) for method in ("gac", "hpt")}
    wheel = tmp_path / "gaccore"
    shutil.copytree(sources.SOURCE_DIRS["gaccore"], wheel, ignore=shutil.ignore_patterns("__pycache__"))
    inside = {"gaccore": wheel}
    for package in ("gaccore.demo", "gaccore.kernels", "gaccore.bindings"):
        inside[package] = wheel / package.split(".")[1]
        shutil.copytree(sources.SOURCE_DIRS[package], inside[package], ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sources, "SOURCE_DIRS", inside)
    assert {method: set(method_sources(method)) for method in source_layout} == source_layout


def test_the_report_reads_the_catalogue_never_the_training_loop() -> None:
    """The reporting files import the settings and the method catalogue, never the loop, model, runner or run key."""
    folder = sources.SOURCE_DIRS["gaccore.demo"]
    reporting = ("report.py", "summaries.py", "provenance.py", "markdown.py", "figures.py", "verdict.py")
    for name in (*reporting, "study_report.py", "study_markdown.py", "study_figures.py"):
        tree = ast.parse((folder / name).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        assert not imported & {"train", "runner", "model", "sources"}, (name, imported)


def test_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--task", "carry-drop", "--steps", "4", "--methods", "pure-rl", "gac", "--out", str(tmp_path)]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert "falls short of the bar" in capsys.readouterr().out  # printed even without progress display
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

    def planned(plan: list, settings: RunSettings, *args: object, **kwargs: object) -> dict:
        calls.append((plan, settings))
        return {"tracks": {}}

    monkeypatch.setattr(cli, "run_suite", planned)
    chosen = ["--task", "carry-drop", "sub-borrow", "--methods", "sft-filtered", "--seeds", "5"]
    for args in ([], ["--suite"], ["--suite", "--full"], ["--task", "perfect", "--full"], chosen):
        cli.main(["demo", *args])
    cli.main(["demo", *chosen, "--checker-errors", "0", "0.05"])
    (quick, settings), (suite, _), (full, _), (one_task, _), (few, lenient), (_, exact) = calls
    assert few == grid_plan(["carry-drop", "sub-borrow"], ["sft-filtered"], range(5))
    assert (lenient.false_accept, lenient.false_reject) == (0.3, 0.1)
    assert exact == RunSettings(false_accept=0.0, false_reject=0.05)  # the checker is in every run's key
    with pytest.raises(SystemExit):
        cli.main(["demo", "--checker-errors", "0", "1.5"])
    assert "argument --checker-errors: must be in [0, 1], got 1.5" in capsys.readouterr().err
    assert settings == RunSettings(steps=2000, eval_every=50)
    assert quick == suite == grid_plan(QUICK_TASKS, QUICK_METHODS, range(QUICK_SEEDS))
    # Both tracks on five tasks with five seeds, the schedule question on three tasks with three.
    assert len(full) == len(set(full)) == 5 * 5 * (len(TRACK_U) + len(TRACK_V)) + 3 * 3 * len(SCHEDULE_METHODS)
    assert {m for _, m, _ in full} == set(TRACK_U + TRACK_V + SCHEDULE_METHODS)
    assert [seed for _, _, seed in full] == sorted(seed for _, _, seed in full)  # whole seeds first
    assert {t for t, m, _ in full if m in SCHEDULE_METHODS} == set(SCHEDULE_TASKS)
    assert {t for t, _, _ in one_task} == {"perfect"} and "gac-no-prior" in {m for _, m, _ in one_task}


def test_quick_runs_are_the_full_suites_own() -> None:
    assert set(grid_plan(QUICK_TASKS, QUICK_METHODS, range(QUICK_SEEDS))) <= set(cli.suite_plan(True, None))


# -- the verdict, on scores built by hand ---------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=4, max_size=12),
    st.integers(1, 4),
)
def test_an_interval_that_contains_zero_never_beats(values: list[float], tasks: int) -> None:
    seeds = len(values) // tasks
    if seeds < 1:
        return
    a = np.array(values[: tasks * seeds]).reshape(tasks, seeds)
    comparison = compare(a, a[:, ::-1])  # a against itself in another seed order: paired differences of both signs
    difference = comparison.difference
    assert comparison.beats == (difference.low > 0) and comparison.loses == (difference.high < 0)
    if difference.low <= 0 <= difference.high:
        assert not comparison.beats and not comparison.loses and comparison.word() == "ties with"


def test_compare_calls_a_win_a_tie_and_a_loss() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, size=(5, 5))
    better = base + 0.1 + rng.normal(0, 0.01, size=(5, 5))
    assert compare(better, base).beats and compare(base, better).loses
    assert compare(better, base).probability_of_improvement.estimate == 1.0
    mixed = base + np.where(np.arange(5) % 2 == 0, 0.05, -0.05)  # half the seeds up, half down
    assert compare(mixed, base).word() == "ties with"
    assert compare(base, base).difference.low == 0.0 and not compare(base, base).beats
    with pytest.raises(ValueError, match="one shape"):
        compare(base, base[:, :3])


def _tracked(gac: float, best_baseline: float, noise: float = 0.01, tasks: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    shape = (tasks, 5)
    return {
        "gac": gac + rng.normal(0, noise, shape),
        "chord": best_baseline + rng.normal(0, noise, shape),
        "pure-sft": np.full(shape, 0.1),
    }


def test_track_verdict_clears_the_bar_only_beyond_the_interval() -> None:
    final = _tracked(0.9, 0.8)
    judged = track_verdict("U", final, final, ["gac"], ["chord", "pure-sft"])
    (check,) = judged.checks
    assert check.clears and judged.recommended == "gac" and "gac: clears the bar" in judged.text
    close = _tracked(0.801, 0.8, noise=0.05)
    judged = track_verdict("U", close, close, ["gac"], ["chord", "pure-sft"])
    assert not judged.checks[0].clears and judged.recommended is None
    assert "does not beat chord on final accuracy" in judged.text


def test_track_verdict_needs_curve_area_and_worst_regret_too() -> None:
    final = _tracked(0.9, 0.8)
    slow = {**final, "gac": final["gac"] - 0.5}  # ends higher, learned much later
    judged = track_verdict("U", final, slow, ["gac"], ["chord", "pure-sft"])
    assert not judged.checks[0].clears and "learns more slowly than chord" in judged.text
    # A third task where chord wins by a lot: gac's mean stays higher, its worst regret need not.
    final = _tracked(0.9, 0.5, noise=0.0)
    final = {m: np.vstack([v, np.full((1, 5), w)]) for (m, v), w in zip(final.items(), [0.1, 0.5, 0.4], strict=True)}
    check = track_verdict("U", final, final, ["gac"], ["chord", "pure-sft"]).checks[0]
    assert check.beats_every_baseline
    assert check.worst_regret == pytest.approx(0.4) and check.regret_limit == pytest.approx(0.4)  # chord's worst
    assert check.clears  # a worst regret equal to the best baseline's is allowed
    final["gac"][2] = 0.09
    check = track_verdict("U", final, final, ["gac"], ["chord", "pure-sft"]).checks[0]
    assert check.beats_every_baseline and not check.regret_ok and not check.clears


def test_a_rejected_demonstration_adds_nothing_to_the_sft_loss_of_any_rule() -> None:
    torch = pytest.importorskip("torch")
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.9, 0.9], [0.2, 0.6], [0.3, 0.3]]))
    rl_loss = torch.tensor(0.7)
    kept = torch.tensor([True, False, True, True])
    for rule in (FixedMu(0.25), FixedMu(1.0)):
        mu = rule.update(scores=np.zeros(8))
        filtered = hybrid_loss(rule.sft_weights, mu, logp, rl_loss, "nll", kept)
        without = hybrid_loss(rule.sft_weights, mu, logp[kept], rl_loss, "nll", kept[kept])
        assert torch.allclose(filtered, without)
    gate = HPTGate(group_size=2)
    mu = gate.update(scores=np.zeros(8))  # every prompt gated
    assert torch.allclose(
        hybrid_loss(gate.sft_weights, mu, logp, rl_loss, "nll", kept), mu * -logp[kept].sum() / 6 + rl_loss
    )


def test_too_few_seeds_decide_nothing_even_when_the_runs_look_clear() -> None:
    final = {name: scores[:, :2] for name, scores in _tracked(0.9, 0.5).items()}
    judged = track_verdict("U", final, final, ["gac"], ["chord", "pure-sft"])
    assert judged.checks[0].clears and not judged.decided and judged.recommended is None
    assert judged.text.startswith("Cannot decide: 2 seed(s)") and "on these runs would clear the bar" in judged.text
    assert " gac: clears the bar" not in judged.text


def test_the_report_says_when_the_schedule_question_ran_short() -> None:
    def variant(tasks: list[str], seeds: list[int]) -> dict:
        return {"tasks": tasks, "seeds": seeds}

    report = {
        "tasks": {name: {"methods": {"gac": {}}} for name in ("perfect", "carry-drop", "sub-borrow")},
        "tracks": {"U": {"seeds": [0, 1, 2, 3, 4]}},
        "schedule": {"variants": {"gac-half": variant(["carry-drop"], [0, 1, 2])}},
        "settings": asdict(RunSettings()),
    }
    assert any("1 of the 3 tasks with 3 seed(s), against 5" in item for item in _left_out(report))
    report["schedule"]["variants"]["gac-half"] = variant(["perfect", "carry-drop", "sub-borrow"], [0, 1, 2, 3, 4])
    assert not any("schedule question" in item for item in _left_out(report))
    assert _schedule_grid(report["schedule"]) == ["Tasks: perfect, carry-drop, sub-borrow; seeds: 0, 1, 2, 3, 4.", ""]


@pytest.mark.parametrize("name", list(SUITE))
def test_an_exact_checker_accepts_exactly_the_right_demonstrations(name: str) -> None:
    task = make_suite_task(name, false_accept=0.0, false_reject=0.0)
    assert np.array_equal(task.train_demo_score.astype(bool), task.train_demo_reward.astype(bool))
    lenient = make_suite_task(name)
    assert np.array_equal(lenient.train_demos, task.train_demos)  # the checker changes no demonstration


def test_the_report_names_the_checker_it_ran_with() -> None:
    exact = RunSettings(false_accept=0.0, false_reject=0.0)
    assert track_title("V", exact).endswith("(false accepts 0%, false rejects 0%)")
    report = {"tasks": {"carry-drop": {"methods": {"sft-filtered": {}}}}, "tracks": {"V": {"seeds": [0]}}}
    assert not any(
        "without errors" in item for item in _left_out({**report, "schedule": None, "settings": asdict(exact)})
    )
    lenient = {**report, "schedule": None, "settings": asdict(RunSettings())}
    assert any("30% false accepts" in item for item in _left_out(lenient))


# -- the plan study's regimes, records and selection ------------------------------------------------------------


def test_a_regime_may_set_its_group_size_flip_its_rewards_and_change_its_expert() -> None:
    from gaccore.demo.settings import regime_settings

    assert regime_settings(TINY, SUITE["pairs-2"]).group_size == 2
    assert regime_settings(TINY, SUITE["carry-drop"]) is TINY
    decays = make_suite_task("expert-decays")
    assert decays.demos_at(SUITE["expert-decays"].late_from - 1) is decays.train_demos
    late = decays.demos_at(SUITE["expert-decays"].late_from)
    wrong = (late != decays.train_answers).any(axis=1)
    assert abs(wrong.mean() - 0.8) < 0.05 and np.array_equal(late[:, 0], decays.train_answers[:, 0])
    assert decays.demo_error_rate == 0.0  # the first expert is perfect, and the checker scores it
    # Every reward flipped: the rules see the opposite of what the rollouts achieved, the record the truth.
    trainer = Trainer("chord", 0, make_suite_task("carry-drop"), TINY, reward_flip=1.0)
    outcome = trainer.step()
    rollouts = TINY.prompts_per_step * TINY.group_size
    seen = trainer.last_rule_inputs[1]["scores"][:rollouts].numpy()
    assert outcome.train_reward == pytest.approx(1.0 - seen.mean())


def test_a_record_keeps_block_means_and_stays_small() -> None:
    rng = np.random.default_rng(0)
    series = {name: list(rng.random(2000)) for name in ("mu", "kl", "train_reward")}
    proxies = {name: list(rng.random(2000)) for name in ("rho", "estimate", "prior", "ema_var_rl", "ema_var_sft")}
    run = RunResult("gac", 0, "perfect", list(range(50, 2001, 50)), list(rng.random(40)), **series, proxies=proxies)
    run.proxies["estimate"][:15] = [float("nan")] * 15
    compact = run.compacted(10)
    assert compact.series_every == 10 and len(compact.mu) == 200
    assert compact.mu[3] == pytest.approx(float(np.mean(series["mu"][30:40])), rel=1e-5)
    assert np.isnan(compact.proxies["estimate"][0]) and not np.isnan(compact.proxies["estimate"][1])
    assert len(json.dumps(compact.to_dict())) < 30_000 < len(json.dumps(run.to_dict()))


def _pilot_run(task: str, method: str, seed: int, final: float, success_from: int) -> RunResult:
    rates = [0.0] * (success_from // 10 - 1) + [0.5] * (200 - success_from // 10 + 1)
    return RunResult(method, seed, task, list(range(50, 2001, 50)), [final] * 40, train_reward=rates, series_every=10)


def test_the_study_selects_its_regimes_and_plans_by_the_declared_rule() -> None:
    from gaccore.demo import study

    best = {"perfect": 4.0, "mostly-wrong": 0.25, "pairs-2": 1.0, "noisy-reward": 2.0, "expert-decays": 0.25}
    spread = {"perfect": 0.05, "mostly-wrong": 0.3, "pairs-2": 0.01, "noisy-reward": 0.2, "expert-decays": 0.4}
    delay = {"perfect": 100, "mostly-wrong": 600, "pairs-2": 900, "noisy-reward": 300, "expert-decays": 100}
    runs = []
    for regime in (study.DEV_REGIME, *study.CANDIDATES):
        seeds = study.DEV_SEEDS if regime == study.DEV_REGIME else study.PILOT_SEEDS
        for plan, method in study.PLANS.items():
            good = plan == (0.5 if regime == study.DEV_REGIME else best[regime])
            final = 0.9 if good else 0.9 - (0.2 if regime == study.DEV_REGIME else spread[regime])
            runs += [_pilot_run(regime, method, s, final, delay.get(regime, 200)) for s in range(seeds)]
    chosen = study.select(runs)
    assert chosen.tuned_plan == 0.5 and chosen.best_plan == best
    assert chosen.success_steps["pairs-2"] == 900.0 and chosen.success_steps["perfect"] == 100.0
    assert chosen.dropped == ("pairs-2",) and chosen.regimes == (
        "perfect",
        "mostly-wrong",
        "noisy-reward",
        "expert-decays",
    )
    assert chosen.criteria_met
    plan = study.main_plan(chosen)
    seeds_of = {}
    for regime, method, seed in plan:
        seeds_of.setdefault((regime, method), set()).add(seed)
    assert seeds_of[("perfect", study.CANDIDATE)] == set(range(study.primary_seeds(4)))
    assert seeds_of[("perfect", "chord-half")] == set(range(study.primary_seeds(4)))  # tuned once
    assert seeds_of[("perfect", "chord-quadruple")] == set(range(study.primary_seeds(4)))  # misplanned, and its best
    assert seeds_of[("noisy-reward", "chord-double")] == set(range(study.primary_seeds(4)))  # its best plan
    assert seeds_of[("perfect", "gac")] == set(range(study.REPORTED_SEEDS)) == seeds_of[("perfect", "hpt")]
    assert seeds_of[("perfect", "gac-double")] == set(range(study.SECONDARY_SEEDS))
    assert not any(regime == "pairs-2" for regime, _, _ in plan) and len(plan) == len(set(plan))
    assert study.primary_seeds(4) == 16 and study.primary_seeds(5) == 13  # 63 pairs or more either way


def test_the_study_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gaccore.demo import study

    for name, value in (("CANDIDATES", ("perfect", "pairs-2")), ("KEEP", 1), ("DEV_SEEDS", 1), ("PILOT_SEEDS", 1)):
        monkeypatch.setattr(study, name, value)
    for name in ("PRIMARY_PAIRS", "REPORTED_SEEDS", "SECONDARY_SEEDS"):
        monkeypatch.setattr(study, name, 1)
    selection, pilot, main, _ = study.run_study(TINY, tmp_path, jobs=1, reuse=False, show_progress=False)
    assert len(pilot) == 5 + 2 * 5 + 1 and {r.task for r in main} <= {"perfect", "pairs-2"}
    assert json.loads((tmp_path / "selection.json").read_text())["regimes"] == list(selection.regimes)
    assert {r.method for r in main} >= {study.CANDIDATE, "gac", "hpt", *study.PLANS.values()}
