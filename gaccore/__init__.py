"""gaccore: noise-aware mixing of SFT and RL losses (GAC).

``loss = mu * L_SFT + (1 - mu) * L_RL`` with ``mu`` from ``Controller.update``
once per optimizer step. The core needs numpy only; torch inputs are handled
by ``gaccore.kernels`` (fused Triton statistics), imported on first use.
"""

from gaccore.baselines import FixedMu, HPTGate, KLProportional, MixingRule, RewardVariance, ScheduleMu
from gaccore.closed_form import mu_star, mu_star_biased
from gaccore.config import Config
from gaccore.controller import Controller
from gaccore.rows import BatchStats, kept_demos
from gaccore.schedules import WarmupCosine, warmup_cosine
from gaccore.stats import batch_stats

__all__ = [
    "BatchStats",
    "Config",
    "Controller",
    "FixedMu",
    "HPTGate",
    "KLProportional",
    "MixingRule",
    "RewardVariance",
    "ScheduleMu",
    "WarmupCosine",
    "batch_stats",
    "kept_demos",
    "mu_star",
    "mu_star_biased",
    "warmup_cosine",
]

__version__ = "0.1.0"
