"""What every binding shares: the checkpoint file survives a crash mid-save,
the logged metrics come from one state read (gaccore.bindings.common), and
the accumulation window weights and steps as SPEC §3 says
(gaccore.bindings.accumulation)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from gaccore import Config, Controller
from gaccore.bindings import common
from gaccore.bindings.accumulation import AccumulationWindow
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


def test_the_batchs_own_success_rates_are_logged_beside_the_smoothed_ones() -> None:
    controller = Controller(stat_beta=0.5)
    assert np.isnan(logged_metrics(controller.metrics())["gac/batch_expert_success"])  # no step yet
    for scores in ([1.0, 0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]):  # rows 4-5: demonstrations
        controller.update(*batch(0), scores=np.array(scores))
    logged = logged_metrics(controller.metrics())
    assert (logged["gac/batch_expert_success"], logged["gac/batch_policy_success"]) == (1.0, 0.25)
    assert (logged["gac/ema_expert_success"], logged["gac/ema_policy_success"]) == (0.75, 0.5)


# -- the accumulation window: SPEC §3's rule, shared by the TRL and Trinity bindings ------------


def torch_batch(step: int, micro: int) -> tuple:
    torch = pytest.importorskip("torch")
    return tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in batch(10 * step + micro))


def test_a_window_of_micro_batches_is_weighted_with_the_mu_before_it() -> None:
    """Boundary-aware trainers (TRL): every micro-batch of step t weighs with the mu left by
    step t-1, the controller observes each and steps once, at the last one."""
    window, reference = AccumulationWindow(Controller()), Controller()
    for step in range(3):
        before = reference.mu
        for micro in range(3):
            weight = window.micro_batch(*torch_batch(step, micro), last=micro == 2)
            assert float(weight) == pytest.approx(before, abs=1e-7)  # a float32 tensor, no host read
            reference.observe(*torch_batch(step, micro))
        reference.step()
        assert window.controller.step_count == step + 1
        assert window.controller.mu == pytest.approx(reference.mu, abs=1e-12)


def test_a_window_of_one_micro_batch_is_weighted_with_its_own_steps_mu() -> None:
    window, reference = AccumulationWindow(Controller()), Controller()
    for step in range(3):
        weight = window.micro_batch(*torch_batch(step, 0), last=True)
        assert float(weight) == pytest.approx(float(reference.update(*torch_batch(step, 0))), abs=1e-7)
    assert window.controller.step_count == 3


def test_a_new_step_number_closes_the_window_before_it() -> None:
    """Trainers that see step numbers (Trinity): the controller steps when the number changes."""
    window, reference = AccumulationWindow(Controller()), Controller()
    for step in (1, 2):
        assert window.begin(step)  # a new number opens a window, closing the one before
        assert window.step == step and window.controller.step_count == step - 1
        for micro in range(2):
            assert not window.begin(step)  # the same step: its window stays open
            assert window.mu == reference.mu  # the whole step weighs with the mu before it
            window.observe(*batch(10 * step + micro))
            reference.observe(*batch(10 * step + micro))
        reference.step()
    assert window.controller.step_count == 1  # step 2 is still open
    window.close()
    assert window.controller.state_dict() == reference.state_dict()
    assert window.close() is None and window.controller.step_count == 2  # nothing observed: no step
    with pytest.raises(TypeError, match=r"gaccore\.Controller"):
        AccumulationWindow(object())  # type: ignore[arg-type]


def test_a_trainer_builds_its_controller_from_the_config_or_checks_the_one_given() -> None:
    config = Config(mu_min=0.1)
    built = common.trainer_controller(None, config, world_group=None)
    assert built.config == config and built.process_group is None
    given = Controller()
    assert common.trainer_controller(given, config, world_group=None) is given
    with pytest.raises(TypeError, match=r"controller must be a gaccore\.Controller, got dict"):
        common.trainer_controller({}, None, world_group=None)


def test_on_several_processes_a_controller_without_a_group_is_refused() -> None:
    world = object()  # stands for torch.distributed.group.WORLD: the check never calls it
    assert common.trainer_controller(None, None, world_group=world).process_group is world
    with pytest.raises(ValueError, match="controller: training runs on several processes"):
        common.trainer_controller(Controller(), None, world_group=world)
