from functools import partial

from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.utils.config import omega_conf_to_dataclass

from gaccore import Controller
from gaccore.bindings.common import load_controller, save_controller
from gaccore.bindings.verl import compute_mu, gac_ppo_loss, step_folder


class GACRayPPOTrainer(RayPPOTrainer):
    """verl's legacy PPO/GRPO trainer (trainer.use_v1=false) with GAC mixing.

    Expert rows go into the batch with batch.batch["gac_expert"] = True and a uid of their own."""

    def __init__(self, *args, controller=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gac = controller if controller is not None else Controller()

    def init_workers(self):
        super().init_workers()  # the actor workers mix mu * L_SFT + (1 - mu) * L_RL per micro-batch
        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        self.actor_rollout_wg.set_loss_fn(partial(gac_ppo_loss, config=actor_config))

    def _update_actor(self, batch):
        gac_metrics = compute_mu(batch, self.gac)  # global batch, after compute_advantage
        output = super()._update_actor(batch)
        output.meta_info["metrics"].update(gac_metrics)
        return output

    def _save_checkpoint(self):
        super()._save_checkpoint()
        save_controller(self.gac, step_folder(self.config.trainer, self.global_steps))

    def _load_checkpoint(self):
        result = super()._load_checkpoint()
        if self.global_steps > 0:  # resumed: verl set global_steps from the folder it loaded
            load_controller(self.gac, step_folder(self.config.trainer, self.global_steps, resuming=True))
        return result
