"""The expert's demonstrations beside a GRPO trainer's rollouts.

What a binding that draws (prompt, completion) demonstrations next to TRL's
rollouts needs, whatever the trainer around it (TRL's ``GRPOTrainer``; the
trainers built on it): loading and checking the expert dataset, drawing a
resumable sequence of examples per process, rendering and tokenizing them as
TRL does, and laying rollout rows and expert rows out as one batch for the
controller. Scoring stays with the trainer: it calls its own reward
functions.

The expert dataset has ``prompt`` and ``completion`` columns, as TRL's
prompt-completion datasets: plain strings, or conversations rendered with
the tokenizer's chat template. Its other columns stay, and reach the reward
functions as keyword arguments when they score a demonstration.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from trl.data_utils import is_conversational, maybe_apply_chat_template

from gaccore import Config

__all__ = [
    "Demonstrations",
    "ExpertSampler",
    "ScoreCheck",
    "check_expert_dataset",
    "load_expert_dataset",
    "statistics_batch",
    "tokenize_demonstrations",
]


def load_expert_dataset(args: Any) -> Any:
    """The expert dataset ``args`` names (a ``GACGRPOConfig``: its
    ``expert_dataset_*`` and ``expert_*_column`` fields), with its prompt and
    completion columns renamed to ``prompt`` and ``completion``. Its other
    columns stay: the reward functions get them as keyword arguments when they
    score a demonstration, as they get the prompt dataset's for rollouts."""
    if not args.expert_dataset_name:
        raise ValueError("expert_dataset_name is not set: name the expert dataset (or pass expert_dataset=...)")
    from datasets import load_dataset

    dataset = load_dataset(
        args.expert_dataset_name,
        name=args.expert_dataset_config,
        data_files=args.expert_dataset_files,
        split=args.expert_dataset_split,
    )
    columns = {args.expert_prompt_column: "prompt", args.expert_completion_column: "completion"}
    missing = [name for name in columns if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"expert dataset {args.expert_dataset_name!r} has no column(s) {missing} "
            f"(expert_prompt_column / expert_completion_column); it has {dataset.column_names}"
        )
    taken = [name for name in ("prompt", "completion") if name in dataset.column_names and name not in columns]
    if taken:
        raise ValueError(
            f"expert dataset {args.expert_dataset_name!r} has a column named {taken} besides the chosen "
            "expert_prompt_column / expert_completion_column: rename or drop it"
        )
    return dataset.rename_columns({old: new for old, new in columns.items() if old != new})


def check_expert_dataset(dataset: Any) -> None:
    """Refuse an expert dataset that is not sized, is empty, or lacks ``prompt``/``completion``."""
    try:
        size = len(dataset)
    except TypeError:
        raise TypeError(
            f"expert_dataset must be a sized dataset of prompt/completion examples, got {type(dataset).__name__}"
        ) from None
    if size == 0:
        raise ValueError("expert_dataset is empty: it must hold at least one prompt/completion example")
    first = dataset[0]
    missing = [key for key in ("prompt", "completion") if key not in first]
    if missing:
        raise ValueError(f"expert_dataset examples must have 'prompt' and 'completion' columns; missing {missing}")


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


@dataclass(frozen=True)
class Demonstrations:
    """One draw of expert examples, tokenized, with the verifier's scores (NaN: not scored).

    ``completion_ids``/``completion_mask`` are right-padded, ``prompt_ids``/
    ``prompt_mask`` left-padded, as TRL pads its prompts; ``completion_lists``
    holds the unpadded completion ids, as reward functions get them."""

    examples: list[dict[str, Any]]
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_lists: list[list[int]]
    scores: torch.Tensor


def tokenize_demonstrations(
    examples: list[dict[str, Any]], processing_class: Any, max_completion_length: int, device: Any
) -> Demonstrations:
    """Render the examples with TRL's ``maybe_apply_chat_template`` (chat
    conversations through the tokenizer's template, plain strings as they
    are), tokenize prompts and completions apart as TRL's GRPO does, and
    truncate each completion to ``max_completion_length``. The scores are NaN
    (not scored).

    The end of a completion follows TRL's ``SFTTrainer``: a plain-string
    completion gets the tokenizer's EOS token appended when it does not end
    with it already; a chat completion is taken as the template renders it,
    which ends the turn with the template's own end marker (``<|im_end|>\n``
    for ChatML), so no EOS is added: rollouts stop at that same marker.
    """
    tokenizer: Any = getattr(processing_class, "tokenizer", processing_class)  # a processor wraps one
    eos = tokenizer.eos_token
    prompts, completions = [], []
    for example in examples:
        rendered = maybe_apply_chat_template(example, processing_class)
        completion = rendered["completion"]
        if not is_conversational(example) and eos is not None and not completion.endswith(eos):
            completion += eos
        prompts.append(rendered["prompt"])
        completions.append(completion)
    prompt_ids = [tokenizer(text=p, add_special_tokens=False)["input_ids"] for p in prompts]
    limit = max_completion_length
    completion_ids = [tokenizer(text=c, add_special_tokens=False)["input_ids"][:limit] for c in completions]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompt_tensor, prompt_mask = _pad(prompt_ids, pad, left=True, device=device)
    completion_tensor, completion_mask = _pad(completion_ids, pad, left=False, device=device)
    scores = torch.full((len(examples),), torch.nan, device=device)
    return Demonstrations(
        examples, completion_tensor, completion_mask, prompt_tensor, prompt_mask, completion_ids, scores
    )


class ScoreCheck:
    """What a binding checks on each draw's scores, with one host read of them.

    In ``mode="verified"`` every demonstration needs a score: one that no
    reward function scored (NaN) raises ValueError naming it. With
    ``filter_demos``, a score equal to the threshold is kept; when such a
    score is fractional (partial credit: a checker that scores a wrong answer
    in the right form 0.5), the filter keeps demonstrations that may be
    wrong, so the check warns, once per ``ScoreCheck``.
    ``reward_names`` name the reward functions in the error.
    """

    def __init__(self, config: Config, reward_names: list[str]) -> None:
        self.config, self.reward_names = config, reward_names
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
                        f"returned None for the demonstration {example['prompt']!r} -> {example['completion']!r}: "
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


def _pad(rows: list[list[int]], pad: int, *, left: bool, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)
