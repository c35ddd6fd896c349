"""What every binding that draws demonstrations beside a trainer's rollouts
shares, whatever the trainer: which examples each process draws
(``ExpertSampler``), the checks on the verifier's scores of a draw
(``ScoreCheck``), and the controller's batch of rollout rows and expert rows
(``statistics_batch``). TRL (``demonstrations.py``) and ms-swift
(``swift.py``) use them.

Imports numpy, torch and gaccore's core; no trainer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gaccore import Config

__all__ = ["EXPERT_STREAM", "ExpertSampler", "ScoreCheck", "statistics_batch"]


# Tags the expert sampler's random stream, apart from every other stream seeded by the same seed.
EXPERT_STREAM = 0x67616365  # "gace"


class ExpertSampler:
    """Which examples each process draws: a fresh permutation of the dataset
    per epoch (seeded by ``seed``, in a stream of its own: not the prompts'
    order), dealt out to the processes in turn, so ranks see different
    examples and a run resumed at ``draws`` continues with the examples the
    stopped one would have drawn.

    ``size``: examples in the dataset; ``batch_size``: examples per draw and
    process; ``rank``/``world``: this process and the number of processes.
    ``draws`` counts the draws taken so far; save it with checkpoints.
    """

    def __init__(self, size: int, batch_size: int, seed: int, *, rank: int = 0, world: int = 1) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world = rank, world
        self.draws = 0
        self._epoch: tuple[int, list[int]] | None = None  # the last epoch's permutation

    def indices(self, draw: int | None = None) -> list[int]:
        """This process's examples of draw ``draw`` (default: the next draw)."""
        draw = self.draws if draw is None else draw
        first = (draw * self.world + self.rank) * self.batch_size
        indices = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.size)
            indices.append(self._permutation(epoch)[offset])
        return indices

    def take(self) -> list[int]:
        """The next draw's examples, counted as drawn."""
        indices = self.indices()
        self.draws += 1
        return indices

    def _permutation(self, epoch: int) -> list[int]:
        """The epoch's order, from a random stream of the sampler's own: seeded
        by ``(seed, EXPERT_STREAM, epoch)``, so it never replays the prompt
        sampler's ``torch.Generator().manual_seed(seed)`` permutation (drawing
        the demonstrations of the prompts being rolled out)."""
        if self._epoch is None or self._epoch[0] != epoch:
            entropy = [self.seed % 2**64, EXPERT_STREAM, epoch]
            order = np.random.default_rng(np.random.SeedSequence(entropy)).permutation(self.size)
            self._epoch = (epoch, order.tolist())
        return self._epoch[1]


class ScoreCheck:
    """What a binding checks on each draw's scores, with one host read of them.

    In ``mode="verified"`` every demonstration needs a score: one that no
    reward function scored (NaN) raises ValueError naming it. With
    ``filter_demos``, a score equal to the threshold is kept; when such a
    score is fractional (partial credit: a checker that scores a wrong answer
    in the right form 0.5), the filter keeps demonstrations that may be
    wrong, so the check warns, once per ``ScoreCheck``.
    ``reward_names`` name the reward functions in the error; ``describe``
    names a demonstration there (default: its ``prompt -> completion``).
    """

    def __init__(
        self, config: Config, reward_names: list[str], describe: Callable[[dict[str, Any]], str] | None = None
    ) -> None:
        self.config, self.reward_names = config, reward_names
        self.describe = describe if describe is not None else _prompt_to_completion
        self.warned = False

    def __call__(self, scores: torch.Tensor, examples: list[dict[str, Any]]) -> None:
        config = self.config
        if config.mode != "verified" and (config.filter_demos is None or self.warned):
            return  # nothing to check: no host read
        values = scores.tolist()
        if config.mode == "verified":
            for value, example in zip(values, examples, strict=True):
                if math.isnan(value):
                    raise ValueError(
                        "gac_mode='verified' needs a score for every demonstration, but every reward function "
                        f"returned None for the demonstration {self.describe(example)}: "
                        f"make one of {self.reward_names} score demonstrations (their dataset columns arrive as "
                        "keyword arguments), or use gac_mode='paper'"
                    )
        threshold = config.filter_demos
        if threshold is None or self.warned:
            return
        if any(value == threshold and not float(value).is_integer() for value in values):
            self.warned = True
            warnings.warn(
                f"gac_filter_demos={threshold} keeps the demonstrations scored exactly {threshold}, and a reward "
                "function gave a demonstration that fractional score: partial credit, which some checkers give "
                "a wrong answer in the right form (reasoning-gym's score_answer, for one). To keep only the "
                "demonstrations the checker accepts, set gac_filter_demos just above the partial credit (1.0 "
                "for a checker of 0/1 scores). Shown once.",
                UserWarning,
                stacklevel=2,
            )


def _prompt_to_completion(example: dict[str, Any]) -> str:
    return f"{example['prompt']!r} -> {example['completion']!r}"


def statistics_batch(
    rl_logp: torch.Tensor,
    rl_mask: torch.Tensor,
    advantages: torch.Tensor,
    ref_logp: torch.Tensor | None,
    expert_logp: torch.Tensor,
    expert_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The controller's ``(logp, mask, adv, expert, ref_logp)``: rollout rows
    then expert rows, right-padded to one width with a zero mask.

    Expert rows get advantage 0 and, when ``ref_logp`` is given, their own
    log-probs as reference: neither enters a statistic, which reads
    advantages and KL from RL rows only."""
    width = max(rl_logp.size(1), expert_logp.size(1))

    def widen(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.size(1)))

    logp = torch.cat([widen(rl_logp), widen(expert_logp)])
    mask = torch.cat([widen(rl_mask.to(torch.int64)), widen(expert_mask.to(torch.int64))])
    n_rl, n_expert = rl_logp.size(0), expert_logp.size(0)
    adv_rows = advantages.detach().float()
    if adv_rows.ndim == 1:
        adv = torch.cat([adv_rows, adv_rows.new_zeros(n_expert)])
    else:
        adv = torch.cat([widen(adv_rows), adv_rows.new_zeros(n_expert, width)])
    expert = torch.arange(n_rl + n_expert, device=logp.device) >= n_rl
    ref = None if ref_logp is None else torch.cat([widen(ref_logp.detach()), widen(expert_logp)])
    return logp, mask, adv, expert, ref
