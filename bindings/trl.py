"""TRL binding: ``GACGRPOTrainer``, GRPO with a GAC-weighted expert SFT loss.

Per micro-batch the trainer computes TRL's own GRPO loss (whatever
``loss_type``, clipping and KL term the config selects), draws a batch of
expert (prompt, completion) examples, computes the CHORD token-weighted SFT
loss on them, and returns ``mu * L_SFT + (1 - mu) * L_GRPO``.

``mu`` comes from a ``gaccore.Controller`` fed, per micro-batch, the detached
log-probabilities TRL computed for the rollouts (``per_token_logps``,
``completion_mask``, ``advantages``, and ``ref_per_token_logps`` when
``beta > 0``) together with the expert rows (``expert=True``). Following
SPEC §3 (``AccumulationWindow``), every micro-batch of an optimizer step is
weighted with the ``mu`` of the previous step and the controller steps at
the accumulation boundary; without accumulation the step's own ``mu`` is
used. On several processes the
controller reduces its statistics over the default group, so every rank uses
the same ``mu``.

The verifier: TRL's rewards of the rollouts reach the controller as their
per-row ``scores``. With ``gac_mode: verified`` or ``gac_filter_demos`` set,
the trainer also scores each draw of demonstrations with its own
``reward_funcs`` and ``reward_weights``, called as for rollouts (the raw
prompt and completion, the completion ids, the expert dataset's other columns
as keyword arguments). A demonstration scored below ``gac_filter_demos``
adds nothing to the SFT loss (its tokens leave the loss mask) nor to the
controller's SFT statistics. A demonstration that no reward function can
score (all return None) is an error in verified mode, which needs every
score, and is kept otherwise. Use reward functions in [0, 1] (verifiers)
for verified mode: their means are the success rates it compares.

``mu``, ``rho``, the proxies' EMAs, the success rates (smoothed and of the
step's batch) and the share of demonstrations kept are logged through TRL's
metrics (``common.LOGGED_METRICS``, keys ``gac/...``); the controller's state
and the expert sampler's position are saved in every checkpoint
(``gaccore_state.json``) and restored by
``trainer.train(resume_from_checkpoint=...)``.

The expert dataset has ``prompt`` and ``completion`` columns, as TRL's
prompt-completion datasets: plain strings, or conversations rendered with
the tokenizer's chat template. As in TRL's ``SFTTrainer``, a plain-string
completion ends with the EOS token (appended when missing) and a chat
completion with the template's own end of turn (no EOS added); either is
truncated to ``max_completion_length``.

Without code: ``GACGRPOConfig`` (``trl_config.py``) is a ``GRPOConfig`` whose
``gac_<name>`` fields carry every ``gaccore.Config`` knob and whose
``expert_*`` fields name the expert dataset, so ``trl.TrlParser`` reads them
from YAML or the command line; ``python -m gaccore.bindings.trl --config
gac.yaml`` trains with them (``main``, ``trl_cli.py``: the equivalent of
``trl grpo``). Drawing, tokenizing and laying out the demonstrations is
``demonstrations.py``; the accumulation rule is ``accumulation.py``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, cast

import torch
import torch.distributed as dist
from trl import GRPOTrainer

from gaccore import Controller, kept_demos

from .accumulation import AccumulationWindow
from .common import STATE_FILE, load_controller, logged_metrics, save_controller, trainer_controller
from .demonstrations import (
    Demonstrations,
    ExpertSampler,
    ScoreCheck,
    check_expert_dataset,
    load_expert_dataset,
    statistics_batch,
    tokenize_demonstrations,
)
from .losses import mix, sft_loss
from .trl_cli import main
from .trl_config import GACGRPOConfig

__all__ = ["REWARDS_KEY", "STATE_FILE", "GACGRPOConfig", "GACGRPOTrainer", "load_expert_dataset", "main"]

# The rollouts' rewards [B] in TRL's generation batch, split with the advantages.
REWARDS_KEY = "gac_rewards"


class GACGRPOTrainer(GRPOTrainer):
    """A TRL ``GRPOTrainer`` that mixes in an expert SFT loss weighted by GAC's ``mu``.

    Takes every argument of ``GRPOTrainer`` plus:

    - ``expert_dataset``: a ``datasets.Dataset`` (or any sized sequence of
      dicts) with ``prompt`` and ``completion`` columns; by default the one
      a ``GACGRPOConfig`` ``args`` names (``load_expert_dataset``).
    - ``controller``: a ``gaccore.Controller`` (default: one built from a
      ``GACGRPOConfig``'s ``gac_*`` fields, else ``Controller()``, with
      ``process_group`` set to the default group when several processes run).
      Its ``sft_coef`` also selects the SFT loss's token weighting.
    - ``expert_batch_size``: expert examples per micro-batch and process
      (default: a ``GACGRPOConfig``'s ``expert_batch_size``, else
      ``per_device_train_batch_size // num_generations``, at least 1: as
      many demonstrations as prompts).

    An explicit ``controller``, ``expert_dataset`` or ``expert_batch_size``
    takes precedence over the ``GACGRPOConfig`` fields.
    """

    def __init__(
        self,
        *args: Any,
        expert_dataset: Any = None,
        controller: Controller | None = None,
        expert_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        gac_args = self.args if isinstance(self.args, GACGRPOConfig) else None
        if expert_dataset is None:
            if gac_args is None:
                raise TypeError(
                    "GACGRPOTrainer needs expert_dataset=..., or args=GACGRPOConfig(expert_dataset_name=...)"
                )
            expert_dataset = load_expert_dataset(gac_args)
        check_expert_dataset(expert_dataset)
        if expert_batch_size is None and gac_args is not None:
            expert_batch_size = gac_args.expert_batch_size
        if expert_batch_size is None:
            # GRPOTrainer resolved num_generations from its config during __init__.
            generations = cast(int, self.num_generations)
            expert_batch_size = max(1, self.args.per_device_train_batch_size // generations)
        if isinstance(expert_batch_size, bool) or not isinstance(expert_batch_size, int) or expert_batch_size < 1:
            raise ValueError(f"expert_batch_size must be an integer >= 1, got {expert_batch_size!r}")
        world_group = dist.group.WORLD if self.accelerator.num_processes > 1 else None
        config = gac_args.gac_config() if gac_args is not None else None
        self.gac = controller = trainer_controller(controller, config, world_group=world_group)
        self.window = AccumulationWindow(controller)  # observes and steps the controller
        self.expert_dataset = expert_dataset
        self.expert_batch_size = expert_batch_size
        # The training draws of expert examples so far are its ``draws`` (saved as expert_draws).
        self.expert_sampler = ExpertSampler(
            len(expert_dataset),
            expert_batch_size,
            self.args.seed,
            rank=self.accelerator.process_index,
            world=self.accelerator.num_processes,
        )
        self._check_scores = ScoreCheck(controller.config, list(self.reward_func_names))
        self._captured_logps: list[torch.Tensor] | None = None
        self._captured_rewards: list[torch.Tensor] | None = None

    # -- TRL hooks -------------------------------------------------------------

    def _calculate_rewards(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # TRL scores the rollouts inside its generation step; keep what every
        # reward function returned, so the controller sees the rollouts' rewards.
        rewards_per_func = super()._calculate_rewards(*args, **kwargs)
        if self._captured_rewards is not None:
            self._captured_rewards.append(rewards_per_func)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        self._captured_rewards = []
        try:
            output = super()._generate_and_score_completions(inputs)
            (rewards_per_func,) = self._captured_rewards
        finally:
            self._captured_rewards = None
        # Split into micro-batches with the advantages, row for row.
        output[REWARDS_KEY] = self._this_process(self._combined_reward(rewards_per_func), len(output["advantages"]))
        return output

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        # TRL computes the rollouts' log-probs inside its loss; keep a detached
        # copy for the controller instead of running the model a second time.
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._captured_logps is not None:
            self._captured_logps.append(result[0].detach())
        return result

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        self._captured_logps = []
        try:
            rl_loss = super()._compute_loss(model, inputs)
            (rl_logp,) = self._captured_logps
        finally:
            self._captured_logps = None
        mode = "train" if model.training else "eval"

        demos = self._expert_batch(mode)
        expert_ids, expert_mask = demos.completion_ids, demos.completion_mask
        # (logps, entropies), plus the MoE aux loss in later TRL 1.x releases.
        expert_logp = super()._get_per_token_logps_and_entropies(
            model,
            torch.cat([demos.prompt_ids, expert_ids], dim=1),
            torch.cat([demos.prompt_mask, expert_mask], dim=1),
            expert_ids.size(1),
        )[0]
        # A demonstration the filter rejects adds nothing to the SFT loss.
        kept = kept_demos(demos.scores, self.gac.config.filter_demos)
        expert_loss = sft_loss(expert_logp, expert_mask * kept[:, None], sft_coef=self.gac.config.sft_coef)
        self._metrics[mode]["gac/sft_loss"].append(expert_loss.detach().item())
        if mode == "train":
            # TRL scales its loss for gradient accumulation; scale the SFT term alike.
            expert_loss = expert_loss / self.current_gradient_accumulation_steps

        mu = self._mu_for(mode, inputs, rl_logp, expert_logp.detach(), expert_mask, demos.scores)
        return mix(expert_loss, rl_loss, mu)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            save_controller(self.gac, folder, expert_draws=self.expert_sampler.draws)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        extra = load_controller(self.gac, checkpoint, device=self.accelerator.device)
        self.expert_sampler.draws = int(extra["expert_draws"])
        self.window.reset()

    # -- the mixing weight -----------------------------------------------------

    def _mu_for(
        self,
        mode: str,
        inputs: dict[str, Any],
        rl_logp: torch.Tensor,
        expert_logp: torch.Tensor,
        expert_mask: torch.Tensor,
        expert_scores: torch.Tensor,
    ) -> Any:
        """The weight of this micro-batch's SFT loss; observes and steps in training."""
        if mode != "train":
            return self.gac.mu
        scores = torch.cat([inputs[REWARDS_KEY].to(expert_scores.device), expert_scores])
        logp, mask, adv, expert, ref_logp = statistics_batch(
            rl_logp,
            _completion_mask(inputs),
            inputs["advantages"],
            inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
            expert_logp,
            expert_mask,
        )
        last = self.accelerator.sync_gradients  # the optimizer steps after this micro-batch
        mu = self.window.micro_batch(
            logp, mask, adv, expert, ref_logp=ref_logp, scores=scores.to(logp.device), last=last
        )
        if last:
            for key, value in logged_metrics(self.gac.metrics()).items():
                self._metrics[mode][key].append(value)
        return mu

    # -- expert batches ----------------------------------------------------------

    def _expert_batch(self, mode: str) -> Demonstrations:
        """This micro-batch's expert examples, tokenized (``Demonstrations``),
        with the reward functions' scores of them when the controller uses them."""
        sampler = self.expert_sampler
        indices = sampler.take() if mode == "train" else sampler.indices()
        examples = [dict(self.expert_dataset[index]) for index in indices]
        demos = tokenize_demonstrations(
            examples, self.processing_class, self.max_completion_length, self.accelerator.device
        )
        config = self.gac.config
        if config.mode == "verified" or config.filter_demos is not None:
            demos = dataclasses.replace(demos, scores=self._score_demonstrations(demos))
        return demos

    def _score_demonstrations(self, demos: Demonstrations) -> torch.Tensor:
        """The demonstrations' scores from the trainer's own reward functions
        and weights, called as for rollouts: the raw prompt and completion,
        the completion ids, the example's other columns as keyword arguments.
        Every process calls it at the same draw (TRL gathers the scores)."""
        examples = demos.examples
        prompts = [example["prompt"] for example in examples]
        completions = [example["completion"] for example in examples]
        rewards_per_func = self._calculate_rewards(examples, prompts, completions, demos.completion_lists)
        scores = self._this_process(self._combined_reward(rewards_per_func), len(examples))
        self._check_scores(scores, examples)  # verified mode: every one scored; partial credit at the threshold
        return scores

    def _combined_reward(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """Each row's reward as TRL combines its functions' (weighted, None
        skipped); NaN where every function returned None."""
        weights = self.reward_weights.to(rewards_per_func.device)
        combined = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        return combined.masked_fill(rewards_per_func.isnan().all(dim=1), torch.nan)

    def _this_process(self, gathered: torch.Tensor, rows: int) -> torch.Tensor:
        """This process's rows of a tensor TRL gathered from every process."""
        start = self.accelerator.process_index * rows
        return gathered[start : start + rows]


def _completion_mask(inputs: dict[str, Any]) -> torch.Tensor:
    # TRL excludes tool-output tokens from its loss through tool_mask; so do the statistics.
    mask = inputs["completion_mask"]
    return mask if "tool_mask" not in inputs else mask * inputs["tool_mask"]


if __name__ == "__main__":
    # main (trl_cli.py) trains with gaccore.bindings.trl's trainer, not a class of this
    # __main__ copy, and the args it parses pickle as gaccore.bindings.trl.GACGRPOConfig.
    main()
