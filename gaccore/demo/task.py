"""The embedded task: two-digit addition with a verifiable reward and an
imperfect expert.

Prompts are ``a1 a0 + b1 b0 =`` with ``a, b`` in ``[0, 50)``; the answer is
the two digits of ``a + b`` (always below 100). The reward is 1 for an exact
match, else 0: sparse for an untrained policy (a random one scores about 1%).

The expert is imperfect in a systematic way: for a fixed random share
(``drop_carry_rate``, 75% by default) of the pairs that need a carry
(``a0 + b0 >= 10``), the demonstration drops the carry from the tens digit;
about a third of all demonstrations are wrong. Pure imitation therefore
plateaus (it learns the wrong carries), while the demonstrations that stay
correct leave some probability on the right tens digit, which is what lets
RL find it. (An expert that is always wrong on carries makes every mixture
fail: the policy never samples the right digit, so RL has nothing to
reinforce.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]

# Vocabulary: the ten digits, then '+' and '='.
PLUS, EQUALS = 10, 11
VOCAB_SIZE = 12
PROMPT_LEN = 6  # a1 a0 + b1 b0 =
ANSWER_LEN = 2  # s1 s0
OPERAND_LIMIT = 50


@dataclass(frozen=True)
class AdditionTask:
    """Train/held-out splits of operand pairs and their (imperfect) demos.

    Arrays: ``*_prompts [N, PROMPT_LEN]``, ``*_answers [N, ANSWER_LEN]`` (the
    correct answer), ``train_demos [N, ANSWER_LEN]`` (the expert's answer),
    ``*_carry [N]`` (the pair needs a carry).
    """

    train_prompts: IntArray
    train_answers: IntArray
    train_demos: IntArray
    train_carry: npt.NDArray[np.bool_]
    test_prompts: IntArray
    test_answers: IntArray
    test_carry: npt.NDArray[np.bool_]

    @property
    def demo_error_rate(self) -> float:
        """The share of training demonstrations that are wrong."""
        return float((self.train_demos != self.train_answers).any(axis=1).mean())


def encode_prompts(a: IntArray, b: IntArray) -> IntArray:
    n = a.shape[0]
    return np.stack([a // 10, a % 10, np.full(n, PLUS), b // 10, b % 10, np.full(n, EQUALS)], axis=1).astype(np.int64)


def correct_answers(a: IntArray, b: IntArray) -> IntArray:
    total = a + b
    return np.stack([total // 10, total % 10], axis=1).astype(np.int64)


def needs_carry(a: IntArray, b: IntArray) -> npt.NDArray[np.bool_]:
    return (a % 10 + b % 10) >= 10


def reward(sampled: IntArray, answers: IntArray) -> npt.NDArray[np.float64]:
    """The verifiable reward: 1.0 for an exact match of both digits, else 0.0."""
    return (sampled == answers).all(axis=-1).astype(np.float64)


def make_task(
    seed: int = 0,
    *,
    n_train: int = 2000,
    n_test: int = 500,
    drop_carry_rate: float = 0.75,
) -> AdditionTask:
    """Draw distinct operand pairs for the splits and the expert's demos.

    The split and the expert depend on ``seed`` only (the demo keeps the task
    fixed across training seeds so that seeds measure training noise).
    """
    if not 0.0 <= drop_carry_rate <= 1.0:
        raise ValueError(f"drop_carry_rate must be in [0, 1], got {drop_carry_rate}")
    if n_train + n_test > OPERAND_LIMIT**2:
        raise ValueError(f"n_train + n_test must be at most {OPERAND_LIMIT**2}, got {n_train + n_test}")
    rng = np.random.default_rng(seed)
    pair_ids = rng.permutation(OPERAND_LIMIT**2)[: n_train + n_test]
    a, b = pair_ids // OPERAND_LIMIT, pair_ids % OPERAND_LIMIT
    prompts, answers, carry = encode_prompts(a, b), correct_answers(a, b), needs_carry(a, b)
    train, test = slice(0, n_train), slice(n_train, None)
    # The expert drops the carry on a fixed random subset of the carry pairs.
    drops = carry[train] & (rng.random(n_train) < drop_carry_rate)
    demos = answers[train].copy()
    demos[drops, 0] -= 1
    return AdditionTask(
        train_prompts=prompts[train],
        train_answers=answers[train],
        train_demos=demos,
        train_carry=carry[train],
        test_prompts=prompts[test],
        test_answers=answers[test],
        test_carry=carry[test],
    )
