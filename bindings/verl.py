"""verl binding: ``mu`` on the driver's global batch, the mix in verl's policy loss.

verl's PPO trainer computes advantages on the driver over the whole batch,
then ships the batch to the actor workers, which call a registered policy
loss per micro-batch. The binding follows that split:

1. Driver, after ``compute_advantage`` (e.g. at the top of
   ``RayPPOTrainer._update_actor``): ``compute_mu(batch, controller)`` feeds
   the controller verl's ``old_log_probs``, ``response_mask`` and
   ``advantages`` (and ``ref_log_prob`` when present) of the global batch,
   with the expert flag ``batch.batch["gac_expert"]`` (bool ``[B]``, True
   for the expert rows the data pipeline put in the batch). It writes ``mu``
   into ``batch.meta_info["gac_mu_scalar"]`` and, so it survives verl's mini-
   and micro-batch splits, as a per-row tensor ``batch.batch["gac_mu"]``, and
   returns ``gac/*`` metrics for verl's logger. One controller on the driver
   sees the global batch, so no process group is needed.
2. Workers: the policy loss ``"gac"`` (registered with verl's
   ``register_policy_loss`` when this module is imported; select it with
   ``actor.policy_loss.loss_mode=gac``) splits each micro-batch into RL and
   expert rows, computes verl's own policy loss (``"vanilla"`` by default;
   ``register_gac_policy_loss(name, inner=...)`` wraps another) on the RL
   rows and the CHORD token-weighted SFT loss on the expert rows, both
   aggregated with verl's ``agg_loss`` under the same ``loss_agg_mode`` and
   global-batch normalizers, and returns ``mu * L_SFT + (1 - mu) * L_RL``.
   verl's policy-loss signature carries no per-row extras, so the expert flag
   and ``mu`` reach it through ``gac_ppo_loss``: verl's ``ppo_loss`` with
   those two columns of the micro-batch made visible to the registered loss.
   Install it on the workers with
   ``actor_rollout_wg.set_loss_fn(functools.partial(gac_ppo_loss, config=actor_config))``.
3. Checkpoints: ``save_controller`` / ``load_controller`` keep the
   controller's state as ``gaccore_state.json`` inside verl's
   ``global_step_{N}`` folder, beside ``data.pt``.

Expert rows must not share a GRPO group (``uid``) with rollouts, or they
would shift the rollouts' group baselines. Under ``token-mean`` both terms
are divided by verl's global token count of the mini-batch (its normalizer),
so each term's weight is also proportional to its rows' share of tokens.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from verl import DataProto
from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, register_policy_loss
from verl.workers.utils.losses import ppo_loss

from gaccore import Controller
from gaccore.bindings.torch import sft_token_loss
from gaccore.validation import check_sft_coef

__all__ = [
    "EXPERT_KEY",
    "MU_KEY",
    "MU_META_KEY",
    "SFT_NLL_KEY",
    "STATE_FILE",
    "compute_mu",
    "gac_policy_loss",
    "gac_ppo_loss",
    "load_controller",
    "register_gac_policy_loss",
    "save_controller",
    "step_folder",
]

EXPERT_KEY = "gac_expert"  # bool [B] in batch.batch: True for expert (SFT) rows
MU_KEY = "gac_mu"  # mu as a per-row float tensor in batch.batch (survives mini/micro-batch splits)
# mu as a Python float in meta_info; a key of its own, as verl refuses meta_info
# keys that repeat a tensor's when it converts the batch for the workers.
MU_META_KEY = "gac_mu_scalar"
# The controller's sft_coef as a per-row bool in batch.batch (True: "nll"): data, not
# registry state, since each Ray worker re-imports this module and its registry.
SFT_NLL_KEY = "gac_sft_nll"
STATE_FILE = "gaccore_state.json"
_LOGGED = ("mu", "rho", "estimate", "ema_disagreement", "ema_var_sft", "ema_var_rl", "kl_ema", "n_dropped")


# -- driver side -----------------------------------------------------------------


def compute_mu(batch: DataProto, controller: Controller) -> dict[str, float]:
    """One controller step on the global batch; stores ``mu`` in the batch.

    Call once per training step, after advantages are computed and before
    the actor update. Returns ``gac/*`` metrics (NaN where a proxy is not yet
    defined) to merge into verl's metrics dict.
    """
    if not isinstance(batch, DataProto):
        raise TypeError(f"batch must be a verl DataProto, got {type(batch).__name__}")
    if not isinstance(controller, Controller):
        raise TypeError(f"controller must be a gaccore.Controller, got {type(controller).__name__}")
    tensors = batch.batch
    missing = [key for key in ("old_log_probs", "response_mask", "advantages") if key not in tensors.keys()]
    if missing:
        raise ValueError(
            f"batch.batch lacks {missing}: call compute_mu after verl computed old log-probs and advantages"
        )
    if EXPERT_KEY not in tensors.keys():
        # Without expert rows the "gac" loss would have no SFT term and would only shrink the RL loss.
        raise ValueError(
            f"batch.batch lacks {EXPERT_KEY!r}: add the expert (SFT) rows to the batch with "
            f"batch.batch[{EXPERT_KEY!r}] = True (a bool [B] tensor, False for rollouts)"
        )
    expert = tensors[EXPERT_KEY]
    ref_logp = tensors["ref_log_prob"] if "ref_log_prob" in tensors.keys() else None
    mu = controller.update(
        tensors["old_log_probs"].detach(),
        tensors["response_mask"],
        tensors["advantages"].detach(),
        expert,
        ref_logp=None if ref_logp is None else ref_logp.detach(),
    )
    rows = tensors["response_mask"].shape[0]
    tensors[MU_KEY] = mu.to(torch.float32).expand(rows).clone()
    tensors[SFT_NLL_KEY] = torch.full((rows,), controller.config.sft_coef == "nll", dtype=torch.bool)
    metrics = controller.metrics()  # one device read for mu and every logged value
    batch.meta_info[MU_META_KEY] = metrics["mu"]
    return {f"gac/{name}": metrics[name] for name in _LOGGED}


def step_folder(trainer_config: Any, global_steps: int, *, resuming: bool = False) -> str:
    """The ``global_step_{N}`` folder verl saves step ``global_steps`` to, or,
    with ``resuming=True``, the one ``RayPPOTrainer._load_checkpoint`` loaded
    (``trainer.resume_from_path`` under ``resume_mode=resume_path``), as an
    absolute path resolved like verl resolves it (against the working directory)."""
    if resuming and trainer_config.resume_mode == "resume_path":
        folder = trainer_config.resume_from_path
    else:
        folder = os.path.join(trainer_config.default_local_dir, f"global_step_{global_steps}")
    return folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder)


def save_controller(controller: Controller, folder: str) -> str:
    """Write the controller's state into verl's ``global_step_{N}`` folder."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STATE_FILE)
    with open(path, "w") as f:
        json.dump(controller.state_dict(), f)
    return path


def load_controller(controller: Controller, folder: str) -> None:
    """Restore the controller from a ``global_step_{N}`` folder of ``save_controller``."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"folder {folder} has no {STATE_FILE}: save_controller was not called for this checkpoint"
        )
    with open(path) as f:
        controller.load_state_dict(json.load(f))


# -- worker side -----------------------------------------------------------------


@dataclass(frozen=True)
class _MixInputs:
    expert: torch.Tensor  # bool [b]
    mu: torch.Tensor  # 0-d
    sft_coef: str = "phi"


_MIX_INPUTS: contextvars.ContextVar[_MixInputs | None] = contextvars.ContextVar("gac_mix_inputs", default=None)


@contextlib.contextmanager
def mix_inputs(expert: torch.Tensor, mu: torch.Tensor, sft_coef: str = "phi") -> Iterator[None]:
    """Make a micro-batch's expert flags, ``mu`` and the controller's ``sft_coef``
    visible to the ``"gac"`` loss."""
    check_sft_coef(sft_coef)
    token = _MIX_INPUTS.set(_MixInputs(expert=expert, mu=mu, sft_coef=sft_coef))
    try:
        yield
    finally:
        _MIX_INPUTS.reset(token)


def gac_ppo_loss(config: Any, model_output: Any, data: Any, dp_group: Any = None) -> Any:
    """verl's ``ppo_loss`` with the micro-batch's ``gac_expert`` and ``gac_mu``
    handed to the registered ``"gac"`` policy loss (install with the actor's
    ``set_loss_fn``).

    verl's ``ppo_loss`` adds its entropy bonus and KL loss after the policy
    loss, over every row and at full weight: with GAC they would sit outside
    ``mu * L_SFT + (1 - mu) * L_RL`` and pull on the expert rows too, so they
    are refused. Keep the KL in the reward (``algorithm.use_kl_in_reward``)
    or in the controller's ``rho`` instead.
    """
    if getattr(config, "use_kl_loss", False):
        raise ValueError(
            "config.use_kl_loss must be False with the 'gac' loss: verl adds the KL loss outside the mix, "
            "over expert rows too (use algorithm.use_kl_in_reward)"
        )
    if getattr(config, "entropy_coeff", 0.0):
        raise ValueError(
            f"config.entropy_coeff must be 0 with the 'gac' loss, got {config.entropy_coeff}: verl adds the "
            "entropy bonus outside the mix, over expert rows too"
        )
    for key in (EXPERT_KEY, MU_KEY, SFT_NLL_KEY):
        if key not in data.keys():
            raise ValueError(
                f"the actor's micro-batch lacks {key!r}: call gaccore.bindings.verl.compute_mu(batch, controller) "
                "on the driver before the actor update"
            )
    sft_coef = "nll" if bool(data[SFT_NLL_KEY][0]) else "phi"
    with mix_inputs(data[EXPERT_KEY], data[MU_KEY][0], sft_coef):
        return ppo_loss(config, model_output, data, dp_group)


def register_gac_policy_loss(name: str = "gac", *, inner: str = "vanilla") -> Any:
    """Register under ``name`` a policy loss mixing verl's ``inner`` loss with
    the SFT term; its ``sft_coef`` is the controller's, handed over with each
    micro-batch (``compute_mu`` puts it in the batch)."""
    get_policy_loss_fn(inner)  # fail now, naming the registered losses, not at the first step

    def gac_loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        inputs = _MIX_INPUTS.get()
        if inputs is None:
            raise RuntimeError(
                f"policy loss {name!r} needs each micro-batch's expert flags and mu: install "
                "gaccore.bindings.verl.gac_ppo_loss as the actor's loss function, or call it inside "
                "gaccore.bindings.verl.mix_inputs(expert, mu)"
            )
        return gac_policy_loss(
            old_log_prob,
            log_prob,
            advantages,
            response_mask,
            loss_agg_mode=loss_agg_mode,
            config=config,
            rollout_is_weights=rollout_is_weights,
            expert=inputs.expert,
            mu=inputs.mu,
            inner=inner,
            sft_coef=inputs.sft_coef,
        )

    return register_policy_loss(name)(gac_loss)


def gac_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    loss_agg_mode: str,
    config: Any,
    rollout_is_weights: torch.Tensor | None,
    expert: torch.Tensor,
    mu: torch.Tensor | float,
    inner: str = "vanilla",
    sft_coef: str = "phi",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``mu * L_SFT(expert rows) + (1 - mu) * L_inner(RL rows)`` on verl's tensors.

    ``log_prob``/``old_log_prob``/``advantages``/``response_mask`` are the
    actor's ``[b, T]`` micro-batch tensors, ``expert`` a bool ``[b]``,
    ``config`` verl's actor config. Both terms are aggregated by verl's
    ``agg_loss`` with the normalizers of ``config.global_batch_info``; where
    verl leaves them unset (one process, no global batch info), both use the
    micro-batch's totals over all rows, so a micro-batch without expert (or
    without RL) rows gives that term 0, never 0/0.
    """
    if config is None:
        raise ValueError("config must be verl's actor config (the policy loss reads its clip ratios and normalizers)")
    rows = response_mask.shape[0]
    if not isinstance(expert, torch.Tensor) or expert.shape != (rows,):
        raise ValueError(f"expert must be a tensor of shape [b] = [{rows}], got {expert!r:.60}")
    is_expert = (expert.to(response_mask.device) != 0)[:, None]
    tokens = response_mask.bool()
    rl_mask, sft_mask = tokens & ~is_expert, tokens & is_expert
    with _normalizers_of(config, tokens) as batch_info:
        rl_loss, metrics = get_policy_loss_fn(inner)(
            old_log_prob=old_log_prob,
            log_prob=log_prob,
            advantages=advantages,
            response_mask=rl_mask,
            loss_agg_mode=loss_agg_mode,
            config=config,
            rollout_is_weights=rollout_is_weights,
        )
        sft_loss = agg_loss(
            loss_mat=sft_token_loss(log_prob, sft_mask, sft_coef=sft_coef),
            loss_mask=sft_mask,
            loss_agg_mode=loss_agg_mode,
            **batch_info,
        )
    weight = mu.detach().to(log_prob.dtype) if isinstance(mu, torch.Tensor) else float(mu)
    metrics = dict(metrics)
    # verl averages policy-loss metrics over micro-batches (it sums its own
    # globally normalized actor/pg_loss): compare these two with each other.
    metrics["actor/gac_sft_loss"] = sft_loss.detach().item()
    metrics["actor/gac_rl_loss"] = rl_loss.detach().item()
    return weight * sft_loss + (1 - weight) * rl_loss, metrics


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


register_gac_policy_loss()
