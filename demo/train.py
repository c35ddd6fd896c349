"""Hybrid SFT + RL training of the tiny policy under one mixing rule.

Every optimizer step, for every method alike:

1. draw ``prompts_per_step`` training prompts;
2. sample ``group_size`` rollouts per prompt (temperature 1), reward them,
   and normalize the rewards within each prompt's group (GRPO);
3. one forward pass over the rollouts and the expert's demonstrations of the
   same prompts gives the answer-token log-probabilities; a frozen-in-time
   reference (see below) gives the KL;
4. the mixing rule reads the detached statistics, the KL and each row's
   score (``scores=``, as ``gaccore.Controller`` takes it: a rollout's
   reward, a demonstration's checker score where the method may read it,
   else NaN) and returns ``mu``; every rule is called the same way;
5. ``loss = mu * L_SFT + (1 - mu) * L_RL`` (a rule that mixes per prompt,
   HPT: its ``sft_weights``, see ``hybrid_loss``), one backward, gradient
   clipping, AdamW.

L_RL is the on-policy GRPO policy gradient (one update per batch, so the
PPO ratio is 1 and clipping never acts); L_SFT is the token-weighted SFT
loss of CHORD, ``phi(p) = p (1 - p)`` detached, or plain NLL
(``gaccore.bindings.losses.sft_loss``). The rules get torch tensors: GAC's
statistics run through ``gaccore.kernels`` (on CPU, the numba pass where
numba is installed, else the torch twin).

The KL reference. The policy is trained from scratch, so there is no
pretrained reference to stay close to; the KL that the KL-controlled rules
(GAC's rho, KL-ctrl) watch is the k3 KL of the rollouts between the policy
and an exponential moving average of its own weights (``ref_decay``,
about the last 1/(1 - ref_decay) steps): the recent drift of the policy.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from gaccore import kept_demos
from gaccore.bindings.losses import mix, sft_loss
from gaccore.stats import k3

from .methods import FILTER_THRESHOLD, METHODS, sft_coef_of
from .model import TinyTransformer
from .settings import LARGE_SHIFT, SERIES_EVERY, TASK_SEED, RunResult, RunSettings, regime_settings
from .task import ANSWER_LEN, SUITE, ArithmeticTask, make_suite_task, reward

# Below this within-group reward spread the group carries no RL signal.
GROUP_STD_EPS = 1e-4


# -- losses --------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO: rewards ``[P, G]`` normalized within each prompt's group."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + GROUP_STD_EPS)


# -- one run ---------------------------------------------------------------------


def seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


@torch.no_grad()
def evaluate(policy: TinyTransformer, task: ArithmeticTask) -> tuple[float, float, float]:
    """Greedy exact-match accuracy on the held-out pairs: all, carry, no carry."""
    policy.eval()
    answers = policy.generate(torch.from_numpy(task.test_prompts), greedy=True).numpy()
    policy.train()
    correct = reward(answers, task.test_answers).astype(bool)
    carry = task.test_carry
    return float(correct.mean()), float(correct[carry].mean()), float(correct[~carry].mean())


def hybrid_loss(
    sft_weights: npt.NDArray[np.float64] | None,
    mu: float,
    logp_demos: torch.Tensor,
    rl_loss: torch.Tensor,
    sft_coef: str,
    kept: torch.Tensor,
) -> torch.Tensor:
    """``mu * L_SFT + (1 - mu) * L_RL`` for a rule that mixes one scalar
    (``sft_weights`` None), the SFT loss over the ``kept`` demonstrations
    only (a rejected one adds nothing). With per-prompt ``sft_weights`` (HPT's
    gate, one per prompt group), SFT on the kept demonstrations of the gated
    prompts (weight above 0), weighted by their share ``mu``, plus the RL
    loss of all groups, where the gated ones (all rollouts failed) have zero
    advantages and so contribute nothing."""
    demo_tokens = kept.unsqueeze(-1).expand_as(logp_demos)
    if sft_weights is not None:
        gated = torch.from_numpy(sft_weights > 0).unsqueeze(-1) & demo_tokens
        return mu * sft_loss(logp_demos, gated, sft_coef=sft_coef) + rl_loss
    return mix(sft_loss(logp_demos, demo_tokens, sft_coef=sft_coef), rl_loss, mu)


@dataclass
class StepOutcome:
    mu: float
    kl: float
    train_reward: float
    controller_s: float  # time in the rule's update


class Trainer:
    """One policy, its optimizer, and one mixing rule; ``step()`` trains once."""

    def __init__(
        self, method: str, seed: int, task: ArithmeticTask, settings: RunSettings, *, reward_flip: float = 0.0
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
        seed_everything(seed, settings.threads)
        self.task, self.settings = task, settings
        self.policy = TinyTransformer(settings.width, settings.layers, settings.heads)
        self.reference = copy.deepcopy(self.policy).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=settings.lr)
        self.method = METHODS[method]
        self.rule = self.method.rule(settings, self.method.schedule_scale)
        self.sft_coef = sft_coef_of(method, settings)
        self.sampler = torch.Generator().manual_seed(seed)
        self.prompt_rng = np.random.default_rng(seed)
        # A noisy verifier's flips: a stream of their own, so the prompts and samples do not depend on them.
        self.reward_flip = reward_flip
        self.flip_rng = np.random.default_rng([seed, 3])
        self.steps_taken = 0
        P, G = settings.prompts_per_step, settings.group_size
        # Rows of every batch: P * G rollouts, then the P demonstrations.
        self.mask = torch.ones((P * G + P, ANSWER_LEN), dtype=torch.bool)
        self.expert = torch.cat([torch.zeros(P * G, dtype=torch.bool), torch.ones(P, dtype=torch.bool)])
        # The arguments of the rule's last update (the overhead benchmark replays them).
        self.last_rule_inputs: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})

    def step(self) -> StepOutcome:
        P, G = self.settings.prompts_per_step, self.settings.group_size
        task, policy = self.task, self.policy
        chosen = self.prompt_rng.choice(task.train_prompts.shape[0], size=P, replace=False)
        prompts = torch.from_numpy(task.train_prompts[chosen])
        demos = torch.from_numpy(task.demos_at(self.steps_taken)[chosen])
        group_prompts = prompts.repeat_interleave(G, dim=0)
        rollouts = policy.generate(group_prompts, greedy=False, generator=self.sampler)
        successes = reward(rollouts.numpy(), task.train_answers[chosen].repeat(G, axis=0)).reshape(P, G)
        rewards_np = successes  # what the rules and GRPO see: the verifier's reward, flipped where it errs
        if self.reward_flip > 0.0:
            rewards_np = np.abs(successes - (self.flip_rng.random(successes.shape) < self.reward_flip))
        advantages = group_advantages(torch.from_numpy(rewards_np).float())

        logp = policy.answer_logp(torch.cat([group_prompts, prompts]), torch.cat([rollouts, demos]))
        with torch.no_grad():
            ref_logp = self.reference.answer_logp(group_prompts, rollouts)
            kl = k3(ref_logp - logp[: P * G].detach()).mean()

        # Every rule reads the same detached tensors; GAC computes its statistics on them
        # with gaccore.kernels (on CPU, the numba pass, or without numba the torch twin).
        adv_rows = torch.cat([advantages.reshape(-1), torch.zeros(P)])
        args = (logp.detach(), self.mask, adv_rows, self.expert)
        demo_scores = torch.from_numpy(task.train_demo_score[chosen])
        kept = kept_demos(demo_scores, FILTER_THRESHOLD if self.method.filtered else None)
        # Each row's score: the rollouts' rewards, then the checker's verdicts where the method may read them.
        shown = demo_scores if self.method.reads_scores else torch.full_like(demo_scores, math.nan)
        kwargs: dict[str, Any] = {"kl": kl, "scores": torch.cat([torch.from_numpy(rewards_np).reshape(-1), shown])}
        self.last_rule_inputs = (args, kwargs)
        controller_started = time.perf_counter()
        mu = float(self.rule.update(*args, **kwargs))
        controller_s = time.perf_counter() - controller_started

        # On-policy GRPO: one update per batch, so the PPO ratio is 1 and its gradient is adv * grad log p.
        rl_loss = -(advantages.reshape(-1) * logp[: P * G].mean(dim=-1)).mean()
        # A rule that mixes per prompt (HPTGate) has sft_weights; gaccore.Controller and the scalar rules mix one mu.
        sft_weights = getattr(self.rule, "sft_weights", None)
        loss = hybrid_loss(sft_weights, mu, logp[P * G :], rl_loss, self.sft_coef, kept)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.reference.parameters()), list(policy.parameters()), 1.0 - self.settings.ref_decay
            )
        self.steps_taken += 1
        return StepOutcome(mu=mu, kl=float(kl), train_reward=float(successes.mean()), controller_s=controller_s)


def train_one(
    task_name: str,
    method: str,
    seed: int,
    settings: RunSettings,
    *,
    progress: Callable[[int], None] | None = None,
) -> RunResult:
    """Train a fresh policy on the suite task ``task_name`` with ``method``'s
    mixing rule (the regime's own settings applied, ``regime_settings``);
    return its record, per-step series as means of ``SERIES_EVERY`` steps."""
    task = make_suite_task(task_name, TASK_SEED, false_accept=settings.false_accept, false_reject=settings.false_reject)
    settings = regime_settings(settings, SUITE[task_name])
    trainer = Trainer(method, seed, task, settings, reward_flip=SUITE[task_name].reward_flip)
    result = RunResult(method=method, seed=seed, task=task_name)
    previous_raw: float | None = None
    started = time.perf_counter()
    for step in range(settings.steps):
        step_started = time.perf_counter()
        outcome = trainer.step()
        result.step_s += time.perf_counter() - step_started
        result.controller_s += outcome.controller_s
        result.mu.append(outcome.mu)
        result.kl.append(outcome.kl)
        result.train_reward.append(outcome.train_reward)
        result.kl_drift_area += max(0.0, outcome.kl - settings.kl_target)
        metrics = trainer.rule.metrics()
        # The unsmoothed value the rule proposes: GAC's clipped mu^ (NaN until defined), a baseline's mu.
        raw = metrics["estimate"]
        if not math.isnan(raw):
            if previous_raw is not None and abs(raw - previous_raw) > LARGE_SHIFT:
                result.large_shifts += 1
            previous_raw = raw
        for name in trainer.method.recorded:
            result.proxies.setdefault(name, []).append(metrics[name])
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
            accuracy, carry, no_carry = evaluate(trainer.policy, task)
            result.eval_steps.append(step + 1)
            result.accuracy.append(accuracy)
            result.accuracy_carry.append(carry)
            result.accuracy_no_carry.append(no_carry)
        if progress is not None:
            progress(1)
    result.wall_s = time.perf_counter() - started
    return result.compacted(SERIES_EVERY)
