"""Controller configuration: the defaults and validation of SPEC.md §3.

Kept apart from ``controller.py`` so that the guarded update reads on its own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from gaccore.schedules import WarmupCosine, warmup_cosine
from gaccore.validation import SFT_COEFS, SftCoef, check_threshold

# "paper": SPEC.md §3 as written. "verified": rho follows the verifier's
# measure of the expert's advantage over the policy (an extension; see
# ``gaccore.controller.verified_rho``).
Mode = Literal["paper", "verified"]
MODES: tuple[str, ...] = get_args(Mode)
# Where the prior comes from: "steps", the warmup-cosine schedule over the
# optimizer steps (SPEC.md §3); "success", the same shape over the rollouts'
# success rate (needs no run length; see ``gaccore.step.success_prior``).
PriorFrom = Literal["steps", "success"]
PRIORS_FROM: tuple[str, ...] = get_args(PriorFrom)


def _setting(default: Any, help: str) -> Any:
    """A ``Config`` field with its one-line description: the bindings' option
    help and the README's table of settings are made from it."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Config:
    """Every setting of the controller. Frozen; ``dataclasses.replace`` (or
    ``Controller(config, **overrides)``) makes a validated copy. Each field's
    ``metadata["help"]`` says what it does."""

    ema_beta: float = _setting(0.99, "EMA factor of the mu estimate (Eq. 12)")
    stat_beta: float = _setting(0.9, "EMA factor of the three noise proxies and the verifier's success rates")
    cap: float = _setting(0.01, "largest change of mu per optimizer step (Eq. 13)")
    blend: float = _setting(0.5, "weight of the EMA estimate against the schedule prior")
    mu_init: float = _setting(0.85, "mu at step 0")
    mu_min: float = _setting(0.05, "lower bound of mu")
    mu_max: float = _setting(0.9, "upper bound of mu")
    update_every: int = _setting(1, "compute statistics every this many optimizer steps")
    trim: float = _setting(0.1, "fraction trimmed from each end of the expert NLLs for var_sft (Eq. 9)")
    sft_coef: SftCoef = _setting(
        "phi", "SFT token weighting of the statistic and the SFT loss: 'phi' = p(1-p) (CHORD), 'nll' = plain NLL"
    )
    scale: tuple[float, float, float] = _setting((1.0, 1.0, 1.0), "scales (kD, kS, kR) of the three proxies")
    per_mean: bool = _setting(False, "divide var_sft and var_rl by their row counts (batch-mean gradients)")
    warmup_steps: int = _setting(200, "prior: linear warmup steps")
    decay_steps: int = _setting(800, "prior: cosine decay steps")
    mu_peak: float = _setting(0.85, "prior: mu after the warmup")
    mu_valley: float = _setting(0.15, "prior: mu after the decay")
    rho_init: float = _setting(0.5, "target SFT ratio rho at step 0")
    rho_min: float = _setting(0.10, "lower bound of rho")
    rho_max: float = _setting(0.95, "upper bound of rho")
    kl_target: float = _setting(0.02, "KL the rho controller aims at (Eq. 11/16)")
    kl_band: float = _setting(0.2, "relative hysteresis band around kl_target")
    kl_beta: float = _setting(0.9, "EMA factor of the KL")
    eta_up: float = _setting(0.02, "rho's step toward rho_max while the KL is high")
    eta_down: float = _setting(0.03, "rho's step toward rho_min while the KL is low")
    large_shift: float = _setting(0.02, "a jump of the estimate above this counts as a large shift")
    mode: Mode = _setting(
        "paper", "'paper': rho from the KL; 'verified': rho from the verifier's success rates of expert and policy"
    )
    filter_demos: float | None = _setting(
        None, "demonstrations the verifier scores below this leave the SFT loss and statistics; None keeps all"
    )
    verified_patience: int = _setting(20, "mode 'verified': warn once after this many steps without the two rates")
    prior_from: PriorFrom = _setting(
        "steps", "'steps': the prior decays over warmup/decay steps; 'success': over the rollouts' success rate"
    )
    success_target: float = _setting(0.5, "prior_from 'success': the rollouts' success rate where it reaches mu_valley")
    success_threshold: float | None = _setting(
        None,
        "scores at or above this count as successes in the success rates; None: scores are rates in [0, 1]",
    )

    def __post_init__(self) -> None:
        if isinstance(self.scale, list):
            object.__setattr__(self, "scale", tuple(self.scale))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "sft_coef":
                if value not in SFT_COEFS:
                    raise ValueError(f"sft_coef must be one of {SFT_COEFS}, got {value!r}")
            elif f.name == "mode":
                if value not in MODES:
                    raise ValueError(f"mode must be one of {MODES}, got {value!r}")
            elif f.name == "prior_from":
                if value not in PRIORS_FROM:
                    raise ValueError(f"prior_from must be one of {PRIORS_FROM}, got {value!r}")
            elif f.name == "per_mean":
                if not isinstance(value, bool):
                    raise ValueError(f"per_mean must be a bool, got {value!r}")
            elif f.name == "scale":
                if not isinstance(value, tuple) or len(value) != 3 or not all(_is_number(v) and v > 0 for v in value):
                    raise ValueError(f"scale must be three finite numbers > 0 (kD, kS, kR), got {value!r}")
            elif f.name in ("filter_demos", "success_threshold"):
                check_threshold(f.name, value)
            elif f.name in ("update_every", "warmup_steps", "decay_steps", "verified_patience"):
                least = 0 if f.name in ("warmup_steps", "decay_steps") else 1
                if isinstance(value, bool) or not isinstance(value, int) or value < least:
                    raise ValueError(f"{f.name} must be an integer >= {least}, got {value!r}")
            elif not _is_number(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        self._check_ranges()

    def _check_ranges(self) -> None:
        def require(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"{name} must satisfy {rule}, got {name}={getattr(self, name)!r}")

        for name in ("ema_beta", "stat_beta", "kl_beta"):
            require(0.0 <= getattr(self, name) < 1.0, name, "0 <= value < 1")
        require(0.0 <= self.mu_min, "mu_min", "0 <= mu_min")
        require(self.mu_min <= self.mu_init, "mu_init", f"mu_min ({self.mu_min}) <= mu_init")
        require(self.mu_init <= self.mu_max, "mu_max", f"mu_init ({self.mu_init}) <= mu_max")
        require(self.mu_max <= 1.0, "mu_max", "mu_max <= 1")
        require(0.0 <= self.rho_min, "rho_min", "0 <= rho_min")
        require(self.rho_min <= self.rho_init, "rho_init", f"rho_min ({self.rho_min}) <= rho_init")
        require(self.rho_init <= self.rho_max, "rho_max", f"rho_init ({self.rho_init}) <= rho_max")
        require(self.rho_max <= 1.0, "rho_max", "rho_max <= 1")
        require(self.cap > 0.0, "cap", "cap > 0")
        require(0.0 <= self.blend <= 1.0, "blend", "0 <= blend <= 1")
        for name in ("eta_up", "eta_down"):
            require(0.0 < getattr(self, name) <= 1.0, name, "0 < value <= 1")
        require(0.0 <= self.trim < 0.5, "trim", "0 <= trim < 0.5")
        require(self.kl_target > 0.0, "kl_target", "kl_target > 0")
        require(self.kl_band >= 0.0, "kl_band", "kl_band >= 0")
        require(self.large_shift >= 0.0, "large_shift", "large_shift >= 0")
        require(0.0 < self.success_target <= 1.0, "success_target", "0 < success_target <= 1")

    def schedule_prior(self) -> WarmupCosine | None:
        """The controller's default prior over steps: warmup-cosine from
        ``mu_init`` to ``mu_peak`` over ``warmup_steps``, then to ``mu_valley``
        over ``decay_steps``; ``None`` with ``prior_from="success"``, whose
        prior the step computes from the success rate itself."""
        if self.prior_from == "success":
            return None
        return warmup_cosine(self.warmup_steps, self.decay_steps, self.mu_peak, self.mu_valley, mu_start=self.mu_init)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``scale`` as a list)."""
        data = dataclasses.asdict(self)
        data["scale"] = list(self.scale)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Config fields: {unknown}")
        return cls(**data)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
