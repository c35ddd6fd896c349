"""A tiny decoder-only transformer in plain torch (about 100k parameters).

Pre-LayerNorm blocks, learned positions, causal self-attention through
``scaled_dot_product_attention``. Sequences are at most
``PROMPT_LEN + ANSWER_LEN`` tokens, so there is no KV cache: sampling two
answer tokens is two forward passes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .task import ANSWER_LEN, PROMPT_LEN, VOCAB_SIZE


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_attn = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm_attn(x)).split(width, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm_mlp(x))


class TinyTransformer(nn.Module):
    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, width)
        self.position = nn.Parameter(torch.zeros(PROMPT_LEN + ANSWER_LEN, width))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB_SIZE)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L, VOCAB_SIZE]`` for the next token at every position."""
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def answer_logp(self, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """Token log-probabilities ``[B, ANSWER_LEN]`` of ``answers`` after ``prompts``."""
        tokens = torch.cat([prompts, answers], dim=1)
        logits = self(tokens[:, :-1])[:, PROMPT_LEN - 1 :]
        return torch.log_softmax(logits, dim=-1).gather(-1, answers.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def generate(
        self, prompts: torch.Tensor, *, greedy: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Answer tokens ``[B, ANSWER_LEN]``: greedy, or sampled at temperature 1."""
        tokens = prompts
        for _ in range(ANSWER_LEN):
            logits = self(tokens)[:, -1]
            if greedy:
                nxt = logits.argmax(dim=-1)
            else:
                nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
            tokens = torch.cat([tokens, nxt.unsqueeze(-1)], dim=1)
        return tokens[:, PROMPT_LEN:]
