"""ms-swift binding: ``GACGRPOTrainer``, CHORD's GRPO + SFT with ``mu`` from GAC.

ms-swift runs CHORD as ``swift rlhf --rlhf_type grpo --chord_sft_dataset ...``
with a hand-set ``mu`` schedule (``chord_mu_*``). GAC keeps everything else
and replaces the schedule: ``python -m gaccore.bindings.swift rlhf`` takes
the same options (a YAML/JSON config file first, as ``swift rlhf`` does;
``NPROC_PER_NODE`` for several processes) without ``chord_mu_*``, plus every
``gaccore.Config`` field as ``--gac_<name>`` (``swift_args.py``,
``swift_cli.py``), and trains with ``GACGRPOTrainer``.

Per micro-batch the trainer computes ms-swift's own GRPO loss (every loss
type, clipping, KL term and correction ms-swift applies), draws
``chord_sft_per_device_train_batch_size`` demonstrations per process (default
one per prompt: ``per_device_train_batch_size // num_generations``) from
``chord_sft_dataset``, computes their per-token log-probs in one forward pass
(CHORD's) and the SFT loss on them with the controller's ``sft_coef`` (phi =
CHORD's p(1-p), or plain NLL), and returns ``mu * L_SFT + (1 - mu) * L_GRPO``
where CHORD returns its schedule's mix. Evaluation reports GRPO's loss alone,
as CHORD's does.

``mu`` comes from a ``gaccore.Controller`` fed per micro-batch the rollouts'
``old_per_token_logps``, the completion mask the GRPO loss used, the per-token
advantages and, with ``beta > 0``, ``ref_per_token_logps``, beside the
demonstrations' log-probs (detached). Every micro-batch of an optimizer step
is weighted with the ``mu`` of the step before and the controller steps at
the accumulation boundary (``AccumulationWindow``; without accumulation a
step gets its own ``mu``). On several processes the controller reduces over
the default group, so every rank uses the same ``mu``.

The verifier: each rollout's score is its reward, ms-swift's reward functions
combined with ``reward_weights`` as ms-swift combines them (NaN where every
function returned None). With ``gac_mode verified`` or ``gac_filter_demos``,
each draw of demonstrations is scored by the same reward functions, called as
on rollouts (the demonstration's messages, its last assistant turn as the
completion, the dataset's other columns as keyword arguments); a
demonstration scored below ``gac_filter_demos`` leaves the SFT loss and the
controller's SFT statistics.

``gac/*`` metrics (``common.LOGGED_METRICS``) and ``gac/sft_loss`` go to
ms-swift's metrics; the controller and the position of the demonstrations'
order are saved as ``gaccore_state.json`` in every ``checkpoint-N`` and
restored on ``--resume_from_checkpoint``. What the binding cannot serve is
refused with the option named (``swift_args.check_settings``; the multi-turn
path that splits a trajectory into several samples, at its first step).
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from swift.rl_core.data import GRPOSample
from swift.rl_core.grpo_algorithm import score_completions
from swift.rlhf_trainers import GRPOTrainer
from swift.rlhf_trainers.utils import get_even_process_data
from swift.trainers import per_token_loss_func
from swift.utils import to_device

from gaccore import Config, Controller, kept_demos

from .accumulation import AccumulationWindow
from .common import STATE_FILE, load_controller, logged_metrics, save_controller, trainer_controller
from .experts import ExpertSampler, ScoreCheck, statistics_batch
from .losses import mix, sft_token_loss
from .swift_args import CHORD_SCHEDULE, GACRLHFArguments, check_settings
from .swift_cli import GACSwiftRLHF, main

__all__ = ["SCORES_ATTR", "STATE_FILE", "GACGRPOTrainer", "GACRLHFArguments", "GACSwiftRLHF", "main"]

# Each micro-batch's rollout scores [B], attached to ms-swift's GRPOBatch beside its advantages.
SCORES_ATTR = "gac_scores"


class GACGRPOTrainer(GRPOTrainer):
    """ms-swift's ``GRPOTrainer`` with CHORD's SFT term weighted by GAC's ``mu``.

    Takes ms-swift's arguments (a ``chord_sft_dataset`` is required) plus
    ``gac_config`` (a ``gaccore.Config``; default the paper's) or
    ``controller`` (a ``gaccore.Controller``; with several processes it needs
    ``process_group``). ``GACSwiftRLHF`` passes ``gac_config`` from the
    ``--gac_*`` options.
    """

    def __init__(
        self, *args: Any, gac_config: Config | None = None, controller: Controller | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if controller is not None and gac_config is not None:
            raise TypeError("pass gac_config or controller, not both")
        config = controller.config if isinstance(controller, Controller) else gac_config or Config()
        check_settings(self._settings(), config)
        world_group = dist.group.WORLD if self.accelerator.num_processes > 1 else None
        self.gac = controller = trainer_controller(controller, config, world_group=world_group)
        self.window = AccumulationWindow(controller)  # observes and steps the controller
        batch_size = self.args.chord_sft_per_device_train_batch_size
        if batch_size is None:
            batch_size = max(1, self.args.per_device_train_batch_size // self.num_generations)
        # The demonstrations' order: resumable by its draw count (saved as expert_draws).
        self.expert_sampler = ExpertSampler(
            len(self.chord_sft_dataset),
            batch_size,
            self.args.seed,
            rank=self.accelerator.process_index,
            world=self.accelerator.num_processes,
        )
        self._check_scores = ScoreCheck(config, list(self.reward_func_names), describe=_describe)

    def _settings(self) -> SimpleNamespace:
        """What ``check_settings`` reads, as this trainer runs it."""
        args, dataset = self.args, self.chord_sft_dataset
        return SimpleNamespace(
            chord_sft_dataset=dataset,
            **{
                name: getattr(args, name) for name in ("chord_enable_phi_function", "use_liger_kernel", *CHORD_SCHEDULE)
            },
            padding_free=self.template.padding_free,
            sequence_parallel_size=self.template.sequence_parallel_size,
            streaming=dataset is not None and not hasattr(dataset, "__len__"),
        )

    # -- ms-swift hooks ----------------------------------------------------------

    def _prepare_chord_dataset(self) -> None:
        # GAC draws the demonstrations itself (resumably, ExpertSampler): no CHORD loader,
        # so CHORD's own SFT term (compute_chord_loss) never runs.
        self.chord_sft_iterator = None

    def _postprocess_batch(self, samples: list[Any], batch_encoded_inputs: list[dict[str, Any]]) -> None:
        super()._postprocess_batch(samples, batch_encoded_inputs)
        # The rollouts' scores, this process's rows split into micro-batches as its advantages are.
        scores = get_even_process_data(self, self._combined_reward(self._rewards_per_func))
        if len(scores) != len(samples):
            return  # a trajectory split into several samples: refused at the loss (_compute_loss_chunked)
        sizes = [len(chunk) for chunk in self.split_by_mini_batches(samples)]
        for chunk, encoded in zip(torch.split(scores, sizes), batch_encoded_inputs, strict=True):
            setattr(encoded["grpo_batch"], SCORES_ATTR, chunk.to(self.accelerator.device))

    def _compute_loss_and_metrics(self, model: Any, model_inputs: dict[str, Any], grpo_batch: Any) -> Any:
        rl_loss, metrics_data = super()._compute_loss_and_metrics(model, model_inputs, grpo_batch)
        if metrics_data["mode"] != "train":
            return rl_loss, metrics_data  # as CHORD: evaluation reports GRPO's loss alone
        inputs, scores = self._draw_demonstrations()
        expert_logp, expert_mask, weights = self._expert_logps(inputs)
        # A demonstration the filter rejects adds nothing to the SFT loss.
        kept = expert_mask * kept_demos(scores, self.gac.config.filter_demos)[:, None]
        sft = self._sft_loss(expert_logp, kept, weights)
        self._metrics["train"]["gac/sft_loss"].append(sft.detach().item())
        mu = self._mu(grpo_batch, metrics_data["completion_mask"], expert_logp.detach(), expert_mask, scores)
        return mix(sft, rl_loss, mu), metrics_data

    def _compute_loss_chunked(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(
            "multi_turn_scheduler: the scheduler split trajectories into more samples than a micro-batch holds, "
            "and ms-swift then computes the loss in chunks, which GAC's once-per-step statistics do not follow; "
            "return one sample per request from the scheduler"
        )

    def _save_checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        result = super()._save_checkpoint(*args, **kwargs)
        if self.args.should_save:
            folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
            save_controller(self.gac, folder, expert_draws=self.expert_sampler.draws)
        return result

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # Before ms-swift's, which returns early under resume_only_model (the steps still continue).
        if checkpoint is not None:
            extra = load_controller(self.gac, checkpoint, device=self.accelerator.device)
            self.expert_sampler.draws = int(extra["expert_draws"])
            self.window.reset()
        super()._load_optimizer_and_scheduler(checkpoint)

    # -- the demonstrations --------------------------------------------------------

    def _draw_demonstrations(self) -> tuple[dict[str, Any], torch.Tensor]:
        """The next draw, collated by the template as CHORD collates it, and its
        scores (NaN: not scored; scored where the controller uses them)."""
        indices = self.expert_sampler.take()
        rows = to_device([self.chord_sft_dataset[index] for index in indices], "cpu")
        inputs = to_device(self.template.data_collator(rows), self.accelerator.device)
        config = self.gac.config
        if config.mode == "verified" or config.filter_demos is not None:
            scores = self._score_demonstrations(indices)
        else:
            scores = torch.full((len(indices),), math.nan, device=self.accelerator.device)
        return inputs, scores

    def _score_demonstrations(self, indices: list[int]) -> torch.Tensor:
        """The demonstrations' scores from the trainer's own reward functions and
        ``reward_weights``, called as on rollouts (``score_completions``)."""
        raw = getattr(self.chord_sft_dataset, "dataset", self.chord_sft_dataset)  # before template.encode
        examples = [dict(raw[index]) for index in indices]
        for example in examples:
            messages = example.get("messages")
            if not messages or messages[-1].get("role") != "assistant":
                raise ValueError(
                    "chord_sft_dataset: to score a demonstration the reward functions need its conversation ending "
                    f"in the expert's assistant turn, got messages={messages!r}"
                )
        rewards = score_completions(
            [GRPOSample.from_row(example) for example in examples],
            reward_funcs=self.reward_funcs,
            reward_model_plugins=self.reward_model_plugins,
            use_gym_env=False,
            device=self.accelerator.device,
            trainer_state=self.state,
        )
        if self.use_gym_env:  # the gym's reward column: a demonstration has none
            rewards = torch.cat([rewards, rewards.new_full((len(examples), 1), math.nan)], dim=1)
        scores = self._combined_reward(rewards)
        self._check_scores(scores, examples)  # verified mode: every one scored; partial credit at the threshold
        return scores

    def _expert_logps(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The policy's per-token log-probs of the demonstrations' tokens [B, T] (with
        gradient), their mask and ms-swift's per-token ``loss_scale`` (None: all 1),
        from one forward pass, as CHORD computes its SFT loss."""
        labels = inputs.pop("labels")
        loss_scale = inputs.pop("loss_scale", None)
        outputs = self.model(**inputs)
        logp = -per_token_loss_func(outputs, labels).view(labels.shape[0], -1)
        mask = torch.roll(labels, shifts=-1, dims=-1) != -100  # position t predicts token t + 1
        mask[:, -1] = False  # the roll wraps the first label around; CHORD counts labels[:, 1:]
        weights = None
        if loss_scale is not None:
            weights = torch.roll(loss_scale, shifts=-1, dims=-1).to(logp.dtype)
            mask &= weights != 0
        return logp, mask, weights

    def _sft_loss(self, logp: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """CHORD's SFT loss with the controller's token weighting: the token mean
        of ``sft_token_loss`` (times ms-swift's ``loss_scale``) over kept tokens."""
        per_token = sft_token_loss(logp, mask, sft_coef=self.gac.config.sft_coef)
        if weights is not None:
            per_token = per_token * weights
        return per_token.sum() / mask.sum().clamp(min=1)

    # -- the mixing weight -----------------------------------------------------------

    def _mu(
        self,
        grpo_batch: Any,
        completion_mask: torch.Tensor,
        expert_logp: torch.Tensor,
        expert_mask: torch.Tensor,
        expert_scores: torch.Tensor,
    ) -> Any:
        """The weight of this micro-batch's SFT loss; observes the micro-batch and
        steps the controller at the optimizer boundary."""
        rollout_scores = getattr(grpo_batch, SCORES_ATTR, None)
        if grpo_batch.old_per_token_logps is None or rollout_scores is None:
            raise RuntimeError(
                "GRPOBatch lacks old_per_token_logps or the rollouts' scores: this ms-swift path bypasses "
                "_prepare_batch_inputs/_postprocess_batch, which GACGRPOTrainer reads"
            )
        logp, mask, adv, expert, ref_logp = statistics_batch(
            grpo_batch.old_per_token_logps,
            completion_mask,
            grpo_batch.advantages,
            grpo_batch.ref_per_token_logps if self.beta != 0.0 else None,
            expert_logp,
            expert_mask,
        )
        scores = torch.cat([rollout_scores.to(logp.device), expert_scores.to(logp.device)])
        last = self.accelerator.sync_gradients  # the optimizer steps after this micro-batch
        mu = self.window.micro_batch(logp, mask, adv, expert, ref_logp=ref_logp, scores=scores, last=last)
        if last:
            for key, value in logged_metrics(self.gac.metrics()).items():
                self._metrics["train"][key].append(value)
        return mu

    def _combined_reward(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """Each row's reward as ms-swift combines its functions' (``reward_weights``,
        NaN skipped); NaN where every function returned None."""
        weights = self.reward_weights.to(rewards_per_func.device)
        combined = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        return combined.masked_fill(rewards_per_func.isnan().all(dim=1), math.nan)


def _describe(example: dict[str, Any]) -> str:
    """A demonstration in an error: its conversation."""
    return repr(example.get("messages"))


if __name__ == "__main__":
    # main (swift_cli.py) trains with gaccore.bindings.swift's trainer, not a class of this __main__ copy.
    main()
