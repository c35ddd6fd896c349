"""verl's ``python -m verl.trainer.main_ppo`` with GAC switched on.

    python -m gaccore.bindings.verl_v1_main <verl's usual overrides> +gac.cap=0.02 +gac.kl_target=0.05

Takes verl's own Hydra config (``verl/trainer/config/ppo_trainer.yaml``) and
every override verl takes; the ``gac`` section holds ``gaccore.Config``
fields (added with ``+``, since verl's config has no such section). It runs
verl's V1 trainer of ``trainer.v1.trainer_mode`` in its GAC variant
(``gaccore.bindings.verl_v1``): a launch script changes its module name,
adds its ``+gac.*`` knobs and nothing else. verl's legacy trainer
(``trainer.use_v1=false``) is refused here: subclass it as the README shows.
"""

from __future__ import annotations

from typing import Any

import hydra
import ray
from omegaconf import DictConfig, open_dict
from verl.trainer import main_ppo
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

from .verl_v1 import controller_from_config, gac_trainer_mode

__all__ = ["GACTaskRunner", "main", "prepare_config"]

_TaskRunnerV1: Any = main_ppo.TaskRunnerV1.__ray_metadata__.modified_class  # the class behind verl's Ray actor


@ray.remote
class GACTaskRunner(_TaskRunnerV1):  # type: ignore[misc, valid-type]
    """verl's V1 task runner, in a Ray process that has the GAC trainers registered."""

    def run(self, config: DictConfig) -> None:
        # The runner's process looks the trainer up in its own registry: registering
        # happens on import, so import here, in that process.
        from . import verl_v1  # noqa: F401

        super().run(config)


def prepare_config(config: DictConfig) -> DictConfig:
    """Check the ``gac`` knobs and select the GAC variant of the configured
    V1 trainer; raise ValueError (before Ray starts) when it cannot run."""
    if not config.trainer.get("use_v1", True):
        raise ValueError(
            "trainer.use_v1=false selects verl's legacy RayPPOTrainer, which this entry point does not "
            "wrap: use trainer.use_v1=true, or subclass RayPPOTrainer as gaccore's README shows"
        )
    controller_from_config(config)  # bad knobs fail here, not in a Ray worker
    with open_dict(config):
        config.trainer.v1.trainer_mode = gac_trainer_mode(config.trainer.v1.trainer_mode)
    return config


@hydra.main(config_path="pkg://verl.trainer.config", config_name="ppo_trainer", version_base=None)
def main(config: DictConfig) -> None:
    """verl's ``main_ppo.main`` with the GAC trainer."""
    auto_set_device(config)
    validate_config(
        config=config,
        use_reference_policy=need_reference_policy(config),
        use_critic=need_critic(config),
    )
    main_ppo.run_ppo(prepare_config(config), task_runner_class=GACTaskRunner)


if __name__ == "__main__":
    main()
