"""The demo's method catalogue: each training rule (``METHODS``) with what
it may read, the suite's tracks and schedule question, and the quick demo's
tasks, methods and seeds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gaccore import Config, Controller
from gaccore.baselines import FixedMu, HPTGate, KLProportional, RewardVariance, ScheduleMu

from .settings import LARGE_SHIFT, RunSettings

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

    Every rule gets ``scores=``, one per row: the rollouts' rewards, and
    for the demonstrations NaN (not scored), or with ``reads_scores`` the
    checker's score of each. ``filtered``: a demonstration the checker
    rejects adds nothing to the SFT loss (and, for GAC, to its SFT
    statistics). ``schedule_scale``: the schedule (CHORD's, or GAC's prior)
    is planned for this multiple of the run's length, as a user who guessed
    the run's length wrong would plan it. ``recorded``: the names of the
    rule's ``metrics()`` that the run's record keeps step by step
    (``RunResult.proxies``).
    """

    rule: RuleFactory
    description: str
    reads_scores: bool = False
    filtered: bool = False
    schedule_scale: float = 1.0
    recorded: tuple[str, ...] = ()


# What a GAC run records of its controller each step: the three proxies' EMAs,
# rho, the raw estimate, the prior it blended toward and the rollouts' success
# rate it read (the last two show how far mu strays from its prior, and why).
GAC_RECORDED = ("ema_disagreement", "ema_var_sft", "ema_var_rl", "rho", "estimate", "prior", "ema_policy_success")


def _gac_method(rule: RuleFactory, description: str, **fields: Any) -> Method:
    """A method whose rule is a ``gaccore.Controller``: it records ``GAC_RECORDED``."""
    return Method(rule, description, recorded=GAC_RECORDED, **fields)


FILTER_THRESHOLD = 0.5  # the checker scores 1 (accept) or 0 (reject)
_VERIFIED = {"mode": "verified"}
_FILTERED = {"mode": "verified", "filter_demos": FILTER_THRESHOLD}

# Each baseline gets its knob from the shared settings by a rule written down
# before any run (no per-method tuning): the KL rule gives mu = 0.5 at the KL
# target; the reward-variance rule gives mu = 0.5 at half the largest
# within-group variance of a 0/1 reward (0.25 / 2).
METHODS: dict[str, Method] = {
    "gac": _gac_method(
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
        lambda s, k: RewardVariance(0.5 * 0.125, group_size=s.group_size),
        "mu = clip(0.0625 / within-group reward variance EMA, 0.05, 0.9)",
    ),
    "hpt": Method(
        lambda s, k: HPTGate(success_reward=1.0, group_size=s.group_size),
        "per prompt: SFT on its demo if none of its rollouts succeeded, else RL (mu = gated share)",
    ),
    "pure-rl": Method(lambda s, k: FixedMu(0.0), "mu = 0 (GRPO only)"),
    "pure-sft": Method(lambda s, k: FixedMu(1.0), "mu = 1 (imitation only)"),
    "gac-no-cap": _gac_method(lambda s, k: _gac(s, k, cap=1.0), "GAC with cap = 1 (no per-step limit)"),
    "gac-no-ema": _gac_method(
        lambda s, k: _gac(s, k, ema_beta=0.0), "GAC with ema_beta = 0 (no smoothing of the estimate)"
    ),
    "gac-no-prior": _gac_method(lambda s, k: _gac(s, k, prior_off=True), "GAC with prior = None (no schedule blend)"),
    # GAC trained (and measured) with the other SFT loss than the comparison's.
    "gac-phi": _gac_method(
        lambda s, k: _gac(s, k, sft_coef="phi"),
        "GAC trained with CHORD's token-weighted SFT loss phi = p(1-p) (statistic sft_coef='phi')",
    ),
    "gac-nll": _gac_method(
        lambda s, k: _gac(s, k, sft_coef="nll"),
        "GAC trained with the plain NLL SFT loss (statistic sft_coef='nll')",
    ),
    # The checker's scores: the verified mode reads them; the filtered rules drop the rejected demonstrations.
    "gac-verified": _gac_method(
        lambda s, k: _gac(s, k, **_VERIFIED),
        "GAC, mode='verified': rho from the checker's rate of the demonstrations against the rollouts' success",
        reads_scores=True,
    ),
    "gac-verified-filtered": _gac_method(
        lambda s, k: _gac(s, k, **_FILTERED),
        "gac-verified over the accepted demonstrations only (filter_demos = 0.5)",
        reads_scores=True,
        filtered=True,
    ),
    "gac-verified-no-prior": _gac_method(
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
        lambda s, k: HPTGate(success_reward=1.0, group_size=s.group_size),
        "hpt, imitating a prompt's demonstration only when the checker accepts it",
        filtered=True,
    ),
    # The schedule planned for a quarter of, half of, twice and four times the actual run.
    "chord-quarter": Method(_chord, "chord, its schedule planned for a quarter of the run", schedule_scale=0.25),
    "chord-half": Method(_chord, "chord, its schedule planned for half the run", schedule_scale=0.5),
    "chord-double": Method(_chord, "chord, its schedule planned for twice the run", schedule_scale=2.0),
    "chord-quadruple": Method(_chord, "chord, its schedule planned for four times the run", schedule_scale=4.0),
    "gac-quarter": _gac_method(_gac, "gac, its prior planned for a quarter of the run", schedule_scale=0.25),
    "gac-half": _gac_method(_gac, "gac, its prior planned for half the run", schedule_scale=0.5),
    "gac-double": _gac_method(_gac, "gac, its prior planned for twice the run", schedule_scale=2.0),
    "gac-quadruple": _gac_method(_gac, "gac, its prior planned for four times the run", schedule_scale=4.0),
    # Needs no run length: the prior follows the rollouts' success rate (round 3's candidate).
    "gac-success": _gac_method(
        lambda s, k: _gac(s, k, prior_from="success"),
        "gac with prior_from='success': the prior falls from 0.85 to 0.15 as the rollouts' success rate reaches "
        "0.5 (no warmup or decay steps)",
    ),
    "gac-verified-half": _gac_method(
        lambda s, k: _gac(s, k, **_VERIFIED),
        "gac-verified, its prior planned for half the run",
        reads_scores=True,
        schedule_scale=0.5,
    ),
    "gac-verified-double": _gac_method(
        lambda s, k: _gac(s, k, **_VERIFIED),
        "gac-verified, its prior planned for twice the run",
        reads_scores=True,
        schedule_scale=2.0,
    ),
}
DESCRIPTIONS = {name: method.description for name, method in METHODS.items()}
MAIN_METHODS = ["gac", "chord", "fixed-0.5", "kl-ctrl", "rewvar-ctrl", "hpt", "pure-rl", "pure-sft"]

# The suite's two tracks and its schedule question (settings fixed before any
# of its runs). Pure RL is in neither track: it never reads a demonstration
# and learns nothing here (the plan study's 2000-step record, carry-drop seed
# 0, ends at 0.022 held-out accuracy), and five seeds of it on five regimes
# would cost a sixth of the suite to confirm that.
TRACK_TASKS = ["perfect", "random-errors", "carry-drop", "mostly-wrong", "sub-borrow"]
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
# The quick demo: the regime where the expert drops carries, each GAC mode
# against the strongest baseline of its track in the full suite (CHORD's
# schedule, and CHORD over the checker's accepted demonstrations), two seeds:
# about 5.5 minutes on two cores, and runs that are the full suite's own
# (same settings and seeds).
QUICK_TASKS = ["carry-drop"]
QUICK_METHODS = ["gac", "chord", "gac-verified-filtered", "chord-filtered"]
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


def sft_coef_of(method: str, settings: RunSettings) -> str:
    """The SFT token weighting a method trains with: the shared one, except
    the GAC ablations that swap it (their statistic follows the loss)."""
    return {"gac-phi": "phi", "gac-nll": "nll"}.get(method, settings.sft_coef)
