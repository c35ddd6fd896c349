"""The report's PNG figures: held-out accuracy per task, mu, the KL, and
GAC's proxies, from the runs' curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from .methods import is_gac_method
from .settings import RunResult

FloatArray = npt.NDArray[np.float64]


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
    every = runs[0].series_every  # the per-step series hold means over this many steps
    steps = len(runs[0].mu) * every
    window = max(1, steps // 50 // every)
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
        (
            "kl",
            "kl.png",
            "k3 KL to the EMA policy",
            f"KL drift, mean over seeds, moving average of {window * every} steps",
        ),
    )
    for attribute, name, ylabel, title in figures:
        fig, axes = panels(rows, cols, 5.0, 3.6)
        for ax, task in zip(axes.flat, tasks, strict=False):
            for m in (m for m in methods if of(task, m)):  # the schedule question runs on some tasks only
                # HPT's per-prompt share and the KL are noisy step to step: a moving average shows the trend.
                smoothing = window if attribute == "kl" or m == "hpt" else 1
                curve = _smooth(_curves(of(task, m), attribute).mean(axis=0), smoothing)
                plot(ax, (np.arange(curve.size) + smoothing) * every, curve, m)
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
        for m in (m for m in methods if of(task, m)):
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
                    x = (np.arange(len(r.proxies[key])) + 1) * r.series_every
                    (line,) = ax.plot(x, r.proxies[key], lw=1, label=f"seed {r.seed}")
                    if key == "rho":
                        ax.plot(x, r.proxies["estimate"], ":", lw=1, color=line.get_color())
                ax.set_title(f"{task}: {title}", fontsize=8)
        axes[0, -1].legend(fontsize=6)
        finish(fig, "gac_proxies.png")
    return written
