"""What the controller does with the verifier's scores beyond the statistics.

``mode="verified"`` steers rho with two success rates and
``prior_from="success"`` the prior with the rollouts' one, so both need
scores that are successes or success rates: ``check_success_scores`` refuses others
(``Config.success_threshold`` turns any reward into successes instead), and
``RatesWatch`` warns when a run gives the mode no rates at all.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from gaccore._array import is_torch
from gaccore.config import Config


def check_success_scores(scores: Any, config: Config, *, first_step: bool) -> None:
    """Where a success rate steers mu (``mode="verified"``, ``prior_from="success"``)
    and no ``success_threshold`` makes successes of the scores, refuse scores
    outside [0, 1] (NaN and inf: not scored), naming ``scores`` and what to
    pass. numpy scores are read at every call; torch tensors at the
    controller's first step only, since reading one on a device synchronizes
    (the first step is where a reward's convention shows)."""
    reader = "mode='verified'" if config.mode == "verified" else "prior_from='success'"
    if scores is None or config.success_threshold is not None:
        return
    if config.mode != "verified" and config.prior_from != "success":
        return
    if is_torch(scores):
        if not first_step:
            return
        scores = scores.detach().cpu().double().numpy()
    values = np.asarray(scores, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size and not 0.0 <= values.min() <= values.max() <= 1.0:
        raise ValueError(
            f"scores: {reader} reads each score as a success rate in [0, 1] (NaN: not scored), got scores "
            f"from {values.min():g} to {values.max():g}; pass Config(success_threshold=t) to count a score at or "
            "above t as a success (the reward of a right answer; 0.0 for rewards of -1 and +1), or scores in [0, 1]"
        )


class RatesWatch:
    """Warns once when ``mode="verified"`` goes ``verified_patience`` steps
    without a source of its two success rates: it then steers rho like no
    mode at all, and a user should not find that out from the results."""

    def __init__(self, config: Config) -> None:
        self.patience = config.verified_patience if config.mode == "verified" else None
        self.steps_without = 0
        self.warned = False

    def count(self, had_rates: bool) -> None:
        if self.patience is None:
            return
        self.steps_without = 0 if had_rates else self.steps_without + 1
        if self.steps_without == self.patience and not self.warned:
            self.warned = True
            warnings.warn(
                f"mode='verified' has had no verifier success rates for {self.patience} steps, so rho stays "
                "where it is: pass scores=[B] (each row's verifier score) to observe/update, or "
                "expert_success= and policy_success= to step",
                RuntimeWarning,
                stacklevel=5,
            )
