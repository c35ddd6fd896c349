"""What a demo run depends on besides its method and seed (``RunSettings``),
and what it records (``RunResult``): shared by the methods, the training
loop, the runner and the report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .task import FALSE_ACCEPT, FALSE_REJECT, TaskSpec

# A move of the raw estimate larger than this counts as a large shift (Config.large_shift).
LARGE_SHIFT = 0.02
# The split and the expert are the same for every training seed, so that seeds measure training noise.
TASK_SEED = 0
# A record keeps each per-step series as its means over this many steps, to 6
# significant digits: a 2000-step record stays under 30 KB.
SERIES_EVERY = 10


@dataclass(frozen=True)
class RunSettings:
    """Everything a run depends on besides the method and the seed; the
    same for every method of a comparison."""

    steps: int = 2000
    prompts_per_step: int = 16
    group_size: int = 8
    lr: float = 1e-3
    grad_clip: float = 1.0
    eval_every: int = 50
    # Plain NLL by default: with this task's systematically wrong demos, CHORD's
    # phi weighting kept every method at the no-carry plateau (carry accuracy 0
    # after 1000 steps); the "gac-phi" ablation and --sft-coef phi run it.
    sft_coef: str = "nll"  # the SFT loss's token weighting: "nll" or "phi" (CHORD)
    ref_decay: float = 0.99
    kl_target: float = 0.2
    width: int = 64
    layers: int = 2
    heads: int = 4
    threads: int = 1
    # The checker that scores the demonstrations (track V): the chance it
    # accepts a wrong one and rejects a right one, fixed per demonstration.
    false_accept: float = FALSE_ACCEPT
    false_reject: float = FALSE_REJECT

    @property
    def warmup_steps(self) -> int:
        """Warmup of the schedule prior (GAC) and of CHORD's schedule: 10% of the run."""
        return self.schedule_phases(1.0)[0]

    @property
    def decay_steps(self) -> int:
        """Cosine decay of both schedules: the next 60% of the run, then the valley."""
        return self.schedule_phases(1.0)[1]

    def schedule_phases(self, scale: float) -> tuple[int, int]:
        """Warmup and decay steps of a schedule planned for ``scale`` times the run."""
        planned = round(scale * self.steps)
        return planned // 10, (6 * planned) // 10


def regime_settings(settings: RunSettings, spec: TaskSpec) -> RunSettings:
    """The settings a run of the regime ``spec`` trains with: the suite's,
    with the regime's own group size where it has one."""
    return settings if spec.group_size is None else replace(settings, group_size=spec.group_size)


@dataclass
class RunResult:
    method: str
    seed: int
    task: str  # a name of gaccore.demo.task.SUITE
    eval_steps: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    accuracy_carry: list[float] = field(default_factory=list)
    accuracy_no_carry: list[float] = field(default_factory=list)
    mu: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    train_reward: list[float] = field(default_factory=list)  # the rollouts' success rate (the exact reward)
    # What the method records of its rule (Method.recorded), per step.
    proxies: dict[str, list[float]] = field(default_factory=dict)
    large_shifts: int = 0
    kl_drift_area: float = 0.0
    wall_s: float = 0.0
    step_s: float = 0.0
    controller_s: float = 0.0
    series_every: int = 1  # the per-step series hold means over this many steps

    def compacted(self, every: int) -> RunResult:
        """The record with its per-step series as means over ``every`` steps
        (the last block may be shorter), to 6 significant digits."""
        series = {name: _block_means(getattr(self, name), every) for name in ("mu", "kl", "train_reward")}
        proxies = {name: _block_means(values, every) for name, values in self.proxies.items()}
        return replace(self, **series, proxies=proxies, series_every=self.series_every * every)

    @property
    def final_accuracy(self) -> float:
        return self.accuracy[-1] if self.accuracy else math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _block_means(values: list[float], every: int) -> list[float]:
    """Means of ``values`` over consecutive blocks of ``every``, to 6
    significant digits (NaN where a block holds only NaN)."""
    out = []
    for start in range(0, len(values), every):
        block = [v for v in values[start : start + every] if not math.isnan(v)]
        out.append(float(f"{sum(block) / len(block):.6g}") if block else math.nan)
    return out
