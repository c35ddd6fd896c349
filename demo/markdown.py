"""``report.md``: the report's tables and verdicts as text, from the report
alone (``report.build_report``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .methods import DESCRIPTIONS


def _pm(mean: float, std: float | None) -> str:
    """``mean ± std``, or the mean alone where the std is undefined (one seed; ``null`` in JSON)."""
    return f"{mean:.3f}" if std is None or math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _ci(interval: dict[str, float]) -> str:
    low, high = interval["low"], interval["high"]
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{interval['estimate']:.3f}"
    return f"{interval['estimate']:.3f} [{low:.3f}, {high:.3f}]"


def _signed(interval: dict[str, float]) -> str:
    low, high = interval["low"], interval["high"]
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{interval['estimate']:+.3f}"
    return f"{interval['estimate']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _schedule_grid(schedule: dict[str, Any]) -> list[str]:
    """The tasks and seeds of the schedule comparisons: one line when every
    variant ran the same grid, else one line per variant."""
    grids = {name: (row["tasks"], row["seeds"]) for name, row in schedule["variants"].items()}

    def line(tasks: list[str], seeds: list[int]) -> str:
        return f"Tasks: {', '.join(tasks)}; seeds: {', '.join(map(str, seeds))}."

    if len({repr(grid) for grid in grids.values()}) == 1:
        return [line(*next(iter(grids.values()))), ""]
    return [*(f"- {name}: {line(*grid)}" for name, grid in grids.items()), ""]


def _left_out(report: dict[str, Any]) -> list[str]:
    """What the suite does not measure, so a reader does not read an absence
    as a result."""
    present = {method for task in report["tasks"].values() for method in task["methods"]}
    items = []
    if "pure-rl" not in present:
        items.append(
            "- Pure RL (`pure-rl`, mu = 0): it learns nothing on these tasks (its 2000-step record, "
            "`carry-drop` seed 0 in `docs/demo/study/runs/`, ends at 0.022 held-out accuracy) and never "
            "reads a demonstration, so it belongs to neither track."
        )
    settings = report["settings"]
    if "V" in report["tracks"] and (settings["false_accept"] > 0 or settings["false_reject"] > 0):
        items.append(
            f"- A checker without errors: track V has one checker, with {settings['false_accept']:.0%} false "
            f"accepts on wrong demonstrations and {settings['false_reject']:.0%} false rejects on right ones. How "
            "the rules compare when every accepted demonstration is right is not measured here."
        )
    schedule = report["schedule"]
    if schedule:
        track_seeds = max((len(t["seeds"]) for t in report["tracks"].values()), default=0)
        schedule_seeds = max(len(row["seeds"]) for row in schedule["variants"].values())
        schedule_tasks = max(len(row["tasks"]) for row in schedule["variants"].values())
        if schedule_seeds < track_seeds or schedule_tasks < len(report["tasks"]):
            items.append(
                f"- The schedule question runs on {schedule_tasks} of the {len(report['tasks'])} tasks with "
                f"{schedule_seeds} seed(s), against {track_seeds} for the tracks: the seeds went to the "
                "tracks' verdicts first, so its intervals are wider and it decides less."
            )
    return items or ["Nothing: every method, checker setting and question of the suite ran in full."]


def write_markdown(report: dict[str, Any], path: Path) -> None:
    settings, env = report["settings"], report["environment"]
    lines = [
        "# gaccore demo: hybrid SFT + RL under five kinds of expert",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {env['platform']}, {env['cpu']} ({env['cpu_count']} CPUs), Python {env['python']}, "
        f"torch {env['torch']} with {env['torch_threads']} thread(s) per run, {env['jobs']} run(s) at a time; "
        f"git commit {env['git_commit'] or 'unknown'}; {report['n_runs']} runs, wall time "
        f"{report['total_wall_s']:.0f} s"
        + (f" ({report['runs_reused']} run(s) loaded from earlier records)" if report["runs_reused"] else "")
        + f"; the runs' own times sum to {report['runs_wall_s'] / 3600:.1f} hours of one core, about "
        f"{report['runs_wall_s'] / 3600 / env['jobs']:.1f} hours at {env['jobs']} at a time.",
        "",
        f"Every method: {settings['steps']} steps of {settings['prompts_per_step']} prompts x "
        f"{settings['group_size']} rollouts plus their {settings['prompts_per_step']} demonstrations; AdamW lr "
        f"{settings['lr']}; SFT token weighting `{settings['sft_coef']}`; KL target {settings['kl_target']}; "
        f"evaluated every {settings['eval_every']} steps; the same settings on every task, no per-task tuning. "
        "The same seed gives every method the same initial weights and the same prompt order.",
        "",
        "Two numbers per run: the final held-out accuracy, and the area under the accuracy curve (the mean over "
        "the evaluations: how fast it learned). Intervals are 95% stratified bootstrap intervals over seeds "
        "(each task's seeds resampled on their own); a comparison is paired by seed, and a method *beats* "
        "another only when the interval of the mean paired difference lies above zero.",
    ]
    for track in report["tracks"].values():
        lines += ["", f"## {track['title']}", ""]
        lines += [
            f"Tasks: {', '.join(track['tasks'])}; seeds: {', '.join(map(str, track['seeds']))}.",
            "",
            "| method | final accuracy, mean | final, IQM | curve area, mean | mean regret | worst regret (task) |",
            "|---|---|---|---|---|---|",
        ]
        for method, m in track["methods"].items():
            lines.append(
                f"| {method} | {_ci(m['final_mean'])} | {_ci(m['final_iqm'])} | {_ci(m['area_mean'])} "
                f"| {m['mean_regret']:.3f} | {m['worst_regret']:.3f} ({m['worst_task']}) |"
            )
        if "verdict" in track:
            verdict = track["verdict"]
            lines += [
                "",
                "| candidate vs baseline | final: paired difference | P(improvement) | area: paired difference |",
                "|---|---|---|---|",
            ]
            for check in verdict["checks"]:
                for baseline, comparison in check["final"].items():
                    lines.append(
                        f"| {check['method']} vs {baseline} | {_signed(comparison['difference'])} "
                        f"({comparison['word']}) | {_ci(comparison['probability_of_improvement'])} "
                        f"| {_signed(check['area'][baseline]['difference'])} |"
                    )
            lines += ["", verdict["text"]]
            recommended = verdict["recommended"]
            if recommended:
                conclusion = f"Recommended for this track: {recommended}."
            elif verdict["decided"]:
                conclusion = "No gaccore mode clears this track's bar: the suite recommends none for it."
            else:
                conclusion = "These runs cannot decide the bar, so they recommend nothing."
            lines += ["", conclusion]
    schedule = report["schedule"]
    if schedule:
        lines += [
            "",
            "## A schedule planned for the wrong run length",
            "",
            "CHORD's schedule and GAC's prior are set from the run's length, which a user does not know in "
            "advance. Each variant below plans its schedule for half or for twice the actual run; the difference "
            "is its final accuracy minus that of the same method planned right, paired by seed.",
            "",
            *_schedule_grid(schedule),
            "| variant | final accuracy | against the right plan |",
            "|---|---|---|",
        ]
        for variant, row in schedule["variants"].items():
            comparison = row["versus_planned"]
            lines.append(
                f"| {variant} (vs {row['planned']}) | {_ci(row['final_mean'])} "
                f"| {_signed(comparison['difference'])} ({comparison['word']}) |"
            )
        if schedule["gac_loss_against_chord_loss"]:
            lines += ["", "GAC's change from a misplanned prior against CHORD's from the same misplanning:", ""]
            for variant, comparison in schedule["gac_loss_against_chord_loss"].items():
                lines.append(
                    f"- {variant}: {_signed(comparison['difference'])}: GAC {comparison['word']} CHORD "
                    "(above zero: GAC holds its accuracy better)."
                )
    lines += ["", "## Not in this suite", "", *_left_out(report)]
    lines += ["", "## Per task", ""]
    for name, task in report["tasks"].items():
        lines += [
            f"### {name}: {task['description']}",
            "",
            f"{task['n_train']} training pairs ({100 * task['demo_error_rate']:.1f}% of the expert's demonstrations "
            f"wrong; the checker accepts {100 * task['accepted_share']:.1f}% of them, of which "
            f"{100 * task['accepted_wrong_share']:.1f}% are wrong), {task['n_test']} held out.",
            "",
            "| method | final accuracy | curve area | hard-pair accuracy | KL-drift area | mean mu | step (ms) "
            "| controller overhead |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, s in task["methods"].items():
            lines.append(
                f"| {method} | {_pm(s['final_accuracy_mean'], s['final_accuracy_std'])} "
                f"| {_pm(s['area_mean'], s['area_std'])} | {s['carry_accuracy_mean']:.3f} "
                f"| {_pm(s['kl_drift_area_mean'], s['kl_drift_area_std'])} | {s['mean_mu']:.2f} "
                f"| {s['step_ms_mean']:.1f} | {s['controller_overhead_pct']:.2f}% |"
            )
        lines.append("")
    methods = list(dict.fromkeys(m for task in report["tasks"].values() for m in task["methods"]))
    lines += [
        "## Methods",
        "",
        "Every one with the same model, data, steps, batch and learning rate; no per-method tuning.",
        "",
        *[f"- `{m}`: {DESCRIPTIONS[m]}" for m in methods],
        "",
        "Columns: accuracy is greedy exact match on the held-out pairs (hard pairs: those that need a carry or "
        "a borrow); regret on a task: the best method's mean final accuracy there minus this method's; "
        "KL-drift area = sum over steps of max(0, KL - target), KL being the k3 KL of the rollouts to an EMA of "
        "the policy's weights; controller overhead = time in the rule's `update` as a share of the training step "
        "(the machine is shared by the runs, so step times do not compare methods' speed).",
        "",
        "Figures: `accuracy-<task>.png` (held-out accuracy, mean over seeds), `mu.png`, `kl.png`, `gac_proxies.png`. "
        "Each run's curves are in `runs/`.",
        "",
    ]
    path.write_text("\n".join(lines))
