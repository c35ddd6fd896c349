"""Trinity-RFT binding: ``mix_gac``, CHORD's ``mix_chord`` with ``mu`` from GAC.

Trinity-RFT's CHORD (``algorithm_type: mix_chord``) mixes a GRPO loss on the
rollouts with an SFT loss on expert experiences, the expert ones flagged by
``expert_mask`` (the ``mix`` sample strategy puts them in each batch), with a
hand-tuned schedule for ``mu``. ``MixGACPolicyLossFn`` is that policy loss
with the schedule replaced by a ``gaccore.Controller``: same arguments as
``mix_chord`` (clip ranges, aggregation modes, the per-micro-batch weights of
usual and expert experiences), same SFT loss (phi-weighted unless
``gac: {sft_coef: nll}``), plus ``gac`` (``gaccore.Config`` fields) and
``state_dir`` (Trinity's ``checkpoint_job_dir``). Select it with::

    algorithm:
      algorithm_type: mix_chord
      policy_loss_fn: gaccore.bindings.trinity.MixGACPolicyLossFn   # or mix_gac once imported
      policy_loss_fn_args: {gac: {cap: 0.02}, state_dir: <checkpoint_job_dir>, ...}

Trinity resolves a dotted ``policy_loss_fn`` in every process by itself; the
short name ``mix_gac`` is registered in ``POLICY_LOSS_FN`` when this module is
imported.

The loss object lives on the trainer's workers, one per process, and sees the
micro-batches of each training step together with the step number. The
controller observes every micro-batch (the rollouts' ``old_logprob``,
``action_mask``, ``advantages`` and ``expert_mask``) and steps when the step
number changes, so step ``t`` is weighted with the ``mu`` that steps before
``t`` produced (SPEC's gradient-accumulation rule). On several processes the
controller reduces its statistics over the default process group, so every
rank uses the same ``mu``; ranks must then run the same number of
micro-batches per step (``use_dynamic_bsz: false``).

The verifier: with ``gac: {mode: verified}`` or ``gac: {filter_demos: x}``
the loss asks Trinity for ``token_level_scores`` and takes each row's sum as
its score (Trinity puts an experience's reward on its last token), for the
rollouts and the expert experiences alike; a demonstration scored below
``filter_demos`` leaves the SFT loss (and the controller's SFT statistics)
as if it were not in the micro-batch. Trinity has ``token_level_scores`` only
when every experience has a reward, so a workflow that does not score the
expert experiences stops at the first step with a ``KeyError`` naming it.
Otherwise the rewards are not read at all.

Checkpoints: when step ``t + 1`` begins, the controller's state after step
``t`` is written (by rank 0) as ``gaccore_state.json`` into
``<state_dir>/global_step_<t>`` if Trinity saved a checkpoint there; a run
resumed from ``global_step_<t>`` reads it back at its first step (and warns,
starting afresh, when that checkpoint has no state). The state of the very
last step is written by ``save_state`` (call it after training), as the loss
cannot tell that a step was the last one.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.distributed as dist
from trinity.algorithm.policy_loss_fn import POLICY_LOSS_FN
from trinity.algorithm.policy_loss_fn.chord_policy_loss import MIXCHORDPolicyLossFn

from gaccore import Controller, kept_demos

from .accumulation import AccumulationWindow
from .common import STATE_FILE, config_from_knobs, load_controller, logged_metrics, save_controller
from .losses import mix

# The experiences' rewards as Trinity's verl trainer names them in the batch.
SCORES_KEY = "token_level_scores"

__all__ = ["MixGACPolicyLossFn"]


class MixGACPolicyLossFn(MIXCHORDPolicyLossFn):
    """``mix_chord`` with ``mu`` from a GAC controller (``mix_gac``).

    ``gac``: ``gaccore.Config`` fields for the controller (default: the
    defaults). Its ``sft_coef`` also sets the SFT loss's token weighting
    (``mix_chord``'s ``enable_phi_function``, which ``mix_gac`` does not take:
    the controller must measure the loss that is trained). ``state_dir``:
    the folder holding Trinity's ``global_step_<t>`` checkpoints (its
    ``checkpoint_job_dir``); None keeps the controller in memory only.
    Every other argument is ``mix_chord``'s, except its ``mu_*`` schedule.
    """

    def __init__(
        self,
        backend: str = "verl",
        gac: dict[str, Any] | None = None,
        state_dir: str | None = None,
        **chord_args: Any,
    ) -> None:
        schedule = sorted(key for key in chord_args if key.startswith("mu_"))
        if schedule:
            raise ValueError(f"{schedule}: mix_gac takes mu from the GAC controller, not from CHORD's schedule")
        if "enable_phi_function" in chord_args:
            raise ValueError(
                "enable_phi_function: mix_gac sets the SFT loss's token weighting from gac.sft_coef "
                "('phi' = CHORD's p(1-p), 'nll' = plain NLL), so the controller measures the loss that is trained"
            )
        config = config_from_knobs(dict(gac or {}), source="policy_loss_fn_args.gac")
        super().__init__(backend=backend, enable_phi_function=config.sft_coef == "phi", **chord_args)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.gac = Controller(config, process_group=dist.group.WORLD if distributed else None)
        # The verified mode and the filter read the rollouts' and the demonstrations' scores, the success prior the rollouts'.
        self.needs_scores = (
            config.mode == "verified" or config.filter_demos is not None or config.prior_from == "success"
        )
        if not self.needs_scores:
            # Ask Trinity for the rewards only where they are used: a batch whose
            # experiences carry none has no token_level_scores to select.
            self._select_keys = [key for key in self._select_keys if key != SCORES_KEY]
        self.state_dir = state_dir
        # Observes and steps the controller; its ``step`` is the training step being observed.
        self.window = AccumulationWindow(self.gac)

    def __call__(  # type: ignore[override]
        self,
        logprob: torch.Tensor,
        old_logprob: torch.Tensor,
        action_mask: torch.Tensor,
        advantages: torch.Tensor,
        expert_mask: torch.Tensor,
        step: torch.Tensor,
        token_level_scores: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if expert_mask.shape != (logprob.shape[0],):
            raise ValueError(f"expert_mask must have shape [{logprob.shape[0]}], got {list(expert_mask.shape)}")
        scores = None
        if self.needs_scores:
            if token_level_scores is None:
                raise ValueError(
                    f"{SCORES_KEY}: gac.mode='verified' and gac.filter_demos need every experience's reward, expert "
                    "ones included, and gac.prior_from='success' the rollouts'; the workflow gave none (score the "
                    "experiences, or use gac.mode='paper', prior_from='steps' and no filter_demos)"
                )
            # A row's reward is the sum of its token-level scores (Trinity puts an
            # experience's reward on its last response token).
            scores = torch.where(action_mask.bool(), token_level_scores, 0.0).sum(dim=1).detach()
        if step.numel() != logprob.shape[0] or bool(step.max() != step.min()):
            raise ValueError(f"step must hold one training step for all {logprob.shape[0]} rows, got {step.tolist()}")
        self._begin(int(step.max()))
        mu = self.window.mu  # the weight of this whole step (micro-batches of it come one by one)
        expert = expert_mask.bool()
        self.window.observe(old_logprob.detach(), action_mask, advantages.detach(), expert, scores=scores)
        # A demonstration the filter rejects leaves the SFT loss as if it were not in the micro-batch.
        demos = expert if scores is None else expert & kept_demos(scores, self.gac.config.filter_demos)

        usual_weight, expert_weight = self._micro_batch_weights(logprob.shape[0])
        n_usual, n_expert = int((~expert).sum()), int(demos.sum())
        grpo_loss, grpo_metrics = self.grpo_loss_fn(
            logprob[~expert], old_logprob[~expert], action_mask[~expert], advantages[~expert], **kwargs
        )
        loss_sft, sft_metrics = self.sft_loss_fn(logprob[demos], action_mask[demos])
        grpo_loss = grpo_loss * n_usual * usual_weight
        loss_sft = loss_sft * n_expert * expert_weight
        loss = mix(loss_sft, grpo_loss, mu)

        metrics = {f"usual/{k}": v * n_usual * usual_weight for k, v in grpo_metrics.items()}
        metrics.update({f"expert/{k}": v * n_expert * expert_weight for k, v in sft_metrics.items()})
        metrics.update({"loss": loss.item(), "mu": mu})
        metrics.update(logged_metrics(self.gac.metrics()))
        return loss, metrics

    def save_state(self) -> str | None:
        """Close the step being observed and write the controller's state into
        that step's checkpoint folder (rank 0); returns the file's path."""
        if self.window.step is None:
            return None
        self.window.close()
        return self._write_state(self.window.step, only_existing=False)

    @classmethod
    def default_args(cls) -> dict[str, Any]:
        defaults = {key: value for key, value in super().default_args().items() if not key.startswith("mu_")}
        return {**defaults, "gac": {}, "state_dir": None}

    # -- steps and checkpoints -------------------------------------------------

    def _micro_batch_weights(self, rows: int) -> tuple[float, float]:
        """CHORD's normalization of usual and expert experiences per micro-batch."""
        if self.use_dynamic_bsz:
            return (
                self.experience_per_gpu / (rows * self.train_batch_size_usual),
                self.experience_per_gpu / (rows * self.train_batch_size_expert),
            )
        return (
            self.gradient_accumulation / self.train_batch_size_usual,
            self.gradient_accumulation / self.train_batch_size_expert,
        )

    def _begin(self, step: int) -> None:
        """A micro-batch of training step ``step``: when it starts a new step, the
        previous one closes (the controller steps) and its state is checkpointed."""
        previous = self.window.step
        if not self.window.begin(step):
            return
        if previous is None:
            self._resume(step)
        else:
            self._write_state(previous, only_existing=True)

    def _resume(self, step: int) -> None:
        """At the first step seen: restore the state saved with the previous step's checkpoint, if any."""
        if self.state_dir is None or step <= 1:
            return
        folder = os.path.join(self.state_dir, f"global_step_{step - 1}")
        if os.path.exists(os.path.join(folder, STATE_FILE)):
            load_controller(self.gac, folder)
            self.window.reset()
        elif os.path.isdir(folder):
            warnings.warn(
                f"{folder} holds no {STATE_FILE} (a run's last step, unless save_state() was called, or a "
                f"checkpoint made without mix_gac): the controller starts afresh at step {step}",
                RuntimeWarning,
                stacklevel=2,
            )

    def _write_state(self, step: int, *, only_existing: bool) -> str | None:
        if self.state_dir is None or (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
            return None
        folder = os.path.join(self.state_dir, f"global_step_{step}")
        if only_existing and not os.path.isdir(folder):
            return None  # Trinity saved no checkpoint for this step
        return save_controller(self.gac, folder)


POLICY_LOSS_FN.register_module("mix_gac", MixGACPolicyLossFn)
