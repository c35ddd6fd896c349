"""The expert's demonstrations beside a GRPO trainer's rollouts.

What a binding that draws (prompt, completion) demonstrations next to TRL's
rollouts needs, whatever the trainer around it (TRL's ``GRPOTrainer``; the
trainers built on it): loading and checking the expert dataset, drawing a
resumable sequence of examples per process, rendering and tokenizing them as
TRL does, and laying rollout rows and expert rows out as one batch for the
controller (the trainer-free parts, ``ExpertSampler``, ``ScoreCheck`` and
``statistics_batch``, live in ``experts.py`` and are re-exported here). Scoring stays with the trainer: it calls its own reward
functions.

The expert dataset has ``prompt`` and ``completion`` columns, as TRL's
prompt-completion datasets: plain strings, or conversations rendered with
the tokenizer's chat template. Its other columns stay, and reach the reward
functions as keyword arguments when they score a demonstration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from trl.data_utils import is_conversational, maybe_apply_chat_template

from .experts import ExpertSampler, ScoreCheck, statistics_batch

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
