"""TRL binding: ``GACGRPOTrainer``, GRPO with a GAC-weighted expert SFT loss.

Per micro-batch the trainer computes TRL's own GRPO loss (whatever
``loss_type``, clipping and KL term the config selects), draws a batch of
expert (prompt, completion) examples, computes the CHORD token-weighted SFT
loss on them, and returns ``mu * L_SFT + (1 - mu) * L_GRPO``.

``mu`` comes from a ``gaccore.Controller`` fed, per micro-batch, the detached
log-probabilities TRL computed for the rollouts (``per_token_logps``,
``completion_mask``, ``advantages``, and ``ref_per_token_logps`` when
``beta > 0``) together with the expert rows (``expert=True``). Following
SPEC §3, every micro-batch of an optimizer step is weighted with the ``mu``
of the previous step and the controller steps at the accumulation boundary;
without accumulation the step's own ``mu`` is used. On several processes the
controller reduces its statistics over the default group, so every rank uses
the same ``mu``.

The verifier: TRL's rewards of the rollouts reach the controller as their
per-row ``scores``. With ``gac_mode: verified`` or ``gac_filter_demos`` set,
the trainer also scores each draw of demonstrations with its own
``reward_funcs`` and ``reward_weights``, called as for rollouts (the raw
prompt and completion, the completion ids, the expert dataset's other columns
as keyword arguments). A demonstration scored below ``gac_filter_demos``
adds nothing to the SFT loss (its tokens leave the loss mask) nor to the
controller's SFT statistics. A demonstration that no reward function can
score (all return None) is an error in verified mode, which needs every
score, and is kept otherwise. Use reward functions in [0, 1] (verifiers)
for verified mode: their means are the success rates it compares.

``mu``, ``rho``, the proxies' and the success rates' EMAs and the share of
demonstrations kept are logged through TRL's metrics (keys ``gac/...``); the controller's state and the expert sampler's position are
saved in every checkpoint (``gaccore_state.json``) and restored by
``trainer.train(resume_from_checkpoint=...)``.

The expert dataset has ``prompt`` and ``completion`` columns, as TRL's
prompt-completion datasets: plain strings, or conversations rendered with
the tokenizer's chat template. The completion is followed by the EOS token
when the tokenizer has one, and truncated to ``max_completion_length``.

Without code: ``GACGRPOConfig`` is a ``GRPOConfig`` whose ``gac_<name>``
fields carry every ``gaccore.Config`` knob and whose ``expert_*`` fields name
the expert dataset, so ``trl.TrlParser`` reads them from YAML or the command
line; ``python -m gaccore.bindings.trl --config gac.yaml`` trains with them
(``main``, the equivalent of ``trl grpo``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from functools import partial
from typing import Any, cast, get_args, get_origin, get_type_hints

import torch
import torch.distributed as dist
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import maybe_apply_chat_template

from gaccore import Config, Controller, kept_demos
from gaccore.bindings.common import STATE_FILE, load_controller, logged_metrics, save_controller
from gaccore.bindings.losses import mix, sft_loss

__all__ = ["REWARDS_KEY", "STATE_FILE", "GACGRPOConfig", "GACGRPOTrainer", "load_expert_dataset", "main"]

# The rollouts' rewards [B] in TRL's generation batch, split with the advantages.
REWARDS_KEY = "gac_rewards"


def _gac_fields() -> list[tuple[str, Any, Any]]:
    """One ``gac_<name>`` field per ``gaccore.Config`` field, with its type,
    default and description: a new setting reaches TRL's parser by itself.
    ``scale`` is a list here (``TrlParser`` reads lists, not tuples)."""
    types = get_type_hints(Config)
    made = []
    for setting in fields(Config):
        kind, default = types[setting.name], setting.default
        help_text = f"{setting.metadata['help']} (gaccore.Config.{setting.name})"
        if get_origin(kind) is tuple:
            kind, spec = (
                list[get_args(kind)[0]],
                field(default_factory=partial(list, default), metadata={"help": help_text}),
            )
        else:
            spec = field(default=default, metadata={"help": help_text})
        made.append((f"gac_{setting.name}", kind, spec))
    return made


@dataclass
class _GACGRPOFields(GRPOConfig):
    """TRL's ``GRPOConfig`` plus the controller's settings and the expert dataset.

    Each ``gaccore.Config`` field ``<name>`` is the field ``gac_<name>`` here,
    with the same type, default and description (``gac_config()`` builds the
    ``Config``); the ``expert_*`` fields say where the expert (prompt,
    completion) examples come from. ``GACGRPOTrainer`` reads both when it is
    given this config and no ``controller`` / ``expert_dataset`` of its own.
    ``trl.TrlParser`` parses it from YAML and the command line, e.g.
    ``--gac_cap 0.02``.
    """

    expert_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "expert dataset: a hub name, a local directory, or a builder such as 'json' with "
            "expert_dataset_files (datasets.load_dataset's path)"
        },
    )
    expert_dataset_config: str | None = field(
        default=None, metadata={"help": "configuration of the expert dataset (datasets.load_dataset's name)"}
    )
    expert_dataset_files: list[str] | None = field(
        default=None, metadata={"help": "data files of the expert dataset (datasets.load_dataset's data_files)"}
    )
    expert_dataset_split: str = field(default="train", metadata={"help": "split of the expert dataset"})
    expert_prompt_column: str = field(default="prompt", metadata={"help": "column holding the expert prompts"})
    expert_completion_column: str = field(
        default="completion", metadata={"help": "column holding the expert completions"}
    )
    expert_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "expert examples per micro-batch and process (default: per_device_train_batch_size // "
            "num_generations, at least 1)"
        },
    )


def _post_init(self: Any) -> None:
    super(GACGRPOConfig, self).__post_init__()
    try:
        self.gac_config()
    except ValueError as error:
        raise ValueError(f"GACGRPOConfig: invalid gac_* setting: {error}") from None


def _gac_config(self: Any) -> Config:
    """The controller's ``Config`` from the ``gac_*`` fields."""
    return Config(**{f.name: getattr(self, f"gac_{f.name}") for f in fields(Config)})


GACGRPOConfig = make_dataclass(
    "GACGRPOConfig",
    _gac_fields(),
    bases=(_GACGRPOFields,),
    namespace={
        "__post_init__": _post_init,
        "gac_config": _gac_config,
        "__doc__": _GACGRPOFields.__doc__,
        "__module__": __name__,  # checkpoints pickle the args by this name
    },
)


def load_expert_dataset(args: GACGRPOConfig) -> Any:
    """The expert dataset ``args`` names, with its prompt and completion
    columns renamed to ``prompt`` and ``completion``. Its other columns stay:
    the reward functions get them as keyword arguments when they score a
    demonstration, as they get the prompt dataset's for rollouts."""
    if not args.expert_dataset_name:
        raise ValueError("expert_dataset_name is not set: name the expert dataset (or pass expert_dataset=...)")
    from datasets import load_dataset

    dataset = load_dataset(
        args.expert_dataset_name,
        name=args.expert_dataset_config,
        data_files=args.expert_dataset_files,
        split=args.expert_dataset_split,
    )
    columns = {args.expert_prompt_column: "prompt", args.expert_completion_column: "completion"}
    missing = [name for name in columns if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"expert dataset {args.expert_dataset_name!r} has no column(s) {missing} "
            f"(expert_prompt_column / expert_completion_column); it has {dataset.column_names}"
        )
    taken = [name for name in ("prompt", "completion") if name in dataset.column_names and name not in columns]
    if taken:
        raise ValueError(
            f"expert dataset {args.expert_dataset_name!r} has a column named {taken} besides the chosen "
            "expert_prompt_column / expert_completion_column: rename or drop it"
        )
    return dataset.rename_columns({old: new for old, new in columns.items() if old != new})


class GACGRPOTrainer(GRPOTrainer):
    """A TRL ``GRPOTrainer`` that mixes in an expert SFT loss weighted by GAC's ``mu``.

    Takes every argument of ``GRPOTrainer`` plus:

    - ``expert_dataset``: a ``datasets.Dataset`` (or any sized sequence of
      dicts) with ``prompt`` and ``completion`` columns; by default the one
      a ``GACGRPOConfig`` ``args`` names (``load_expert_dataset``).
    - ``controller``: a ``gaccore.Controller`` (default: one built from a
      ``GACGRPOConfig``'s ``gac_*`` fields, else ``Controller()``, with
      ``process_group`` set to the default group when several processes run).
      Its ``sft_coef`` also selects the SFT loss's token weighting.
    - ``expert_batch_size``: expert examples per micro-batch and process
      (default: a ``GACGRPOConfig``'s ``expert_batch_size``, else
      ``per_device_train_batch_size // num_generations``, at least 1: as
      many demonstrations as prompts).

    An explicit ``controller``, ``expert_dataset`` or ``expert_batch_size``
    takes precedence over the ``GACGRPOConfig`` fields.
    """

    def __init__(
        self,
        *args: Any,
        expert_dataset: Any = None,
        controller: Controller | None = None,
        expert_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        gac_args = self.args if isinstance(self.args, GACGRPOConfig) else None
        if expert_dataset is None:
            if gac_args is None:
                raise TypeError(
                    "GACGRPOTrainer needs expert_dataset=..., or args=GACGRPOConfig(expert_dataset_name=...)"
                )
            expert_dataset = load_expert_dataset(gac_args)
        _check_expert_dataset(expert_dataset)
        if expert_batch_size is None and gac_args is not None:
            expert_batch_size = gac_args.expert_batch_size
        if expert_batch_size is None:
            # GRPOTrainer resolved num_generations from its config during __init__.
            generations = cast(int, self.num_generations)
            expert_batch_size = max(1, self.args.per_device_train_batch_size // generations)
        if isinstance(expert_batch_size, bool) or not isinstance(expert_batch_size, int) or expert_batch_size < 1:
            raise ValueError(f"expert_batch_size must be an integer >= 1, got {expert_batch_size!r}")
        distributed = self.accelerator.num_processes > 1
        if controller is None:
            config = gac_args.gac_config() if gac_args is not None else None
            controller = Controller(config, process_group=dist.group.WORLD if distributed else None)
        elif not isinstance(controller, Controller):
            raise TypeError(f"controller must be a gaccore.Controller, got {type(controller).__name__}")
        elif distributed and controller.process_group is None:
            raise ValueError(
                "controller: training runs on several processes, so the controller needs "
                "process_group=torch.distributed.group.WORLD (or your data-parallel group) "
                "for every rank to compute the same mu"
            )
        self.gac = controller
        self.expert_dataset = expert_dataset
        self.expert_batch_size = expert_batch_size
        self._expert_draws = 0  # micro-batches that drew expert examples so far (resumable)
        self._window_mu: Any = None  # the mu weighting the current accumulation window
        self._captured_logps: list[torch.Tensor] | None = None
        self._captured_rewards: list[torch.Tensor] | None = None

    # -- TRL hooks -------------------------------------------------------------

    def _calculate_rewards(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # TRL scores the rollouts inside its generation step; keep what every
        # reward function returned, so the controller sees the rollouts' rewards.
        rewards_per_func = super()._calculate_rewards(*args, **kwargs)
        if self._captured_rewards is not None:
            self._captured_rewards.append(rewards_per_func)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        self._captured_rewards = []
        try:
            output = super()._generate_and_score_completions(inputs)
            (rewards_per_func,) = self._captured_rewards
        finally:
            self._captured_rewards = None
        # Split into micro-batches with the advantages, row for row.
        output[REWARDS_KEY] = self._this_process(self._combined_reward(rewards_per_func), len(output["advantages"]))
        return output

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        # TRL computes the rollouts' log-probs inside its loss; keep a detached
        # copy for the controller instead of running the model a second time.
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._captured_logps is not None:
            self._captured_logps.append(result[0].detach())
        return result

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        self._captured_logps = []
        try:
            rl_loss = super()._compute_loss(model, inputs)
            (rl_logp,) = self._captured_logps
        finally:
            self._captured_logps = None
        mode = "train" if model.training else "eval"

        demos = self._expert_batch(mode)
        expert_ids, expert_mask = demos.completion_ids, demos.completion_mask
        # (logps, entropies), plus the MoE aux loss in later TRL 1.x releases.
        expert_logp = super()._get_per_token_logps_and_entropies(
            model,
            torch.cat([demos.prompt_ids, expert_ids], dim=1),
            torch.cat([demos.prompt_mask, expert_mask], dim=1),
            expert_ids.size(1),
        )[0]
        # A demonstration the filter rejects adds nothing to the SFT loss.
        kept = kept_demos(demos.scores, self.gac.config.filter_demos)
        expert_loss = sft_loss(expert_logp, expert_mask * kept[:, None], sft_coef=self.gac.config.sft_coef)
        self._metrics[mode]["gac/sft_loss"].append(expert_loss.detach().item())
        if mode == "train":
            # TRL scales its loss for gradient accumulation; scale the SFT term alike.
            expert_loss = expert_loss / self.current_gradient_accumulation_steps

        mu = self._mu_for(mode, inputs, rl_logp, expert_logp.detach(), expert_mask, demos.scores)
        return mix(expert_loss, rl_loss, mu)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            save_controller(self.gac, folder, expert_draws=self._expert_draws)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        extra = load_controller(self.gac, checkpoint, device=self.accelerator.device)
        self._expert_draws = int(extra["expert_draws"])
        self._window_mu = None

    # -- the mixing weight -----------------------------------------------------

    def _mu_for(
        self,
        mode: str,
        inputs: dict[str, Any],
        rl_logp: torch.Tensor,
        expert_logp: torch.Tensor,
        expert_mask: torch.Tensor,
        expert_scores: torch.Tensor,
    ) -> Any:
        """The weight of this micro-batch's SFT loss; observes and steps in training."""
        if mode != "train":
            return self.gac.mu
        scores = torch.cat([inputs[REWARDS_KEY].to(expert_scores.device), expert_scores])
        logp, mask, adv, expert, ref_logp = _statistics_batch(
            rl_logp,
            _completion_mask(inputs),
            inputs["advantages"],
            inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
            expert_logp,
            expert_mask,
        )
        if self._window_mu is None:
            self._window_mu = self.gac.mu_tensor(logp.device)  # stays on the device: no host read
        self.gac.observe(logp, mask, adv, expert, ref_logp=ref_logp, scores=scores.to(logp.device))
        mu = self._window_mu
        if self.accelerator.sync_gradients:
            stepped = self.gac.step()
            if self.current_gradient_accumulation_steps == 1:
                mu = stepped  # one micro-batch per step: SPEC uses this step's own mu
            self._window_mu = stepped
            for key, value in logged_metrics(self.gac.metrics()).items():
                self._metrics[mode][key].append(value)
        return mu

    # -- expert batches ----------------------------------------------------------

    def _expert_batch(self, mode: str) -> _Demonstrations:
        """Tokenized expert examples: completion ids/mask (right-padded),
        prompt ids/mask (left-padded, as TRL pads its prompts), and the
        reward functions' scores of them when the controller uses them."""
        indices = self._expert_indices()
        if mode == "train":
            self._expert_draws += 1
        examples = [dict(self.expert_dataset[index]) for index in indices]
        prompts, completions = [], []
        processing_class: Any = self.processing_class  # a tokenizer or a processor wrapping one
        for example in examples:
            rendered = maybe_apply_chat_template(example, processing_class)
            prompts.append(rendered["prompt"])
            completions.append(rendered["completion"])
        tokenizer: Any = getattr(processing_class, "tokenizer", processing_class)
        prompt_ids = [tokenizer(text=p, add_special_tokens=False)["input_ids"] for p in prompts]
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        limit = self.max_completion_length
        completion_ids = [(tokenizer(text=c, add_special_tokens=False)["input_ids"] + eos)[:limit] for c in completions]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        device = self.accelerator.device
        prompt_tensor, prompt_mask = _pad(prompt_ids, pad, left=True, device=device)
        completion_tensor, completion_mask = _pad(completion_ids, pad, left=False, device=device)
        config = self.gac.config
        if config.mode == "verified" or config.filter_demos is not None:
            scores = self._score_demonstrations(examples, completion_ids)
        else:
            scores = torch.full((len(examples),), torch.nan, device=device)
        return _Demonstrations(completion_tensor, completion_mask, prompt_tensor, prompt_mask, scores)

    def _score_demonstrations(self, examples: list[dict[str, Any]], completion_ids: list[list[int]]) -> torch.Tensor:
        """The demonstrations' scores from the trainer's own reward functions
        and weights, called as for rollouts: the raw prompt and completion,
        the completion ids, the example's other columns as keyword arguments.
        Every process calls it at the same draw (TRL gathers the scores)."""
        prompts = [example["prompt"] for example in examples]
        completions = [example["completion"] for example in examples]
        rewards_per_func = self._calculate_rewards(examples, prompts, completions, completion_ids)
        scores = self._this_process(self._combined_reward(rewards_per_func), len(examples))
        if self.gac.config.mode == "verified" and bool(scores.isnan().any()):
            row = int(scores.isnan().nonzero()[0, 0])
            raise ValueError(
                f"gac_mode='verified' needs a score for every demonstration, but every reward function returned "
                f"None for the demonstration {prompts[row]!r} -> {completions[row]!r}: make one of "
                f"{self.reward_func_names} score demonstrations (their dataset columns arrive as keyword "
                "arguments), or use gac_mode='paper'"
            )
        return scores

    def _combined_reward(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """Each row's reward as TRL combines its functions' (weighted, None
        skipped); NaN where every function returned None."""
        weights = self.reward_weights.to(rewards_per_func.device)
        combined = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        return combined.masked_fill(rewards_per_func.isnan().all(dim=1), torch.nan)

    def _this_process(self, gathered: torch.Tensor, rows: int) -> torch.Tensor:
        """This process's rows of a tensor TRL gathered from every process."""
        start = self.accelerator.process_index * rows
        return gathered[start : start + rows]

    def _expert_indices(self) -> list[int]:
        """This process's examples for the next draw: a fresh permutation of
        the dataset per epoch (seeded by ``args.seed``), dealt out to the
        processes in turn, so ranks see different examples and a resumed run
        continues with the examples the stopped one would have drawn."""
        n = len(self.expert_dataset)
        size, rank, world = self.expert_batch_size, self.accelerator.process_index, self.accelerator.num_processes
        first = (self._expert_draws * world + rank) * size
        indices = []
        for position in range(first, first + size):
            epoch, offset = divmod(position, n)
            generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + epoch)
            indices.append(int(torch.randperm(n, generator=generator)[offset]))
        return indices


@dataclass(frozen=True)
class _Demonstrations:
    """One draw of expert examples, tokenized, with the verifier's scores (NaN: not scored)."""

    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    scores: torch.Tensor


def _completion_mask(inputs: dict[str, Any]) -> torch.Tensor:
    # TRL excludes tool-output tokens from its loss through tool_mask; so do the statistics.
    mask = inputs["completion_mask"]
    return mask if "tool_mask" not in inputs else mask * inputs["tool_mask"]


def _statistics_batch(
    rl_logp: torch.Tensor,
    rl_mask: torch.Tensor,
    advantages: torch.Tensor,
    ref_logp: torch.Tensor | None,
    expert_logp: torch.Tensor,
    expert_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Rollout rows then expert rows, right-padded to one width with a zero mask.

    Expert rows get advantage 0 and, under ``beta > 0``, their own log-probs
    as reference: neither enters a statistic, which reads advantages and KL
    from RL rows only."""
    width = max(rl_logp.size(1), expert_logp.size(1))

    def widen(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.size(1)))

    logp = torch.cat([widen(rl_logp), widen(expert_logp)])
    mask = torch.cat([widen(rl_mask.to(torch.int64)), widen(expert_mask.to(torch.int64))])
    n_rl, n_expert = rl_logp.size(0), expert_logp.size(0)
    adv_rows = advantages.detach().float()
    if adv_rows.ndim == 1:
        adv = torch.cat([adv_rows, adv_rows.new_zeros(n_expert)])
    else:
        adv = torch.cat([widen(adv_rows), adv_rows.new_zeros(n_expert, width)])
    expert = torch.arange(n_rl + n_expert, device=logp.device) >= n_rl
    ref = None if ref_logp is None else torch.cat([widen(ref_logp.detach()), widen(expert_logp)])
    return logp, mask, adv, expert, ref


def _pad(rows: list[list[int]], pad: int, *, left: bool, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def _check_expert_dataset(dataset: Any) -> None:
    try:
        size = len(dataset)
    except TypeError:
        raise TypeError(
            f"expert_dataset must be a sized dataset of prompt/completion examples, got {type(dataset).__name__}"
        ) from None
    if size == 0:
        raise ValueError("expert_dataset is empty: it must hold at least one prompt/completion example")
    first = dataset[0]
    missing = [key for key in ("prompt", "completion") if key not in first]
    if missing:
        raise ValueError(f"expert_dataset examples must have 'prompt' and 'completion' columns; missing {missing}")


def main(argv: Sequence[str] | None = None) -> GACGRPOTrainer:
    """``python -m gaccore.bindings.trl --config gac.yaml [--field value ...]``: ``trl grpo`` with GAC.

    Parses TRL's GRPO script arguments (``dataset_name`` or a ``datasets``
    mixture for the prompts, ``reward_funcs``, ``reward_model_name_or_path``),
    a ``GACGRPOConfig`` and TRL's ``ModelConfig`` (``model_name_or_path``)
    with ``trl.TrlParser``: YAML first, the command line over it. Reward
    functions are names from ``trl.rewards`` or dotted import paths
    (``my_rewards.say_a``). Trains, saves the model to ``output_dir`` and
    returns the trainer. Unknown settings are an error, not ignored.
    """
    from datasets import load_dataset
    from trl import DatasetMixtureConfig, ModelConfig, TrlParser, get_dataset, get_peft_config
    from trl.scripts.grpo import GRPOScriptArguments

    parser = TrlParser((GRPOScriptArguments, GACGRPOConfig, ModelConfig, DatasetMixtureConfig))
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(argv)
    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required: the policy's hub name or local directory")
    reward_funcs: list[Any] = [script_args.reward_model_name_or_path] if script_args.reward_model_name_or_path else []
    reward_funcs += [_reward_function(name) for name in script_args.reward_funcs or []]
    if not reward_funcs:
        raise ValueError("reward_funcs (or reward_model_name_or_path) is required: GRPO needs a reward")
    if dataset_args.datasets:
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    else:
        raise ValueError("dataset_name (or a datasets mixture) is required: the prompts to train on")

    dtype = model_args.dtype
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": dtype if dtype in ("auto", None) else getattr(torch, dtype),
        **(training_args.model_init_kwargs or {}),
    }
    trainer = GACGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    return trainer


def _reward_function(name: str) -> Any:
    """A reward function from ``trl.rewards`` by name, or from a dotted import path."""
    import importlib

    from trl import rewards

    if hasattr(rewards, name):
        return getattr(rewards, name)
    module, _, attribute = name.rpartition(".")
    if not module:
        raise ValueError(f"reward_funcs: {name!r} is neither in trl.rewards nor a dotted import path (module.function)")
    return getattr(importlib.import_module(module), attribute)


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: the trainer pickles its
    # args into checkpoints, which must name gaccore.bindings.trl.GACGRPOConfig.
    from gaccore.bindings.trl import main as _main

    _main()
