# Continuing: verified mode. The reward functions also score each draw of demonstrations,
# called as on rollouts, with the expert dataset's other columns as keyword arguments:
# a column both datasets share (here "answer") is how a reward function finds its item.
def correct(completions, answer, **kwargs):  # a verifier: 1.0 right, 0.0 wrong (scores in [0, 1])
    return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]


verified = GACGRPOTrainer(
    model=model,
    processing_class=tokenizer,
    reward_funcs=correct,
    train_dataset=Dataset.from_dict({"prompt": ["b c", "c d", "d b", "b d"], "answer": ["a", "b", "c", "d"]}),
    expert_dataset=Dataset.from_dict({"prompt": ["b c", "c d"], "completion": ["a", "c"], "answer": ["a", "b"]}),
    controller=Controller(mode="verified", filter_demos=1.0),  # rho from the two success rates; keep exact matches
    expert_batch_size=2,  # demonstrations per micro-batch and process (default: one per prompt)
    args=GRPOConfig(
        output_dir="gac-verified",
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        use_cpu=True,
        report_to=[],
    ),
)
verified.train()  # logs gac/batch_expert_success (here 0.5: "c d" -> "c" is wrong), gac/demos_kept, ...
print(verified.gac.metrics()["batch_expert_success"])
