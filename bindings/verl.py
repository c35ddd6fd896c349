"""verl binding: ``mu`` on the driver's global batch, the mix in the actor's loss.

verl computes advantages on the driver over the whole batch, then ships the
batch to the actor workers, which call a loss function per micro-batch. The
binding follows that split, for the V1 trainer (verl's default,
``gaccore.bindings.verl_v1``) and the legacy ``RayPPOTrainer`` alike:

1. Driver, after advantages (at the top of the trainer's ``_update_actor``):
   ``compute_mu(batch, controller)`` (legacy ``DataProto``) or
   ``observe_tensors`` (V1, on the fields read back from the TransferQueue)
   feeds the controller verl's ``old_log_probs``, ``response_mask``,
   ``advantages`` (and ``ref_log_prob`` when present) of the global batch with
   the expert flag ``gac_expert`` (bool ``[B]``, True for the expert rows the
   data pipeline put in the batch). ``mu`` and the controller's ``sft_coef``
   go into the batch's ``meta_info`` (V1: ``extra_info``), which verl hands
   to every mini- and micro-batch as non-tensor entries, as it does its own
   ``global_batch_size`` and ``temperature``: they are per-step settings, not
   per-row data. One controller on the driver sees the global batch, so no
   process group is needed.
2. The verifier: each row's score is the sum of verl's ``token_level_scores``
   (the reward function's output; V1 keeps it as ``rm_scores`` in the
   TransferQueue) over the row's response tokens, for expert rows and
   rollouts alike (NaN in a response token: the row is not scored). The
   controller takes them as ``scores``: the expert's and the policy's success
   rates, which ``mode="verified"`` steers ``rho`` with and every mode logs.
   Without ``token_level_scores`` the step is refused in ``mode="verified"``
   and with ``filter_demos``; otherwise the controller runs unscored.
3. Filtering (``Config.filter_demos``): a demonstration scored below it leaves
   the controller's SFT statistics, and the driver clears its row of
   ``response_mask`` in the batch the workers train on (V1: writes the
   cleared mask back to the TransferQueue). That is how verl's own rollout
   rejection sampling drops a row, and it is the one mask verl's engine
   counts the global token normalizer from (``loss_mask``), so a rejected
   demonstration is in no term and in no token count: under ``token-mean``
   the loss equals that of the batch without the row. Under the ``seq-mean``
   modes the divisor stays verl's configured mini-batch size in rows, as for
   any row verl masks. The row keeps ``gac_expert``, so it never becomes an
   RL row. verl's metrics that read ``response_mask`` (advantages, returns)
   leave it out as well.
4. Workers: ``gac_ppo_loss`` replaces verl's ``ppo_loss`` (install it with
   ``actor_rollout_wg.set_loss_fn(partial(gac_ppo_loss, config=actor_config))``).
   It computes verl's own policy loss (``actor.policy_loss.loss_mode``: vanilla,
   gspo, ...) on the RL rows, adds verl's KL loss (``use_kl_loss``) and entropy
   bonus (``entropy_coeff``) over the RL rows only, and the CHORD
   token-weighted SFT loss on the expert rows, all aggregated with verl's
   ``agg_loss`` under the same ``loss_agg_mode`` and global-batch normalizers::

       mu * L_SFT + (1 - mu) * (L_pg + kl_loss_coef * L_kl - entropy_coeff * H)

   so the expert rows carry the SFT term alone.
5. Checkpoints: ``gaccore.bindings.common.save_controller``/``load_controller``
   keep the controller's state as ``gaccore_state.json`` inside verl's
   ``global_step_{N}`` folder, beside ``data.pt``; ``step_folder`` resolves
   that folder as verl does.

Expert rows must not share a GRPO group (``uid``) with rollouts, or they
would shift the rollouts' group baselines. Under ``token-mean`` every term is
divided by verl's global token count of the mini-batch (its normalizer), so
each term's weight is also proportional to its rows' share of tokens.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from verl import DataProto
from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, kl_penalty
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.padding import no_padding_2_padding

from gaccore import Config, Controller, kept_demos

from .common import logged_metrics
from .losses import mix, sft_token_loss

__all__ = [
    "EXPERT_KEY",
    "MU_KEY",
    "SCORES_KEY",
    "SFT_COEF_KEY",
    "compute_mu",
    "gac_policy_loss",
    "gac_ppo_loss",
    "mix_settings",
    "observe_tensors",
    "step_folder",
]

EXPERT_KEY = "gac_expert"  # bool [B] among the batch's tensors: True for expert (SFT) rows
MU_KEY = "gac_mu"  # meta_info / extra_info: this step's mu, a Python float
SFT_COEF_KEY = "gac_sft_coef"  # meta_info / extra_info: the controller's sft_coef ("phi" or "nll")
SCORES_KEY = "token_level_scores"  # [B, T] float: the reward function's scores, summed over a row's response
# The tensors the controller reads, as verl names them after compute_advantage.
STAT_FIELDS = ("old_log_probs", "response_mask", "advantages")


# -- driver side -----------------------------------------------------------------


def observe_tensors(
    tensors: Mapping[str, torch.Tensor], controller: Controller
) -> tuple[dict[str, Any], dict[str, float], torch.Tensor | None]:
    """One controller step on the global batch's padded ``[B, T]`` tensors.

    ``tensors`` maps verl's names (``STAT_FIELDS``, ``EXPERT_KEY``, optionally
    ``ref_log_prob`` and ``SCORES_KEY``) to tensors. Returns the settings the
    workers' loss needs (``mix_settings``), to store in the batch's
    ``meta_info``/``extra_info``, and the ``gac/*`` metrics to log, both from
    one read of the controller's state (its ``mu`` travels to the workers as
    a Python float); and, with ``Config.filter_demos``, the ``response_mask``
    the workers must train on (the rejected demonstrations' rows cleared),
    else None.
    """
    if not isinstance(controller, Controller):
        raise TypeError(f"controller must be a gaccore.Controller, got {type(controller).__name__}")
    missing = [key for key in STAT_FIELDS if key not in tensors]
    if missing:
        raise ValueError(f"the batch lacks {missing}: compute mu after verl computed old log-probs and advantages")
    if EXPERT_KEY not in tensors:
        # Without expert rows the mix would have no SFT term and would only shrink the RL loss.
        raise ValueError(
            f"the batch lacks {EXPERT_KEY!r}: add the expert (SFT) rows to the batch with "
            f"{EXPERT_KEY} = True (a bool [B] tensor, False for rollouts)"
        )
    scores = _row_scores(tensors, controller.config)
    ref_logp = tensors.get("ref_log_prob")
    controller.update(
        tensors["old_log_probs"].detach(),
        tensors["response_mask"],
        tensors["advantages"].detach(),
        tensors[EXPERT_KEY],
        ref_logp=None if ref_logp is None else ref_logp.detach(),
        scores=scores,
    )
    trained_mask = _trained_response_mask(tensors, scores, controller.config.filter_demos)
    read = controller.metrics()  # one read of the state: mu for the workers, and the log
    return mix_settings(controller, read["mu"]), logged_metrics(read), trained_mask


def _row_scores(tensors: Mapping[str, torch.Tensor], config: Config) -> torch.Tensor | None:
    """Each row's verifier score ``[B]``: its ``token_level_scores`` summed
    over its response tokens. None without them, where the config needs none."""
    token_scores = tensors.get(SCORES_KEY)
    if token_scores is None:
        if config.mode == "verified":
            needed_by = "mode='verified' steers rho with the expert's and the policy's success rates from them"
            remedy = "or use mode='paper'"
        elif config.filter_demos is not None:
            needed_by = "filter_demos keeps or drops each demonstration by its score"
            remedy = "or leave filter_demos unset"
        elif config.prior_from == "success":
            needed_by = "prior_from='success' follows the rollouts' success rate"
            remedy = "or use prior_from='steps'"
        else:
            return None
        raise ValueError(
            f"the batch lacks {SCORES_KEY!r} (the reward function's per-token scores; 'rm_scores' in verl's V1 "
            f"TransferQueue), and {needed_by}: score every row with the reward function, the expert rows too "
            f"(NaN on a row's response tokens where it cannot be scored), {remedy}"
        )
    response_mask = tensors["response_mask"]
    if token_scores.shape != response_mask.shape:
        raise ValueError(
            f"{SCORES_KEY} must be shaped like response_mask {list(response_mask.shape)}, "
            f"got {list(token_scores.shape)}"
        )
    return token_scores.detach().masked_fill(response_mask == 0, 0.0).sum(dim=-1)


def _trained_response_mask(
    tensors: Mapping[str, torch.Tensor], scores: torch.Tensor | None, filter_demos: float | None
) -> torch.Tensor | None:
    """``response_mask`` without the rows of the demonstrations the filter
    rejects; None without a filter (verl's mask stands)."""
    if filter_demos is None:
        return None
    response_mask = tensors["response_mask"]
    # scores is set: _row_scores refuses a filter without them.
    rejected = (tensors[EXPERT_KEY] != 0).to(response_mask.device) & ~kept_demos(scores, filter_demos)
    return response_mask * ~rejected[:, None]


def mix_settings(controller: Controller, mu: float) -> dict[str, Any]:
    """The per-step entries ``gac_ppo_loss`` reads: ``mu`` and the controller's ``sft_coef``."""
    return {MU_KEY: mu, SFT_COEF_KEY: controller.config.sft_coef}


def compute_mu(batch: DataProto, controller: Controller) -> dict[str, float]:
    """One controller step on the legacy trainer's global ``DataProto``.

    Call once per training step, after advantages are computed and before
    the actor update. Writes ``mu`` and ``sft_coef`` into ``batch.meta_info``
    (with ``Config.filter_demos``, also replaces ``response_mask`` by the one
    without the rejected demonstrations) and returns ``gac/*`` metrics to
    merge into verl's metrics dict.
    """
    if not isinstance(batch, DataProto):
        raise TypeError(f"batch must be a verl DataProto, got {type(batch).__name__}")
    tensors = batch.batch
    settings, metrics, trained_mask = observe_tensors({key: tensors[key] for key in tensors.keys()}, controller)
    batch.meta_info.update(settings)
    if trained_mask is not None:
        tensors["response_mask"] = trained_mask
    return metrics


def step_folder(trainer_config: Any, global_steps: int, *, resuming: bool = False) -> str:
    """The ``global_step_{N}`` folder verl saves step ``global_steps`` to, or,
    with ``resuming=True``, the one verl's ``_load_checkpoint`` loaded
    (``trainer.resume_from_path`` under ``resume_mode=resume_path``), as an
    absolute path resolved like verl resolves it (against the working directory)."""
    if resuming and trainer_config.resume_mode == "resume_path":
        folder = trainer_config.resume_from_path
    else:
        folder = os.path.join(trainer_config.default_local_dir, f"global_step_{global_steps}")
    return folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder)


# -- worker side -----------------------------------------------------------------


def gac_ppo_loss(config: Any, model_output: Any, data: Any, dp_group: Any = None) -> tuple[torch.Tensor, dict]:
    """verl's ``ppo_loss`` with GAC's mix: ``mu * L_SFT + (1 - mu) * L_RL``.

    Same signature, inputs and global-batch normalization as verl's
    ``verl.workers.utils.losses.ppo_loss`` (install with the actor's
    ``set_loss_fn``). ``L_RL`` is verl's policy loss
    (``config.policy_loss.loss_mode``) plus its KL loss and entropy bonus, all
    over the RL rows; ``L_SFT`` is the token-weighted SFT loss over the expert
    rows. ``mu`` and ``sft_coef`` come from the micro-batch's non-tensor
    entries, the expert flags from its ``gac_expert`` tensor. A demonstration
    the driver's filter rejected arrives with an empty ``response_mask``, so
    it takes part in no term and in no normalizer.
    """
    mu, sft_coef = _mix_settings_of(data)
    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    entropy = model_output.get("entropy", None)
    if entropy is not None:
        entropy = no_padding_2_padding(entropy, data)

    # Global batch info for the aggregation, set exactly as verl's ppo_loss sets it.
    config.global_batch_info["dp_size"] = data["dp_size"]
    config.global_batch_info["batch_num_tokens"] = data["batch_num_tokens"]
    config.global_batch_info["global_batch_size"] = data["global_batch_size"]
    config.global_batch_info["loss_scale_factor"] = config.loss_scale_factor
    normalized_globally = (
        data["dp_size"] > 1
        or data["batch_num_tokens"] is not None
        or data["global_batch_size"] is not None
        or config.loss_scale_factor is not None
    )
    expert = data[EXPERT_KEY]
    fields = ["response_mask", "old_log_probs", "advantages"]
    fields += [key for key in ("rollout_is_weights", "ref_log_prob") if key in data]
    padded = data.select(*fields).to_padded_tensor()
    loss, terms = gac_policy_loss(
        padded["old_log_probs"],
        log_prob,
        padded["advantages"],
        padded["response_mask"],
        config=config,
        expert=expert,
        mu=mu,
        sft_coef=sft_coef,
        rollout_is_weights=padded.get("rollout_is_weights", None),
        ref_log_prob=padded.get("ref_log_prob", None),
        entropy=entropy,
    )
    # Loss values are partial sums of a globally normalized loss when verl set the
    # normalizers (summed over micro-batches), means otherwise; ratios are means.
    aggregation = AggregationType.SUM if normalized_globally else AggregationType.MEAN
    metrics: dict[str, Any] = Metric.from_dict(terms.pop("policy"), aggregation=AggregationType.MEAN)
    for name, value in terms.items():
        metrics[name] = Metric(value=value, aggregation=aggregation)
    metrics["actor/gac_mu"] = Metric(value=mu, aggregation=AggregationType.MEAN)
    if config.use_kl_loss:
        metrics["kl_coef"] = config.kl_loss_coef
    return loss, metrics


def gac_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    config: Any,
    expert: torch.Tensor,
    mu: float | torch.Tensor,
    sft_coef: str = "phi",
    rollout_is_weights: torch.Tensor | None = None,
    ref_log_prob: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``mu * L_SFT(expert rows) + (1 - mu) * L_RL(RL rows)`` on padded ``[b, T]`` tensors.

    ``L_RL = L_pg + kl_loss_coef * L_kl - entropy_coeff * H``: verl's policy
    loss ``config.policy_loss.loss_mode``, its KL loss (when
    ``config.use_kl_loss``; needs ``ref_log_prob``) and its entropy bonus
    (when ``entropy`` is given), each aggregated by ``agg_loss`` over the RL
    rows' tokens with ``config.loss_agg_mode`` and the normalizers of
    ``config.global_batch_info``. Where verl leaves a normalizer unset (one
    process, no global batch info), every term uses the micro-batch's totals
    over all rows, so a micro-batch without expert (or RL) rows gives that
    term 0, never 0/0. Returns the loss and its terms (detached), with the
    inner policy loss's own metrics under ``"policy"``.
    """
    if config is None:
        raise ValueError("config must be verl's actor config (the loss reads its clip ratios and normalizers)")
    rows = response_mask.shape[0]
    if not isinstance(expert, torch.Tensor) or expert.shape != (rows,):
        raise ValueError(f"expert must be a tensor of shape [b] = [{rows}], got {expert!r:.60}")
    if config.use_kl_loss and ref_log_prob is None:
        raise ValueError("ref_log_prob is required with config.use_kl_loss: verl's KL loss compares with it")
    is_expert = (expert.to(response_mask.device) != 0)[:, None]
    tokens = response_mask.bool()
    rl_mask, sft_mask = tokens & ~is_expert, tokens & is_expert
    mode = config.loss_agg_mode
    terms: dict[str, Any] = {}
    with _normalizers_of(config, tokens) as batch_info:
        pg_loss, terms["policy"] = get_policy_loss_fn(config.policy_loss.get("loss_mode", "vanilla"))(
            old_log_prob=old_log_prob,
            log_prob=log_prob,
            advantages=advantages,
            response_mask=rl_mask,
            loss_agg_mode=mode,
            config=config,
            rollout_is_weights=rollout_is_weights,
        )
        rl_loss = pg_loss
        terms["actor/pg_loss"] = pg_loss.detach()
        if entropy is not None:
            entropy_loss = agg_loss(loss_mat=entropy, loss_mask=rl_mask, loss_agg_mode=mode, **batch_info)
            rl_loss = rl_loss - config.entropy_coeff * entropy_loss
            terms["actor/entropy_loss"] = entropy_loss.detach()
        if config.use_kl_loss:
            kld = kl_penalty(logprob=log_prob, ref_logprob=ref_log_prob, kl_penalty=config.kl_loss_type)
            kl_loss = agg_loss(loss_mat=kld, loss_mask=rl_mask, loss_agg_mode=mode, **batch_info)
            rl_loss = rl_loss + config.kl_loss_coef * kl_loss
            terms["kl_loss"] = kl_loss.detach()
        loss_sft = agg_loss(
            loss_mat=sft_token_loss(log_prob, sft_mask, sft_coef=sft_coef),
            loss_mask=sft_mask,
            loss_agg_mode=mode,
            **batch_info,
        )
    terms["actor/gac_sft_loss"] = loss_sft.detach()
    terms["actor/gac_rl_loss"] = rl_loss.detach()
    return mix(loss_sft, rl_loss, mu), terms


def _mix_settings_of(data: Any) -> tuple[float, str]:
    """``mu`` and ``sft_coef`` of a micro-batch, refused with the wiring to fix when absent."""
    missing = [key for key in (MU_KEY, SFT_COEF_KEY, EXPERT_KEY) if key not in data.keys()]
    if missing:
        raise ValueError(
            f"the actor's micro-batch lacks {missing}: run the GAC trainer (gaccore.bindings.verl_v1_main), or call "
            "gaccore.bindings.verl.compute_mu(batch, controller) on the driver before the actor update"
        )
    mu, sft_coef = tu.get(data, MU_KEY), tu.get(data, SFT_COEF_KEY)
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
        raise ValueError(f"the micro-batch's {MU_KEY} must be a finite number, got {mu!r}")
    return float(mu), sft_coef  # sft_token_loss checks sft_coef


@contextlib.contextmanager
def _normalizers_of(config: Any, tokens: torch.Tensor) -> Iterator[dict[str, Any]]:
    """``config.global_batch_info`` with the micro-batch's all-row totals
    where verl left a normalizer unset, restored afterwards. verl's local
    fallback would count only each term's own masked rows: 0/0 for a term
    whose rows are absent. The dict is updated in place, as verl's
    ``ppo_loss`` does (the config's attributes are frozen)."""
    info = config.global_batch_info
    saved = dict(info)
    if info.get("batch_num_tokens") is None:
        info["batch_num_tokens"] = tokens.sum().clamp(min=1)
    if info.get("global_batch_size") is None:
        info["global_batch_size"] = tokens.any(dim=-1).sum().clamp(min=1)
    try:
        yield info
    finally:
        info.clear()
        info.update(saved)
