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

from dataclasses import dataclass, field, fields, make_dataclass
from functools import partial
from typing import Any, get_args, get_origin, get_type_hints

from trl import GRPOConfig

from gaccore import Config

__all__ = ["GACGRPOConfig"]

# The module TRL's pickled checkpoints name the class by.
PICKLED_MODULE = "gaccore.bindings.trl"


def _gac_fields() -> list[tuple[str, Any, Any]]:
    """One ``gac_<name>`` field per ``gaccore.Config`` field, with its type,
    default and description: a new setting reaches TRL's parser by itself.
    ``scale`` is a list here (``TrlParser`` reads lists, not tuples)."""
    types = get_type_hints(Config)
    made = []
    for setting in fields(Config):
        kind, default = types[setting.name], setting.default
        help_text = f"{setting.metadata['help']} (gaccore.Config.{setting.name})"
        if get_origin(kind) is tuple:
            kind, spec = (
                list[get_args(kind)[0]],
                field(default_factory=partial(list, default), metadata={"help": help_text}),
            )
        else:
            spec = field(default=default, metadata={"help": help_text})
        made.append((f"gac_{setting.name}", kind, spec))
    return made


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


def _gac_config(self: Any) -> Config:
    """The controller's ``Config`` from the ``gac_*`` fields."""
    return Config(**{f.name: getattr(self, f"gac_{f.name}") for f in fields(Config)})


GACGRPOConfig = make_dataclass(
    "GACGRPOConfig",
    _gac_fields(),
    bases=(_GACGRPOFields,),
    namespace={
        "__post_init__": _post_init,
        "gac_config": _gac_config,
        "__doc__": _GACGRPOFields.__doc__,
        "__module__": PICKLED_MODULE,  # checkpoints pickle the args by this name
    },
)
