"""Saved controller states of earlier gaccore versions, for the migration tests.

Run under the gaccore of an earlier commit (its core needs numpy only)::

    git worktree add /tmp/gaccore-v1 b34676f~1
    PYTHONPATH=/tmp/gaccore-v1 python tests/data/make_old_states.py 1 tests/data/state_v1.json

It trains a controller for ``SAVED_AT`` steps on ``batch(t)``, saves its
state dict, and records the ``mu`` it returns on the next ``CONTINUED``
steps: the sequence a controller that loads the state must repeat where the
math did not change. The inputs use only what every version's
``Controller.update`` takes: numpy arrays, expert rows, ``ref_logp`` and a
``kl``, and from version 2 on the verifier's two rates (version 2: the
``expert_reward``/``policy_reward`` step arguments; version 3: per-row
``scores``) in ``mode="verified"``.
"""

from __future__ import annotations

import json
import sys

import numpy as np

SAVED_AT = 12
CONTINUED = 12
ROWS, TOKENS = 10, 7
# The settings every version takes; short phases so the prior moves within the run.
CONFIG = {"update_every": 1, "warmup_steps": 4, "decay_steps": 16, "stat_beta": 0.5, "kl_target": 0.01}


def batch(t: int) -> dict[str, np.ndarray]:
    """Step ``t``'s inputs: 7 rollouts and 3 expert rows, float32, some padding."""
    rng = np.random.default_rng(1000 + t)
    mask = rng.random((ROWS, TOKENS)) > 0.2
    logp = np.where(mask, -(rng.random((ROWS, TOKENS)) ** 2) * 3.0, 0.0).astype(np.float32)
    ref = (logp + 0.05 * rng.standard_normal((ROWS, TOKENS))).astype(np.float32)
    return {
        "logp": logp,
        "mask": mask,
        "adv": rng.standard_normal(ROWS).astype(np.float32),
        "expert": np.arange(ROWS) >= 7,
        "ref_logp": ref,
    }


def scores(t: int) -> np.ndarray:
    """Step ``t``'s per-row verifier scores: the rollouts', then the demonstrations'."""
    rng = np.random.default_rng(2000 + t)
    return np.where(np.arange(ROWS) >= 7, rng.random(ROWS) < 0.8, rng.random(ROWS) < 0.3).astype(np.float64)


def rates(t: int) -> tuple[float, float]:
    """Step ``t``'s success rates of the demonstrations and the rollouts (what ``scores(t)`` averages to)."""
    s = scores(t)
    return float(s[7:].mean()), float(s[:7].mean())


def main(version: int, out: str) -> None:
    import gaccore

    config = dict(CONFIG, **({"mode": "verified"} if version >= 2 else {}))
    ctrl = gaccore.Controller(**config)
    mus = []
    for t in range(SAVED_AT + CONTINUED):
        if t == SAVED_AT:
            saved = json.loads(json.dumps(ctrl.state_dict()))
        inputs = batch(t)
        kl = 0.002 * (t % 5)
        if version == 2:
            expert, policy = rates(t)
            mus.append(float(ctrl.update(**inputs, kl=kl, expert_reward=expert, policy_reward=policy)))
        elif version == 3:
            mus.append(float(ctrl.update(**inputs, kl=kl, scores=scores(t))))
        else:
            mus.append(float(ctrl.update(**inputs, kl=kl)))
    assert saved["version"] == version, f"this gaccore writes version {saved['version']}, not {version}"
    record = {"version": version, "config": config, "state": saved, "continued": mus[SAVED_AT:]}
    with open(out, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
