"""The public GAC implementation's statistics path, re-implemented from its description.

The public implementation (deepnovacore/GAC, ``AdaptiveMuController.update_stats``)
is described as: masked means per sequence, a sort-based trimmed variance of the
expert rows' NLL, the RL advantages' variance from moments (count, sum, sum of
squares) that a distributed run would all-reduce, the disagreement of the
z-scored RL and SFT coefficients, everything in fp32 torch ops, with several
``.item()`` calls to bring the numbers to the host, where the mixing weight is
updated in Python floats. This module is written from that description only,
not from its code; it is the baseline that ``bench/test_bench_public_gac.py``
times gaccore against, in the same run.

It multiplies by the mask (``m * x``) as such code usually does, so padding
must be finite: the benchmark pads with zeros for both sides.

Advantages may be one per row [B] or per token [B, T]; per token, a row's
advantage (for the RL variance) is their masked mean, as gaccore defines it,
so the two sides compute the same statistics.
"""

from __future__ import annotations

import math

import torch


class PublicGACController:
    """Per-step statistics and the mu update of the public implementation, in its style."""

    def __init__(
        self,
        *,
        trim: float = 0.1,
        stat_beta: float = 0.9,
        ema_beta: float = 0.99,
        cap: float = 0.01,
        rho: float = 0.5,
        mu: float = 0.85,
        mu_min: float = 0.05,
        mu_max: float = 0.9,
    ) -> None:
        self.trim, self.stat_beta, self.ema_beta, self.cap = trim, stat_beta, ema_beta, cap
        self.rho, self.mu, self.mu_bar = rho, mu, mu
        self.mu_min, self.mu_max = mu_min, mu_max
        self.ema: dict[str, float] = {}

    def update_stats(self, logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, is_expert: torch.Tensor) -> float:
        mask = mask.float()
        logp = logp.float()
        lengths = mask.sum(dim=1).clamp(min=1.0)
        seq_nll = -(logp * mask).sum(dim=1) / lengths  # masked mean per sequence
        expert_rows = is_expert.bool()
        rl_rows = ~expert_rows

        # Trimmed variance of the expert rows' NLL: sort, drop k at each end.
        nll = torch.sort(seq_nll[expert_rows]).values
        n = int(nll.numel())
        k = math.floor(self.trim * n)
        kept = nll[k : n - k]
        var_sft = kept.var().item() if kept.numel() >= 2 else math.nan

        adv = adv.float()
        per_token = adv.ndim == 2
        seq_adv = (adv * mask).sum(dim=1) / lengths if per_token else adv

        # RL advantage variance from moments (what an all-reduce would sum);
        # the count joins them on their device, as it would for the all-reduce.
        rl_adv = seq_adv[rl_rows]
        count = torch.tensor(float(rl_adv.numel()), device=rl_adv.device)
        moments = torch.stack([count, rl_adv.sum(), (rl_adv * rl_adv).sum()])
        count, total, total_sq = moments.tolist()
        var_rl = (total_sq - total * total / count) / (count - 1) if count >= 2 else math.nan

        # Disagreement of the z-scored coefficients over RL tokens.
        token_mask = mask[rl_rows]
        n_tok = token_mask.sum()
        a = adv[rl_rows] if per_token else adv[rl_rows][:, None].expand_as(token_mask)
        p = torch.exp(logp[rl_rows])
        w = p * (1.0 - p)
        mean_a = (a * token_mask).sum() / n_tok
        mean_w = (w * token_mask).sum() / n_tok
        std_a = torch.sqrt((((a - mean_a) ** 2) * token_mask).sum() / n_tok)
        std_w = torch.sqrt((((w - mean_w) ** 2) * token_mask).sum() / n_tok)
        if std_a.item() > 0 and std_w.item() > 0:
            za = (a - mean_a) / std_a
            zw = (w - mean_w) / std_w
            disagreement = ((((za - zw) ** 2) * token_mask).sum() / n_tok).item()
        else:
            disagreement = math.nan
        return self._update_mu(disagreement, var_sft, var_rl)

    def _update_mu(self, disagreement: float, var_sft: float, var_rl: float) -> float:
        for name, value in (("D", disagreement), ("vS", var_sft), ("vR", var_rl)):
            if math.isfinite(value):
                old = self.ema.get(name)
                self.ema[name] = value if old is None else self.stat_beta * old + (1 - self.stat_beta) * value
        if len(self.ema) == 3:
            D, vS, vR = self.ema["D"], self.ema["vS"], self.ema["vR"]
            denominator = D + vS + vR
            if denominator > 0:
                estimate = min(max((self.rho * D + vR) / denominator, 0.0), 1.0)
                self.mu_bar = self.ema_beta * self.mu_bar + (1 - self.ema_beta) * estimate
        shift = min(max(self.mu_bar - self.mu, -self.cap), self.cap)
        self.mu = min(max(self.mu + shift, self.mu_min), self.mu_max)
        return self.mu
