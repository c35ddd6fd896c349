"""The plan study's report: its intervals, the bar's decisions on records
built by hand where the answer is known, what it shows of the estimator,
every arm in the text, and the study end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from gaccore.demo import __main__ as cli
from gaccore.demo import runner, study, study_report
from gaccore.demo.settings import RunResult, RunSettings
from gaccore.demo.verdict import Interval, stratified_interval, stratified_t_interval, wider, width

TINY = RunSettings(steps=12, prompts_per_step=4, group_size=4, eval_every=6)
TEST_REGIMES = ("perfect", "mostly-wrong", "noisy-reward", "expert-decays")
EVALS = list(range(50, 2001, 50))


# -- the t-interval ------------------------------------------------------------------------------------------------


def test_the_t_interval_of_one_regime_is_the_one_sample_t_interval() -> None:
    values = np.random.default_rng(3).normal(0.02, 0.05, size=9)
    low, high = stats.t.interval(0.95, values.size - 1, loc=values.mean(), scale=stats.sem(values))
    got = stratified_t_interval(values[None, :])
    assert got.estimate == pytest.approx(values.mean())
    assert (got.low, got.high) == (pytest.approx(low), pytest.approx(high))


def test_the_t_interval_of_two_regimes_by_hand() -> None:
    # Regime A: 0, 2 (mean 1, s^2 = 2, n = 2); regime B: 1, 2, 3 (mean 2, s^2 = 1, n = 3).
    # Estimate (1 + 2) / 2 = 1.5; s^2/n: 1 and 1/3; SE = sqrt(4/3) / 2;
    # Welch-Satterthwaite: (4/3)^2 / (1^2 / 1 + (1/3)^2 / 2) = (16/9) / (19/18) = 32/19.
    got = stratified_t_interval([[0.0, 2.0], [1.0, 2.0, 3.0]])
    half = stats.t.ppf(0.975, 32 / 19) * math.sqrt(4 / 3) / 2
    assert half == pytest.approx(2.988, abs=1e-3)  # t(0.975) at 1.68 degrees of freedom is about 5.18
    assert got.estimate == pytest.approx(1.5)
    assert (got.low, got.high) == (pytest.approx(1.5 - half), pytest.approx(1.5 + half))


def test_the_t_interval_without_spread_or_with_one_seed() -> None:
    assert stratified_t_interval([[0.1, 0.1], [0.3, 0.3]]) == Interval(0.2, 0.2, 0.2)
    one = stratified_t_interval([[0.1], [0.3]])
    assert one.estimate == pytest.approx(0.2) and math.isnan(one.low) and math.isnan(one.high)
    with pytest.raises(ValueError):
        stratified_t_interval([])


def test_the_wider_interval_is_the_one_that_decides() -> None:
    narrow, wide, undefined = Interval(0.0, -1.0, 1.0), Interval(0.0, -2.0, 2.0), Interval(0.0, math.nan, math.nan)
    assert wider(narrow, wide) is wide and wider(wide, narrow) is wide
    assert wider(narrow, undefined) is undefined and width(undefined) == math.inf


# -- records built by hand -----------------------------------------------------------------------------------------


def _run(regime: str, method: str, seed: int, score: float, *, mu: list[float] | None = None) -> RunResult:
    """A record whose score is ``score``, with mu, its prior and the success rate as 10-step means."""
    success = list(np.linspace(0.0, 0.8, 200))
    mu = mu if mu is not None else [0.85 - 0.7 * s for s in success]
    prior = {"prior": [0.85 - 0.7 * s for s in success]} if method.startswith("gac") else {}
    return RunResult(
        method,
        seed,
        regime,
        EVALS,
        [score] * len(EVALS),
        mu=mu,
        train_reward=success,
        proxies=prior,
        series_every=10,
        wall_s=2.0,
    )


def _selection(regimes: tuple[str, ...] = TEST_REGIMES, best: float = 2.0) -> study.Selection:
    return study.Selection(
        tuned_plan=1.0,
        plan_scores={},
        best_plan={r: best for r in regimes},
        success_steps={r: 100.0 for r in regimes},
        regimes=regimes,
        dropped=(),
        criteria_met=True,
    )


def _bar_runs(offsets: dict[str, float], seeds: int = 16) -> list[RunResult]:
    """The bar's arms on the test regimes: each seed's score is the regime's
    base plus a seed effect shared by the arms (paired), plus the arm's
    offset and a little noise of its own."""
    rng = np.random.default_rng(0)
    runs = []
    for k, regime in enumerate(TEST_REGIMES):
        for seed in range(seeds):
            shared = 0.6 + 0.05 * k + rng.normal(0.0, 0.05)
            for method, offset in offsets.items():
                runs.append(_run(regime, method, seed, shared + offset + rng.normal(0.0, 0.01)))
    return runs


BASELINES = {"chord": 0.0, "chord-double": 0.03, "chord-quarter": -0.05, "chord-quadruple": -0.08}


def _bar(candidate: float, **kwargs: float) -> dict:
    offsets = {study.CANDIDATE: candidate, **BASELINES, **kwargs}
    return study_report.bar_report(study_report.index(_bar_runs(offsets)), _selection())


def test_a_candidate_clearly_ahead_clears_the_bar() -> None:
    bar = _bar(0.1)
    assert [c["holds"] for c in bar["conditions"]] == [True, True, True] and bar["clears"]
    assert bar["complete"] and bar["computable"] and bar["fewest_seeds"] == 16
    tuned = bar["conditions"][0]["comparisons"][0]
    assert tuned["against"] == "chord" and tuned["estimate"] == pytest.approx(0.1, abs=0.01)
    assert bar["conditions"][2]["comparisons"][1]["estimate"] == pytest.approx(0.18, abs=0.01)
    assert "clears the bar." in study_report.verdict_lines(bar)[-1]


def test_a_candidate_clearly_behind_holds_no_condition() -> None:
    bar = _bar(-0.2)
    assert [c["holds"] for c in bar["conditions"]] == [False, False, False] and not bar["clears"]
    assert study_report.verdict_lines(bar)[-1].endswith("does not clear the bar: condition(s) 1, 2, 3 do not hold.")


def test_the_best_plan_is_met_within_the_declared_margin_and_not_beyond_it() -> None:
    # 0.01 behind the best plan (chord-double, 0.03 above chord): within 0.03, and ahead of the rest.
    within = _bar(0.02)
    assert within["conditions"][1]["comparisons"][0]["estimate"] == pytest.approx(-0.01, abs=0.01)
    assert within["conditions"][1]["holds"] and within["clears"]
    # 0.05 behind it: beats chord, but the best plan's lower end is below -0.03.
    beyond = _bar(0.02, **{"chord-double": 0.07})
    assert beyond["conditions"][0]["holds"] and beyond["conditions"][2]["holds"]
    assert not beyond["conditions"][1]["holds"] and not beyond["clears"]
    assert beyond["conditions"][1]["comparisons"][0]["interval"]["low"] < -0.03


def test_the_bar_decides_on_the_wider_interval() -> None:
    # Two seeds, differences 0 and 0.04 on every regime: the bootstrap's lower end is above zero, the
    # t-interval's is not, and the t-interval decides.
    runs = []
    for regime in TEST_REGIMES:
        for seed, gap in enumerate((0.0, 0.04)):
            runs += [_run(regime, study.CANDIDATE, seed, 0.5 + gap)]
            runs += [_run(regime, m, seed, 0.5 if m == "chord" else 0.2) for m in BASELINES]
    bar = study_report.bar_report(study_report.index(runs), _selection())
    tuned = bar["conditions"][0]["comparisons"][0]
    assert tuned["bootstrap"]["low"] > 0.0 > tuned["t"]["low"]
    assert tuned["used"] == "t" and tuned["interval"] == tuned["t"] and not tuned["holds"]
    assert bar["conditions"][2]["holds"] and not bar["clears"] and not bar["complete"]
    assert study_report.verdict_lines(bar)[0].startswith("Provisional: the bar's comparisons have 2 of the declared 16")


def test_one_seed_decides_nothing() -> None:
    bar = study_report.bar_report(study_report.index(_bar_runs({study.CANDIDATE: 0.1, **BASELINES}, 1)), _selection())
    assert not bar["computable"] and not bar["clears"]
    lines = study_report.verdict_lines(bar)
    assert lines[0].startswith("Cannot decide") and lines[-1].startswith("On these runs,")


def test_the_interval_of_a_comparison_is_the_stratified_bootstrap_or_the_t_interval() -> None:
    runs = _bar_runs({study.CANDIDATE: 0.02, "chord": 0.0}, seeds=5)
    regimes = list(TEST_REGIMES)
    result = study_report.paired(
        study_report.index(runs), regimes, dict.fromkeys(regimes, study.CANDIDATE), dict.fromkeys(regimes, "chord")
    )
    by = {(r.task, r.method, r.seed): study.score(r) for r in runs}
    differences = np.array([[by[(t, study.CANDIDATE, s)] - by[(t, "chord", s)] for s in range(5)] for t in regimes])
    assert result["seeds"] == list(range(5))
    assert result["bootstrap"] == stratified_interval(differences).__dict__
    assert result["t"] == stratified_t_interval(differences).__dict__
    assert result["interval"] == result[result["used"]]
    assert result["per_regime"]["perfect"] == pytest.approx(differences[0].mean())


# -- what the estimator does ---------------------------------------------------------------------------------------


def test_the_gap_to_the_prior_per_fifth_and_the_correlation_with_success() -> None:
    run = _run("perfect", study.CANDIDATE, 0, 0.5)
    run.mu = [1.0, 1.0, 0.5, 0.5, 0.5, 0.7, 0.3, 0.3, 0.5, 0.5]
    run.proxies["prior"] = [0.5] * 10
    run.train_reward = [0.0, 0.0, 0.5, 0.5, 0.5, 0.3, 0.7, 0.7, 0.5, 0.5]  # 1 - mu, up to a constant: -1
    assert study_report.prior_gap_by_fifth(run) == pytest.approx([0.5, 0.0, 0.1, 0.2, 0.0])
    assert study_report.success_correlation(run) == pytest.approx(-1.0)
    run.train_reward = [0.1 * k for k in range(10)]
    expected = np.corrcoef(run.mu, run.train_reward)[0, 1]
    assert study_report.success_correlation(run) == pytest.approx(expected)
    run.mu = [0.5] * 10
    assert math.isnan(study_report.success_correlation(run))  # a mu that does not move follows nothing

    other = _run("mostly-wrong", study.CANDIDATE, 1, 0.5)
    other.mu, other.proxies["prior"] = [0.6] * 10, [0.5] * 10
    other.train_reward = [0.1 * k for k in range(10)]
    chord = _run("perfect", "chord", 0, 0.5)
    table = study_report.index([run, other, chord])
    report = study_report.estimator_report(table, ["perfect", "mostly-wrong"])
    row = report["gac"][study.CANDIDATE]
    assert row["runs"] == 2 and row["prior_gap_by_fifth"] == pytest.approx([0.05] * 5)  # 0 and 0.1
    assert row["success_correlation"] == {"mean": pytest.approx(math.nan, nan_ok=True), "runs": 0}
    assert report["chord"]["chord"]["success_correlation"]["mean"] == pytest.approx(-1.0)
    assert study.GAC_PLANS[1.0] not in report["gac"]  # no runs, no row


# -- the whole report ----------------------------------------------------------------------------------------------


def _pilot_run(task: str, method: str, seed: int, score: float, success_from: int) -> RunResult:
    rates = [0.0] * (success_from // 10 - 1) + [0.5] * (200 - success_from // 10 + 1)
    return RunResult(method, seed, task, EVALS, [score] * 40, train_reward=rates, series_every=10, wall_s=1.0)


SCORES = {
    study.CANDIDATE: 0.80,
    "chord-quarter": 0.60,
    "chord-half": 0.75,
    "chord": 0.78,
    "chord-double": 0.79,
    "chord-quadruple": 0.55,
    "gac": 0.77,
    "gac-quarter": 0.70,
    "gac-half": 0.74,
    "gac-double": 0.76,
    "gac-quadruple": 0.72,
    "hpt": 0.31,  # the loser
}


def _study() -> tuple[study.Selection, list[RunResult], list[RunResult]]:
    best = {"perfect": 4.0, "mostly-wrong": 0.25, "pairs-2": 1.0, "noisy-reward": 2.0, "expert-decays": 0.25}
    spread = {"perfect": 0.05, "mostly-wrong": 0.3, "pairs-2": 0.01, "noisy-reward": 0.2, "expert-decays": 0.4}
    delay = {"perfect": 100, "mostly-wrong": 600, "pairs-2": 900, "noisy-reward": 300, "expert-decays": 100}
    pilot = []
    for regime in (study.DEV_REGIME, *study.CANDIDATES):
        seeds = study.DEV_SEEDS if regime == study.DEV_REGIME else study.PILOT_SEEDS
        for plan, method in study.PLANS.items():
            good = plan == (1.0 if regime == study.DEV_REGIME else best[regime])
            score = 0.9 if good else 0.9 - (0.2 if regime == study.DEV_REGIME else spread[regime])
            pilot += [_pilot_run(regime, method, s, score, delay.get(regime, 200)) for s in range(seeds)]
    pilot.append(_pilot_run(study.DEV_REGIME, "pure-rl", 0, 0.02, 2000))
    selection = study.select(pilot)
    rng = np.random.default_rng(1)
    main = [_run(r, m, s, SCORES[m] + rng.normal(0.0, 0.02)) for r, m, s in study.main_plan(selection)]
    return selection, pilot, main


def test_the_report_shows_every_arm_and_writes_its_json(tmp_path: Path) -> None:
    selection, pilot, main = _study()
    assert selection.regimes == ("perfect", "mostly-wrong", "noisy-reward", "expert-decays")
    report = study_report.write_study_report(selection, pilot, main, TINY, tmp_path, command="test", reused=(3, 4))
    stored = json.loads((tmp_path / "report.json").read_text())
    assert stored["schema"] == study_report.SCHEMA and stored["verdict"] == report["verdict"]
    assert set(stored["arms"]["arms"]) == set(SCORES)
    hpt = stored["arms"]["arms"]["hpt"]
    assert hpt["seeds"] == list(range(study.REPORTED_SEEDS)) and hpt["worst_regret"] == pytest.approx(0.49, abs=0.03)
    assert stored["arms"]["arms"][study.CANDIDATE]["seeds"] == list(range(study.primary_seeds(4)))
    assert stored["arms"]["regret_seeds"] == list(range(study.SECONDARY_SEEDS))
    assert stored["arms"]["reported"]["gac-quarter - chord-quarter"]["seeds"] == list(range(study.SECONDARY_SEEDS))
    assert stored["arms"]["reported"][f"{study.CANDIDATE} - hpt"]["seeds"] == list(range(study.REPORTED_SEEDS))
    assert stored["regimes"]["tuned_once"]["plan"] == "chord" and stored["regimes"]["regimes"]["pairs-2"]["role"] == (
        "dropped"
    )
    assert stored["regimes"]["criteria"]["success_step_ratio"] == pytest.approx(6.0)
    assert stored["bar"]["best_plans"]["perfect"] == "chord-quadruple"
    assert stored["bar"]["clears"] is True  # 0.02 ahead of chord, far ahead of the misplanned and the best plans
    assert stored["pure_rl"]["score"] == pytest.approx(0.02) and stored["machine"]["cpu"]
    assert stored["cost"]["pilot"] == {"runs": len(pilot), "loaded": 3, "trained": len(pilot) - 3}
    distinct = {(r.task, r.method, r.seed) for r in [*pilot, *main]}
    assert stored["cost"]["distinct_runs"] == len(distinct) < len(pilot) + len(main)
    in_main = {(r.task, r.method, r.seed) for r in main}
    pilot_only = [r for r in pilot if (r.task, r.method, r.seed) not in in_main]
    assert stored["cost"]["runs_wall_s"] == pytest.approx(2.0 * len(main) + 1.0 * len(pilot_only))
    markdown = (tmp_path / "report.md").read_text()
    for method in SCORES:
        assert f"| `{method}` |" in markdown.split("## Every arm", 1)[1].split("### Reported", 1)[0], method
    assert "reported, not part of the bar" in markdown.lower() and "optimistic anchor" in markdown
    assert f"{study.CANDIDATE} clears the bar." in markdown and "issue" not in markdown.lower() and "#1" not in markdown
    for name in ("study-accuracy.png", "study-mu.png"):
        assert (tmp_path / name).stat().st_size > 0 and f"`{name}`" in markdown


def test_the_study_writes_its_report_and_rebuilds_it_from_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in (("CANDIDATES", ("perfect", "pairs-2")), ("KEEP", 1), ("DEV_SEEDS", 1), ("PILOT_SEEDS", 1)):
        monkeypatch.setattr(study, name, value)
    for name in ("PRIMARY_PAIRS", "REPORTED_SEEDS", "SECONDARY_SEEDS"):
        monkeypatch.setattr(study, name, 1)
    selection, pilot, main, report = study.run_study(TINY, tmp_path, jobs=1, reuse=False, show_progress=False)
    markdown = (tmp_path / "report.md").read_text()
    assert "## The bar" in markdown and "Cannot decide" in markdown and selection.regimes[0] in markdown
    assert json.loads((tmp_path / "report.json").read_text())["bar"]["regimes"] == list(selection.regimes)
    assert report["cost"]["pilot"]["trained"] == len(pilot) and report["cost"]["main"]["loaded"] == 0
    assert report["machine"]["cpu"] == runner.run_identity("perfect", "gac", 0, TINY)["cpu"]

    # --reuse loads every record, trains nothing and writes the same numbers.
    def no_training(*args: object, **kwargs: object) -> RunResult:
        raise AssertionError("trained a run that has a record")

    monkeypatch.setattr(runner, "train_one", no_training)
    (tmp_path / "report.md").unlink()
    _, _, _, again = study.run_study(TINY, tmp_path, jobs=1, reuse=True, show_progress=False)
    assert (tmp_path / "report.md").exists() and again["cost"]["main"]["loaded"] == len(main)
    for part in ("bar", "arms", "estimator", "regimes", "verdict"):
        assert json.dumps(again[part], default=str) == json.dumps(report[part], default=str)

    # The command prints the verdict.
    monkeypatch.setattr(cli, "run_study", lambda *args, **kwargs: (selection, pilot, main, report))
    assert cli.main(["demo", "--study", "--reuse", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert report["verdict"][-1] in printed and "report.md" in printed


def test_the_study_report_never_keys_a_run() -> None:
    from gaccore.demo import sources

    files = {"study.py", "study_report.py", "study_markdown.py", "study_figures.py"}
    assert files <= set(sources.DEMO_REPORTING_FILES)
    for method in ("gac-success", "chord", "hpt"):
        assert not {f"gaccore/demo/{name}" for name in files} & set(sources.method_sources(method))
