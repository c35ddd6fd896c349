"""gaccore.bindings.trinity against the installed Trinity-RFT (its own venv: ./dev test-trinity).

The loss runs as Trinity's trainer runs it: built by ``TrinityPolicyLoss``
from an ``AlgorithmConfig`` (the object Trinity pickles to its verl workers),
on a worker's micro-batches, and compared with Trinity's own
``mix_chord`` at the same ``mu``.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trinity")

import yaml  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from trinity.algorithm.policy_loss_fn import POLICY_LOSS_FN  # noqa: E402
from trinity.common.config import AlgorithmConfig  # noqa: E402
from trinity.trainer.verl.losses import TrinityPolicyLoss  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402

from gaccore.bindings.common import STATE_FILE  # noqa: E402
from gaccore.bindings.trinity import MixGACPolicyLossFn  # noqa: E402

ROWS, PROMPT_LEN, RESPONSE_LEN = 6, 3, 5
EXPERT = torch.tensor([False, False, False, False, True, True])
# CHORD's per-micro-batch weights, as its example configs set them.
CHORD_ARGS = {
    "clip_range": 0.2,
    "ppo_mini_batch_size": 12,
    "ppo_micro_batch_size_per_gpu": 6,
    "train_batch_size_usual": 8,
    "train_batch_size_expert": 4,
    "use_dynamic_bsz": False,
}
GAC = {"cap": 0.05, "warmup_steps": 1, "decay_steps": 4}


def micro_batch(seed: int, step: int) -> tuple[TensorDict, torch.Tensor]:
    """A micro-batch as Trinity's verl worker gets it and the model's log-probs, one per real token
    (verl's no-padding model output; the batch stays padded: verl 0.8's unpadding needs flash-attn)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, RESPONSE_LEN + 1, (ROWS,), generator=gen)
    response_mask = (torch.arange(RESPONSE_LEN)[None, :] < lengths[:, None]).to(torch.int64)
    prompt_mask = torch.ones(ROWS, PROMPT_LEN, dtype=torch.int64)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    prompts = torch.randint(3, 50, (ROWS, PROMPT_LEN), generator=gen)
    responses = torch.randint(3, 50, (ROWS, RESPONSE_LEN), generator=gen) * response_mask
    rewards = torch.rand(ROWS, generator=gen).round()
    advantages = ((rewards - rewards[:4].mean()) * ~EXPERT)[:, None] * response_mask
    td = TensorDict(
        {
            "prompts": prompts,
            "responses": responses,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "old_log_probs": -torch.rand(ROWS, RESPONSE_LEN, generator=gen) * 2 * response_mask,
            "advantages": advantages.float(),
            "expert_mask": EXPERT.clone(),
            "step": torch.full((ROWS,), step),
        },
        batch_size=ROWS,
    )
    tu.assign_non_tensor(td, dp_size=1, batch_num_tokens=int(response_mask.sum()), global_batch_size=ROWS)
    log_probs = (-torch.rand(int(attention_mask.sum()), generator=gen) * 2).requires_grad_()
    return td, log_probs


def algorithm(policy_loss_fn: str, **args: object) -> AlgorithmConfig:
    return AlgorithmConfig(
        algorithm_type="mix_chord",
        policy_loss_fn=policy_loss_fn,
        policy_loss_fn_args={**CHORD_ARGS, **args},
        kl_loss_fn="none",
        kl_loss_fn_args={},
        entropy_loss_fn="none",
        entropy_loss_fn_args={"entropy_coef": 0.0},
        loss_agg_mode="token-mean",
    )


def test_mix_gac_is_in_trinitys_registry_by_name_and_by_path() -> None:
    assert POLICY_LOSS_FN.get("mix_gac") is MixGACPolicyLossFn
    assert POLICY_LOSS_FN.get("gaccore.bindings.trinity.MixGACPolicyLossFn") is MixGACPolicyLossFn
    assert "mu_peak" not in MixGACPolicyLossFn.default_args()
    assert MixGACPolicyLossFn.default_args()["gac"] == {}


def test_each_step_is_mix_chord_at_the_controllers_mu() -> None:
    """Trinity's own mix_chord with a constant schedule at GAC's mu gives the same loss and gradient."""
    gac_loss = pickle.loads(pickle.dumps(TrinityPolicyLoss(algorithm("mix_gac", gac=GAC))))  # as sent to workers
    controller = gac_loss.policy_loss_fn.gac
    mus = []
    for step in (1, 2, 3):
        for micro in range(2):  # two micro-batches per step, both weighted with the same mu
            td, log_probs = micro_batch(10 * step + micro, step)
            ours, metrics = gac_loss({"log_probs": log_probs}, td)
            (grad,) = torch.autograd.grad(ours, log_probs)
            if micro == 0:  # the step's first micro-batch closed the previous step
                assert controller.step_count == step - 1
                mus.append(controller.mu)
                chord_loss = TrinityPolicyLoss(algorithm("mix_chord", mu_peak=mus[-1], mu_valley=mus[-1]))
            theirs, _ = chord_loss({"log_probs": log_probs}, td)
            (their_grad,) = torch.autograd.grad(theirs, log_probs)
            assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
            assert torch.allclose(grad, their_grad, rtol=1e-6, atol=1e-9)
            assert metrics["actor/mu"] == mus[-1]
    assert controller.metrics()["batch_n_sft"] == 4 and controller.metrics()["batch_n_rl"] == 8  # both micro-batches
    assert mus[1] != mus[0] and mus[2] != mus[1]  # mu moved with the controller


def test_the_controller_is_kept_with_trinitys_checkpoints(tmp_path: Path) -> None:
    first = MixGACPolicyLossFn(gac=GAC, state_dir=str(tmp_path), **CHORD_ARGS)
    (tmp_path / "global_step_2").mkdir()  # Trinity checkpointed step 2 only

    def run(loss_fn: MixGACPolicyLossFn, step: int) -> float:
        td, _ = micro_batch(step, step)
        padded = td.select("old_log_probs", "response_mask", "advantages", "expert_mask", "step").to_padded_tensor()
        loss_fn(
            logprob=padded["old_log_probs"],
            old_log_probs=padded["old_log_probs"],
            response_mask=padded["response_mask"].bool(),
            advantages=padded["advantages"],
            expert_mask=padded["expert_mask"],
            step=padded["step"],
        )
        return loss_fn.gac.mu

    for step in (1, 2, 3):
        run(first, step)
    assert not (tmp_path / "global_step_1" / STATE_FILE).exists()
    saved = json.loads((tmp_path / "global_step_2" / STATE_FILE).read_text())
    assert saved["controller"]["step"] == 2

    resumed = MixGACPolicyLossFn(gac=GAC, state_dir=str(tmp_path), **CHORD_ARGS)
    run(resumed, 3)  # a run resumed from global_step_2 starts at step 3
    assert resumed.gac.step_count == 2
    assert run(resumed, 4) == pytest.approx(run(first, 4), abs=1e-12)  # the same mu sequence
    (tmp_path / "global_step_6").mkdir()  # a checkpoint without the controller's state
    with pytest.warns(RuntimeWarning, match="starts afresh"):
        run(MixGACPolicyLossFn(gac=GAC, state_dir=str(tmp_path), **CHORD_ARGS), 7)
    last = first.save_state()  # after training: the last step's state
    assert last == str(tmp_path / "global_step_4" / STATE_FILE)
    assert json.loads(Path(last).read_text())["controller"]["step"] == 4


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="mu_peak"):
        MixGACPolicyLossFn(mu_peak=0.5, **CHORD_ARGS)
    with pytest.raises(ValueError, match=r"enable_phi_function: .*gac\.sft_coef"):
        MixGACPolicyLossFn(enable_phi_function=False, **CHORD_ARGS)
    with pytest.raises(ValueError, match="cap"):
        MixGACPolicyLossFn(gac={"cap": -1.0}, **CHORD_ARGS)
    with pytest.raises(ValueError, match=r"policy_loss_fn_args.gac has unknown keys \['kap'\]"):
        MixGACPolicyLossFn(gac={"kap": 0.02}, **CHORD_ARGS)
    assert MixGACPolicyLossFn(gac={"scale": [1.0, 2.0, 3.0]}, **CHORD_ARGS).gac.config.scale == (1.0, 2.0, 3.0)
    plain = MixGACPolicyLossFn(gac={"sft_coef": "nll"}, **CHORD_ARGS)
    assert plain.gac.config.sft_coef == "nll" and not plain.enable_phi_function
    loss_fn = MixGACPolicyLossFn(**CHORD_ARGS)
    logp = -torch.rand(ROWS, RESPONSE_LEN)
    mask = torch.ones(ROWS, RESPONSE_LEN, dtype=torch.bool)
    tensors = {"logprob": logp, "old_log_probs": logp, "response_mask": mask, "advantages": logp}
    with pytest.raises(ValueError, match="expert_mask"):
        loss_fn(**tensors, expert_mask=EXPERT[:3], step=torch.ones(ROWS))
    with pytest.raises(ValueError, match="step"):
        loss_fn(**tensors, expert_mask=EXPERT, step=torch.arange(ROWS))
    assert loss_fn.gac.step_count == 0 and loss_fn.window.step is None  # refused calls changed nothing


def test_the_readme_config_builds_the_loss_trinity_sends_to_its_workers(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(algorithm:.*?)```", readme, re.S)
    assert block, "README has no Trinity algorithm config"
    config = yaml.safe_load(block.group(1))["algorithm"]
    config["policy_loss_fn_args"]["state_dir"] = str(tmp_path)
    loss = TrinityPolicyLoss(
        AlgorithmConfig(
            **config,
            kl_loss_fn="none",
            kl_loss_fn_args={},
            entropy_loss_fn="none",
            entropy_loss_fn_args={"entropy_coef": 0.0},
        )
    )
    assert isinstance(loss.policy_loss_fn, MixGACPolicyLossFn)
    assert loss.policy_loss_fn.gac.config.cap == 0.02 and loss.policy_loss_fn.state_dir == str(tmp_path)


def test_every_config_field_reaches_the_gac_dict() -> None:
    """Trinity's YAML ``policy_loss_fn_args: {gac: {...}}`` takes every Config field."""
    from test_config import NON_DEFAULT

    for name, value in NON_DEFAULT.items():
        given = list(value) if isinstance(value, tuple) else value  # YAML gives lists
        assert getattr(MixGACPolicyLossFn(gac={name: given}, **CHORD_ARGS).gac.config, name) == value, name


def scored(td: TensorDict, rewards: list[float]) -> TensorDict:
    """The batch with each experience's reward on its last response token, as Trinity places it."""
    mask = td["response_mask"]
    last = mask.cumsum(dim=1).argmax(dim=1)
    scores = torch.zeros(mask.shape, dtype=torch.float32)
    scores[torch.arange(ROWS), last] = torch.tensor(rewards)
    td = td.clone()
    td["token_level_scores"] = scores
    return td


def test_the_experiences_rewards_give_the_rates_and_the_filter_drops_the_rejected() -> None:
    rewards = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]  # rows 4 and 5 are the demonstrations: one rejected
    gac = {**GAC, "mode": "verified", "filter_demos": 0.5}
    loss_fn = TrinityPolicyLoss(algorithm("mix_gac", gac=gac))
    assert "token_level_scores" in loss_fn.policy_loss_fn.select_keys
    td, log_probs = micro_batch(1, 1)
    ours, _ = loss_fn({"log_probs": log_probs}, scored(td, rewards))
    controller = loss_fn.policy_loss_fn.gac
    controller.step()
    read = controller.metrics()
    assert read["ema_expert_success"] == 0.5 and read["ema_policy_success"] == 0.75
    assert read["batch_n_demos"] == 2 and read["batch_n_sft"] == 1 and read["demos_kept"] == 0.5

    # The same loss as the micro-batch without the rejected demonstration (row 4), at the same mu.
    keep = torch.arange(ROWS) != 4
    tokens = td["attention_mask"].sum(dim=1)
    token_rows = torch.repeat_interleave(torch.arange(ROWS), tokens)
    without = td[keep]
    tu.assign_non_tensor(
        without, dp_size=1, batch_num_tokens=int(without["response_mask"].sum()), global_batch_size=ROWS - 1
    )
    theirs, _ = TrinityPolicyLoss(algorithm("mix_gac", gac=GAC))({"log_probs": log_probs[keep[token_rows]]}, without)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def test_scores_are_asked_for_only_where_used_and_their_absence_is_named() -> None:
    assert "token_level_scores" not in TrinityPolicyLoss(algorithm("mix_gac", gac=GAC)).policy_loss_fn.select_keys
    success_prior = TrinityPolicyLoss(algorithm("mix_gac", gac={**GAC, "prior_from": "success"}))
    assert "token_level_scores" in success_prior.policy_loss_fn.select_keys  # the prior reads the rollouts' rate
    verified = TrinityPolicyLoss(algorithm("mix_gac", gac={**GAC, "mode": "verified"}))
    td, log_probs = micro_batch(1, 1)
    with pytest.raises(KeyError, match="token_level_scores"):  # Trinity selects it from the batch
        verified({"log_probs": log_probs}, td)
    loss_fn = MixGACPolicyLossFn(gac={"filter_demos": 0.5}, **CHORD_ARGS)
    padded = td.select("old_log_probs", "response_mask", "advantages", "expert_mask", "step").to_padded_tensor()
    with pytest.raises(ValueError, match=r"token_level_scores: gac\.mode=.verified. and gac\.filter_demos need"):
        loss_fn(
            logprob=padded["old_log_probs"],
            old_logprob=padded["old_log_probs"],
            action_mask=padded["response_mask"],
            advantages=padded["advantages"],
            expert_mask=padded["expert_mask"],
            step=padded["step"],
        )


def test_the_last_steps_own_rates_are_logged_beside_the_smoothed_ones() -> None:
    """Each micro-batch's metrics carry the controller after the steps before it: the
    smoothed success rates and the last step's batch rates (NaN before the first step)."""
    loss_fn = TrinityPolicyLoss(algorithm("mix_gac", gac={**GAC, "mode": "verified", "stat_beta": 0.5}))
    logged = []
    for step, rewards in ((1, [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]), (2, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), (3, [0.0] * 6)):
        td, log_probs = micro_batch(step, step)
        logged.append(loss_fn({"log_probs": log_probs}, scored(td, rewards))[1])
    assert math.isnan(logged[0]["actor/gac/batch_expert_success"])
    assert (logged[1]["actor/gac/batch_expert_success"], logged[1]["actor/gac/batch_policy_success"]) == (0.5, 0.75)
    assert (logged[2]["actor/gac/batch_expert_success"], logged[2]["actor/gac/batch_policy_success"]) == (1.0, 0.25)
    assert (logged[2]["actor/gac/ema_expert_success"], logged[2]["actor/gac/ema_policy_success"]) == (0.75, 0.5)
