"""The demo's outputs: ``report.json``, ``report.md`` and PNG figures.

Numbers in the report come from the run records only (``summaries``), and
the verdict is computed (``verdict``, a pure function of the accuracy
table), never written by hand, so it says whatever the runs say and no
more: one method beats another only when the interval of their paired
difference lies above zero, and the report decides a track only with at
least ``summaries.DECIDING_SEEDS`` seeds. ``markdown`` writes the text,
``figures`` the figures, ``provenance`` where the report was made.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .figures import write_figures
from .markdown import write_markdown
from .provenance import environment
from .settings import RunResult, RunSettings
from .summaries import schedule_report, task_summary, track_report, tracks_of

# 3: two tracks and the schedule question, with bootstrap intervals; no curves (runs/ holds them).
SCHEMA = "gaccore.demo.report/3"
# Numbers that measure the machine, not the training: left out of determinism checks.
TIMING_KEYS = ("wall_s_mean", "step_ms_mean", "controller_overhead_pct")


def build_report(
    runs: Sequence[RunResult],
    settings: RunSettings,
    *,
    command: str,
    total_wall_s: float,
    jobs: int = 1,
    reused: int = 0,
) -> dict[str, Any]:
    tracks = {name: track_report(name, runs, methods, settings) for name, methods in tracks_of(runs).items()}
    tasks = {name: task_summary(name, runs, settings) for name in dict.fromkeys(r.task for r in runs)}
    return {
        "schema": SCHEMA,
        "command": command,
        "total_wall_s": total_wall_s,
        # What the whole suite costs, however many sittings it took: the runs' own times.
        "runs_wall_s": float(sum(r.wall_s for r in runs)),
        "runs_reused": reused,
        "n_runs": len(runs),
        "environment": environment(settings, jobs),
        "settings": {**asdict(settings), "warmup_steps": settings.warmup_steps, "decay_steps": settings.decay_steps},
        "tracks": tracks,
        "schedule": schedule_report(runs),
        "tasks": tasks,
    }


def deterministic_view(report: dict[str, Any]) -> dict[str, Any]:
    """The report without anything that measures time or the machine, NaN
    as None (so that equal runs compare equal): for determinism checks."""
    tasks = {
        name: {k: v for k, v in task.items() if k != "methods"}
        | {"methods": {m: {k: v for k, v in s.items() if k not in TIMING_KEYS} for m, s in task["methods"].items()}}
        for name, task in report["tasks"].items()
    }
    return _finite_or_none({"tasks": tasks, "tracks": report["tracks"], "schedule": report["schedule"]})


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
