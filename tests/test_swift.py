"""gaccore.bindings.swift against the installed ms-swift (its own venv: ./dev test-swift).

No downloads: a tiny random Qwen2 with a byte-level BPE tokenizer trained on a
few sentences and a ChatML template is built at test time. The README's
command runs as written in a subprocess and a new process resumes it; in this
process ms-swift's own pipeline trains with gradient accumulation and with the
verifier, the SFT term is compared with CHORD's, and every refusal is checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("swift") is None:  # .venv: ms-swift lives in .venv-swift (./dev test-swift)
    pytest.skip("could not import 'swift'", allow_module_level=True)
# Everything is local: never ask a hub, and keep the runs on the CPU (set before ms-swift is imported).
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "MODELSCOPE_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

torch = pytest.importorskip("torch")

from swift.arguments import RLHFArguments  # noqa: E402
from swift.pipelines.train.rlhf import SwiftRLHF  # noqa: E402
from swift.rewards import ORM, orms  # noqa: E402
from swift.rlhf_trainers import utils as swift_utils  # noqa: E402
from swift.trainers import TrainerFactory  # noqa: E402
from swift.utils import parse_args, to_device  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from gaccore import Config  # noqa: E402
from gaccore.bindings import swift as binding  # noqa: E402
from gaccore.bindings.experts import ExpertSampler  # noqa: E402
from gaccore.bindings.swift import STATE_FILE, GACGRPOTrainer, GACRLHFArguments, main  # noqa: E402
from gaccore.bindings.swift_args import check_settings  # noqa: E402
from gaccore.bindings.swift_cli import _gac_trainer  # noqa: E402

SNIPPETS = Path(__file__).resolve().parent.parent / "docs" / "snippets"
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QUESTIONS = [("What is 1 + 1?", "2"), ("What is 2 + 3?", "5"), ("Compute 7 times 6.", "42"), ("What is 3 + 4?", "7")]
SAID = ["2", "5", "41", "7"]  # the expert's answers: the third is wrong


def build_tiny_model(folder: Path) -> None:
    """A random Qwen2 (32 wide, 2 layers) and a byte-level BPE tokenizer with ChatML's
    special tokens, trained on a few sentences: ms-swift's `qwen` template runs on it."""
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    corpus = [f"{q} The answer is {a}." for q, a in QUESTIONS] + ["user assistant system"]
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe = trainers.BpeTrainer(vocab_size=300, special_tokens=special, initial_alphabet=alphabet, show_progress=False)
    backend.train_from_iterator(corpus * 10, trainer=bpe)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = [eos, pad]
    model.generation_config.pad_token_id = pad
    model.save_pretrained(folder)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the README's command runs in: tiny-model/, prompts.jsonl, experts.jsonl
    (CHORD's format: conversations ending in the expert's answer) and my_rewards.py."""
    folder = tmp_path_factory.mktemp("swift")
    build_tiny_model(folder / "tiny-model")
    write_jsonl(
        folder / "prompts.jsonl", [{"messages": [{"role": "user", "content": q}], "solution": a} for q, a in QUESTIONS]
    )
    experts = [
        {
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"The answer is {said}."}],
            "solution": a,
        }
        for (q, a), said in zip(QUESTIONS, SAID, strict=True)
    ]
    write_jsonl(folder / "experts.jsonl", experts)
    shutil.copy(SNIPPETS / "swift_rewards.py", folder / "my_rewards.py")
    return folder


# -- the README's command, and a new process resuming it ---------------------------------------------


def run_snippet(folder: Path, script: str) -> subprocess.CompletedProcess[str]:
    (folder / "run.sh").write_text(script)
    return subprocess.run(
        ["bash", "run.sh"],
        cwd=folder,
        # `python` is this interpreter; everything stays local, on the CPU.
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def logged(run: Path, key: str) -> dict[int, float]:
    """What ms-swift logged in a run's folder (logging.jsonl), by step."""
    lines = (json.loads(line) for line in (run / "logging.jsonl").read_text().splitlines())
    return {int(entry["global_step/max_steps"].split("/")[0]): entry[key] for entry in lines if key in entry}


def test_the_readme_command_trains_and_a_new_process_resumes_it(workdir: Path) -> None:
    snippet = (SNIPPETS / "swift_rlhf.sh").read_text()
    result = run_snippet(workdir, snippet)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (workdir / "gac-swift").glob("v0-*")  # ms-swift adds a versioned folder
    saved = {step: json.loads((run / f"checkpoint-{step}" / STATE_FILE).read_text()) for step in (1, 2)}
    controller = saved[2]["controller"]
    assert controller["step"] == 2 and saved[2]["expert_draws"] == 2
    # The command line's --gac_* options reached the controller.
    assert (controller["config"]["mode"], controller["config"]["filter_demos"], controller["config"]["cap"]) == (
        "verified",
        1.0,
        0.02,
    )
    # The reward function scored the rollouts and the demonstrations (one of them wrong).
    assert controller["state"]["has_expert_success"] and controller["state"]["has_policy_success"]
    # The two draws of two are the four demonstrations (one epoch), one of them wrong: batch rates
    # of 1 and 0.5 in some order, smoothed with stat_beta 0.9.
    assert controller["state"]["ema_expert_success"] in (pytest.approx(0.95), pytest.approx(0.55))
    # What ms-swift logged is the controller's mu after each step.
    mus = logged(run, "gac/mu")
    assert sorted(mus) == [1, 2]
    assert mus[1] == pytest.approx(saved[1]["controller"]["state"]["mu"]) and mus[2] == pytest.approx(
        controller["state"]["mu"]
    )

    # A new process resumes from checkpoint-1: the controller and the demonstrations' order go on
    # where the stopped run was, so step 2 ends where the uninterrupted run ended.
    checkpoint = run / "checkpoint-1"
    result = run_snippet(workdir, snippet.rstrip() + f" \\\n    --resume_from_checkpoint {checkpoint}\n")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (resumed,) = (workdir / "gac-swift").glob("v1-*")
    again = json.loads((resumed / "checkpoint-2" / STATE_FILE).read_text())
    assert again["expert_draws"] == 2 and again["controller"]["step"] == 2
    assert again["controller"]["state"] == pytest.approx(controller["state"], rel=1e-6, abs=1e-12)
    assert logged(resumed, "gac/mu") == pytest.approx({2: mus[2]})


# A plugin (--external_plugins) that has every rank write its controller after each checkpoint.
RANK_STATES = """
import json, os
from gaccore.bindings import swift as binding

_save = binding.GACGRPOTrainer._save_checkpoint


def _save_and_write(self, *args, **kwargs):
    result = _save(self, *args, **kwargs)
    rank, metrics = self.accelerator.process_index, self.gac.metrics()
    with open(os.path.join(self.args.output_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"state": self.gac.state_dict(), "metrics": metrics, "world": self.accelerator.num_processes}, f)
    return result


binding.GACGRPOTrainer._save_checkpoint = _save_and_write
"""


def test_two_processes_started_like_swift_rlhf_reduce_over_both_ranks(workdir: Path, tmp_path: Path) -> None:
    """NPROC_PER_NODE=2: the entry point starts two gloo processes through torchrun, as
    `swift rlhf` does; each rank's controller gathers both ranks' rows, so both hold one state."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (workdir / "rank_states.py").write_text(RANK_STATES)
    argv = [
        *("--rlhf_type", "grpo", "--model", "tiny-model", "--model_type", "qwen2", "--template", "qwen"),
        *("--dataset", "prompts.jsonl", "--external_plugins", "my_rewards.py", "rank_states.py"),
        *("--reward_funcs", "exact_answer", "--chord_sft_dataset", "experts.jsonl", "--gac_mode", "verified"),
        *("--chord_sft_per_device_train_batch_size", "1", "--num_generations", "2", "--max_completion_length", "8"),
        *("--per_device_train_batch_size", "2", "--max_steps", "1", "--save_steps", "1", "--use_vllm", "false"),
        *("--use_cpu", "true", "--ddp_backend", "gloo", "--check_model", "false", "--report_to", "none"),
        *("--output_dir", str(tmp_path)),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "gaccore.bindings.swift", "rlhf", *argv],
        cwd=workdir,
        env={**os.environ, "NPROC_PER_NODE": "2", "MASTER_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "-m torch.distributed.run --nproc_per_node 2" in result.stdout
    (run,) = tmp_path.glob("v0-*")
    ranks = [json.loads((run / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["state"] == ranks[1]["state"]
    for metrics in (rank["metrics"] for rank in ranks):  # 2 rollouts and 1 demonstration from each rank
        assert (metrics["batch_n_rl"], metrics["batch_n_demos"]) == (4, 2)
    assert json.loads((run / "checkpoint-1" / STATE_FILE).read_text())["controller"] == ranks[0]["state"]


# -- ms-swift's pipeline in this process -----------------------------------------------------------


class Verdict(ORM):
    """A verifier reading the dataset's `solution` column: 1.0 right, 0.0 wrong."""

    def __call__(self, completions: list[str], solution: list[str], **kwargs: Any) -> list[float]:
        return [float(c.strip().endswith(f"is {s}.")) for c, s in zip(completions, solution, strict=True)]


class Brevity(ORM):
    """A dense reward in [0, 1] (short completions score higher), so that advantages vary."""

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        return [1.0 / (1.0 + len(c)) for c in completions]


orms["gac_test_verdict"] = Verdict
orms["gac_test_brevity"] = Brevity
# Settings under which the controller visibly moves mu within two steps.
MOVING = ["--gac_cap", "0.05", "--gac_ema_beta", "0.5", "--gac_stat_beta", "0.5"]
MOVING += ["--gac_warmup_steps", "1", "--gac_decay_steps", "4"]


def rlhf_argv(workdir: Path, output: Path, *extra: str) -> list[str]:
    return [
        *("--rlhf_type", "grpo", "--model", str(workdir / "tiny-model"), "--model_type", "qwen2"),
        *("--template", "qwen", "--tuner_type", "full", "--dataset", str(workdir / "prompts.jsonl")),
        *("--chord_sft_dataset", str(workdir / "experts.jsonl"), "--chord_sft_per_device_train_batch_size", "2"),
        *("--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "8"),
        *("--learning_rate", "1e-3", "--logging_steps", "1", "--save_strategy", "no", "--seed", "0"),
        *("--use_vllm", "false", "--use_cpu", "true", "--check_model", "false", "--report_to", "none"),
        *("--dataset_num_proc", "1", "--dataloader_num_workers", "0", "--output_dir", str(output)),
        *extra,
    ]


def train(workdir: Path, output: Path, *extra: str) -> GACGRPOTrainer:
    trainer = main(["rlhf", *rlhf_argv(workdir, output, *extra)])
    assert isinstance(trainer, GACGRPOTrainer)
    return trainer


def history(trainer: GACGRPOTrainer, key: str) -> dict[int, float]:
    return {entry["step"]: entry[key] for entry in trainer.state.log_history if key in entry}


@pytest.fixture(scope="module")
def accumulating(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[GACGRPOTrainer, list]:
    """Two optimizer steps of two micro-batches each; every mix(sft, rl, mu) recorded."""
    mixes: list[tuple[float, float, float, float]] = []
    real_mix = binding.mix

    def spy(sft: Any, rl: Any, mu: Any) -> Any:
        out = real_mix(sft, rl, mu)
        mixes.append((float(sft), float(rl), float(mu), float(out)))
        return out

    binding.mix = spy
    try:
        argv = ["--reward_funcs", "gac_test_brevity", "--gradient_accumulation_steps", "2", "--max_steps", "2"]
        trainer = train(workdir, tmp_path_factory.mktemp("accumulating"), *argv, *MOVING)
    finally:
        binding.mix = real_mix
    return trainer, mixes


def test_mu_comes_from_the_controller_once_per_optimizer_step_and_weights_the_mix(accumulating) -> None:
    trainer, mixes = accumulating
    assert trainer.gac.step_count == 2 and trainer.expert_sampler.draws == 4  # 4 micro-batches, 2 steps
    mus = history(trainer, "gac/mu")
    assert sorted(mus) == [1, 2] and mus[2] == pytest.approx(trainer.gac.mu)
    assert len({0.85, mus[1], mus[2]}) == 3  # mu moved at each step
    # SPEC: every micro-batch of step t is weighted with the mu left by step t - 1 (mu_init before step 1).
    assert [m[2] for m in mixes] == pytest.approx([0.85, 0.85, mus[1], mus[1]])
    for sft, rl, mu, out in mixes:
        assert out == pytest.approx(mu * sft + (1 - mu) * rl, rel=1e-6, abs=1e-9)
    assert history(trainer, "gac/sft_loss") and history(trainer, "gac/rho")
    metrics = trainer.gac.metrics()
    # Both micro-batches of the last step: 2 x 4 rollouts, 2 x 2 demonstrations.
    assert metrics["batch_n_rl"] == 8 and metrics["batch_n_sft"] == 4
    assert metrics["ema_kl"] == metrics["ema_kl"]  # beta 0.04: the KL read from ref_per_token_logps


def test_the_sft_term_is_chords_with_the_controllers_token_weighting(accumulating, monkeypatch) -> None:
    """On the same demonstrations, CHORD's own compute_chord_loss (phi on, mu forced to 1) gives
    the SFT loss the binding mixes."""
    trainer, _ = accumulating
    rows = [trainer.chord_sft_dataset[i] for i in (0, 2)]
    monkeypatch.setattr(swift_utils, "mu_schedule_function", lambda *args: 1.0)
    monkeypatch.setattr(trainer, "chord_sft_iterator", iter([rows]))
    monkeypatch.setattr(trainer.args, "chord_enable_phi_function", True)
    with torch.no_grad():
        chord = swift_utils.compute_chord_loss(trainer, grpo_loss=torch.tensor(0.0))
        inputs = to_device(trainer.template.data_collator(rows), trainer.accelerator.device)
        ours = trainer._sft_loss(*trainer._expert_logps(inputs))
    assert float(ours) == pytest.approx(float(chord), rel=1e-6)


def test_the_verifier_scores_demonstrations_and_the_filter_drops_the_rejected(workdir, tmp_path) -> None:
    draws: list[tuple[torch.Tensor, torch.Tensor]] = []  # each draw's scores and SFT mask
    real_sft_loss = GACGRPOTrainer._sft_loss
    real_draw = GACGRPOTrainer._draw_demonstrations

    def draw(self: GACGRPOTrainer) -> Any:
        inputs, scores = real_draw(self)
        draws.append((scores.cpu(), None))
        return inputs, scores

    def sft_loss(self: GACGRPOTrainer, logp: Any, mask: Any, weights: Any) -> Any:
        draws[-1] = (draws[-1][0], mask.cpu())
        return real_sft_loss(self, logp, mask, weights)

    GACGRPOTrainer._draw_demonstrations, GACGRPOTrainer._sft_loss = draw, sft_loss
    try:
        argv = ["--reward_funcs", "gac_test_verdict", "--max_steps", "3", "--gac_mode", "verified"]
        trainer = train(workdir, tmp_path, *argv, "--gac_filter_demos", "1.0", *MOVING)
    finally:
        GACGRPOTrainer._draw_demonstrations, GACGRPOTrainer._sft_loss = real_draw, real_sft_loss
    assert len(draws) == 3
    sampler, raw = ExpertSampler(4, 2, seed=0), trainer.chord_sft_dataset.dataset  # ms-swift shuffled the rows
    right = [row["messages"][-1]["content"] == f"The answer is {row['solution']}." for row in raw]
    assert sum(right) == 3
    for number, (scores, mask) in enumerate(draws):
        expected = [float(right[i]) for i in sampler.indices(number)]
        assert scores.tolist() == expected  # the reward function scored each demonstration
        assert mask.any(dim=1).tolist() == [bool(s) for s in expected]  # a rejected one has no SFT token
    metrics = trainer.gac.metrics()
    last = draws[-1][0]
    assert metrics["batch_n_demos"] == 2 and metrics["batch_n_sft"] == int(last.sum())
    assert metrics["batch_expert_success"] == pytest.approx(float(last.mean()))
    assert metrics["demos_kept"] == pytest.approx(float(last.mean()))
    assert metrics["batch_policy_success"] == metrics["batch_policy_success"]  # rollouts scored too
    assert history(trainer, "gac/batch_expert_success") and history(trainer, "gac/demos_kept")

    # Verified mode needs every demonstration scored; one that no reward function scores is named.
    none = type("Unscored", (ORM,), {"__call__": lambda self, completions, **kwargs: [None] * len(completions)})
    trainer.reward_funcs = [none()]
    with pytest.raises(ValueError, match="gac_mode='verified' needs a score for every demonstration"):
        trainer._score_demonstrations([0])
    # A demonstration must end in the expert's assistant turn for the reward functions to judge it.
    trainer.chord_sft_dataset = type("Raw", (), {"dataset": [{"messages": [{"role": "user", "content": "hi"}]}]})()
    with pytest.raises(ValueError, match=r"chord_sft_dataset: .* ending in the expert's assistant turn"):
        trainer._score_demonstrations([0])


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, refused",
    [
        ({"--rlhf_type": "dpo"}, r"rlhf_type: .* needs grpo"),
        ({"--chord_sft_dataset": None}, r"chord_sft_dataset: .* set it"),
        ({"--chord_mu_peak": "0.5", "--chord_mu_valley": "0.1"}, r"\['chord_mu_peak', 'chord_mu_valley'\]: CHORD"),
        ({"--chord_enable_phi_function": "true", "--gac_sft_coef": "nll"}, r"chord_enable_phi_function: .*'nll'"),
        ({"--use_liger_kernel": "true"}, r"use_liger_kernel: "),
        ({"--padding_free": "true"}, r"padding_free: "),
        ({"--packing": "true"}, r"packing: "),
        ({"--sequence_parallel_size": "2"}, r"sequence_parallel_size: "),
        ({"--streaming": "true"}, r"streaming: "),
        ({"--gac_cap": "-1"}, r"invalid gac_\* option: cap must satisfy"),
    ],
)
def test_the_options_gac_cannot_serve_are_refused_by_name(workdir, tmp_path, change, refused) -> None:
    argv = rlhf_argv(workdir, tmp_path, "--reward_funcs", "gac_test_verdict")
    for option, value in change.items():
        if option in argv:
            at = argv.index(option)
            del argv[at : at + 2]
        if value is not None:
            argv += [option, value]
    with pytest.raises(ValueError, match=refused):
        parse_args(GACRLHFArguments, argv)  # before ms-swift resolves the model or any dataset


def test_a_yaml_config_file_carries_the_gac_options_and_the_command_line_wins(workdir, tmp_path) -> None:
    """`python -m gaccore.bindings.swift rlhf gac.yaml --gac_cap 0.03`, as `swift rlhf config.yaml`."""
    import yaml
    from swift.cli.main import parse_yaml_args

    argv = rlhf_argv(workdir, tmp_path, "--reward_funcs", "gac_test_verdict")
    options = {key.removeprefix("--"): value for key, value in zip(argv[::2], argv[1::2], strict=True)}
    options.update(gac_scale=[1.0, 2.0, 0.5], gac_filter_demos=0.5, gac_cap=0.02)
    (tmp_path / "gac.yaml").write_text(yaml.safe_dump(options))
    argv = [str(tmp_path / "gac.yaml"), "--gac_cap", "0.03"]
    parse_yaml_args(argv)  # what main does first
    args, rest = parse_args(GACRLHFArguments, argv)
    assert rest == []
    config = args.gac_config()
    assert (config.scale, config.filter_demos, config.cap) == ((1.0, 2.0, 0.5), 0.5, 0.03)


def test_chords_phi_option_agrees_with_gacs_default_weighting() -> None:
    settings = type("Args", (), {"chord_sft_dataset": ["experts.jsonl"], "chord_enable_phi_function": True})()
    check_settings(settings, Config())  # phi on both sides: nothing to refuse


def test_an_unknown_option_and_a_missing_route_are_errors(workdir, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"remaining_argv: \['--gac_kap', '0.02'\]"):
        main(["rlhf", *rlhf_argv(workdir, tmp_path, "--reward_funcs", "gac_test_verdict", "--gac_kap", "0.02")])
    for argv in ([], ["sft", "--model", "x"]):
        with pytest.raises(SystemExit, match=r"usage: python -m gaccore\.bindings\.swift rlhf"):
            main(argv)


def test_the_trainer_refuses_chords_schedule_in_a_run_built_without_the_entry_point(workdir, tmp_path, monkeypatch):
    """ms-swift's own pipeline and arguments, the GRPO trainer mapped to GAC's (as a plugin would):
    the trainer itself refuses CHORD's schedule."""
    monkeypatch.setitem(TrainerFactory.TRAINER_MAPPING, "grpo", "gaccore.bindings.swift.GACGRPOTrainer")
    argv = rlhf_argv(workdir, tmp_path, "--reward_funcs", "gac_test_verdict", "--chord_mu_peak", "0.5")
    argv += ["--chord_mu_valley", "0.1", "--chord_mu_warmup_steps", "0", "--chord_mu_decay_steps", "4"]
    with pytest.raises(ValueError, match=r"\['chord_mu_warmup_steps', .*\]: CHORD's mu schedule"):
        SwiftRLHF(parse_args(RLHFArguments, argv)[0]).main()


def test_a_plugins_own_grpo_trainer_must_derive_from_gacs(monkeypatch) -> None:
    monkeypatch.setitem(TrainerFactory.TRAINER_MAPPING, "grpo", "swift.rlhf_trainers.DPOTrainer")
    with pytest.raises(ValueError, match=r"TRAINER_MAPPING\['grpo'\] is 'swift.rlhf_trainers.DPOTrainer'"):
        with _gac_trainer():
            pass
    monkeypatch.setitem(TrainerFactory.TRAINER_MAPPING, "grpo", "gaccore.bindings.swift.GACGRPOTrainer")
    with _gac_trainer():  # GAC's trainer (or a subclass) stays
        assert TrainerFactory.TRAINER_MAPPING["grpo"] == "gaccore.bindings.swift.GACGRPOTrainer"


def test_the_chunked_multi_turn_path_and_a_checkpoint_without_the_state_are_refused(accumulating, tmp_path) -> None:
    trainer, _ = accumulating
    with pytest.raises(ValueError, match=r"multi_turn_scheduler: .* in chunks"):
        trainer._compute_loss_chunked(trainer.model, {}, None)
    with pytest.raises(FileNotFoundError, match=STATE_FILE):
        trainer._load_optimizer_and_scheduler(str(tmp_path))  # a CHORD run's checkpoint, say
