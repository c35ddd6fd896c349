"""What every binding shares (gaccore.bindings.common): the checkpoint file
survives a crash mid-save, and the logged metrics come from one state read."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from gaccore import Controller
from gaccore.bindings import common
from gaccore.bindings.common import STATE_FILE, load_controller, logged_metrics, save_controller


def batch(step: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(step)
    logp = -rng.random((6, 5))
    mask = np.ones((6, 5), dtype=bool)
    adv = rng.normal(size=6)
    expert = np.arange(6) >= 4
    return logp, mask, adv, expert


def run(controller: Controller, steps: range) -> list[float]:
    return [controller.update(*batch(step)) for step in steps]


class HalfWrite(io.StringIO):
    """A file whose write stores half of the text, then fails like a full disk or a kill."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def write(self, text: str) -> int:
        with open(self.path, "w") as partial:
            partial.write(text[: len(text) // 2])
        raise OSError("simulated crash in the middle of the save")


def test_a_save_that_fails_halfway_leaves_the_previous_state_readable(tmp_path: Path, monkeypatch) -> None:
    controller = Controller(warmup_steps=2, decay_steps=6)
    run(controller, range(5))
    path = save_controller(controller, tmp_path, note="after step 5")
    saved = Path(path).read_text()
    run(controller, range(5, 8))

    real_fdopen = os.fdopen
    written: list[str] = []

    def crashing_fdopen(handle: int, *args, **kwargs):
        real_fdopen(handle).close()
        temporary = next(p for p in tmp_path.iterdir() if p.name != STATE_FILE)
        written.append(str(temporary))
        return HalfWrite(str(temporary))

    monkeypatch.setattr(common.os, "fdopen", crashing_fdopen)
    with pytest.raises(OSError, match="simulated crash"):
        save_controller(controller, tmp_path, note="after step 8")
    monkeypatch.undo()

    assert written, "the save never reached its write"
    assert Path(path).read_text() == saved  # the old file, byte for byte
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # the half-written file is gone

    resumed = Controller(warmup_steps=2, decay_steps=6)
    assert load_controller(resumed, tmp_path) == {"note": "after step 5"}
    reference = Controller(warmup_steps=2, decay_steps=6)
    run(reference, range(5))
    assert run(resumed, range(5, 12)) == run(reference, range(5, 12))


def test_a_save_replaces_the_previous_file_whole(tmp_path: Path) -> None:
    controller = Controller()
    save_controller(controller, tmp_path)
    run(controller, range(3))
    path = save_controller(controller, tmp_path)
    assert json.loads(Path(path).read_text())["controller"]["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]


def test_logged_metrics_are_one_read_of_the_state() -> None:
    controller = Controller()
    run(controller, range(2))
    read = controller.metrics()
    logged = logged_metrics(read)
    assert logged["gac/mu"] == read["mu"] == controller.mu
    assert set(logged) == {f"gac/{name}" for name in common.LOGGED_METRICS}
