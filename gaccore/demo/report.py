"""The demo's outputs: ``report.json``, ``report.md`` and PNG figures.

Numbers in the report come from the run records only; the comparison
sentence at the top of ``report.md`` is computed, never written by hand, so
it says whatever the runs say.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
import torch

from gaccore.demo.task import ArithmeticTask
from gaccore.demo.train import DESCRIPTIONS, RunResult, RunSettings

SCHEMA = "gaccore.demo.report/1"
# Per-step curves are stored every CURVE_STRIDE steps in report.json to keep it small.
CURVE_STRIDE = 10
# Numbers that measure the machine, not the training: left out of determinism checks.
TIMING_KEYS = ("wall_s_mean", "step_ms_mean", "controller_overhead_pct")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return float(array.mean()), std


def summarize(runs: Sequence[RunResult]) -> dict[str, dict[str, Any]]:
    """Per-method aggregates over seeds, in first-seen method order."""
    by_method: dict[str, list[RunResult]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    summary: dict[str, dict[str, Any]] = {}
    for method, records in by_method.items():
        accuracy_mean, accuracy_std = _mean_std([r.final_accuracy for r in records])
        carry_mean, carry_std = _mean_std([r.accuracy_carry[-1] for r in records])
        area_mean, area_std = _mean_std([r.kl_drift_area for r in records])
        summary[method] = {
            "seeds": [r.seed for r in records],
            "final_accuracy": [r.final_accuracy for r in records],
            "final_accuracy_mean": accuracy_mean,
            "final_accuracy_std": accuracy_std,
            "best_accuracy_mean": float(np.mean([max(r.accuracy) for r in records])),
            "carry_accuracy_mean": carry_mean,
            "carry_accuracy_std": carry_std,
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


def verdict(summary: dict[str, dict[str, Any]]) -> str:
    """Computed sentences: GAC against the best non-GAC method, and the best
    method overall (a GAC ablation may be it)."""
    if "gac" not in summary:
        return "GAC was not run."
    baselines = {m: s for m, s in summary.items() if not m.startswith("gac")}
    gac = summary["gac"]
    if not baselines:
        return f"GAC final accuracy {gac['final_accuracy_mean']:.3f}; no baseline was run."
    best_name, best = max(baselines.items(), key=lambda item: item[1]["final_accuracy_mean"])
    gap = gac["final_accuracy_mean"] - best["final_accuracy_mean"]
    spread = max(gac["final_accuracy_std"], best["final_accuracy_std"])
    if len(gac["seeds"]) < 2:
        outcome = "is ahead of" if gap > 0 else "does not beat"
        caveat = "one seed: no spread to judge the difference by"
    elif gap > spread:
        outcome, caveat = "beats", "more than one standard deviation"
    elif gap > 0:
        outcome, caveat = "is ahead of", "within one standard deviation: not a clear win"
    else:
        outcome = "does not beat"
        caveat = "within one standard deviation" if gap >= -spread else "more than one standard deviation"
    sentence = (
        f"GAC {outcome} the best baseline, {best_name}: final held-out accuracy "
        f"{gac['final_accuracy_mean']:.3f} ± {gac['final_accuracy_std']:.3f} vs "
        f"{best['final_accuracy_mean']:.3f} ± {best['final_accuracy_std']:.3f} "
        f"(difference {gap:+.3f}, {caveat}; {len(gac['seeds'])} seed(s))."
    )
    top_name, top = max(summary.items(), key=lambda item: item[1]["final_accuracy_mean"])
    if top_name not in ("gac", best_name):
        sentence += (
            f" Highest mean overall: {top_name}, {top['final_accuracy_mean']:.3f} ± {top['final_accuracy_std']:.3f}."
        )
    return sentence


def build_report(
    runs: Sequence[RunResult],
    settings: RunSettings,
    task: ArithmeticTask,
    *,
    command: str,
    total_wall_s: float,
) -> dict[str, Any]:
    summary = summarize(runs)
    return {
        "schema": SCHEMA,
        "command": command,
        "total_wall_s": total_wall_s,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": settings.threads,
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
        },
        "settings": {
            **{k: getattr(settings, k) for k in settings.__dataclass_fields__},
            "warmup_steps": settings.warmup_steps,
            "decay_steps": settings.decay_steps,
        },
        "task": {
            "n_train": int(task.train_prompts.shape[0]),
            "n_test": int(task.test_prompts.shape[0]),
            "demo_error_rate": task.demo_error_rate,
        },
        "verdict": verdict(summary),
        "methods": summary,
        "runs": [_stored_run(run) for run in runs],
    }


def _stored_run(run: RunResult) -> dict[str, Any]:
    record = run.to_dict()
    for key in ("mu", "kl", "train_reward"):
        record[key] = record[key][::CURVE_STRIDE]
    record["proxies"] = {k: v[::CURVE_STRIDE] for k, v in record["proxies"].items()}
    return record


def deterministic_view(report: dict[str, Any]) -> dict[str, Any]:
    """The report without anything that measures time, NaN as None (so
    that equal runs compare equal): for determinism checks."""
    methods = {m: {k: v for k, v in s.items() if k not in TIMING_KEYS} for m, s in report["methods"].items()}
    runs = [{k: v for k, v in r.items() if k not in ("wall_s", "step_s", "controller_s")} for r in report["runs"]]
    return _finite_or_none({"methods": methods, "runs": runs, "verdict": report["verdict"]})


def write_markdown(report: dict[str, Any], path: Path) -> None:
    settings = report["settings"]
    lines = [
        "# gaccore demo: hybrid SFT + RL on two-digit addition",
        "",
        f"Command: `{report['command']}`",
        "",
        f"**{report['verdict']}**",
        "",
        f"Task: {report['task']['n_train']} training pairs ({100 * report['task']['demo_error_rate']:.1f}% of "
        f"the expert's demonstrations wrong: dropped carries), {report['task']['n_test']} held out; "
        f"{settings['steps']} steps of {settings['prompts_per_step']} prompts x {settings['group_size']} rollouts "
        f"plus their {settings['prompts_per_step']} demonstrations; AdamW lr {settings['lr']} for every method; "
        f"SFT loss `{settings['sft_loss']}`; KL target {settings['kl_target']}; torch threads "
        f"{settings['threads']}; total wall time {report['total_wall_s']:.0f} s.",
        "",
        "| method | final accuracy | carry accuracy | best accuracy | KL-drift area | large shifts "
        "| mean mu | wall time (s) | step (ms) | controller overhead |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, s in report["methods"].items():
        lines.append(
            f"| {method} | {s['final_accuracy_mean']:.3f} ± {s['final_accuracy_std']:.3f} "
            f"| {s['carry_accuracy_mean']:.3f} | {s['best_accuracy_mean']:.3f} "
            f"| {s['kl_drift_area_mean']:.1f} ± {s['kl_drift_area_std']:.1f} | {s['large_shifts_mean']:.0f} "
            f"| {s['mean_mu']:.2f} | {s['wall_s_mean']:.1f} | {s['step_ms_mean']:.1f} "
            f"| {s['controller_overhead_pct']:.2f}% |"
        )
    lines += [
        "",
        "Methods (every one with the same model, data, steps, batch and learning rate; no per-method tuning):",
        "",
    ]
    lines += [f"- `{m}`: {DESCRIPTIONS[m]}" for m in report["methods"]]
    lines += [
        "",
        "Columns: accuracy is greedy exact match on the held-out pairs at the last step, mean ± sample std "
        "over seeds (carry: pairs that need a carry, where the expert is mostly wrong; best: the best "
        "evaluation of the run); KL-drift area = sum over steps of max(0, KL - target), KL being the k3 KL "
        "of the rollouts to an EMA of the policy's weights; large shifts = steps where the rule's raw "
        "estimate (GAC: the clipped closed form mu^, before EMA, prior and cap; baselines: their output) "
        "moved by more than 0.02; controller overhead = time in the rule's `update` as a share of the "
        "training step (sampling, forward, backward, optimizer), evaluation excluded.",
        "",
        "Figures: `mu.png` (mu per method), `gac_proxies.png` (GAC's proxies and rho), `accuracy.png`, `kl.png`.",
        "",
    ]
    path.write_text("\n".join(lines))


def _curves(runs: Sequence[RunResult], method: str, attribute: str) -> np.ndarray:
    return np.array([getattr(r, attribute) for r in runs if r.method == method], dtype=np.float64)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def write_figures(runs: Sequence[RunResult], out: Path) -> list[Path]:
    methods = list(dict.fromkeys(r.method for r in runs))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}  # ablations repeat, dashed
    styles = {m: "-" if not m.startswith("gac") or m == "gac" else "--" for m in methods}
    widths = {m: 2.4 if m == "gac" else 1.2 for m in methods}
    steps = len(runs[0].mu)
    window = max(1, steps // 50)
    written = []

    def finish(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for m in methods:
        curve = _smooth(_curves(runs, m, "mu").mean(axis=0), window if m == "hpt" else 1)
        ax.plot(np.arange(curve.size), curve, styles[m], color=colors[m], lw=widths[m], label=m)
    ax.set(xlabel="step", ylabel="mu (SFT weight)", title="Mixing weight per method (mean over seeds)")
    ax.legend(fontsize=7, ncol=2)
    finish(fig, "mu.png")

    gac_runs = [r for r in runs if r.method == "gac"]
    if gac_runs:
        fig, axes = plt.subplots(2, 2, figsize=(8, 5.5), sharex=True)
        panels = [
            ("ema_disagreement", "disagreement D (EMA)"),
            ("ema_var_sft", "SFT noise vS (EMA)"),
            ("ema_var_rl", "RL noise vR (EMA)"),
            ("rho", "rho (KL-controlled target)"),
        ]
        for ax, (key, title) in zip(axes.flat, panels, strict=False):
            for r in gac_runs:
                ax.plot(r.proxies[key], lw=1, label=f"seed {r.seed}")
            if key == "rho":
                for r in gac_runs:
                    ax.plot(r.proxies["estimate"], ":", lw=1, label=f"mu^ seed {r.seed}")
            ax.set_title(title, fontsize=9)
        axes[1, 0].set_xlabel("step")
        axes[1, 1].set_xlabel("step")
        axes[1, 1].legend(fontsize=6)
        finish(fig, "gac_proxies.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for m in methods:
        eval_steps = next(r.eval_steps for r in runs if r.method == m)
        for ax, attribute in zip(axes, ("accuracy", "accuracy_carry"), strict=False):
            ax.plot(
                eval_steps, _curves(runs, m, attribute).mean(axis=0), styles[m], color=colors[m], lw=widths[m], label=m
            )
    axes[0].set(xlabel="step", ylabel="held-out exact match", title="Accuracy, all pairs")
    axes[1].set(xlabel="step", title="Accuracy, pairs with a carry")
    axes[0].legend(fontsize=7, ncol=2)
    finish(fig, "accuracy.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for m in methods:
        curve = _smooth(_curves(runs, m, "kl").mean(axis=0), window)
        ax.plot(np.arange(curve.size) + window - 1, curve, styles[m], color=colors[m], lw=widths[m], label=m)
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="k3 KL to the EMA policy", title=f"KL drift (moving average of {window} steps)")
    ax.legend(fontsize=7, ncol=2)
    finish(fig, "kl.png")
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
