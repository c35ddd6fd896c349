# CHORD's `swift rlhf` command with `python -m gaccore.bindings.swift` in front of `rlhf`:
# its --chord_mu_* schedule goes, --gac_* options (every gaccore.Config field) come in
python -m gaccore.bindings.swift rlhf \
    --rlhf_type grpo \
    --model tiny-model --model_type qwen2 --template qwen \
    --dataset prompts.jsonl \
    --external_plugins my_rewards.py --reward_funcs exact_answer \
    --chord_sft_dataset experts.jsonl \
    --chord_sft_per_device_train_batch_size 2 \
    --gac_mode verified --gac_filter_demos 1.0 --gac_cap 0.02 \
    --num_generations 2 --per_device_train_batch_size 4 \
    --max_completion_length 16 --max_steps 2 --save_steps 1 \
    --use_vllm false --check_model false --report_to none \
    --output_dir gac-swift
