"""Saved controller states of every earlier version load, and continue the
mu sequence that version would have taken; a newer version is refused with
an error naming both versions; which settings a resume may change.

The states in tests/data/ were written by the gaccore of each version
(tests/data/make_old_states.py says how)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import gaccore
from gaccore.state import ADDED_CONFIG_FIELDS, OLDEST_STATE_VERSION, RESUME_MAY_CHANGE, STATE_VERSION

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from make_old_states import CONTINUED, SAVED_AT, batch, rates, scores  # noqa: E402


def _continue(ctrl: gaccore.Controller, version: int) -> list[float]:
    """The steps after the saved one, with the inputs the saving version had."""
    mus = []
    for t in range(SAVED_AT, SAVED_AT + CONTINUED):
        kl = 0.002 * (t % 5)
        if version == 2:
            expert, policy = rates(t)
            mus.append(float(ctrl.update(**batch(t), kl=kl, expert_success=expert, policy_success=policy)))
        elif version == 3:
            mus.append(float(ctrl.update(**batch(t), kl=kl, scores=scores(t))))
        else:
            mus.append(float(ctrl.update(**batch(t), kl=kl)))
    return mus


@pytest.mark.parametrize("version", range(OLDEST_STATE_VERSION, STATE_VERSION))
def test_a_state_of_an_earlier_version_continues_its_mu_sequence(version):
    record = json.loads((DATA / f"state_v{version}.json").read_text())
    assert record["state"]["version"] == version
    ctrl = gaccore.Controller(**record["config"])
    ctrl.load_state_dict(record["state"])
    assert ctrl.step_count == SAVED_AT
    assert _continue(ctrl, version) == record["continued"]
    # and the state it saves now is this version's, which loads again
    again = gaccore.Controller(**record["config"])
    again.load_state_dict(json.loads(json.dumps(ctrl.state_dict())))
    assert again.state_dict() == ctrl.state_dict() and ctrl.state_dict()["version"] == STATE_VERSION


def test_every_earlier_version_has_a_saved_state():
    assert sorted(int(p.stem.removeprefix("state_v")) for p in DATA.glob("state_v*.json")) == list(
        range(OLDEST_STATE_VERSION, STATE_VERSION)
    )


def test_a_newer_version_is_refused_naming_both_versions():
    ctrl = gaccore.Controller()
    state = ctrl.state_dict()
    before = ctrl.state_dict()
    with pytest.raises(
        ValueError,
        match=rf"version {STATE_VERSION + 1} was written by a newer gaccore; this gaccore "
        rf"reads versions {OLDEST_STATE_VERSION} to {STATE_VERSION}",
    ):
        ctrl.load_state_dict({**state, "version": STATE_VERSION + 1})
    for bad in (0, "4", True, None):
        with pytest.raises(ValueError, match="state dict version is"):
            ctrl.load_state_dict({**state, "version": bad})
    assert ctrl.state_dict() == before


def test_a_field_added_since_takes_the_value_the_old_state_had():
    """A version-1 state knows no mode: it loads into a paper-mode controller, not a verified one."""
    record = json.loads((DATA / "state_v1.json").read_text())
    assert set(ADDED_CONFIG_FIELDS) - set(record["state"]["config"]) >= {"mode", "filter_demos"}
    with pytest.raises(ValueError, match=r"different config \(mode: saved 'paper', this controller 'verified'\)"):
        gaccore.Controller(**record["config"], mode="verified").load_state_dict(record["state"])


@pytest.mark.parametrize("name, value", [("verified_patience", 3), ("large_shift", 0.5)])
def test_a_resume_may_change_what_decides_no_number(name, value):
    assert name in RESUME_MAY_CHANGE
    first = gaccore.Controller()
    first.update(**batch(0), kl=0.01)
    resumed = gaccore.Controller(**{name: value})
    resumed.load_state_dict(first.state_dict())
    assert resumed.mu == first.mu and resumed.step_count == 1


@pytest.mark.parametrize(
    "name, value", [("stat_beta", 0.5), ("sft_coef", "nll"), ("warmup_steps", 7), ("mode", "verified")]
)
def test_a_resume_may_not_change_what_the_state_or_mu_depend_on(name, value):
    first = gaccore.Controller()
    first.update(**batch(0), kl=0.01)
    resumed = gaccore.Controller(**{name: value})
    with pytest.raises(ValueError, match=rf"different config \({name}: saved"):
        resumed.load_state_dict(first.state_dict())
    assert resumed.step_count == 0
