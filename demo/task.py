"""The embedded tasks: two-digit arithmetic with a verifiable reward and an
expert whose demonstrations are wrong in a known pattern.

Prompts are ``a1 a0 op b1 b0 =``; the answer is the two digits of the
result (always in ``[0, 100)``). The reward is 1 for an exact match, else 0:
sparse for an untrained policy (a random one scores about 1%). The same
reward function scores the expert's demonstrations, so a trainer can tell
how often the expert is right (``train_demo_reward``).

Operations: ``add`` (``a + b`` with ``a, b`` in ``[0, 50)``; the hard pairs
need a carry, ``a0 + b0 >= 10``) and ``sub`` (``a - b`` with
``0 <= b <= a < 100``; the hard pairs need a borrow, ``a0 < b0``). The
``*_carry`` arrays flag the hard pairs of either operation.

Expert error patterns (``expert_error``, applied to a fixed random share
``error_rate`` of the pairs it concerns):

- ``none``: a perfect expert;
- ``random``: any pair's demonstration is replaced by a uniformly random
  wrong answer (unstructured noise);
- ``drop-carry``: on hard pairs the expert forgets the carry or borrow (the
  tens digit is off by one); pure imitation plateaus at the easy pairs,
  while the hard demonstrations that stay correct leave some probability on
  the right tens digit, which is what lets RL find it (an expert that is
  always wrong on carries makes every mixture fail: the policy never samples
  the right digit);
- ``units-off``: on any pair the units digit is one too high (mod 10), a
  systematic error on most inputs when ``error_rate`` is high.

``SUITE`` names the five regimes of expert quality the suite compares on.

The checker of the demonstrations (``train_demo_score``) is imperfect, as a
real one is: it accepts a wrong demonstration with probability
``false_accept`` (a right answer reached the wrong way, a lenient parser)
and rejects a right one with probability ``false_reject`` (a right answer in
an unexpected form). Its verdicts are fixed per demonstration, drawn from a
stream of the task seed of their own, so the demonstrations themselves do
not depend on the checker's rates. The rollouts' reward stays exact: it is
the training reward every rule sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]

# Vocabulary: the ten digits, then '+', '=' and '-'.
PLUS, EQUALS, MINUS = 10, 11, 12
VOCAB_SIZE = 13
PROMPT_LEN = 6  # a1 a0 + b1 b0 =
ANSWER_LEN = 2  # s1 s0
OPERAND_LIMIT = 50  # addition operands; subtraction uses a >= b in [0, 100)
OPERATIONS = ("add", "sub")
EXPERT_ERRORS = ("none", "random", "drop-carry", "units-off")
# The demonstration checker's error rates, fixed before the suite's runs.
FALSE_ACCEPT = 0.3
FALSE_REJECT = 0.1


@dataclass(frozen=True)
class TaskSpec:
    """One regime of the suite: an operation, how the expert errs, and what
    else about the run differs from the suite's settings.

    ``group_size``: rollouts per prompt in this regime (``None``: the
    settings'). ``reward_flip``: the chance that a rollout's training reward
    is flipped (a noisy verifier; evaluation stays exact). ``late_error``
    and ``late_error_rate``: from step ``late_from`` on, the demonstrations
    come from a second expert that errs this way (an expert that gets worse
    during the run)."""

    name: str
    operation: str
    expert_error: str
    error_rate: float
    description: str
    group_size: int | None = None
    reward_flip: float = 0.0
    late_error: str | None = None
    late_error_rate: float = 0.0
    late_from: int = 0


SUITE: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("perfect", "add", "none", 0.0, "addition, every demonstration right"),
        TaskSpec("random-errors", "add", "random", 0.3, "addition, 30% of demonstrations a random wrong answer"),
        TaskSpec("carry-drop", "add", "drop-carry", 0.75, "addition, the carry dropped on 75% of the carry pairs"),
        TaskSpec("mostly-wrong", "add", "units-off", 0.8, "addition, the units digit one too high on 80% of pairs"),
        TaskSpec("sub-borrow", "sub", "drop-carry", 0.5, "subtraction, the borrow dropped on 50% of the borrow pairs"),
        TaskSpec(
            "pairs-2",
            "add",
            "drop-carry",
            0.75,
            "carry-drop's expert, 2 rollouts per prompt instead of 8 (RL's signal in fewer groups)",
            group_size=2,
        ),
        TaskSpec(
            "noisy-reward",
            "add",
            "drop-carry",
            0.75,
            "carry-drop's expert, each rollout's training reward flipped with probability 0.2",
            reward_flip=0.2,
        ),
        TaskSpec(
            "expert-decays",
            "add",
            "none",
            0.0,
            "addition, a perfect expert for 500 steps, then the units digit one too high on 80% of pairs",
            late_error="units-off",
            late_error_rate=0.8,
            late_from=500,
        ),
    )
}


@dataclass(frozen=True)
class ArithmeticTask:
    """Train/held-out splits of operand pairs and their (imperfect) demos.

    Arrays: ``*_prompts [N, PROMPT_LEN]``, ``*_answers [N, ANSWER_LEN]`` (the
    correct answer), ``train_demos [N, ANSWER_LEN]`` (the expert's answer),
    ``*_carry [N]`` (the pair needs a carry or a borrow).
    """

    train_prompts: IntArray
    train_answers: IntArray
    train_demos: IntArray
    train_carry: npt.NDArray[np.bool_]
    train_demo_score: npt.NDArray[np.float64]  # the imperfect checker: 1.0 accepts a demonstration, 0.0 rejects it
    test_prompts: IntArray
    test_answers: IntArray
    test_carry: npt.NDArray[np.bool_]
    # A second expert's answers, which replace train_demos from step late_from on (None: one expert).
    late_demos: IntArray | None = None
    late_from: int = 0

    def demos_at(self, step: int) -> IntArray:
        """The demonstrations the expert gives at ``step``."""
        return self.train_demos if self.late_demos is None or step < self.late_from else self.late_demos

    @property
    def demo_error_rate(self) -> float:
        """The share of training demonstrations that are wrong."""
        return float((self.train_demos != self.train_answers).any(axis=1).mean())

    @property
    def train_demo_reward(self) -> npt.NDArray[np.float64]:
        """The verifier's reward of each training demonstration."""
        return reward(self.train_demos, self.train_answers)


def encode_prompts(a: IntArray, b: IntArray, operator: int = PLUS) -> IntArray:
    n = a.shape[0]
    return np.stack([a // 10, a % 10, np.full(n, operator), b // 10, b % 10, np.full(n, EQUALS)], axis=1).astype(
        np.int64
    )


def digits(values: IntArray) -> IntArray:
    return np.stack([values // 10, values % 10], axis=1).astype(np.int64)


def correct_answers(a: IntArray, b: IntArray) -> IntArray:
    return digits(a + b)


def needs_carry(a: IntArray, b: IntArray) -> npt.NDArray[np.bool_]:
    return (a % 10 + b % 10) >= 10


def reward(sampled: IntArray, answers: IntArray) -> npt.NDArray[np.float64]:
    """The verifiable reward: 1.0 for an exact match of both digits, else 0.0."""
    return (sampled == answers).all(axis=-1).astype(np.float64)


def _operand_pairs(operation: str, count: int, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
    """``count`` distinct operand pairs in random order."""
    if operation == "add":
        space = np.arange(OPERAND_LIMIT**2)
        a_all, b_all = space // OPERAND_LIMIT, space % OPERAND_LIMIT
    else:
        a_all, b_all = np.tril_indices(100)  # every 0 <= b <= a < 100
    if count > a_all.shape[0]:
        raise ValueError(f"n_train + n_test must be at most {a_all.shape[0]} for {operation!r}, got {count}")
    chosen = rng.permutation(a_all.shape[0])[:count]
    return a_all[chosen].astype(np.int64), b_all[chosen].astype(np.int64)


def _expert_answers(
    answers: IntArray,
    carry: npt.NDArray[np.bool_],
    operation: str,
    expert_error: str,
    error_rate: float,
    rng: np.random.Generator,
) -> IntArray:
    """The expert's answers: right, except on a fixed random subset (``error_rate``)
    of the pairs its error pattern concerns."""
    demos = answers.copy()
    chosen = rng.random(answers.shape[0]) < error_rate
    if expert_error == "drop-carry":
        dropped = carry & chosen
        demos[dropped, 0] += -1 if operation == "add" else 1
    elif expert_error == "units-off":
        demos[chosen, 1] = (demos[chosen, 1] + 1) % 10
    elif expert_error == "random":
        shift = rng.integers(1, 100, answers.shape[0])  # a non-zero shift mod 100: always a wrong answer
        values = 10 * demos[:, 0] + demos[:, 1]
        demos[chosen] = digits((values[chosen] + shift[chosen]) % 100)
    return demos


def make_task(
    seed: int = 0,
    *,
    n_train: int = 2000,
    n_test: int = 500,
    operation: str = "add",
    expert_error: str = "drop-carry",
    error_rate: float = 0.75,
    false_accept: float = FALSE_ACCEPT,
    false_reject: float = FALSE_REJECT,
    late_error: str | None = None,
    late_error_rate: float = 0.0,
    late_from: int = 0,
) -> ArithmeticTask:
    """Draw distinct operand pairs for the splits and the expert's demos.

    The split and the expert depend on ``seed`` only (the demo keeps the task
    fixed across training seeds so that seeds measure training noise). With
    ``late_error``, a second expert erring that way (``late_error_rate``)
    answers from step ``late_from`` on, drawn from a stream of its own so the
    first expert's answers do not depend on it; the checker scores the first.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")
    for name, error in (("expert_error", expert_error), ("late_error", late_error)):
        if error is not None and error not in EXPERT_ERRORS:
            raise ValueError(f"{name} must be one of {EXPERT_ERRORS}, got {error!r}")
    rates = (("error_rate", error_rate), ("late_error_rate", late_error_rate))
    for name, rate in (*rates, ("false_accept", false_accept), ("false_reject", false_reject)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")
    rng = np.random.default_rng(seed)
    a, b = _operand_pairs(operation, n_train + n_test, rng)
    if operation == "add":
        prompts, answers, carry = encode_prompts(a, b, PLUS), digits(a + b), needs_carry(a, b)
    else:
        prompts, answers, carry = encode_prompts(a, b, MINUS), digits(a - b), (a % 10) < (b % 10)
    train, test = slice(0, n_train), slice(n_train, None)
    demos = _expert_answers(answers[train], carry[train], operation, expert_error, error_rate, rng)
    right = reward(demos, answers[train]).astype(bool)
    draw = np.random.default_rng([seed, 1]).random(n_train)  # the checker's own stream
    accepted = np.where(right, draw >= false_reject, draw < false_accept)
    return ArithmeticTask(
        train_prompts=prompts[train],
        train_answers=answers[train],
        train_demos=demos,
        train_carry=carry[train],
        train_demo_score=accepted.astype(np.float64),
        test_prompts=prompts[test],
        test_answers=answers[test],
        test_carry=carry[test],
        late_demos=None
        if late_error is None
        else _expert_answers(
            answers[train], carry[train], operation, late_error, late_error_rate, np.random.default_rng([seed, 2])
        ),
        late_from=late_from,
    )


def make_suite_task(
    name: str, seed: int = 0, *, false_accept: float = FALSE_ACCEPT, false_reject: float = FALSE_REJECT
) -> ArithmeticTask:
    """The task of one regime of ``SUITE``, its demonstrations scored by a
    checker with the given error rates."""
    if name not in SUITE:
        raise ValueError(f"unknown suite task {name!r}; choose from {sorted(SUITE)}")
    spec = SUITE[name]
    return make_task(
        seed,
        operation=spec.operation,
        expert_error=spec.expert_error,
        error_rate=spec.error_rate,
        false_accept=false_accept,
        false_reject=false_reject,
        late_error=spec.late_error,
        late_error_rate=spec.late_error_rate,
        late_from=spec.late_from,
    )
