"""The demo's outputs: ``report.json``, ``report.md`` and PNG figures.

Numbers in the report come from the run records only, and the verdict is
computed (``verdict``, a pure function of the accuracy table), never written
by hand, so it says whatever the runs say and no more: it claims that one
method beats another only with at least ``MIN_SEEDS`` seeds and a difference
of means larger than the seed spread.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import torch

from gaccore.demo.task import SUITE, make_suite_task
from gaccore.demo.train import DESCRIPTIONS, SOURCE_DIRS, TASK_SEED, RunResult, RunSettings, is_gac_method

SCHEMA = "gaccore.demo.report/2"
# Per-step curves are stored every CURVE_STRIDE steps in report.json to keep it small.
CURVE_STRIDE = 10
# Numbers that measure the machine, not the training: left out of determinism checks.
TIMING_KEYS = ("wall_s_mean", "step_ms_mean", "controller_overhead_pct")
# The fewest seeds on which the verdict calls one method better than another (issue 9's bar).
MIN_SEEDS = 3
# Accuracies are means of multiples of 1/n_test: differences below this are rounding, not a gap.
TIE = 1e-9

FloatArray = npt.NDArray[np.float64]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std; the std of one value is undefined (NaN), not 0."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return float(array.mean()), std


# -- the accuracy table and the verdict --------------------------------------------


@dataclass(frozen=True)
class SuiteTable:
    """Final accuracies ``[task, method, seed]`` of a full grid of runs."""

    tasks: list[str]
    methods: list[str]
    seeds: list[int]
    accuracy: FloatArray

    @property
    def task_means(self) -> FloatArray:
        """``[task, method]``: mean over seeds."""
        return self.accuracy.mean(axis=2)

    @property
    def regret(self) -> FloatArray:
        """``[task, method]``: the task's best mean minus this method's mean."""
        means = self.task_means
        return means.max(axis=1, keepdims=True) - means

    @property
    def mean_accuracy(self) -> FloatArray:
        """``[method]``: mean over tasks (and seeds)."""
        return self.accuracy.mean(axis=(0, 2))

    @property
    def mean_accuracy_spread(self) -> FloatArray:
        """``[method]``: std over seeds of the per-seed mean over tasks (NaN with one seed)."""
        per_seed = self.accuracy.mean(axis=0)
        if per_seed.shape[1] < 2:
            return np.full(per_seed.shape[0], math.nan)
        return per_seed.std(axis=1, ddof=1)

    def index(self, method: str) -> int:
        return self.methods.index(method)


def suite_table(runs: Sequence[RunResult]) -> SuiteTable:
    """The final accuracies of ``runs``, which must cover every (task,
    method, seed) of their tasks, methods and seeds exactly once."""
    tasks = list(dict.fromkeys(r.task for r in runs))
    methods = list(dict.fromkeys(r.method for r in runs))
    seeds = sorted({r.seed for r in runs})
    accuracy = np.full((len(tasks), len(methods), len(seeds)), math.nan)
    for r in runs:
        cell = (tasks.index(r.task), methods.index(r.method), seeds.index(r.seed))
        if not math.isnan(accuracy[cell]):
            raise ValueError(f"runs holds ({r.task}, {r.method}, seed {r.seed}) twice")
        accuracy[cell] = r.final_accuracy
    missing = np.argwhere(np.isnan(accuracy))
    if missing.size:
        t, m, s = missing[0]
        raise ValueError(f"runs lacks ({tasks[t]}, {methods[m]}, seed {seeds[s]}): the suite needs a full grid")
    return SuiteTable(tasks, methods, seeds, accuracy)


@dataclass(frozen=True)
class BarCheck:
    """How a GAC method stands against issue 9's bar."""

    method: str
    worst_regret: float
    # The best baseline's worst regret: the bar's first half wants worst_regret <= this.
    worst_regret_limit: float
    # min over baselines of (mean accuracy difference - seed spread): the second half wants > 0.
    # With fewer than MIN_SEEDS seeds the spread is unknown and this is the bare difference.
    accuracy_margin: float
    closest_baseline: str
    clears: bool | None  # None: too few seeds to decide


@dataclass(frozen=True)
class Verdict:
    text: str
    decided: bool  # enough seeds to call a difference
    best_gac: str | None
    bar: list[BarCheck]


def verdict(table: SuiteTable) -> Verdict:
    """The best GAC-family method (highest mean accuracy over tasks) against
    every baseline, and every GAC method against issue 9's bar: a worst
    regret no larger than the best baseline's worst regret, and a mean
    accuracy above every baseline's by more than the seed spread (the larger
    of the two methods' spreads), on at least ``MIN_SEEDS`` seeds."""
    gac = [m for m in table.methods if is_gac_method(m)]
    baselines = [m for m in table.methods if not is_gac_method(m)]
    if not gac or not baselines:
        return Verdict(
            f"No verdict: it compares GAC methods with baselines, and this run has "
            f"{'no GAC method' if not gac else 'no baseline'} ({', '.join(table.methods)}).",
            decided=False,
            best_gac=None,
            bar=[],
        )
    n_seeds = len(table.seeds)
    decided = n_seeds >= MIN_SEEDS
    accuracy, spread = table.mean_accuracy, table.mean_accuracy_spread
    worst = table.regret.max(axis=0)

    def acc(m: str) -> str:
        i = table.index(m)
        return f"{accuracy[i]:.3f}" + ("" if math.isnan(spread[i]) else f" ± {spread[i]:.3f}")

    def pair_spread(a: str, b: str) -> float:
        return max(spread[table.index(a)], spread[table.index(b)])

    best_gac = max(gac, key=lambda m: accuracy[table.index(m)])
    # Markdown: paragraphs apart, list items under them.
    lines = []
    if not decided:
        lines += [
            f"Cannot decide: {n_seeds} seed(s). A claim that one method beats another needs at least "
            f"{MIN_SEEDS} seeds and a difference of means larger than the seed spread; the numbers below "
            "describe these runs only.",
            "",
        ]
    lines.append(
        f"Best GAC method: {best_gac}, mean accuracy over {len(table.tasks)} task(s) {acc(best_gac)}, "
        f"worst regret {worst[table.index(best_gac)]:.3f}."
    )
    for b in baselines:
        difference = accuracy[table.index(best_gac)] - accuracy[table.index(b)]
        versus = f"{acc(best_gac)} vs {acc(b)}, difference {difference:+.3f}"
        if not decided:
            lines.append(f"- {best_gac} vs {b}: {versus} (undecided).")
        elif difference > pair_spread(best_gac, b) + TIE:
            lines.append(f"- {best_gac} beats {b}: {versus}, seed spread {pair_spread(best_gac, b):.3f}.")
        elif -difference > pair_spread(best_gac, b) + TIE:
            lines.append(f"- {b} beats {best_gac}: {versus}, seed spread {pair_spread(best_gac, b):.3f}.")
        else:
            lines.append(f"- {best_gac} vs {b}: {versus}, within the seed spread {pair_spread(best_gac, b):.3f}.")

    limit_owner = min(baselines, key=lambda m: worst[table.index(m)])
    limit = float(worst[table.index(limit_owner)])
    lines += [
        "",
        f"The bar (issue 9): worst regret over the tasks no larger than the best baseline's ({limit_owner}, "
        f"{limit:.3f}), and mean accuracy above every baseline's by more than the seed spread, on at least "
        f"{MIN_SEEDS} seeds.",
    ]
    checks = []
    for g in gac:
        i = table.index(g)
        margins = {
            b: accuracy[i] - accuracy[table.index(b)] - (pair_spread(g, b) if decided else 0.0) for b in baselines
        }
        closest = min(margins, key=lambda b: margins[b])
        regret_ok = bool(worst[i] <= limit + TIE)
        clears = bool(regret_ok and margins[closest] > TIE) if decided else None
        checks.append(BarCheck(g, float(worst[i]), limit, float(margins[closest]), closest, clears))
        regret_part = f"worst regret {worst[i]:.3f} ({'within' if regret_ok else 'over'} the limit by {abs(limit - worst[i]):.3f})"
        if decided:
            accuracy_part = f"accuracy margin over {closest} after the seed spread {margins[closest]:+.3f}"
            outcome = "clears the bar" if clears else "does not clear the bar"
        else:
            accuracy_part = f"mean accuracy {margins[closest]:+.3f} against the closest baseline, {closest}"
            outcome = "cannot decide"
        lines.append(f"- {g}: {outcome}: {regret_part}; {accuracy_part}.")
    return Verdict("\n".join(lines), decided, best_gac, checks)


# -- summaries -------------------------------------------------------------------


def summarize(runs: Sequence[RunResult]) -> dict[str, dict[str, Any]]:
    """Per-method aggregates over seeds, in first-seen method order."""
    by_method: dict[str, list[RunResult]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    summary: dict[str, dict[str, Any]] = {}
    for method, records in by_method.items():
        accuracy_mean, accuracy_std = _mean_std([r.final_accuracy for r in records])
        hard_mean, hard_std = _mean_std([r.accuracy_carry[-1] for r in records])
        area_mean, area_std = _mean_std([r.kl_drift_area for r in records])
        summary[method] = {
            "seeds": [r.seed for r in records],
            "final_accuracy": [r.final_accuracy for r in records],
            "final_accuracy_mean": accuracy_mean,
            "final_accuracy_std": accuracy_std,
            "best_accuracy_mean": float(np.mean([max(r.accuracy) for r in records])),
            "carry_accuracy_mean": hard_mean,
            "carry_accuracy_std": hard_std,
            "no_carry_accuracy_mean": float(np.mean([r.accuracy_no_carry[-1] for r in records])),
            "kl_drift_area_mean": area_mean,
            "kl_drift_area_std": area_std,
            "large_shifts_mean": float(np.mean([r.large_shifts for r in records])),
            "mean_mu": float(np.mean([np.mean(r.mu) for r in records])),
            "wall_s_mean": float(np.mean([r.wall_s for r in records])),
            "step_ms_mean": float(np.mean([1000.0 * r.step_s / len(r.mu) for r in records])),
            "controller_overhead_pct": float(
                100.0 * sum(r.controller_s for r in records) / sum(r.step_s for r in records)
            ),
        }
    return summary


def _environment(settings: RunSettings, jobs: int) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": settings.threads,
        "jobs": jobs,
        "git_commit": _git_commit(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The commit of the checkout the demo runs from, ``+dirty`` with
    uncommitted edits of tracked files; None outside a git checkout."""

    def git(*args: str) -> str:
        where = SOURCE_DIRS["gaccore"].parent
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def build_report(
    runs: Sequence[RunResult],
    settings: RunSettings,
    *,
    command: str,
    total_wall_s: float,
    jobs: int = 1,
    reused: int = 0,
) -> dict[str, Any]:
    table = suite_table(runs)
    judged = verdict(table)
    regret, worst = table.regret, table.regret.max(axis=0)
    tasks = {}
    for t, name in enumerate(table.tasks):
        spec, task = SUITE[name], make_suite_task(name, TASK_SEED)
        methods = summarize([r for r in runs if r.task == name])
        for method, summary in methods.items():
            summary["regret"] = float(regret[t, table.index(method)])
        tasks[name] = {
            **asdict(spec),
            "n_train": int(task.train_prompts.shape[0]),
            "n_test": int(task.test_prompts.shape[0]),
            "demo_error_rate": task.demo_error_rate,
            "methods": methods,
        }
    spread = table.mean_accuracy_spread
    aggregate = {
        method: {
            "mean_accuracy": float(table.mean_accuracy[m]),
            "mean_accuracy_std": float(spread[m]),
            "mean_regret": float(regret[:, m].mean()),
            "worst_regret": float(worst[m]),
            "worst_task": table.tasks[int(regret[:, m].argmax())],
        }
        for m, method in enumerate(table.methods)
    }
    return {
        "schema": SCHEMA,
        "command": command,
        "total_wall_s": total_wall_s,
        "runs_reused": reused,
        "environment": _environment(settings, jobs),
        "settings": {
            **asdict(settings),
            "warmup_steps": settings.warmup_steps,
            "decay_steps": settings.decay_steps,
        },
        "seeds": table.seeds,
        "verdict": asdict(judged),
        "aggregate": aggregate,
        "tasks": tasks,
        "runs": [_stored_run(run) for run in runs],
    }


def _stored_run(run: RunResult) -> dict[str, Any]:
    record = run.to_dict()
    for key in ("mu", "kl", "train_reward"):
        record[key] = record[key][::CURVE_STRIDE]
    record["proxies"] = {k: v[::CURVE_STRIDE] for k, v in record["proxies"].items()}
    return record


def deterministic_view(report: dict[str, Any]) -> dict[str, Any]:
    """The report without anything that measures time or the machine, NaN
    as None (so that equal runs compare equal): for determinism checks."""
    tasks = {
        name: {k: v for k, v in task.items() if k != "methods"}
        | {"methods": {m: {k: v for k, v in s.items() if k not in TIMING_KEYS} for m, s in task["methods"].items()}}
        for name, task in report["tasks"].items()
    }
    runs = [{k: v for k, v in r.items() if k not in ("wall_s", "step_s", "controller_s")} for r in report["runs"]]
    return _finite_or_none(
        {"tasks": tasks, "aggregate": report["aggregate"], "runs": runs, "verdict": report["verdict"]}
    )


# -- report.md ---------------------------------------------------------------------


def _pm(mean: float, std: float | None) -> str:
    """``mean ± std``, or the mean alone where the std is undefined (one seed; ``null`` in JSON)."""
    return f"{mean:.3f}" if std is None or math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def write_markdown(report: dict[str, Any], path: Path) -> None:
    settings, env = report["settings"], report["environment"]
    seeds = report["seeds"]
    lines = [
        "# gaccore demo: hybrid SFT + RL under five kinds of expert",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {env['platform']}, {env['cpu']} ({env['cpu_count']} CPUs), Python {env['python']}, "
        f"torch {env['torch']} with {env['torch_threads']} thread(s) per run, {env['jobs']} run(s) at a time; "
        f"git commit {env['git_commit'] or 'unknown'}; wall time {report['total_wall_s']:.0f} s"
        + (f" ({report['runs_reused']} run(s) loaded from earlier records)." if report["runs_reused"] else "."),
        "",
        f"Every method: {settings['steps']} steps of {settings['prompts_per_step']} prompts x "
        f"{settings['group_size']} rollouts plus their {settings['prompts_per_step']} demonstrations; AdamW lr "
        f"{settings['lr']}; SFT token weighting `{settings['sft_coef']}`; KL target {settings['kl_target']}; "
        f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}); the same settings on every task, no per-task tuning.",
        "",
        "## Verdict",
        "",
        report["verdict"]["text"],
        "",
        "## Over the tasks",
        "",
        "| method | mean accuracy | mean regret | worst regret | worst task |",
        "|---|---|---|---|---|",
    ]
    for method, a in report["aggregate"].items():
        lines.append(
            f"| {method} | {_pm(a['mean_accuracy'], a['mean_accuracy_std'])} | {a['mean_regret']:.3f} "
            f"| {a['worst_regret']:.3f} | {a['worst_task']} |"
        )
    lines += [
        "",
        "Mean accuracy: over tasks, ± the std over seeds of each seed's mean over tasks. Regret on a task: the "
        "best method's mean final accuracy on that task minus this method's.",
        "",
        "## Per task",
    ]
    for name, task in report["tasks"].items():
        lines += [
            "",
            f"### {name}: {task['description']}",
            "",
            f"{task['n_train']} training pairs ({100 * task['demo_error_rate']:.1f}% of the expert's demonstrations "
            f"wrong), {task['n_test']} held out. Figures: `accuracy-{name}.png`.",
            "",
            "| method | final accuracy | regret | hard-pair accuracy | best accuracy | KL-drift area | large shifts "
            "| mean mu | step (ms) | controller overhead |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method, s in task["methods"].items():
            lines.append(
                f"| {method} | {_pm(s['final_accuracy_mean'], s['final_accuracy_std'])} | {s['regret']:.3f} "
                f"| {s['carry_accuracy_mean']:.3f} | {s['best_accuracy_mean']:.3f} "
                f"| {_pm(s['kl_drift_area_mean'], s['kl_drift_area_std'])} | {s['large_shifts_mean']:.0f} "
                f"| {s['mean_mu']:.2f} | {s['step_ms_mean']:.1f} | {s['controller_overhead_pct']:.2f}% |"
            )
    methods = list(report["aggregate"])
    lines += [
        "",
        "## Methods",
        "",
        "Every one with the same model, data, steps, batch and learning rate; no per-method tuning.",
        "",
        *[f"- `{m}`: {DESCRIPTIONS[m]}" for m in methods],
        "",
        "Columns: accuracy is greedy exact match on the held-out pairs at the last step, mean ± sample std over "
        "seeds (hard pairs: those that need a carry or a borrow; best: the best evaluation of the run); "
        "KL-drift area = sum over steps of max(0, KL - target), KL being the k3 KL of the rollouts to an EMA "
        "of the policy's weights; large shifts = steps where the rule's raw estimate (GAC: the clipped closed "
        "form mu^, before EMA, prior and cap; baselines: their output) moved by more than 0.02; controller "
        "overhead = time in the rule's `update` as a share of the training step, evaluation excluded.",
        "",
        "Figures: `mu.png` (mu per method, one panel per task), `accuracy-<task>.png`, `gac_proxies.png` "
        "(GAC's proxies and rho, one row per task), `kl.png`.",
        "",
    ]
    path.write_text("\n".join(lines))


# -- figures -------------------------------------------------------------------------


def _curves(runs: Sequence[RunResult], attribute: str) -> FloatArray:
    return np.array([getattr(r, attribute) for r in runs], dtype=np.float64)


def _smooth(values: FloatArray, window: int) -> FloatArray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def write_figures(runs: Sequence[RunResult], out: Path) -> list[Path]:
    tasks = list(dict.fromkeys(r.task for r in runs))
    methods = list(dict.fromkeys(r.method for r in runs))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}  # more than ten methods repeat, dashed
    styles = {m: "--" if (is_gac_method(m) and m != "gac") or i >= 10 else "-" for i, m in enumerate(methods)}
    widths = {m: 2.4 if m == "gac" else 1.2 for m in methods}
    steps = len(runs[0].mu)
    window = max(1, steps // 50)
    written = []

    def of(task: str, method: str) -> list[RunResult]:
        return [r for r in runs if r.task == task and r.method == method]

    def plot(ax: Any, x: Any, y: FloatArray, method: str) -> None:
        ax.plot(x, y, styles[method], color=colors[method], lw=widths[method], label=method)

    def panels(rows: int, cols: int, width: float, height: float, sharey: bool = False) -> tuple[Any, Any]:
        return plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, sharey=sharey)

    def finish(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)

    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    figures = (
        ("mu", "mu.png", "mu (SFT weight)", "mu per method, mean over seeds"),
        ("kl", "kl.png", "k3 KL to the EMA policy", f"KL drift, mean over seeds, moving average of {window} steps"),
    )
    for attribute, name, ylabel, title in figures:
        fig, axes = panels(rows, cols, 5.0, 3.6)
        for ax, task in zip(axes.flat, tasks, strict=False):
            for m in methods:
                # HPT's per-prompt share and the KL are noisy step to step: a moving average shows the trend.
                smoothing = window if attribute == "kl" or m == "hpt" else 1
                curve = _smooth(_curves(of(task, m), attribute).mean(axis=0), smoothing)
                plot(ax, np.arange(curve.size) + smoothing - 1, curve, m)
            ax.set(xlabel="step", ylabel=ylabel, title=task)
            if attribute == "kl":
                ax.set_yscale("log")
        spare = axes.flat[len(tasks) :]
        for ax in spare:
            ax.axis("off")
        if len(spare):  # the legend gets a free panel of its own
            spare[0].legend(*axes.flat[0].get_legend_handles_labels(), loc="center", ncol=2)
        else:
            axes.flat[0].legend(fontsize=6, ncol=2)
        fig.suptitle(title)
        finish(fig, name)

    for task in tasks:
        fig, axes = panels(1, 2, 5.0, 4.2, sharey=True)
        for m in methods:
            eval_steps = of(task, m)[0].eval_steps
            for ax, attribute in zip(axes.flat, ("accuracy", "accuracy_carry"), strict=True):
                plot(ax, eval_steps, _curves(of(task, m), attribute).mean(axis=0), m)
        axes[0, 0].set(xlabel="step", ylabel="held-out exact match", title=f"{task}: all pairs")
        axes[0, 1].set(xlabel="step", title=f"{task}: pairs with a carry or borrow")
        axes[0, 0].legend(fontsize=7, ncol=2)
        finish(fig, f"accuracy-{task}.png")

    gac_tasks = [task for task in tasks if of(task, "gac")]
    if gac_tasks:
        keys = [
            ("ema_disagreement", "disagreement D (EMA)"),
            ("ema_var_sft", "SFT noise vS (EMA)"),
            ("ema_var_rl", "RL noise vR (EMA)"),
            ("rho", "rho and the estimate mu^ (dotted)"),
        ]
        fig, axes = panels(len(gac_tasks), len(keys), 3.2, 2.4)
        for row, task in zip(axes, gac_tasks, strict=True):
            for ax, (key, title) in zip(row, keys, strict=True):
                for r in of(task, "gac"):
                    (line,) = ax.plot(r.proxies[key], lw=1, label=f"seed {r.seed}")
                    if key == "rho":
                        ax.plot(r.proxies["estimate"], ":", lw=1, color=line.get_color())
                ax.set_title(f"{task}: {title}", fontsize=8)
        axes[0, -1].legend(fontsize=6)
        finish(fig, "gac_proxies.png")
    return written


def write_outputs(report: dict[str, Any], runs: Sequence[RunResult], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(_finite_or_none(report), indent=1, allow_nan=False))
    write_markdown(report, out / "report.md")
    return [out / "report.json", out / "report.md", *write_figures(runs, out)]


def _finite_or_none(value: Any) -> Any:
    """JSON-ready copy: non-finite floats (undefined proxies) become ``null``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value
