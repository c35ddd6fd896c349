"""``GACGRPOConfig``: TRL's ``GRPOConfig`` plus GAC's settings and the expert dataset.

Generated from ``gaccore.Config``: each of its fields ``<name>`` is the field
``gac_<name>`` here, with the same type, default and description, so a new
setting reaches ``trl.TrlParser`` (YAML and the command line) by itself.
The ``expert_*`` fields name the expert dataset
(``gaccore.bindings.demonstrations.load_expert_dataset`` loads it).

The class is exported by ``gaccore.bindings.trl`` and carries that module's
name: TRL pickles the training arguments into every checkpoint, and
unpickling looks the class up as ``gaccore.bindings.trl.GACGRPOConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any

from trl import GRPOConfig

from .common import config_from_options, gac_option_fields

__all__ = ["GACGRPOConfig"]

# The module TRL's pickled checkpoints name the class by.
PICKLED_MODULE = "gaccore.bindings.trl"


@dataclass
class _GACGRPOFields(GRPOConfig):
    """TRL's ``GRPOConfig`` plus the controller's settings and the expert dataset.

    Each ``gaccore.Config`` field ``<name>`` is the field ``gac_<name>`` here,
    with the same type, default and description (``gac_config()`` builds the
    ``Config``); the ``expert_*`` fields say where the expert (prompt,
    completion) examples come from. ``GACGRPOTrainer`` reads both when it is
    given this config and no ``controller`` / ``expert_dataset`` of its own.
    ``trl.TrlParser`` parses it from YAML and the command line, e.g.
    ``--gac_cap 0.02``.
    """

    expert_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "expert dataset: a hub name, a local directory, or a builder such as 'json' with "
            "expert_dataset_files (datasets.load_dataset's path)"
        },
    )
    expert_dataset_config: str | None = field(
        default=None, metadata={"help": "configuration of the expert dataset (datasets.load_dataset's name)"}
    )
    expert_dataset_files: list[str] | None = field(
        default=None, metadata={"help": "data files of the expert dataset (datasets.load_dataset's data_files)"}
    )
    expert_dataset_split: str = field(default="train", metadata={"help": "split of the expert dataset"})
    expert_prompt_column: str = field(default="prompt", metadata={"help": "column holding the expert prompts"})
    expert_completion_column: str = field(
        default="completion", metadata={"help": "column holding the expert completions"}
    )
    expert_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "expert examples per micro-batch and process (default: per_device_train_batch_size // "
            "num_generations, at least 1)"
        },
    )


def _post_init(self: Any) -> None:
    super(GACGRPOConfig, self).__post_init__()
    try:
        self.gac_config()
    except ValueError as error:
        raise ValueError(f"GACGRPOConfig: invalid gac_* setting: {error}") from None


GACGRPOConfig = make_dataclass(
    "GACGRPOConfig",
    gac_option_fields(),
    bases=(_GACGRPOFields,),
    namespace={
        "__post_init__": _post_init,
        "gac_config": config_from_options,
        "__doc__": _GACGRPOFields.__doc__,
        "__module__": PICKLED_MODULE,  # checkpoints pickle the args by this name
    },
)
