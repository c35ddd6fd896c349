"""GACGRPOTrainer for real: TRL's GRPOTrainer on a tiny random Llama on the CPU.

No downloads: the model is built from a config and the tokenizer from a
word-level vocabulary. A few GRPO steps with a rule-based reward, mu logged
and moving, checkpoints, and a resumed run that continues the controller.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import runpy
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

# Everything is local: never ask the hub, even for a name that looks like a repo.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from trl import GRPOConfig, TrlParser  # noqa: E402

from gaccore import Config, Controller  # noqa: E402
from gaccore.bindings.demonstrations import ExpertSampler, ScoreCheck, tokenize_demonstrations  # noqa: E402
from gaccore.bindings.trl import STATE_FILE, GACGRPOConfig, GACGRPOTrainer, load_expert_dataset  # noqa: E402

SNIPPETS = Path(__file__).resolve().parent.parent / "docs" / "snippets"
WORDS = ["a", "b", "c", "d", "e", "f", "g", "h"]
# Settings under which the controller visibly moves mu within four steps.
CONTROLLER = {"cap": 0.05, "ema_beta": 0.5, "stat_beta": 0.5, "warmup_steps": 1, "decay_steps": 4}


# A chat template whose turns end in the EOS token and a newline, as ChatML's "<|im_end|>\n".
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def tiny_tokenizer(chat: bool = False) -> transformers.PreTrainedTokenizerFast:
    roles = ["<user>", "<assistant>"] if chat else []
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", *WORDS, *roles])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(tokenizer: transformers.PreTrainedTokenizerFast) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return transformers.LlamaForCausalLM(config)


def count_a(completions: list[str], **_: object) -> list[float]:
    """Rule-based reward: how often the completion says 'a'."""
    return [float(c.split().count("a")) for c in completions]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved locally: with beta > 0 TRL loads its reference
    model from the policy's path, which must then exist on disk."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_trainer(
    output_dir: Path, model_dir: Path, max_steps: int, accumulation: int = 1, distributed: bool = False
) -> GACGRPOTrainer:
    tokenizer = tiny_tokenizer()
    prompts = datasets.Dataset.from_dict({"prompt": [" ".join(WORDS[i : i + 3]) for i in range(6)] * 4})
    experts = datasets.Dataset.from_dict(
        {"prompt": ["b c d", "e f g", "c d e"], "completion": ["a a a", "a a", "a a a a"]}
    )
    args = GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_steps=max_steps,
        gradient_accumulation_steps=accumulation,
        learning_rate=5e-3,
        beta=0.04,  # load a reference model: the statistics then read ref_per_token_logps
        logging_steps=1,
        save_steps=2,
        save_only_model=False,
        use_cpu=True,
        report_to=[],
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    return GACGRPOTrainer(
        model=str(model_dir),
        reward_funcs=count_a,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        expert_dataset=experts,
        # The GRPOConfig above initialized torch.distributed when launched on several processes.
        controller=Controller(process_group=torch.distributed.group.WORLD if distributed else None, **CONTROLLER),
    )


def logged(trainer: GACGRPOTrainer, key: str) -> dict[int, float]:
    return {entry["step"]: entry[key] for entry in trainer.state.log_history if key in entry}


def test_train_logs_moving_mu_checkpoints_and_resumes(tmp_path: Path, model_dir: Path) -> None:
    first = make_trainer(tmp_path, model_dir, max_steps=4)
    first.train()
    mus = logged(first, "gac/mu")
    assert sorted(mus) == [1, 2, 3, 4]
    assert len(set(mus.values())) == 4  # mu moved every step
    assert all(0.05 <= mu <= 0.9 for mu in mus.values())
    for key in ("gac/rho", "gac/sft_loss", "gac/ema_var_rl"):
        assert logged(first, key), f"{key} was not logged"
    assert first.gac.step_count == 4
    metrics = first.gac.metrics()
    assert metrics["batch_n_sft"] > 0 and metrics["batch_n_rl"] > 0
    assert metrics["estimate"] == metrics["estimate"]  # the GAC estimate became defined (not NaN)
    assert metrics["ema_kl"] == metrics["ema_kl"]  # beta > 0: KL read from ref_per_token_logps

    saved = json.loads((tmp_path / "checkpoint-2" / STATE_FILE).read_text())
    assert saved["controller"]["step"] == 2 and saved["expert_draws"] == 2

    resumed = make_trainer(tmp_path, model_dir, max_steps=4)
    loaded: list[int] = []
    original_load = resumed.gac.load_state_dict

    def spy(state: dict, **kwargs: object) -> None:
        original_load(state, **kwargs)
        loaded.append(resumed.gac.step_count)
        assert resumed.gac.state_dict() == saved["controller"]

    resumed.gac.load_state_dict = spy  # type: ignore[method-assign]
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert loaded == [2]  # restored from the checkpoint, where the first run stood
    assert resumed.gac.step_count == 4
    resumed_mus = logged(resumed, "gac/mu")
    assert sorted(resumed_mus) == [1, 2, 3, 4]  # the log history comes back with the checkpoint
    # The controller continues where it stopped: with TRL restoring the RNG state, steps 3-4
    # regenerate the same rollouts and draw the same expert examples, so the controller
    # ends exactly where the uninterrupted run ended.
    assert resumed_mus == pytest.approx(mus, abs=1e-9)
    end_first, end_resumed = first.gac.state_dict()["state"], resumed.gac.state_dict()["state"]
    assert end_resumed == pytest.approx(end_first, rel=1e-6, abs=1e-9)


def test_gradient_accumulation_steps_the_controller_once_per_optimizer_step(tmp_path: Path, model_dir: Path) -> None:
    trainer = make_trainer(tmp_path, model_dir, max_steps=2, accumulation=2)
    weights: list[float] = []
    original_mu_for = trainer._mu_for

    def spy(*args: object, **kwargs: object) -> object:
        mu = original_mu_for(*args, **kwargs)
        weights.append(float(mu))
        return mu

    trainer._mu_for = spy  # type: ignore[method-assign]
    trainer.train()
    assert trainer.gac.step_count == 2  # four micro-batches, two optimizer steps
    assert trainer.expert_sampler.draws == 4
    assert sorted(logged(trainer, "gac/mu")) == [1, 2]
    # SPEC: every micro-batch of step t is weighted with the mu left by step t-1.
    first_step_mu = 0.85  # mu_init
    second_step_mu = logged(trainer, "gac/mu")[1]
    assert weights == pytest.approx([first_step_mu, first_step_mu, second_step_mu, second_step_mu])


def _data_parallel_rank(rank: int, port: int, out_dir: str, model_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    trainer = make_trainer(Path(out_dir) / "run", Path(model_dir), max_steps=3, distributed=True)
    trainer.train()
    result = {"mu": logged(trainer, "gac/mu"), "metrics": trainer.gac.metrics()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def test_two_data_parallel_processes_use_the_same_mu(tmp_path: Path, model_dir: Path) -> None:
    """Two gloo processes launched as torch.distributed/accelerate launch them:
    each rank's controller gathers both ranks' rows, so all ranks agree."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_data_parallel_rank, args=(port, str(tmp_path), str(model_dir)), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["mu"] == ranks[1]["mu"] and len(ranks[0]["mu"]) == 3
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # every proxy and EMA identical
    # 4 rollouts + 2 expert rows (one per prompt) per micro-batch and rank, from both ranks.
    assert ranks[0]["metrics"]["batch_n_rl"] == 8 and ranks[0]["metrics"]["batch_n_sft"] == 4
    assert (tmp_path / "run" / "checkpoint-2" / STATE_FILE).exists()  # written once, by the main process


def test_rejects_bad_expert_dataset(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        use_cpu=True,
        report_to=[],
    )
    prompts = datasets.Dataset.from_dict({"prompt": ["a b"] * 2})
    with pytest.raises(ValueError, match="'completion'"):
        GACGRPOTrainer(
            model=tiny_model(tokenizer),
            reward_funcs=count_a,
            args=args,
            train_dataset=prompts,
            processing_class=tokenizer,
            expert_dataset=[{"prompt": "a"}],
        )


def test_readme_trl_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(SNIPPETS / "trl.py"), run_name="__main__")
    assert namespace["trainer"].gac.step_count >= 1
    # The README's verified-mode example continues the one above.
    namespace = runpy.run_path(str(SNIPPETS / "trl_verified.py"), init_globals=namespace, run_name="__main__")
    metrics = namespace["verified"].gac.metrics()
    assert (metrics["batch_expert_success"], metrics["demos_kept"]) == (0.5, 0.5)
    assert metrics["ema_policy_success"] == metrics["ema_policy_success"]  # the rollouts were scored too


# -- without code: GACGRPOConfig from YAML and the command line, python -m gaccore.bindings.trl ------


def test_gac_grpo_config_carries_every_controller_knob_with_its_default(tmp_path: Path) -> None:
    args = GACGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    knobs = {f.name.removeprefix("gac_") for f in dataclasses.fields(args) if f.name.startswith("gac_")}
    assert knobs == {f.name for f in dataclasses.fields(Config)}
    assert args.gac_config() == Config()


def test_gac_grpo_config_pickles_under_the_trl_modules_name(tmp_path: Path) -> None:
    """TRL pickles the training args into every checkpoint: the class must be found again
    as gaccore.bindings.trl.GACGRPOConfig, wherever the code that defines it lives."""
    args = GACGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], gac_cap=0.02)
    assert (type(args).__module__, type(args).__qualname__) == ("gaccore.bindings.trl", "GACGRPOConfig")
    restored = pickle.loads(pickle.dumps(args))
    assert type(restored) is GACGRPOConfig and restored.gac_config() == args.gac_config()


def test_trl_parser_reads_knobs_from_yaml_with_the_command_line_on_top(tmp_path: Path) -> None:
    yaml_path = tmp_path / "gac.yaml"
    yaml_path.write_text(
        f"output_dir: {tmp_path / 'out'}\n"
        "use_cpu: true\n"
        "gac_cap: 0.02\n"
        "gac_sft_coef: nll\n"
        "gac_scale: [1.0, 2.0, 0.5]\n"
        "gac_warmup_steps: 3\n"
        "expert_dataset_name: json\n"
        "expert_dataset_files: [experts.jsonl]\n"
        "expert_prompt_column: question\n"
    )
    parser = TrlParser((GACGRPOConfig,))
    (args,) = parser.parse_args_and_config(["--config", str(yaml_path), "--gac_cap", "0.03", "--gac_per_mean", "true"])
    config = args.gac_config()
    assert config.cap == 0.03  # the command line wins over the YAML file
    assert (config.sft_coef, config.scale, config.warmup_steps, config.per_mean) == ("nll", (1.0, 2.0, 0.5), 3, True)
    assert config.mu_init == Config().mu_init  # unset knobs keep gaccore's defaults
    assert (args.expert_dataset_files, args.expert_prompt_column) == (["experts.jsonl"], "question")


def test_gac_grpo_config_rejects_a_bad_knob_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"gac_.*cap must satisfy cap > 0"):
        GACGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], gac_cap=-0.1)
    with pytest.raises(ValueError, match="filter_demos must be None or a finite number"):
        GACGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], gac_filter_demos=float("nan"))
    parser = TrlParser((GACGRPOConfig,))
    with pytest.raises(SystemExit):  # argparse: not one of 'phi', 'nll'
        parser.parse_args_and_config(["--output_dir", str(tmp_path), "--gac_sft_coef", "chord"])


def test_load_expert_dataset_renames_columns_and_names_missing_ones(tmp_path: Path) -> None:
    data = tmp_path / "experts.jsonl"
    data.write_text("".join(json.dumps({"question": "b c", "answer": "a a", "id": i}) + "\n" for i in range(3)))
    args = GACGRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        expert_dataset_name="json",
        expert_dataset_files=[str(data)],
        expert_prompt_column="question",
        expert_completion_column="answer",
    )
    experts = load_expert_dataset(args)
    # The other columns stay: reward functions get them when they score a demonstration.
    assert experts.column_names == ["prompt", "completion", "id"]
    assert experts[0] == {"prompt": "b c", "completion": "a a", "id": 0}
    args.expert_completion_column = "solution"
    with pytest.raises(ValueError, match=r"no column\(s\) \['solution'\]"):
        load_expert_dataset(args)


def test_python_m_entry_point_trains_from_the_readme_yaml(tmp_path: Path, model_dir: Path) -> None:
    """The README's YAML file and command, run as written in a subprocess: the tiny model saved
    to ./tiny-model, local jsonl data, a reward function from a module beside them."""
    shutil.copytree(model_dir, tmp_path / "tiny-model")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["b c", "c d", "d e"]))
    (tmp_path / "experts.jsonl").write_text(
        "".join(json.dumps({"question": p, "answer": c}) + "\n" for p, c in [("b c", "a a"), ("c d", "a a a")])
    )
    (tmp_path / "my_rewards.py").write_text(  # a verifier: 1 when the completion says 'a', else 0
        "def say_a(completions, **kwargs):\n    return [float('a' in c.split()) for c in completions]\n"
    )
    shutil.copy(SNIPPETS / "gac.yaml", tmp_path)
    result = subprocess.run(
        ["bash", str(SNIPPETS / "trl_cli.sh")],
        cwd=tmp_path,
        # `python` is this interpreter; everything stays local.
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    output = tmp_path / "gac-grpo"
    controller = json.loads((output / "checkpoint-2" / STATE_FILE).read_text())["controller"]
    assert controller["step"] == 2
    # The YAML's and the command line's knobs reached the controller.
    assert (controller["config"]["kl_target"], controller["config"]["cap"]) == (0.05, 0.02)
    assert (controller["config"]["mode"], controller["config"]["filter_demos"]) == ("verified", 0.5)
    assert controller["state"]["has_expert_success"] and controller["state"]["has_policy_success"]
    history = json.loads((output / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "gac/mu" in entry] == [1, 2]
    assert (output / "model.safetensors").exists()  # the trained model, saved at the end


# -- the verifier: the trainer's reward functions score the demonstrations too --------------------


def verify(completions: list[str], ok: list[bool] | None = None, **_: object) -> list[float | None]:
    """A verifier: a demonstration is right when its dataset says so (the ``ok``
    column arrives as a keyword argument); a rollout is right when it says 'a'."""
    if ok is not None:
        return [float(right) for right in ok]
    return [float("a" in c.split()) for c in completions]


def verified_trainer(output_dir: Path, model_dir: Path, reward: object, **gac: object) -> GACGRPOTrainer:
    experts = datasets.Dataset.from_dict(
        {
            "prompt": ["b c d", "e f g", "c d e", "d e f"],
            "completion": ["a a a", "b b", "a a", "c c"],
            "ok": [True, False, True, False],
        }
    )
    args = GACGRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_steps=3,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        report_to=[],
        seed=0,
        disable_tqdm=True,
        **{f"gac_{name}": value for name, value in {**CONTROLLER, **gac}.items()},
    )
    return GACGRPOTrainer(
        model=str(model_dir),
        reward_funcs=reward,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"prompt": [" ".join(WORDS[i : i + 3]) for i in range(6)] * 4}),
        processing_class=tiny_tokenizer(),
        expert_dataset=experts,
    )


def test_the_verifier_scores_demonstrations_and_the_filter_drops_the_rejected(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = verified_trainer(tmp_path, model_dir, verify, mode="verified", filter_demos=0.5)
    from gaccore.bindings import trl as binding

    sft_masks: list[torch.Tensor] = []
    real_sft_loss = binding.sft_loss

    def recording_sft_loss(logp: torch.Tensor, mask: torch.Tensor, **kwargs: object) -> torch.Tensor:
        sft_masks.append(mask.detach().clone())
        return real_sft_loss(logp, mask, **kwargs)

    monkeypatch.setattr(binding, "sft_loss", recording_sft_loss)
    trainer.train()

    ok = trainer.expert_dataset["ok"]
    draws = []
    for draw in range(3):  # the examples each step drew, by the trainer's own resumable order
        draws.append([ok[index] for index in trainer.expert_sampler.indices(draw)])
    for mask, drawn in zip(sft_masks, draws, strict=True):
        kept_rows = mask.sum(dim=1) > 0
        assert kept_rows.tolist() == drawn  # a rejected demonstration has no token in the SFT loss
    first = {key: logged(trainer, key)[1] for key in ("gac/ema_expert_success", "gac/demos_kept", "reward")}
    assert first["gac/ema_expert_success"] == pytest.approx(sum(draws[0]) / len(draws[0]))
    assert first["gac/demos_kept"] == pytest.approx(sum(draws[0]) / len(draws[0]))
    # The rollouts' success rate is the mean reward TRL itself logged for the step.
    assert logged(trainer, "gac/ema_policy_success")[1] == pytest.approx(first["reward"])
    # The batch's own rates, logged beside the smoothed ones: this step's draw and rollouts.
    for step, drawn in enumerate(draws, start=1):
        assert logged(trainer, "gac/batch_expert_success")[step] == pytest.approx(sum(drawn) / len(drawn))
        assert logged(trainer, "gac/batch_policy_success")[step] == pytest.approx(logged(trainer, "reward")[step])
    metrics = trainer.gac.metrics()
    assert metrics["batch_n_demos"] == 2 and metrics["batch_n_sft"] == sum(draws[-1])


def test_verified_mode_refuses_a_demonstration_no_reward_function_scores(tmp_path: Path, model_dir: Path) -> None:
    def rollouts_only(completions: list[str], ok: list[bool] | None = None, **_: object) -> list[float | None]:
        return [None] * len(completions) if ok is not None else [1.0] * len(completions)

    trainer = verified_trainer(tmp_path, model_dir, rollouts_only, mode="verified")
    with pytest.raises(ValueError, match="needs a score for every demonstration"):
        trainer.train()
    # Outside verified mode such a demonstration is kept.
    kept = verified_trainer(tmp_path / "paper", model_dir, rollouts_only, filter_demos=0.5)
    kept.train()
    assert logged(kept, "gac/demos_kept")[1] == 1.0


def test_the_filter_warns_once_when_its_threshold_is_a_partial_credit() -> None:
    """A checker that gives partial credit (0.5 for a wrong answer in the right form) at
    filter_demos=0.5: the filter keeps what may be wrong demonstrations, and says so once."""
    examples = [{"prompt": "b c", "completion": "a a"}] * 3
    check = ScoreCheck(Config(filter_demos=0.5), ["verify"])
    with pytest.warns(UserWarning, match=r"gac_filter_demos=0.5 keeps the demonstrations scored exactly 0.5"):
        check(torch.tensor([1.0, 0.5, 0.0]), examples)
    quiet = [
        (check, [0.5, 0.5, 1.0]),  # once is enough
        (ScoreCheck(Config(filter_demos=0.5), ["verify"]), [0.0, 1.0, 1.0]),  # a 0/1 checker
        (ScoreCheck(Config(filter_demos=1.0), ["verify"]), [0.5, 1.0, 0.0]),  # a threshold above the credit
        (ScoreCheck(Config(), ["verify"]), [0.5, 0.5, 0.5]),  # no filter
    ]
    for quiet_check, scores in quiet:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            quiet_check(torch.tensor(scores), examples)


# -- the end of a demonstration: one end marker, as TRL's SFTTrainer makes it -----------------------


def turn(role: str, text: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


def count_a_in_turns(completions: list[list[dict[str, str]]], **_: object) -> list[float]:
    """count_a for chat completions (TRL passes each rollout as a list of messages)."""
    return [float(c[0]["content"].split().count("a")) for c in completions]


def test_chat_demonstrations_end_in_the_templates_marker_alone(tmp_path: Path) -> None:
    """The chat template already ends the rendered completion with its end of turn
    ("a a <eos>\n"): no second EOS after it, as in TRL's SFTTrainer, so the SFT targets
    stop where the rollouts stop."""
    tokenizer = tiny_tokenizer(chat=True)
    trainer = GACGRPOTrainer(
        model=tiny_model(tokenizer),
        reward_funcs=count_a_in_turns,
        args=GRPOConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=4,
            num_generations=2,
            max_completion_length=8,
            max_steps=1,
            save_strategy="no",
            use_cpu=True,
            report_to=[],
            disable_tqdm=True,
        ),
        train_dataset=datasets.Dataset.from_dict({"prompt": [turn("user", "b c"), turn("user", "d e")] * 2}),
        processing_class=tokenizer,
        expert_dataset=datasets.Dataset.from_dict(
            {"prompt": [turn("user", "b c"), turn("user", "c d")], "completion": [turn("assistant", "a a")] * 2}
        ),
    )
    demos = trainer._expert_batch("eval")
    a, eos = tokenizer.convert_tokens_to_ids("a"), tokenizer.eos_token_id
    for ids, mask in zip(demos.completion_ids, demos.completion_mask, strict=True):
        assert ids[mask.bool()].tolist() == [a, a, eos]
    trainer.train()
    assert trainer.gac.step_count == 1


def test_plain_demonstrations_get_the_eos_token_once() -> None:
    """A plain-string completion gets EOS appended, unless it already ends with it."""
    tokenizer = tiny_tokenizer()
    examples = [{"prompt": "b c", "completion": "a a"}, {"prompt": "c d", "completion": "a a<eos>"}]
    demos = tokenize_demonstrations(examples, tokenizer, max_completion_length=8, device="cpu")
    a, eos = tokenizer.convert_tokens_to_ids("a"), tokenizer.eos_token_id
    assert demos.completion_lists == [[a, a, eos], [a, a, eos]]
    assert demos.completion_mask.tolist() == [[1, 1, 1], [1, 1, 1]]


# -- the expert sampler: a random stream of its own ------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_the_expert_order_is_not_the_prompt_order(seed: int) -> None:
    """TRL's RepeatSampler shuffles the prompts with torch.manual_seed(seed); an expert
    sampler seeded alike (as it was at seed 0) draws the demonstrations of the very
    prompts being rolled out."""
    from trl.trainer.utils import RepeatSampler

    n = 16
    prompts = list(RepeatSampler(range(n), mini_repeat_count=1, batch_size=n, shuffle=True, seed=seed))
    assert prompts == torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    assert ExpertSampler(n, n, seed).indices(0) != prompts


def test_the_expert_sampler_deals_each_epoch_to_the_ranks_and_resumes_at_its_draws() -> None:
    ranks = [ExpertSampler(5, 2, seed=3, rank=rank, world=2) for rank in range(2)]
    dealt = [index for _ in range(5) for sampler in ranks for index in sampler.take()]  # 4 epochs of 5
    assert all(sorted(dealt[i : i + 5]) == list(range(5)) for i in range(0, 20, 5))
    assert dealt[:5] != dealt[5:10]  # a fresh order each epoch
    resumed = ExpertSampler(5, 2, seed=3, rank=1, world=2)
    resumed.draws = 3  # as a checkpoint's expert_draws restores it
    assert resumed.take() == ranks[1].indices(3)
