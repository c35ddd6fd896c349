"""Hybrid SFT + RL training of the tiny policy under one mixing rule.

Every optimizer step, for every method alike:

1. draw ``prompts_per_step`` training prompts;
2. sample ``group_size`` rollouts per prompt (temperature 1), reward them,
   and normalize the rewards within each prompt's group (GRPO);
3. one forward pass over the rollouts and the expert's demonstrations of the
   same prompts gives the answer-token log-probabilities; a frozen-in-time
   reference (see below) gives the KL;
4. the mixing rule reads the detached statistics and returns ``mu``;
5. ``loss = mu * L_SFT + (1 - mu) * L_RL`` (HPT: its per-prompt gate, see
   ``hybrid_loss``), one backward, gradient clipping, AdamW.

L_RL is the on-policy GRPO policy gradient (one update per batch, so the
PPO ratio is 1 and clipping never acts); L_SFT is the token-weighted SFT
loss of CHORD, ``phi(p) = p (1 - p)`` detached, or plain NLL
(``gaccore.bindings.losses.sft_loss``). The rules get torch tensors: GAC's
statistics run through ``gaccore.kernels`` (on CPU, the numba pass where
numba is installed, else the torch twin).

The KL reference. The policy is trained from scratch, so there is no
pretrained reference to stay close to; the KL that the KL-controlled rules
(GAC's rho, KL-ctrl) watch is the k3 KL of the rollouts between the policy
and an exponential moving average of its own weights (``ref_decay``,
about the last 1/(1 - ref_decay) steps): the recent drift of the policy.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaccore import Config, Controller, kept_demos
from gaccore.baselines import FixedMu, HPTGate, KLProportional, MixingRule, RewardVariance, ScheduleMu
from gaccore.bindings.losses import mix, sft_loss
from gaccore.stats import k3

from .model import TinyTransformer
from .task import ANSWER_LEN, FALSE_ACCEPT, FALSE_REJECT, ArithmeticTask, make_suite_task, reward

# Below this within-group reward spread the group carries no RL signal.
GROUP_STD_EPS = 1e-4
# A move of the raw estimate larger than this counts as a large shift (Config.large_shift).
LARGE_SHIFT = 0.02
# The split and the expert are the same for every training seed, so that seeds measure training noise.
TASK_SEED = 0


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
    train_reward: list[float] = field(default_factory=list)
    # GAC only: the proxies (EMAs), rho and the raw estimate, per step.
    proxies: dict[str, list[float]] = field(default_factory=dict)
    large_shifts: int = 0
    kl_drift_area: float = 0.0
    wall_s: float = 0.0
    step_s: float = 0.0
    controller_s: float = 0.0

    @property
    def final_accuracy(self) -> float:
        return self.accuracy[-1] if self.accuracy else math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the methods ---------------------------------------------------------------

RuleFactory = Callable[[RunSettings, float], Any]


def _gac(settings: RunSettings, schedule_scale: float, **overrides: Any) -> Controller:
    """GAC with the library defaults, the schedule prior planned for
    ``schedule_scale`` times the run's length, the demo's KL target, and the
    statistic matching the SFT loss."""
    prior_off = overrides.pop("prior_off", False)
    warmup, decay = settings.schedule_phases(schedule_scale)
    fields: dict[str, Any] = {
        "warmup_steps": warmup,
        "decay_steps": decay,
        "kl_target": settings.kl_target,
        "sft_coef": settings.sft_coef,
        "large_shift": LARGE_SHIFT,
    }
    config = Config(**{**fields, **overrides})
    if prior_off:
        return Controller(config, prior=None)
    return Controller(config)


def _chord(settings: RunSettings, schedule_scale: float) -> ScheduleMu:
    warmup, decay = settings.schedule_phases(schedule_scale)
    return ScheduleMu(warmup, decay, mu_peak=0.85, mu_valley=0.15, mu_start=0.0)


@dataclass(frozen=True)
class Method:
    """A training rule of the demo and what it may read.

    ``reads_scores``: the rule gets the checker's score of every
    demonstration of the step with the rollouts' rewards (``Controller``:
    ``scores=``). ``filtered``: a demonstration the checker rejects adds
    nothing to the SFT loss (and, for GAC, to its SFT statistics).
    ``schedule_scale``: the schedule (CHORD's, or GAC's prior) is planned
    for this multiple of the run's length, as a user who guessed the run's
    length wrong would plan it.
    """

    rule: RuleFactory
    description: str
    reads_scores: bool = False
    filtered: bool = False
    schedule_scale: float = 1.0


FILTER_THRESHOLD = 0.5  # the checker scores 1 (accept) or 0 (reject)
_VERIFIED = {"mode": "verified"}
_FILTERED = {"mode": "verified", "filter_demos": FILTER_THRESHOLD}

# Each baseline gets its knob from the shared settings by a rule written down
# before any run (no per-method tuning): the KL rule gives mu = 0.5 at the KL
# target; the reward-variance rule gives mu = 0.5 at half the largest
# within-group variance of a 0/1 reward (0.25 / 2).
METHODS: dict[str, Method] = {
    "gac": Method(
        _gac,
        "gaccore.Controller, library defaults (Eq. 3 + EMA + prior blend + cap, KL-controlled rho); prior "
        "0.85 -> 0.15 over the same phases as chord",
    ),
    "chord": Method(_chord, "CHORD's global schedule alone: warmup-cosine 0 -> 0.85 -> 0.15"),
    "fixed-0.5": Method(lambda s, k: FixedMu(0.5), "constant mu = 0.5"),
    "kl-ctrl": Method(
        lambda s, k: KLProportional(0.5 / s.kl_target), "mu = clip(gain * KL EMA, 0.05, 0.9), gain = 0.5 / KL target"
    ),
    "rewvar-ctrl": Method(
        lambda s, k: RewardVariance(0.5 * 0.125), "mu = clip(0.0625 / within-group reward variance EMA, 0.05, 0.9)"
    ),
    "hpt": Method(
        lambda s, k: HPTGate(success_reward=1.0),
        "per prompt: SFT on its demo if none of its rollouts succeeded, else RL (mu = gated share)",
    ),
    "pure-rl": Method(lambda s, k: FixedMu(0.0), "mu = 0 (GRPO only)"),
    "pure-sft": Method(lambda s, k: FixedMu(1.0), "mu = 1 (imitation only)"),
    "gac-no-cap": Method(lambda s, k: _gac(s, k, cap=1.0), "GAC with cap = 1 (no per-step limit)"),
    "gac-no-ema": Method(lambda s, k: _gac(s, k, ema_beta=0.0), "GAC with ema_beta = 0 (no smoothing of the estimate)"),
    "gac-no-prior": Method(lambda s, k: _gac(s, k, prior_off=True), "GAC with prior = None (no schedule blend)"),
    # GAC trained (and measured) with the other SFT loss than the comparison's.
    "gac-phi": Method(
        lambda s, k: _gac(s, k, sft_coef="phi"),
        "GAC trained with CHORD's token-weighted SFT loss phi = p(1-p) (statistic sft_coef='phi')",
    ),
    "gac-nll": Method(
        lambda s, k: _gac(s, k, sft_coef="nll"),
        "GAC trained with the plain NLL SFT loss (statistic sft_coef='nll')",
    ),
    # The checker's scores: the verified mode reads them; the filtered rules drop the rejected demonstrations.
    "gac-verified": Method(
        lambda s, k: _gac(s, k, **_VERIFIED),
        "GAC, mode='verified': rho from the checker's rate of the demonstrations against the rollouts' success",
        reads_scores=True,
    ),
    "gac-verified-filtered": Method(
        lambda s, k: _gac(s, k, **_FILTERED),
        "gac-verified over the accepted demonstrations only (filter_demos = 0.5)",
        reads_scores=True,
        filtered=True,
    ),
    "gac-verified-no-prior": Method(
        lambda s, k: _gac(s, k, **_VERIFIED, prior_off=True),
        "GAC, mode='verified', prior = None",
        reads_scores=True,
    ),
    "sft-filtered": Method(lambda s, k: FixedMu(1.0), "mu = 1 over the accepted demonstrations", filtered=True),
    "chord-filtered": Method(_chord, "chord over the accepted demonstrations", filtered=True),
    "fixed-0.5-filtered": Method(
        lambda s, k: FixedMu(0.5), "constant mu = 0.5 over the accepted demonstrations", filtered=True
    ),
    "hpt-filtered": Method(
        lambda s, k: HPTGate(success_reward=1.0),
        "hpt, imitating a prompt's demonstration only when the checker accepts it",
        filtered=True,
    ),
    # The schedule planned for half and for twice the actual run.
    "chord-half": Method(_chord, "chord, its schedule planned for half the run", schedule_scale=0.5),
    "chord-double": Method(_chord, "chord, its schedule planned for twice the run", schedule_scale=2.0),
    "gac-half": Method(_gac, "gac, its prior planned for half the run", schedule_scale=0.5),
    "gac-double": Method(_gac, "gac, its prior planned for twice the run", schedule_scale=2.0),
    "gac-verified-half": Method(
        lambda s, k: _gac(s, k, **_VERIFIED),
        "gac-verified, its prior planned for half the run",
        reads_scores=True,
        schedule_scale=0.5,
    ),
    "gac-verified-double": Method(
        lambda s, k: _gac(s, k, **_VERIFIED),
        "gac-verified, its prior planned for twice the run",
        reads_scores=True,
        schedule_scale=2.0,
    ),
}
DESCRIPTIONS = {name: method.description for name, method in METHODS.items()}
MAIN_METHODS = ["gac", "chord", "fixed-0.5", "kl-ctrl", "rewvar-ctrl", "hpt", "pure-rl", "pure-sft"]

# The suite's two tracks and its schedule question (settings fixed before any
# of its runs). Pure RL is in neither track: on every regime it learns nothing
# (held-out accuracy about 0.02 at 2000 steps, whatever the expert, since it
# never reads a demonstration), and five seeds of it on five regimes would
# cost a sixth of the suite to confirm that.
TRACK_U = ["gac", "chord", "fixed-0.5", "hpt", "pure-sft"]
TRACK_V = [
    "gac-verified",
    "gac-verified-filtered",
    "sft-filtered",
    "chord-filtered",
    "fixed-0.5-filtered",
    "hpt-filtered",
]
SCHEDULE_METHODS = ["chord-half", "chord-double", "gac-half", "gac-double", "gac-verified-half", "gac-verified-double"]
SCHEDULE_TASKS = ["random-errors", "carry-drop", "sub-borrow"]
# The misplanned variants and the well-planned method each is compared with.
SCHEDULE_OF = {
    "chord-half": "chord",
    "chord-double": "chord",
    "gac-half": "gac",
    "gac-double": "gac",
    "gac-verified-half": "gac-verified",
    "gac-verified-double": "gac-verified",
}
SUITE_SEEDS, SCHEDULE_SEEDS = 5, 3
# The quick demo: the regime where the expert drops carries, the paper GAC
# against the constant mu = 0.5 and the verifier's two ways (filtered SFT
# alone, and the filtered verified mode), two seeds: about 5.5 minutes on two
# cores, and runs that are the full suite's own (same settings and seeds).
QUICK_TASKS = ["carry-drop"]
QUICK_METHODS = ["gac", "fixed-0.5", "sft-filtered", "gac-verified-filtered"]
QUICK_SEEDS = 2
OTHER_SFT_COEF = {"nll": "gac-phi", "phi": "gac-nll"}


def ablations(settings: RunSettings) -> list[str]:
    """GAC without each of its parts: cap, EMA, prior, and its SFT loss
    (with CHORD's token phi when the comparison uses NLL, and the reverse)."""
    return ["gac-no-cap", "gac-no-ema", "gac-no-prior", OTHER_SFT_COEF[settings.sft_coef]]


def is_gac_method(method: str) -> bool:
    """Whether ``method`` is GAC or one of its modes and ablations (a
    ``gaccore.Controller``), as opposed to a baseline rule."""
    return method == "gac" or method.startswith("gac-")


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"cannot locate the package {package}")
    return Path(next(iter(spec.submodule_search_locations)))


# Where the code that decides a run's numbers lives (demo/, kernels/ and
# bindings/ install as gaccore.demo, gaccore.kernels and gaccore.bindings);
# tests point it at a copy.
SOURCE_DIRS: dict[str, Path] = {
    package: _package_dir(package) for package in ("gaccore", "gaccore.demo", "gaccore.kernels", "gaccore.bindings")
}
# The torch SFT loss and mix(), which every method trains with.
SFT_LOSS_SOURCE = ("gaccore.bindings", "losses.py")
# Demo files that plan, store and report runs but never touch one's numbers
# (the settings they pass on are in the key): editing them retrains nothing.
DEMO_REPORTING_SOURCES = [("gaccore.demo", name) for name in ("__main__.py", "runner.py", "report.py", "verdict.py")]
# What a baseline's numbers can depend on beyond the demo itself: the rules
# with what they import, and gaccore.stats, whose k3 is the KL every run logs
# and feeds to its rule. Left out on purpose: gaccore.validation (checks, no
# arithmetic).
BASELINE_SOURCES = [
    ("gaccore", "baselines.py"),
    ("gaccore", "stats.py"),
    ("gaccore", "schedules.py"),
    ("gaccore", "persistence.py"),
    ("gaccore", "_array.py"),
    SFT_LOSS_SOURCE,
]


# The torch side's modules a demo run never executes: it trains on CPU
# tensors, where statistics come from the numba pass or, without numba, the
# twin (never the Triton kernel), with no process group and no compiled step.
# Editing them retrains nothing.
KERNELS_NOT_RUN = ("fused.py", "distributed.py", "graphs.py")


def method_sources(method: str) -> dict[str, Path]:
    """The source files whose edits can change ``method``'s numbers, named
    independently of where the packages live: for a baseline, the demo's
    task, model and loop, the baseline rules with what they import, and the
    torch SFT loss; for GAC, the demo's files, every file of the core and
    of the torch side but ``KERNELS_NOT_RUN``, and the SFT loss; never
    ``DEMO_REPORTING_SOURCES``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    core, demo, kernels = SOURCE_DIRS["gaccore"], SOURCE_DIRS["gaccore.demo"], SOURCE_DIRS["gaccore.kernels"]
    files = [("gaccore.demo", p.relative_to(demo).as_posix()) for p in demo.glob("*.py")]
    if is_gac_method(method):
        # In a wheel the subpackages sit inside gaccore/: name each file once, by its package.
        subpackages = [SOURCE_DIRS[package] for package in SOURCE_DIRS if package != "gaccore"]
        core_files = [p for p in core.rglob("*.py") if not any(p.is_relative_to(sub) for sub in subpackages)]
        files += [("gaccore", p.relative_to(core).as_posix()) for p in core_files]
        files += [
            ("gaccore.kernels", p.relative_to(kernels).as_posix())
            for p in kernels.rglob("*.py")
            if p.name not in KERNELS_NOT_RUN
        ]
        files.append(SFT_LOSS_SOURCE)
    else:
        files += BASELINE_SOURCES
    files = [(package, name) for package, name in files if (package, name) not in DEMO_REPORTING_SOURCES]
    return {f"{package.replace('.', '/')}/{name}": SOURCE_DIRS[package] / name for package, name in sorted(files)}


def sft_coef_of(method: str, settings: RunSettings) -> str:
    """The SFT token weighting a method trains with: the shared one, except
    the GAC ablations that swap it (their statistic follows the loss)."""
    return {"gac-phi": "phi", "gac-nll": "nll"}.get(method, settings.sft_coef)


# -- losses --------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO: rewards ``[P, G]`` normalized within each prompt's group."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + GROUP_STD_EPS)


# -- one run ---------------------------------------------------------------------


def seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


@torch.no_grad()
def evaluate(policy: TinyTransformer, task: ArithmeticTask) -> tuple[float, float, float]:
    """Greedy exact-match accuracy on the held-out pairs: all, carry, no carry."""
    policy.eval()
    answers = policy.generate(torch.from_numpy(task.test_prompts), greedy=True).numpy()
    policy.train()
    correct = reward(answers, task.test_answers).astype(bool)
    carry = task.test_carry
    return float(correct.mean()), float(correct[carry].mean()), float(correct[~carry].mean())


def hybrid_loss(
    rule: Any, mu: float, logp_demos: torch.Tensor, rl_loss: torch.Tensor, sft_coef: str, kept: torch.Tensor
) -> torch.Tensor:
    """``mu * L_SFT + (1 - mu) * L_RL`` for a scalar rule, the SFT loss over
    the ``kept`` demonstrations only (a rejected one adds nothing); for HPT's
    per-prompt gate, SFT on the kept demonstrations of the gated prompts
    (weighted by their share, ``mu``) plus the RL loss of all groups, where
    the gated ones (all rollouts failed) have zero advantages and so
    contribute nothing."""
    demo_tokens = kept.unsqueeze(-1).expand_as(logp_demos)
    if isinstance(rule, HPTGate):
        gated = torch.from_numpy(rule.sft_weights > 0).unsqueeze(-1) & demo_tokens
        return mu * sft_loss(logp_demos, gated, sft_coef=sft_coef) + rl_loss
    return mix(sft_loss(logp_demos, demo_tokens, sft_coef=sft_coef), rl_loss, mu)


@dataclass
class StepOutcome:
    mu: float
    kl: float
    train_reward: float
    controller_s: float  # time in the rule's update


class Trainer:
    """One policy, its optimizer, and one mixing rule; ``step()`` trains once."""

    def __init__(self, method: str, seed: int, task: ArithmeticTask, settings: RunSettings) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
        seed_everything(seed, settings.threads)
        self.task, self.settings = task, settings
        self.policy = TinyTransformer(settings.width, settings.layers, settings.heads)
        self.reference = copy.deepcopy(self.policy).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=settings.lr)
        self.method = METHODS[method]
        self.rule = self.method.rule(settings, self.method.schedule_scale)
        self.sft_coef = sft_coef_of(method, settings)
        self.sampler = torch.Generator().manual_seed(seed)
        self.prompt_rng = np.random.default_rng(seed)
        P, G = settings.prompts_per_step, settings.group_size
        # Rows of every batch: P * G rollouts, then the P demonstrations.
        self.mask = torch.ones((P * G + P, ANSWER_LEN), dtype=torch.bool)
        self.expert = torch.cat([torch.zeros(P * G, dtype=torch.bool), torch.ones(P, dtype=torch.bool)])
        # The arguments of the rule's last update (the overhead benchmark replays them).
        self.last_rule_inputs: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})

    def step(self) -> StepOutcome:
        P, G = self.settings.prompts_per_step, self.settings.group_size
        task, policy = self.task, self.policy
        chosen = self.prompt_rng.choice(task.train_prompts.shape[0], size=P, replace=False)
        prompts = torch.from_numpy(task.train_prompts[chosen])
        demos = torch.from_numpy(task.train_demos[chosen])
        group_prompts = prompts.repeat_interleave(G, dim=0)
        rollouts = policy.generate(group_prompts, greedy=False, generator=self.sampler)
        rewards_np = reward(rollouts.numpy(), task.train_answers[chosen].repeat(G, axis=0)).reshape(P, G)
        advantages = group_advantages(torch.from_numpy(rewards_np).float())

        logp = policy.answer_logp(torch.cat([group_prompts, prompts]), torch.cat([rollouts, demos]))
        with torch.no_grad():
            ref_logp = self.reference.answer_logp(group_prompts, rollouts)
            kl = k3(ref_logp - logp[: P * G].detach()).mean()

        # The rule reads detached tensors; GAC computes its statistics on them
        # with gaccore.kernels (on CPU, the numba pass, or without numba the torch twin).
        adv_rows = torch.cat([advantages.reshape(-1), torch.zeros(P)])
        args = (logp.detach(), self.mask, adv_rows, self.expert)
        demo_scores = torch.from_numpy(task.train_demo_score[chosen])
        kept = kept_demos(demo_scores, FILTER_THRESHOLD if self.method.filtered else None)
        kwargs: dict[str, Any] = {"kl": kl}
        if isinstance(self.rule, Controller):
            if self.method.reads_scores:
                kwargs["scores"] = torch.cat([torch.from_numpy(rewards_np).reshape(-1), demo_scores])
        else:
            kwargs["rewards"] = rewards_np
        self.last_rule_inputs = (args, kwargs)
        controller_started = time.perf_counter()
        mu = float(self.rule.update(*args, **kwargs))
        controller_s = time.perf_counter() - controller_started

        # On-policy GRPO: one update per batch, so the PPO ratio is 1 and its gradient is adv * grad log p.
        rl_loss = -(advantages.reshape(-1) * logp[: P * G].mean(dim=-1)).mean()
        loss = hybrid_loss(self.rule, mu, logp[P * G :], rl_loss, self.sft_coef, kept)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.reference.parameters()), list(policy.parameters()), 1.0 - self.settings.ref_decay
            )
        return StepOutcome(mu=mu, kl=float(kl), train_reward=float(rewards_np.mean()), controller_s=controller_s)


def train_one(
    task_name: str,
    method: str,
    seed: int,
    settings: RunSettings,
    *,
    progress: Callable[[int], None] | None = None,
) -> RunResult:
    """Train a fresh policy on the suite task ``task_name`` with ``method``'s
    mixing rule; return its record."""
    task = make_suite_task(task_name, TASK_SEED, false_accept=settings.false_accept, false_reject=settings.false_reject)
    trainer = Trainer(method, seed, task, settings)
    rule = trainer.rule
    result = RunResult(method=method, seed=seed, task=task_name)
    previous_raw: float | None = None
    started = time.perf_counter()
    for step in range(settings.steps):
        step_started = time.perf_counter()
        outcome = trainer.step()
        result.step_s += time.perf_counter() - step_started
        result.controller_s += outcome.controller_s
        result.mu.append(outcome.mu)
        result.kl.append(outcome.kl)
        result.train_reward.append(outcome.train_reward)
        result.kl_drift_area += max(0.0, outcome.kl - settings.kl_target)
        raw = _raw_estimate(rule, outcome.mu)
        if raw is not None:
            if previous_raw is not None and abs(raw - previous_raw) > LARGE_SHIFT:
                result.large_shifts += 1
            previous_raw = raw
        if isinstance(rule, Controller):
            metrics = rule.metrics()
            for name in ("ema_disagreement", "ema_var_sft", "ema_var_rl", "rho", "estimate"):
                result.proxies.setdefault(name, []).append(metrics[name])
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
            accuracy, carry, no_carry = evaluate(trainer.policy, task)
            result.eval_steps.append(step + 1)
            result.accuracy.append(accuracy)
            result.accuracy_carry.append(carry)
            result.accuracy_no_carry.append(no_carry)
        if progress is not None:
            progress(1)
    result.wall_s = time.perf_counter() - started
    return result


def _raw_estimate(rule: Any, mu: float) -> float | None:
    """The unsmoothed value a rule proposes this step: GAC's clipped ``mu^``
    (None until defined), the output itself for the baselines."""
    if isinstance(rule, Controller):
        estimate = rule.metrics()["estimate"]
        return None if math.isnan(estimate) else estimate
    if isinstance(rule, MixingRule):
        return mu
    raise TypeError(f"unsupported rule {type(rule).__name__}")
