"""``python -m gaccore.bindings.swift rlhf ...``: ``swift rlhf`` with GAC.

``main`` does what ``swift rlhf`` does (a YAML/JSON config file as the first
argument becomes options, with its ``ENV``; ``NPROC_PER_NODE`` and the other
torchrun variables start one process per device) and runs ``GACSwiftRLHF``:
ms-swift's RLHF pipeline, parsing ``GACRLHFArguments`` (its options plus
``--gac_*``) and training with ``gaccore.bindings.swift.GACGRPOTrainer``.
It is exported by ``gaccore.bindings.swift``, whose ``python -m`` runs it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from swift.cli.main import get_torchrun_args, parse_yaml_args
from swift.cli.utils import try_use_single_device_mode
from swift.pipelines.train.rlhf import SwiftRLHF
from swift.rlhf_trainers import GRPOTrainer
from swift.trainers import TrainerFactory

from .swift_args import GACRLHFArguments

__all__ = ["GACSwiftRLHF", "main"]

ROUTE = "rlhf"
MODULE = "gaccore.bindings.swift"
TRAINER = f"{MODULE}.GACGRPOTrainer"
USAGE = (
    "usage: python -m gaccore.bindings.swift rlhf [config.yaml] [--option value ...]: ms-swift's "
    "`swift rlhf --rlhf_type grpo --chord_sft_dataset ...` with mu from GAC (--gac_<name> for every "
    "gaccore.Config field, instead of CHORD's --chord_mu_* schedule)"
)


class GACSwiftRLHF(SwiftRLHF):
    """ms-swift's RLHF pipeline with ``GACRLHFArguments`` and ``GACGRPOTrainer``.

    ``GACSwiftRLHF(argv).main()`` trains as ``swift rlhf`` would; the trainer
    stays in ``self.trainer``. A plugin that maps ms-swift's ``grpo`` trainer
    to a class of its own must derive it from ``GACGRPOTrainer``."""

    args_class = GACRLHFArguments
    trainer: Any = None

    def _get_trainer_kwargs(self) -> dict[str, Any]:
        kwargs = super()._get_trainer_kwargs()
        kwargs["gac_config"] = self.args.gac_config()
        return kwargs

    def run(self) -> Any:
        with _gac_trainer():
            return super().run()

    def train(self, trainer: Any) -> Any:
        self.trainer = trainer
        return super().train(trainer)


@contextlib.contextmanager
def _gac_trainer() -> Iterator[None]:
    """ms-swift picks its GRPO trainer by name (``TrainerFactory.TRAINER_MAPPING``):
    name GAC's while the pipeline runs, unless a plugin named a subclass of it."""
    from .swift import GACGRPOTrainer  # here, not above: gaccore.bindings.swift imports this module

    mapping = TrainerFactory.TRAINER_MAPPING
    chosen = mapping["grpo"]
    module, _, name = chosen.rpartition(".")
    trainer = getattr(importlib.import_module(module), name)
    if isinstance(trainer, type) and issubclass(trainer, GACGRPOTrainer):
        yield
        return
    if trainer is not GRPOTrainer:
        raise ValueError(
            f"TrainerFactory.TRAINER_MAPPING['grpo'] is {chosen!r} (a plugin's trainer): GAC trains with "
            f"{TRAINER}; derive that trainer from it"
        )
    mapping["grpo"] = TRAINER
    try:
        yield
    finally:
        mapping["grpo"] = chosen


def main(argv: Sequence[str] | None = None) -> Any:
    """``python -m gaccore.bindings.swift rlhf [config.yaml] [--option value ...]``.

    Returns the trainer after training (None in the process that started
    several through torchrun; it exits with their status when they fail)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != ROUTE:
        raise SystemExit(USAGE)
    argv = argv[1:]
    parse_yaml_args(argv)  # in place, as `swift rlhf` does
    torchrun = get_torchrun_args()
    if torchrun is not None and "LOCAL_RANK" not in os.environ:  # start the processes, as `swift rlhf` does
        command = [sys.executable, "-m", "torch.distributed.run", *torchrun, "-m", MODULE, ROUTE, *argv]
        print(f"run sh: `{' '.join(command)}`", flush=True)
        returncode = subprocess.run(command).returncode
        if returncode:
            sys.exit(returncode)
        return None
    try_use_single_device_mode()
    pipeline = GACSwiftRLHF(argv)
    pipeline.main()
    return pipeline.trainer
