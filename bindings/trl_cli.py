"""``python -m gaccore.bindings.trl --config gac.yaml``: ``trl grpo`` with GAC.

``main`` parses TRL's GRPO script arguments, a ``GACGRPOConfig`` and TRL's
``ModelConfig`` with ``trl.TrlParser`` (YAML first, the command line over
it), builds a ``GACGRPOTrainer``, trains and saves the model. It is exported
by ``gaccore.bindings.trl``, whose ``python -m`` runs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .trl_config import GACGRPOConfig

if TYPE_CHECKING:
    from .trl import GACGRPOTrainer

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> GACGRPOTrainer:
    """``python -m gaccore.bindings.trl --config gac.yaml [--field value ...]``: ``trl grpo`` with GAC.

    Parses TRL's GRPO script arguments (``dataset_name`` or a ``datasets``
    mixture for the prompts, ``reward_funcs``, ``reward_model_name_or_path``),
    a ``GACGRPOConfig`` and TRL's ``ModelConfig`` (``model_name_or_path``)
    with ``trl.TrlParser``: YAML first, the command line over it. Reward
    functions are names from ``trl.rewards`` or dotted import paths
    (``my_rewards.say_a``). Trains, saves the model to ``output_dir`` and
    returns the trainer. Unknown settings are an error, not ignored.
    """
    from datasets import load_dataset
    from trl import DatasetMixtureConfig, ModelConfig, TrlParser, get_dataset, get_peft_config
    from trl.scripts.grpo import GRPOScriptArguments

    from .trl import GACGRPOTrainer  # here, not above: gaccore.bindings.trl imports this module

    parser = TrlParser((GRPOScriptArguments, GACGRPOConfig, ModelConfig, DatasetMixtureConfig))
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(argv)
    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required: the policy's hub name or local directory")
    reward_funcs: list[Any] = [script_args.reward_model_name_or_path] if script_args.reward_model_name_or_path else []
    reward_funcs += [_reward_function(name) for name in script_args.reward_funcs or []]
    if not reward_funcs:
        raise ValueError("reward_funcs (or reward_model_name_or_path) is required: GRPO needs a reward")
    if dataset_args.datasets:
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    else:
        raise ValueError("dataset_name (or a datasets mixture) is required: the prompts to train on")

    dtype = model_args.dtype
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": dtype if dtype in ("auto", None) else getattr(torch, dtype),
        **(training_args.model_init_kwargs or {}),
    }
    trainer = GACGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    return trainer


def _reward_function(name: str) -> Any:
    """A reward function from ``trl.rewards`` by name, or from a dotted import path."""
    from trl import rewards

    if hasattr(rewards, name):
        return getattr(rewards, name)
    module, _, attribute = name.rpartition(".")
    if not module:
        raise ValueError(f"reward_funcs: {name!r} is neither in trl.rewards nor a dotted import path (module.function)")
    return getattr(importlib.import_module(module), attribute)
