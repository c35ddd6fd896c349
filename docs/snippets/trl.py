from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig

from gaccore import Controller
from gaccore.bindings.trl import GACGRPOTrainer

# A tiny local model so this runs anywhere; in practice: AutoModelForCausalLM.from_pretrained(...)
words = ["<pad>", "<eos>", "<unk>", "a", "b", "c", "d"]
backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
model = LlamaForCausalLM(
    LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        pad_token_id=0,
        eos_token_id=1,
    )
)


def reward_a(completions, **kwargs):  # rule-based reward: say "a"
    return [float(c.split().count("a")) for c in completions]


trainer = GACGRPOTrainer(
    model=model,
    processing_class=tokenizer,
    reward_funcs=reward_a,
    train_dataset=Dataset.from_dict({"prompt": ["b c", "c d", "d b", "b d"]}),
    expert_dataset=Dataset.from_dict({"prompt": ["b c", "c d"], "completion": ["a a", "a a a"]}),
    controller=Controller(),  # defaults of the paper; on several GPUs it reduces over the default group
    args=GRPOConfig(
        output_dir="gac-grpo",
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        use_cpu=True,
        report_to=[],
    ),
)
trainer.train()  # logs gac/mu, gac/rho, ...; checkpoints carry gaccore_state.json
print(trainer.gac.metrics()["mu"])
