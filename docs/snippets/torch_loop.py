import torch

from gaccore import Controller
from gaccore.bindings.losses import mix, sft_loss

torch.manual_seed(0)
V, T, PROMPTS, G, EXPERTS = 16, 8, 4, 4, 4  # vocab, completion length, prompts, group size, demos
policy = torch.nn.Sequential(torch.nn.Embedding(V, 32), torch.nn.Linear(32, V))  # a bigram LM
optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
ctrl = Controller()


def token_logp(seq):  # log-probability of each token after the first, given the one before
    logits = policy(seq[:, :-1])
    return torch.log_softmax(logits, -1).gather(-1, seq[:, 1:, None]).squeeze(-1)


for step in range(30):
    with torch.no_grad():  # rollouts: G completions per prompt, reward = share of token 7
        seq = torch.randint(V, (PROMPTS, 1)).repeat_interleave(G, 0)
        for _ in range(T):
            seq = torch.cat([seq, torch.multinomial(policy(seq[:, -1]).softmax(-1), 1)], 1)
    reward = (seq[:, 1:] == 7).float().mean(1).view(PROMPTS, G)
    adv = ((reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-4)).flatten()
    demos = torch.cat([torch.randint(V, (EXPERTS, 1)), torch.full((EXPERTS, T), 7)], 1)
    rl_logp, sft_logp = token_logp(seq), token_logp(demos)
    # mu from detached statistics of both kinds of rows: expert=True marks the demonstrations
    all_logp = torch.cat([rl_logp, sft_logp]).detach()
    is_expert = torch.arange(len(all_logp)) >= len(rl_logp)
    mu = ctrl.update(all_logp, torch.ones_like(all_logp), torch.cat([adv, torch.zeros(EXPERTS)]), is_expert)
    ratio = torch.exp(rl_logp - rl_logp.detach())  # on-policy GRPO: ratio 1, gradient adv * grad logp
    rl_loss = -(ratio * adv[:, None]).mean()
    loss = mix(sft_loss(sft_logp, torch.ones_like(sft_logp)), rl_loss, mu)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"after {step + 1} steps: mu={ctrl.mu:.3f} rho={ctrl.rho:.2f} reward={reward.mean():.2f}")
