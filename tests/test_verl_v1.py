"""gaccore.bindings.verl_v1 / verl_v1_main: verl's V1 trainer with GAC, from a Hydra command line.

The trainer classes are verl's own (``PPOTrainerSync`` and its registry), built
from verl's own Hydra config; the TransferQueue and the Ray worker groups are
replaced by stand-ins that hold the same tensors. A real V1 run cannot start
on a CPU-only machine: ``python -m gaccore.bindings.verl_v1_main`` with a tiny
local model gets through Hydra, Ray and the GAC task runner (``gac_sync``
found in the runner's own registry) to verl's resource pool, which asks Ray
for GPUs (``use_gpu=True``) and stops with "Total available GPUs 0 is less
than total desired GPUs 1"; V1's rollout also needs a vLLM, SGLang or
TensorRT-LLM server, none of which installs here.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

from hydra import compose, initialize_config_module  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from transfer_queue import KVBatchMeta  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer import main_ppo  # noqa: E402
from verl.trainer.ppo.checkpoint_callback import CheckpointCallback  # noqa: E402
from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls  # noqa: E402
from verl.workers.utils.padding import no_padding_2_padding  # noqa: E402

from gaccore import Config  # noqa: E402
from gaccore.bindings import verl as gac_verl  # noqa: E402
from gaccore.bindings import verl_v1, verl_v1_main  # noqa: E402
from gaccore.bindings.common import STATE_FILE  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_verl import EXPERT, FILTER_DEMOS, REJECTED, SCORES, UIDS, actor_micro_batch, driver_batch  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_overrides() -> list[str]:
    """The Hydra overrides of the README's verl launch command, as a shell passes them."""
    text = README.read_text()
    block = re.search(r"```bash\n(python -m gaccore\.bindings\.verl_v1_main.*?)```", text, re.S)
    assert block, "README has no verl_v1_main launch command"
    return block.group(1).replace("\\\n", " ").split()[3:]


# What a GRPO launch sets (verl validates the micro-batch sizes).
LAUNCH = [
    "algorithm.adv_estimator=grpo",
    "actor_rollout_ref.actor.ppo_mini_batch_size=3",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=6",
    "actor_rollout_ref.rollout.n=2",
]


def verl_config(overrides: list[str]) -> DictConfig:
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose("ppo_trainer", overrides=[*LAUNCH, *overrides])


def test_the_readme_command_line_sets_the_controllers_knobs() -> None:
    overrides = readme_overrides()
    assert "+gac.cap=0.02" in overrides
    config = verl_v1_main.prepare_config(verl_config(overrides))
    assert config.trainer.v1.trainer_mode == "gac_sync"
    ctrl = verl_v1.controller_from_config(config)
    assert ctrl.config.cap == 0.02 and ctrl.config.kl_target == 0.05 and ctrl.config.mode == "verified"
    assert config.actor_rollout_ref.actor.use_kl_loss  # the GRPO example's KL loss stays on


def test_every_config_field_is_settable_from_the_command_line() -> None:
    knobs = {"cap": 0.03, "mu_init": 0.6, "scale": [1.0, 2.0, 0.5], "sft_coef": "nll", "update_every": 2}
    overrides = [f"+gac.{key}={value}".replace(" ", "") for key, value in knobs.items()]
    ctrl = verl_v1.controller_from_config(verl_config(overrides))
    assert ctrl.config == Config(cap=0.03, mu_init=0.6, scale=(1.0, 2.0, 0.5), sft_coef="nll", update_every=2)
    assert verl_v1.controller_from_config(verl_config([])).config == Config()


def test_bad_knobs_and_the_legacy_trainer_are_refused_before_ray_starts() -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['kap'\]"):
        verl_v1_main.prepare_config(verl_config(["+gac.kap=0.02"]))
    with pytest.raises(ValueError, match="cap"):
        verl_v1_main.prepare_config(verl_config(["+gac.cap=-1"]))
    with pytest.raises(ValueError, match="use_v1"):
        verl_v1_main.prepare_config(verl_config(["trainer.use_v1=false"]))
    with pytest.raises(ValueError, match=r"distillation\.enabled=true"):
        verl_v1_main.prepare_config(verl_config(["distillation.enabled=true"]))


def test_each_v1_trainer_has_a_registered_gac_variant() -> None:
    for mode in ("sync", "colocate_async", "separate_async"):
        gac_cls = get_trainer_cls(verl_v1.gac_trainer_mode(mode))
        assert issubclass(gac_cls, verl_v1.GACTrainerMixin) and issubclass(gac_cls, get_trainer_cls(mode))
    verl_v1.register_gac_trainers()  # importing twice, or re-registering, changes nothing
    assert verl_v1.gac_trainer_mode("gac_sync") == "gac_sync"


def test_the_entry_point_runs_verls_main_with_the_gac_task_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launched: list[tuple[DictConfig, object]] = []
    monkeypatch.setattr(
        main_ppo, "run_ppo", lambda config, task_runner_class: launched.append((config, task_runner_class))
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["verl_v1_main", *readme_overrides(), f"hydra.run.dir={tmp_path}"])
    verl_v1_main.main()
    ((config, runner),) = launched
    assert runner is verl_v1_main.GACTaskRunner
    assert config.trainer.v1.trainer_mode == "gac_sync" and config.gac.cap == 0.02


class _TransferQueue:
    """kv_batch_get/kv_batch_put over one batch held in memory, in verl's
    nested response layout: each response as long as it was generated,
    whatever its mask holds."""

    def __init__(self, batch: DataProto) -> None:
        self.rows = batch.batch.clone()
        self.rows.rename_key_("token_level_scores", "rm_scores")  # the name verl's reward loop writes
        self.lengths = self.rows["response_mask"].sum(-1).tolist()

    def kv_batch_get(self, keys: list[str], partition_id: str, select_fields: list[str]) -> TensorDict:
        fields = {key: self.rows[key] for key in select_fields}
        for key, padded in fields.items():
            if padded.ndim == 2:
                rows = [row[:length] for row, length in zip(padded, self.lengths, strict=True)]
                fields[key] = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
        return TensorDict(fields, batch_size=len(keys))

    def kv_batch_put(self, keys: list[str], partition_id: str, fields: TensorDict) -> None:
        for key, nested in fields.items():
            for row, values in zip(self.rows[key], nested.unbind(), strict=True):
                row[: len(values)] = values


class _ActorWorkers:
    """The actor worker group: runs gaccore's loss on what a worker would receive."""

    def __init__(self) -> None:
        self.loss_fns: list[object] = []
        self.received: list[dict] = []
        self.saved: list[str] = []

    def set_loss_fn(self, loss_fn: object) -> None:
        self.loss_fns.append(loss_fn)

    def update_actor(self, batch: KVBatchMeta) -> dict:
        self.received.append(dict(batch.extra_info))
        return {"metrics": {"mfu": 0.0, "pg_loss": 0.0}}

    def save_checkpoint(self, local_path: str, *args: object, **kwargs: object) -> None:
        self.saved.append(local_path)

    def load_checkpoint(self, local_path: str, **kwargs: object) -> None:
        pass


def gac_trainer(config: DictConfig) -> PPOTrainerSync:
    trainer = get_trainer_cls("gac_sync")(config)
    trainer.actor_rollout_wg = _ActorWorkers()
    trainer.train_dataloader = SimpleNamespace(state_dict=dict, load_state_dict=lambda state: None)
    return trainer


def kv_batch(padding_rows: tuple[int, ...] = ()) -> KVBatchMeta:
    fields = ["old_log_probs", "response_mask", "advantages", "ref_log_prob", "rm_scores", gac_verl.EXPERT_KEY]
    tags = [{"is_padding": i in padding_rows} for i in range(len(UIDS))]
    return KVBatchMeta(keys=[f"k{i}" for i in range(len(UIDS))], tags=tags, partition_id="train", fields=fields)


def test_update_actor_computes_mu_on_the_queues_fields_and_the_workers_mix_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver = driver_batch(30)
    monkeypatch.setattr(verl_v1, "tq", _TransferQueue(driver))
    trainer = gac_trainer(verl_config(["+gac.cap=0.05", "actor_rollout_ref.actor.use_kl_loss=true"]))
    metrics: dict = {}
    trainer._update_actor(kv_batch(padding_rows=(0,)), metrics)

    assert metrics["gac/mu"] == pytest.approx(trainer.gac.mu)
    assert "actor/pg_loss" in metrics  # verl's own _update_actor ran after ours
    stats = trainer.gac.metrics()
    assert stats["batch_n_rl"] == 3 and stats["batch_n_sft"] == 2  # the padding row was left out
    assert stats["batch_kl"] == stats["batch_kl"]  # ref_log_prob read (use_kl_loss)
    (extra_info,) = trainer.actor_rollout_wg.received
    assert extra_info[gac_verl.MU_KEY] == pytest.approx(trainer.gac.mu)

    # What a worker makes of it: extra_info arrives as the micro-batch's non-tensor entries.
    driver.meta_info.update(extra_info)
    td, _, model_output = actor_micro_batch(driver)
    trainer._install_gac_loss()  # what _setup does once verl's workers exist
    (loss_fn,) = trainer.actor_rollout_wg.loss_fns
    _, worker_metrics = loss_fn(model_output=model_output, data=td)
    assert worker_metrics["actor/gac_mu"].values == [pytest.approx(trainer.gac.mu)]
    assert "kl_loss" in worker_metrics


def test_a_batch_without_expert_rows_is_refused_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verl_v1, "tq", _TransferQueue(driver_batch(31)))
    trainer = gac_trainer(verl_config([]))
    batch = kv_batch()
    batch.fields.remove(gac_verl.EXPERT_KEY)
    with pytest.raises(ValueError, match="gac_expert"):
        trainer._update_actor(batch, {})


def test_verified_mode_reads_the_queues_scores_and_the_workers_skip_a_rejected_demonstration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver = driver_batch(33, scores=SCORES)
    queue = _TransferQueue(driver)
    monkeypatch.setattr(verl_v1, "tq", queue)
    trainer = gac_trainer(verl_config(["+gac.mode=verified", f"+gac.filter_demos={FILTER_DEMOS}"]))
    metrics: dict = {}
    trainer._update_actor(kv_batch(), metrics)

    assert metrics["gac/ema_policy_success"] == pytest.approx(0.25)
    assert metrics["gac/ema_expert_success"] == pytest.approx(0.5)
    assert metrics["gac/demos_kept"] == 0.5
    (extra_info,) = trainer.actor_rollout_wg.received
    assert extra_info[gac_verl.MU_KEY] == metrics["gac/mu"]  # one state read for the workers and the log
    # The queue's response mask, which the workers train on, lost the rejected demonstration's row alone.
    assert not queue.rows["response_mask"][REJECTED].any()
    assert torch.equal(queue.rows["response_mask"][~REJECTED], driver.batch["response_mask"][~REJECTED])

    driver.batch["response_mask"] = queue.rows["response_mask"]
    driver.meta_info.update(extra_info)
    td, values, model_output = actor_micro_batch(driver)
    trainer._install_gac_loss()
    (loss_fn,) = trainer.actor_rollout_wg.loss_fns
    loss, _ = loss_fn(model_output=model_output, data=td)
    loss.backward()
    grad = no_padding_2_padding(values.grad, td)
    assert not grad[REJECTED].any() and grad[EXPERT & ~REJECTED].any()


def test_verified_mode_without_the_queues_scores_is_refused_with_the_field_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(verl_v1, "tq", _TransferQueue(driver_batch(34)))
    trainer = gac_trainer(verl_config(["+gac.mode=verified"]))
    batch = kv_batch()
    batch.fields.remove("rm_scores")
    with pytest.raises(ValueError, match=r"'token_level_scores' \(.*'rm_scores'"):
        trainer._update_actor(batch, {})
    assert trainer.gac.step_count == 0 and trainer.actor_rollout_wg.received == []


class _UserCallback(CheckpointCallback):
    # verl instantiates the callback from its name, so the test reads what it saw here.
    saved_steps: ClassVar[list[int]] = []

    def on_save(self, trainer: object, global_step: int, checkpoint_dir: str, **kwargs: object) -> None:
        self.saved_steps.append(global_step)


def test_the_controller_is_saved_and_restored_by_verls_own_checkpointing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _UserCallback.saved_steps.clear()
    overrides = [
        "trainer.default_local_dir=ckpts",
        f"trainer.checkpoint_callback_class={__name__}._UserCallback",
        "+gac.cap=0.05",
    ]
    monkeypatch.setattr(verl_v1, "tq", _TransferQueue(driver_batch(32)))
    trainer = gac_trainer(verl_config(overrides))
    for step in (1, 2):
        trainer._update_actor(kv_batch(), {})
        trainer.global_steps = step
    trainer._save_checkpoint()  # verl's own: actor, data.pt, latest_checkpointed_iteration.txt, callback
    saved = json.loads((tmp_path / "ckpts" / "global_step_2" / STATE_FILE).read_text())
    assert saved["controller"] == trainer.gac.state_dict()
    assert _UserCallback.saved_steps == [2]  # the user's own callback still runs

    resumed = gac_trainer(verl_config(overrides))
    resumed._load_checkpoint()  # verl's own lookup of the latest global_step folder
    assert resumed.global_steps == 2
    assert resumed.gac.state_dict() == saved["controller"]
