"""The plan study's figures, from the main runs' curves: held-out accuracy
of the bar's arms per test regime, and mu with its prior for the candidate
and the paper's GAC against CHORD's schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np

from . import study
from .settings import RunResult

# One color per CHORD plan in every panel (the candidate is black).
PLAN_COLORS = dict(
    zip(study.PLANS.values(), ("tab:orange", "tab:purple", "tab:blue", "tab:red", "tab:green"), strict=True)
)


def _mean_curve(runs: Sequence[RunResult], values: Any) -> np.ndarray:
    return np.nanmean(np.array([values(r) for r in runs], dtype=np.float64), axis=0)


def write_study_figures(report: dict[str, Any], main: Sequence[RunResult], out: Path) -> list[Path]:
    """``study-accuracy.png`` and ``study-mu.png`` in ``out``; the paths written."""
    regimes = report["bar"]["regimes"]
    if not regimes:
        return []

    def of(regime: str, method: str) -> list[RunResult]:
        return [r for r in main if r.task == regime and r.method == method]

    cols = min(len(regimes), 4)
    rows = math.ceil(len(regimes) / cols)

    def panels() -> tuple[Any, Any]:
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
        for ax in axes.flat[len(regimes) :]:
            ax.axis("off")
        return fig, axes

    def finish(fig: Any, axes: Any, name: str, title: str) -> Path:
        handles, labels = {}, []
        for ax in axes.flat:  # one legend for all panels, each label once
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in handles:
                    handles[label] = handle
                    labels.append(label)
        fig.legend(
            [handles[label] for label in labels], labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8
        )
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        path = out / name
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

    written = []
    candidate, tuned = report["candidate"], report["bar"]["tuned_once"]
    misplanned = [study.PLANS[k] for k in study.MISPLANNED]
    fig, axes = panels()
    for ax, regime in zip(axes.flat, regimes, strict=False):
        best = report["bar"]["best_plans"][regime]
        arms = list(dict.fromkeys([candidate, tuned, *misplanned, best]))
        for method in arms:
            runs = of(regime, method)
            if not runs:
                continue
            label = method + (" (tuned once)" if method == tuned else "")
            style = {"lw": 2.4, "color": "black"} if method == candidate else {"lw": 1.2, "color": PLAN_COLORS[method]}
            ax.plot(runs[0].eval_steps, _mean_curve(runs, lambda r: r.accuracy), label=label, **style)
        ax.set(title=f"{regime} (best plan: {best})", xlabel="step")
    axes[0, 0].set_ylabel("held-out exact match")
    written.append(finish(fig, axes, "study-accuracy.png", "Held-out accuracy of the bar's arms, mean over seeds"))

    fig, axes = panels()
    chord = study.PLANS[1.0]
    for ax, regime in zip(axes.flat, regimes, strict=False):
        for method, color in ((candidate, "black"), (study.GAC_PLANS[1.0], "tab:blue")):
            runs = of(regime, method)
            if runs:
                x = (np.arange(len(runs[0].mu)) + 1) * runs[0].series_every
                ax.plot(x, _mean_curve(runs, lambda r: r.mu), color=color, lw=1.6, label=f"{method}: mu")
                prior = _mean_curve(runs, lambda r: r.proxies["prior"])
                ax.plot(x, prior, ":", color=color, lw=1.6, label=f"{method}: its prior")
        runs = of(regime, chord)
        if runs:
            x = (np.arange(len(runs[0].mu)) + 1) * runs[0].series_every
            ax.plot(
                x, _mean_curve(runs, lambda r: r.mu), color="tab:orange", lw=1.2, label=f"{chord}: mu (its schedule)"
            )
        ax.set(title=regime, xlabel="step", ylim=(0.0, 1.0))
    axes[0, 0].set_ylabel("mu (SFT weight)")
    written.append(finish(fig, axes, "study-mu.png", "mu and the prior it blends toward, mean over seeds"))
    return written
