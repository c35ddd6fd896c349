"""GAC on verl's V1 trainer (``trainer.use_v1=true``, verl's default).

Importing this module registers, for each trainer in verl's V1 registry
(``sync``, ``colocate_async``, ``separate_async``), a GAC variant named
``gac_<mode>`` (``gac_trainer_mode``), which

- builds its ``gaccore.Controller`` from the ``gac`` section of verl's
  Hydra config (``+gac.cap=0.02``: any ``gaccore.Config`` field;
  ``controller_from_config``),
- installs ``gac_ppo_loss`` as the actor workers' loss,
- computes ``mu`` on the driver in ``_update_actor(batch: KVBatchMeta,
  metrics)`` from the fields of the TransferQueue (the expert flag
  ``gac_expert`` is one of them, put there by the data pipeline; the
  verifier's scores are verl's ``rm_scores``, which verl itself reads as
  ``token_level_scores``), hands it to the workers through
  ``batch.extra_info`` and logs ``gac/*`` metrics; with ``gac.filter_demos``
  it writes ``response_mask`` back without the rejected demonstrations, as
  verl's rollout rejection sampling does (``gaccore.bindings.verl``),
- saves the controller with every checkpoint through verl's checkpoint
  callback (``GACCheckpointCallback``, which also calls the callback named by
  ``trainer.checkpoint_callback_class``) and restores it on resume.

``python -m gaccore.bindings.verl_v1_main`` (``gaccore.bindings.verl_v1_main``) is
verl's ``main_ppo`` with these trainers selected.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.distillation import is_distillation_enabled
from verl.trainer.ppo.checkpoint_callback import CheckpointCallback
from verl.trainer.ppo.v1 import PPOTrainer, register_trainer
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.utils.padding import response_to_nested

from gaccore import Controller

from .common import config_from_knobs, load_controller, save_controller
from .verl import EXPERT_KEY, SCORES_KEY, STAT_FIELDS, gac_ppo_loss, observe_tensors, step_folder

__all__ = [
    "CONFIG_KEY",
    "QUEUE_SCORES_FIELD",
    "GACCheckpointCallback",
    "GACTrainerMixin",
    "controller_from_config",
    "gac_trainer_mode",
    "register_gac_trainers",
]

CONFIG_KEY = "gac"  # the section of verl's config holding the controller's knobs
QUEUE_SCORES_FIELD = "rm_scores"  # the TransferQueue's name of verl's token_level_scores
_PREFIX = "gac_"


def controller_from_config(config: DictConfig) -> Controller:
    """A controller with the knobs of ``config.gac`` (absent: the defaults).

    Unknown keys and bad values raise ValueError naming them, before any
    worker starts; so does on-policy distillation, whose loss the GAC loss
    would replace on the workers.
    """
    if is_distillation_enabled(config.get("distillation", None)):
        raise ValueError(
            "distillation.enabled=true: verl's distillation loss and GAC's mix both replace the actor's "
            "ppo_loss, and gaccore does not combine them"
        )
    section = config.get(CONFIG_KEY, None)
    knobs = {} if section is None else OmegaConf.to_container(section, resolve=True)
    if not isinstance(knobs, dict):
        raise ValueError(f"config.{CONFIG_KEY} must be a mapping of gaccore.Config fields, got {knobs!r}")
    return Controller(config_from_knobs(knobs, source=f"config.{CONFIG_KEY}"))


def gac_trainer_mode(mode: str) -> str:
    """The registry name of the GAC variant of verl's V1 trainer ``mode``."""
    return mode if mode.startswith(_PREFIX) else f"{_PREFIX}{mode}"


class GACCheckpointCallback(CheckpointCallback):
    """verl checkpoint callback writing the GAC controller into ``global_step_{N}``.

    ``inner`` is the callback the trainer had before (``trainer.checkpoint_callback_class``),
    called afterwards, so a user's own callback keeps working.
    """

    def __init__(self, config: Any = None, inner: CheckpointCallback | None = None) -> None:
        super().__init__(config=config)
        self.inner = inner

    def on_save(
        self, trainer: Any, global_step: int, checkpoint_dir: str, async_save: bool = False, **kwargs: Any
    ) -> None:
        save_controller(trainer.gac, checkpoint_dir)
        if self.inner is not None:
            self.inner.on_save(
                trainer=trainer, global_step=global_step, checkpoint_dir=checkpoint_dir, async_save=async_save, **kwargs
            )


class GACTrainerMixin:
    """The GAC overrides of a V1 ``PPOTrainer``; ``register_gac_trainers`` puts
    it in front of each registered trainer."""

    config: DictConfig
    checkpoint_callback: CheckpointCallback
    actor_rollout_wg: Any
    global_steps: int
    use_reference_policy: bool

    def __init__(self, config: DictConfig) -> None:
        super().__init__(config)  # type: ignore[call-arg]
        self.gac = controller_from_config(config)
        self.checkpoint_callback = GACCheckpointCallback(config=config, inner=self.checkpoint_callback)

    def _setup(self) -> None:
        super()._setup()  # type: ignore[misc]
        self._install_gac_loss()

    def _install_gac_loss(self) -> None:
        """Replace verl's ``ppo_loss`` on the actor workers with ``gac_ppo_loss``."""
        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        self.actor_rollout_wg.set_loss_fn(partial(gac_ppo_loss, config=actor_config))

    def _load_checkpoint(self) -> None:
        super()._load_checkpoint()  # type: ignore[misc]
        if self.global_steps > 0:  # resumed: verl set global_steps from the folder it loaded
            load_controller(self.gac, step_folder(self.config.trainer, self.global_steps, resuming=True))

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        fields = [*STAT_FIELDS, EXPERT_KEY] + (["ref_log_prob"] if self.use_reference_policy else [])
        if batch.fields is not None and EXPERT_KEY not in batch.fields:
            raise ValueError(
                f"the batch lacks the field {EXPERT_KEY!r}: the data pipeline must put it into the "
                "TransferQueue (True for expert rows, False for rollouts)"
            )
        # Asked for only where the queue has it: observe_tensors decides whether the controller needs it.
        if batch.fields is None or QUEUE_SCORES_FIELD in batch.fields:
            fields.append(QUEUE_SCORES_FIELD)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        queued_mask = data["response_mask"]
        tensors = dict(data.to_padded_tensor().items())
        if QUEUE_SCORES_FIELD in tensors:
            tensors[SCORES_KEY] = tensors.pop(QUEUE_SCORES_FIELD)
        # Rows verl duplicated to fill the data-parallel ranks would count twice in the statistics.
        padding = torch.tensor([bool(tag.get("is_padding", False)) for tag in batch.tags])
        tensors["response_mask"] = tensors["response_mask"] * ~padding[:, None].to(tensors["response_mask"].device)
        settings, gac_metrics, trained_mask = observe_tensors(tensors, self.gac)
        if trained_mask is not None:
            # The workers read their mask from the queue; verl's padding rows have an empty one there already.
            cleared = TensorDict(
                {"response_mask": response_to_nested(trained_mask, queued_mask)}, batch_size=len(batch)
            )
            tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=cleared)
        batch.extra_info.update(settings)
        metrics.update(gac_metrics)
        return super()._update_actor(batch, metrics)  # type: ignore[misc]


def register_gac_trainers() -> None:
    """Register ``gac_<mode>`` for every trainer in verl's V1 registry (idempotent)."""
    for mode, trainer_cls in list(TRAINER_REGISTRY.items()):
        if mode.startswith(_PREFIX) or gac_trainer_mode(mode) in TRAINER_REGISTRY:
            continue
        gac_cls: type[PPOTrainer] = type(f"GAC{trainer_cls.__name__}", (GACTrainerMixin, trainer_cls), {})
        gac_cls.__module__ = __name__
        register_trainer(gac_trainer_mode(mode))(gac_cls)


register_gac_trainers()
