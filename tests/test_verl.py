"""gaccore.bindings.verl against verl's own installed functions, on CPU tensors.

The batch is built as verl's driver holds it (DataProto with prompts,
responses, masks, old/ref log-probs, the reward function's
``token_level_scores``, GRPO advantages from verl's own estimator),
converted with verl's own no-padding transform, and the loss runs
through ``gac_ppo_loss`` (verl's ``ppo_loss`` with the mix) -> verl's
vanilla PPO loss, KL penalty and ``agg_loss``. Ray workers and FSDP are not started.
"""

from __future__ import annotations

import json
import math
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("verl")

import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo.core_algos import (  # noqa: E402
    agg_loss,
    compute_grpo_outcome_advantage,
    get_policy_loss_fn,
)
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path  # noqa: E402
from verl.workers.config import FSDPActorConfig, PolicyLossConfig  # noqa: E402
from verl.workers.engine.utils import prepare_micro_batches  # noqa: E402
from verl.workers.utils.losses import ppo_loss  # noqa: E402
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding  # noqa: E402

from gaccore import Controller  # noqa: E402
from gaccore.bindings import verl as gac_verl  # noqa: E402
from gaccore.bindings.common import LOGGED_METRICS, STATE_FILE, load_controller, save_controller  # noqa: E402
from gaccore.kernels import TORCH_BACKEND  # noqa: E402

SNIPPETS = Path(__file__).resolve().parent.parent / "docs" / "snippets"
PROMPT_LEN, RESPONSE_LEN = 4, 6
# Four rollouts in two GRPO groups of two, then two expert rows with uids of their own.
UIDS = np.array(["q0", "q0", "q1", "q1", "e0", "e1"], dtype=object)
EXPERT = torch.tensor([False, False, False, False, True, True])
CONTROLLER = {"warmup_steps": 1, "decay_steps": 5, "cap": 0.05}
# A verifier's scores: the four rollouts' rewards (one solved), then the two demonstrations' (one passes).
SCORES = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
FILTER_DEMOS = 0.5
REJECTED = torch.tensor([False, False, False, False, False, True])  # the demonstration scored below FILTER_DEMOS


def actor_config(loss_agg_mode: str = "token-mean", **fields: object) -> FSDPActorConfig:
    return FSDPActorConfig(
        strategy="fsdp",
        loss_agg_mode=loss_agg_mode,
        ppo_mini_batch_size=6,
        ppo_micro_batch_size_per_gpu=6,
        rollout_n=2,
        policy_loss=PolicyLossConfig(loss_mode="vanilla"),
        **fields,
    )


def driver_batch(seed: int, *, expert: torch.Tensor | None = EXPERT, scores: torch.Tensor | None = None) -> DataProto:
    """A batch as verl's driver holds it after compute_advantage. ``scores``:
    each row's score (default: random 0/1), which the reward function puts on
    the row's last response token of ``token_level_scores``."""
    gen = torch.Generator().manual_seed(seed)
    rows = len(UIDS)
    prompt_mask = torch.ones(rows, PROMPT_LEN, dtype=torch.int64)
    prompt_mask[1, :2] = 0  # left padding
    lengths = torch.randint(2, RESPONSE_LEN + 1, (rows,), generator=gen)
    response_mask = (torch.arange(RESPONSE_LEN)[None, :] < lengths[:, None]).to(torch.int64)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    prompts = torch.randint(3, 50, (rows, PROMPT_LEN), generator=gen) * prompt_mask
    responses = torch.randint(3, 50, (rows, RESPONSE_LEN), generator=gen) * response_mask
    drawn = torch.rand(rows, generator=gen).round()
    rewards = torch.zeros(rows, RESPONSE_LEN)
    rewards[torch.arange(rows), lengths - 1] = drawn if scores is None else scores
    advantages, returns = compute_grpo_outcome_advantage(rewards, response_mask, UIDS)
    old_log_probs = -torch.rand(rows, RESPONSE_LEN, generator=gen) * 3 * response_mask
    tensors = {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
        "response_mask": response_mask,
        "old_log_probs": old_log_probs,
        "ref_log_prob": (old_log_probs - 0.05 * torch.rand(rows, RESPONSE_LEN, generator=gen)) * response_mask,
        "advantages": advantages,
        "returns": returns,
        "token_level_scores": rewards,
    }
    if expert is not None:
        tensors[gac_verl.EXPERT_KEY] = expert
    return DataProto.from_dict(tensors=tensors, non_tensors={"uid": UIDS})


def actor_micro_batch(batch: DataProto) -> tuple[object, torch.Tensor, dict[str, torch.Tensor]]:
    """The micro-batch TensorDict and model output as verl's actor worker sees them."""
    td = left_right_2_no_padding(batch.to_tensordict())
    tokens = int(td["loss_mask"].sum())  # what verl's engine counts its token normalizer from
    tu.assign_non_tensor(td, dp_size=1, batch_num_tokens=tokens, global_batch_size=len(UIDS))
    gen = torch.Generator().manual_seed(7)
    nnz = int(batch.batch["attention_mask"].sum())
    # The model's per-token log-probs in verl's no-padding layout (one value per real token).
    values = (-torch.rand(nnz, generator=gen) * 3).requires_grad_()
    return td, values, {"log_probs": values}


@pytest.mark.parametrize("knobs", [{}, {"mode": "verified", "filter_demos": FILTER_DEMOS}])
def test_compute_mu_reads_the_device_once(monkeypatch, knobs: dict) -> None:
    """mu for meta_info and the logged metrics come from one device read, the
    verifier's scores and the filter included (state kept in tensors as on a
    GPU, statistics from the twin, which runs on any device; every host read
    of a tensor counted)."""
    monkeypatch.setattr(TORCH_BACKEND, "host_on_cpu", False)
    monkeypatch.setattr(TORCH_BACKEND, "implementation", "torch")
    ctrl = Controller(**knobs, **CONTROLLER)
    gac_verl.compute_mu(driver_batch(0), ctrl)  # the state moves to the device first
    reads = []
    for name in ("item", "tolist", "__float__", "__bool__", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    batch = driver_batch(1)
    metrics = gac_verl.compute_mu(batch, ctrl)
    monkeypatch.undo()
    assert reads == ["tolist"]
    assert batch.meta_info[gac_verl.MU_KEY] == metrics["gac/mu"] == ctrl.mu


def test_compute_mu_writes_mu_for_the_workers_and_returns_metrics() -> None:
    batch = driver_batch(0)
    ctrl = Controller(sft_coef="nll", **CONTROLLER)
    metrics = gac_verl.compute_mu(batch, ctrl)
    assert batch.meta_info[gac_verl.MU_KEY] == pytest.approx(ctrl.mu)
    assert batch.meta_info[gac_verl.SFT_COEF_KEY] == "nll"
    assert set(batch.batch.keys()) == set(driver_batch(0).batch.keys())  # no per-row copies of settings
    assert metrics["gac/mu"] == pytest.approx(ctrl.mu)
    assert set(metrics) == {f"gac/{name}" for name in LOGGED_METRICS}
    stats = ctrl.metrics()
    assert stats["batch_n_sft"] == 2 and stats["batch_n_rl"] == 4
    assert stats["batch_kl"] == stats["batch_kl"]  # ref_log_prob was read


@pytest.mark.parametrize("dynamic", [False, True])
def test_mu_reaches_every_micro_batch_through_verls_own_splits(dynamic: bool) -> None:
    """meta_info travels as non-tensor entries, like verl's own global_batch_size."""
    batch = driver_batch(1)
    gac_verl.compute_mu(batch, Controller(**CONTROLLER))
    td = left_right_2_no_padding(batch.to_tensordict())
    (mini_batch,) = list(tu.make_iterator(td, mini_batch_size=6, epochs=1, seed=0))
    tu.assign_non_tensor(mini_batch, use_dynamic_bsz=dynamic, max_token_len_per_gpu=12, micro_batch_size_per_gpu=2)
    micro_batches, _ = prepare_micro_batches(mini_batch)
    assert len(micro_batches) > 1
    for micro in micro_batches:
        assert tu.get(micro, gac_verl.MU_KEY) == batch.meta_info[gac_verl.MU_KEY]
        assert tu.get(micro, gac_verl.SFT_COEF_KEY) == "phi"
        assert micro[gac_verl.EXPERT_KEY].shape == (len(micro),)


def verl_terms(
    batch: DataProto,
    log_prob: torch.Tensor,
    entropy: torch.Tensor,
    config: FSDPActorConfig,
    info: dict,
    sft_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """verl's own policy loss, k3 KL, entropy and the SFT term, each over its
    rows (the SFT term over ``sft_rows``, by default the expert rows)."""
    mask = batch.batch["response_mask"].bool()
    expert = batch.batch[gac_verl.EXPERT_KEY]
    sft_rows = expert if sft_rows is None else sft_rows
    rl_mask, sft_mask = mask & ~expert[:, None], mask & sft_rows[:, None]
    mode = config.loss_agg_mode
    config.global_batch_info.update(info)
    pg, _ = get_policy_loss_fn("vanilla")(
        old_log_prob=batch.batch["old_log_probs"],
        log_prob=log_prob,
        advantages=batch.batch["advantages"],
        response_mask=rl_mask,
        loss_agg_mode=mode,
        config=config,
    )
    config.global_batch_info.clear()
    ref = batch.batch["ref_log_prob"]
    kl = agg_loss((ref - log_prob).exp() - (ref - log_prob) - 1, rl_mask, mode, **info)  # k3, "low_var_kl"
    ent = agg_loss(entropy, rl_mask, mode, **info)
    p = log_prob.exp()
    sft = agg_loss(-(p * (1 - p)) * log_prob, sft_mask, mode, **info)
    return pg, kl, ent, sft


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("use_kl_loss, entropy_coeff", [(False, 0.0), (True, 0.0), (True, 0.01)])
def test_loss_is_the_exact_mix_with_kl_and_entropy_on_rl_rows_only(
    loss_agg_mode: str, use_kl_loss: bool, entropy_coeff: float
) -> None:
    """mu * L_SFT + (1 - mu) * (L_pg + kl_coef * L_kl - ent_coef * H), KL and entropy over RL rows."""
    batch = driver_batch(1)
    gac_verl.compute_mu(batch, Controller(**CONTROLLER))
    mu = batch.meta_info[gac_verl.MU_KEY]

    td, values, model_output = actor_micro_batch(batch)
    entropy_values = torch.rand(values.shape, generator=torch.Generator().manual_seed(3)) * 2
    model_output["entropy"] = entropy_values
    config = actor_config(loss_agg_mode, use_kl_loss=use_kl_loss, entropy_coeff=entropy_coeff)
    loss, metrics = gac_verl.gac_ppo_loss(config, model_output, td)
    loss.backward()
    assert torch.isfinite(loss) and values.grad is not None and torch.isfinite(values.grad).all()

    log_prob = no_padding_2_padding(values.detach(), td)
    entropy = no_padding_2_padding(entropy_values, td)
    info = {
        "dp_size": 1,
        "batch_num_tokens": int(batch.batch["response_mask"].sum()),
        "global_batch_size": len(UIDS),
        "loss_scale_factor": None,
    }
    pg, kl, ent, sft = verl_terms(batch, log_prob, entropy, config, info)
    rl = pg + (0.001 * kl if use_kl_loss else 0.0) - entropy_coeff * ent  # 0.001: verl's default kl_loss_coef
    assert loss.item() == pytest.approx(mu * sft.item() + (1 - mu) * rl.item(), rel=1e-5)
    assert metrics["actor/gac_sft_loss"].values == [pytest.approx(sft.item(), rel=1e-5)]
    assert metrics["actor/entropy_loss"].values == [pytest.approx(ent.item(), rel=1e-5)]
    assert ("kl_loss" in metrics) == use_kl_loss
    if use_kl_loss:
        assert metrics["kl_loss"].values == [pytest.approx(kl.item(), rel=1e-5)]
    # Expert rows carry the SFT term alone: no KL or entropy gradient reaches them.
    expert_tokens = no_padding_2_padding(values.grad, td)[EXPERT]
    p = log_prob[EXPERT].exp()
    sft_grad = mu * (-(p * (1 - p))) / info["batch_num_tokens"]
    if loss_agg_mode == "token-mean":
        mask = batch.batch["response_mask"].bool()[EXPERT]
        assert torch.allclose(expert_tokens[mask], sft_grad[mask], rtol=1e-5, atol=1e-8)


def test_the_controllers_sft_coef_reaches_a_worker_that_imports_the_binding_afresh(tmp_path: Path) -> None:
    """A Ray worker re-imports the binding (its module state says nothing of the
    driver's choices), so the controller's sft_coef must travel with the batch."""
    batch = driver_batch(1)
    gac_verl.compute_mu(batch, Controller(sft_coef="nll", **CONTROLLER))
    torch.save(batch, tmp_path / "batch.pt")
    worker = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_verl as t
from gaccore.bindings import verl as gac_verl
batch = torch.load({str(tmp_path / "batch.pt")!r}, weights_only=False)
td, values, model_output = t.actor_micro_batch(batch)
_, metrics = gac_verl.gac_ppo_loss(t.actor_config(), model_output, td)
print(metrics["actor/gac_sft_loss"].values[0])
"""
    out = subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True, check=True).stdout
    td, values, _ = actor_micro_batch(batch)
    log_prob = no_padding_2_padding(values.detach(), td)
    mask = batch.batch["response_mask"].bool()
    sft_mask = mask & EXPERT[:, None]
    info = {
        "dp_size": 1,
        "batch_num_tokens": int(mask.sum()),
        "global_batch_size": len(UIDS),
        "loss_scale_factor": None,
    }
    nll = agg_loss(-log_prob, sft_mask, "token-mean", **info)
    assert float(out.split()[-1]) == pytest.approx(nll.item(), rel=1e-5)


@pytest.mark.parametrize("use_kl_loss, entropy_coeff", [(False, 0.0), (True, 0.01)])
def test_without_expert_rows_and_mu_zero_it_is_verls_ppo_loss(use_kl_loss: bool, entropy_coeff: float) -> None:
    batch = driver_batch(2, expert=None)
    batch.batch[gac_verl.EXPERT_KEY] = torch.zeros(len(UIDS), dtype=torch.bool)
    batch.meta_info.update({gac_verl.MU_KEY: 0.0, gac_verl.SFT_COEF_KEY: "phi"})
    losses = []
    for loss_fn in (gac_verl.gac_ppo_loss, ppo_loss):
        td, values, model_output = actor_micro_batch(batch)
        model_output["entropy"] = values.detach().abs()
        loss, _ = loss_fn(actor_config(use_kl_loss=use_kl_loss, entropy_coeff=entropy_coeff), model_output, td)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_micro_batch_of_only_rl_rows_without_global_info_stays_finite() -> None:
    batch = driver_batch(3)
    config = actor_config(use_kl_loss=True)
    loss, _ = gac_verl.gac_policy_loss(
        batch.batch["old_log_probs"],
        batch.batch["old_log_probs"],
        batch.batch["advantages"],
        batch.batch["response_mask"],
        config=config,
        expert=torch.zeros(len(UIDS), dtype=torch.bool),
        mu=0.7,
        ref_log_prob=batch.batch["ref_log_prob"],
    )
    assert torch.isfinite(loss)
    assert config.global_batch_info == {}  # the local normalizers were not left behind


def test_gac_ppo_loss_requires_compute_mu_first() -> None:
    td, _, model_output = actor_micro_batch(driver_batch(5))
    with pytest.raises(ValueError, match="compute_mu"):
        gac_verl.gac_ppo_loss(actor_config(), model_output, td)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="batch"):
        gac_verl.compute_mu({"old_log_probs": None}, Controller())
    with pytest.raises(TypeError, match="controller"):
        gac_verl.compute_mu(driver_batch(6), object())
    batch = driver_batch(6)
    batch.batch.pop("advantages")
    with pytest.raises(ValueError, match="advantages"):
        gac_verl.compute_mu(batch, Controller())
    with pytest.raises(ValueError, match="gac_expert"):
        gac_verl.compute_mu(driver_batch(6, expert=None), Controller())
    batch = driver_batch(6)
    batch.batch[gac_verl.SCORES_KEY] = batch.batch[gac_verl.SCORES_KEY][:, :-1].contiguous()
    with pytest.raises(ValueError, match="token_level_scores must be shaped like response_mask"):
        gac_verl.compute_mu(batch, Controller())
    batch = driver_batch(6)
    with pytest.raises(ValueError, match="ref_log_prob"):
        gac_verl.gac_policy_loss(
            batch.batch["old_log_probs"],
            batch.batch["old_log_probs"],
            batch.batch["advantages"],
            batch.batch["response_mask"],
            config=actor_config(use_kl_loss=True),
            expert=EXPERT,
            mu=0.5,
        )
    with pytest.raises(ValueError, match="mu"):
        gac_verl.gac_policy_loss(
            batch.batch["old_log_probs"],
            batch.batch["old_log_probs"],
            batch.batch["advantages"],
            batch.batch["response_mask"],
            config=actor_config(),
            expert=EXPERT,
            mu=1.5,
        )


def test_the_verifiers_scores_give_the_rates_the_filter_and_the_logged_metrics() -> None:
    batch = driver_batch(40, scores=SCORES)
    verls_mask = batch.batch["response_mask"].clone()
    ctrl = Controller(mode="verified", filter_demos=FILTER_DEMOS, **CONTROLLER)
    metrics = gac_verl.compute_mu(batch, ctrl)

    assert metrics["gac/ema_policy_success"] == pytest.approx(0.25)  # one of four rollouts solved
    assert metrics["gac/ema_expert_success"] == pytest.approx(0.5)  # the expert's rate counts the rejected one too
    # The batch's own rates beside the smoothed ones (the first step: the same).
    assert (metrics["gac/batch_policy_success"], metrics["gac/batch_expert_success"]) == pytest.approx((0.25, 0.5))
    assert metrics["gac/demos_kept"] == 0.5
    assert metrics["gac/rho"] == pytest.approx((0.5 - 0.25) / (1 - 0.25))  # the share of failures the expert fixes
    assert batch.meta_info[gac_verl.MU_KEY] == metrics["gac/mu"]
    stats = ctrl.metrics()
    assert (stats["batch_n_demos"], stats["batch_n_sft"], stats["batch_n_rl"]) == (2, 1, 4)
    # The workers' weights: the rejected demonstration's row leaves the mask, every other row keeps verl's.
    trained = batch.batch["response_mask"]
    assert not trained[REJECTED].any()
    assert torch.equal(trained[~REJECTED], verls_mask[~REJECTED])
    assert torch.equal(batch.batch[gac_verl.EXPERT_KEY], EXPERT)  # an expert row still: never an RL row


def test_a_row_whose_scores_hold_nan_is_unscored_and_kept() -> None:
    scores = SCORES.clone()
    scores[REJECTED] = math.nan
    batch = driver_batch(41, scores=scores)
    metrics = gac_verl.compute_mu(batch, Controller(filter_demos=FILTER_DEMOS, **CONTROLLER))
    assert metrics["gac/ema_expert_success"] == 1.0 and metrics["gac/demos_kept"] == 1.0
    assert batch.batch["response_mask"][REJECTED].any()


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_a_rejected_demonstration_is_in_no_term_and_no_normalizer(loss_agg_mode: str) -> None:
    """The loss equals verl's terms over the batch whose SFT term leaves the
    rejected row out and whose token count (verl's engine counts it from the
    mask the driver cleared) leaves out its tokens; seq-mean divides by verl's
    configured rows, as for any row verl masks."""
    batch = driver_batch(42, scores=SCORES)
    verls_mask = batch.batch["response_mask"].clone()
    gac_verl.compute_mu(batch, Controller(filter_demos=FILTER_DEMOS, **CONTROLLER))
    mu = batch.meta_info[gac_verl.MU_KEY]

    td, values, model_output = actor_micro_batch(batch)
    entropy_values = torch.rand(values.shape, generator=torch.Generator().manual_seed(3)) * 2
    model_output["entropy"] = entropy_values
    config = actor_config(loss_agg_mode, use_kl_loss=True, entropy_coeff=0.01)
    loss, _ = gac_verl.gac_ppo_loss(config, model_output, td)
    loss.backward()

    kept_tokens = int(verls_mask[~REJECTED].sum())
    assert tu.get(td, "batch_num_tokens") == kept_tokens
    info = {"dp_size": 1, "batch_num_tokens": kept_tokens, "global_batch_size": len(UIDS), "loss_scale_factor": None}
    log_prob = no_padding_2_padding(values.detach(), td)
    entropy = no_padding_2_padding(entropy_values, td)
    unfiltered = driver_batch(42, scores=SCORES)
    pg, kl, ent, sft = verl_terms(unfiltered, log_prob, entropy, config, info, sft_rows=EXPERT & ~REJECTED)
    assert loss.item() == pytest.approx(mu * sft.item() + (1 - mu) * (pg + 0.001 * kl - 0.01 * ent).item(), rel=1e-5)
    grad = no_padding_2_padding(values.grad, td)
    assert not grad[REJECTED].any()
    assert grad[EXPERT & ~REJECTED].any()


def test_the_filtered_controller_sees_the_batch_without_the_rejected_demonstrations() -> None:
    filtered, unfiltered = Controller(filter_demos=FILTER_DEMOS, **CONTROLLER), Controller(**CONTROLLER)
    for seed in (43, 44):
        gac_verl.compute_mu(driver_batch(seed, scores=SCORES), filtered)
        gac_verl.compute_mu(driver_batch(seed, scores=SCORES).select_idxs(~REJECTED), unfiltered)
    with_filter, without_rows = filtered.metrics(), unfiltered.metrics()
    # The expert's success rate measures the expert, the filter's rejects included.
    assert (with_filter.pop("ema_expert_success"), without_rows.pop("ema_expert_success")) == (0.5, 1.0)
    assert (with_filter.pop("batch_expert_success"), without_rows.pop("batch_expert_success")) == (0.5, 1.0)
    assert (with_filter.pop("batch_n_demos"), without_rows.pop("batch_n_demos")) == (2, 1)
    assert (with_filter.pop("demos_kept"), without_rows.pop("demos_kept")) == (0.5, 1.0)
    assert with_filter == pytest.approx(without_rows, nan_ok=True)


def test_without_token_level_scores_verified_mode_and_the_filter_are_refused() -> None:
    batch = driver_batch(45)
    batch.batch.pop(gac_verl.SCORES_KEY)
    cases = (
        ({"mode": "verified"}, "mode='paper'"),
        ({"filter_demos": 0.5}, "filter_demos unset"),
        ({"prior_from": "success"}, "prior_from='steps'"),
    )
    for knobs, remedy in cases:
        ctrl = Controller(**knobs, **CONTROLLER)
        with pytest.raises(ValueError, match="token_level_scores") as refused:
            gac_verl.compute_mu(batch, ctrl)
        assert "expert rows too" in str(refused.value) and remedy in str(refused.value)
        assert ctrl.step_count == 0
    metrics = gac_verl.compute_mu(batch, Controller(**CONTROLLER))  # mode "paper" runs without scores
    assert math.isnan(metrics["gac/ema_expert_success"]) and math.isnan(metrics["gac/ema_policy_success"])


def test_controller_state_round_trips_through_verls_checkpoint_layout(tmp_path: Path) -> None:
    config = OmegaConf.create({"default_local_dir": str(tmp_path), "resume_mode": "auto", "resume_from_path": None})
    ctrl = Controller(**CONTROLLER)
    for step in range(3):
        gac_verl.compute_mu(driver_batch(10 + step), ctrl)
    save_controller(ctrl, gac_verl.step_folder(config, 3))
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("3")  # as RayPPOTrainer writes it

    restored = Controller(**CONTROLLER)
    folder = find_latest_ckpt_path(str(tmp_path))  # verl's own lookup of the latest step folder
    assert folder == gac_verl.step_folder(config, 3, resuming=True)
    load_controller(restored, folder)
    for step in range(3, 6):  # both continue with the same mu sequence
        assert gac_verl.compute_mu(driver_batch(10 + step), restored)["gac/mu"] == pytest.approx(
            gac_verl.compute_mu(driver_batch(10 + step), ctrl)["gac/mu"], abs=1e-12
        )
    with pytest.raises(FileNotFoundError, match="save_controller"):
        load_controller(restored, str(tmp_path / "global_step_9"))


class _RayPPOTrainerStandIn:
    """The driver-side methods of RayPPOTrainer that the snippet's overrides
    call, patched onto verl's class: the real ones drive Ray worker groups."""

    def init_workers(self) -> None:
        self.actor_rollout_wg = _WorkerGroup()

    def _update_actor(self, batch: DataProto) -> DataProto:
        return DataProto.from_single_dict(data={}, meta_info={"metrics": {"actor/pg_loss": 0.0}})

    def _save_checkpoint(self) -> None:
        pass

    def _load_checkpoint(self) -> int:
        self.global_steps = 2  # as verl does when it finds global_step_2
        return 0


class _WorkerGroup:
    def __init__(self) -> None:
        self.loss_fns: list[object] = []

    def set_loss_fn(self, loss_fn: object) -> None:
        self.loss_fns.append(loss_fn)


def test_readme_verl_snippet_wires_the_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    for name in ("init_workers", "_update_actor", "_save_checkpoint", "_load_checkpoint"):
        monkeypatch.setattr(RayPPOTrainer, name, getattr(_RayPPOTrainerStandIn, name))
    trainer_cls = runpy.run_path(str(SNIPPETS / "verl.py"))["GACRayPPOTrainer"]
    monkeypatch.chdir(tmp_path)
    config = OmegaConf.create(
        {
            "trainer": {"default_local_dir": "ckpts", "resume_mode": "auto", "resume_from_path": None},
            "actor_rollout_ref": {
                "actor": {  # as verl's YAML spells an actor config
                    "_target_": "verl.workers.config.FSDPActorConfig",
                    "strategy": "fsdp",
                    "ppo_mini_batch_size": 6,
                    "ppo_micro_batch_size_per_gpu": 6,
                    "rollout_n": 2,
                    "policy_loss": {"_target_": "verl.workers.config.PolicyLossConfig", "loss_mode": "vanilla"},
                }
            },
        }
    )

    def new_trainer() -> object:
        trainer = object.__new__(trainer_cls)  # RayPPOTrainer.__init__ needs Ray resource pools
        trainer.config, trainer.global_steps, trainer.gac = config, 0, Controller(**CONTROLLER)
        return trainer

    trainer = new_trainer()
    trainer.init_workers()
    (loss_fn,) = trainer.actor_rollout_wg.loss_fns
    assert loss_fn.func is gac_verl.gac_ppo_loss
    assert loss_fn.keywords["config"].policy_loss.loss_mode == "vanilla"

    batch = driver_batch(20)
    output = trainer._update_actor(batch)
    assert output.meta_info["metrics"]["gac/mu"] == pytest.approx(trainer.gac.mu)
    assert gac_verl.MU_KEY in batch.meta_info

    trainer.global_steps = 2
    trainer._save_checkpoint()
    saved = json.loads((tmp_path / "ckpts" / "global_step_2" / STATE_FILE).read_text())
    resumed = new_trainer()
    resumed._load_checkpoint()
    assert resumed.gac.state_dict() == saved["controller"]
