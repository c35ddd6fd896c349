"""The losses a torch loop needs around ``gaccore.Controller``.

``sft_loss`` is the expert (SFT) term of the hybrid loss with CHORD's token
weighting, and ``mix`` forms ``mu * L_SFT + (1 - mu) * L_RL``. The weighting
matches the controller's ``sft_coef``: the disagreement proxy (Eq. 10)
compares the RL coefficients with exactly the SFT gradient coefficient this
loss produces, so use the same setting for both.
"""

from __future__ import annotations

import numbers
from typing import get_args, get_type_hints

import torch

from gaccore import Config

__all__ = ["SFT_COEFS", "mix", "sft_loss", "sft_token_loss"]

# The token weightings, as the controller's Config.sft_coef names them.
SFT_COEFS: tuple[str, ...] = get_args(get_type_hints(Config)["sft_coef"])


def sft_token_loss(logp: torch.Tensor, mask: torch.Tensor, *, sft_coef: str = "phi") -> torch.Tensor:
    """Per-token SFT loss ``[B, T]``: ``-w_t logp_t`` on masked-in tokens, 0 elsewhere.

    ``w_t = phi(p_t) = p_t (1 - p_t)``, ``p_t = exp(logp_t)``, detached, for
    ``sft_coef="phi"`` (CHORD: confident and hopeless tokens both push less);
    ``w_t = 1`` for ``"nll"`` (plain negative log-likelihood). For trainers
    that aggregate token losses themselves (verl's ``agg_loss``).
    Masked-out positions are never used in arithmetic, so padding may hold
    anything, NaN and -inf included.
    """
    if sft_coef not in SFT_COEFS:
        raise ValueError(f"sft_coef must be one of {SFT_COEFS}, got {sft_coef!r}")
    if not isinstance(logp, torch.Tensor) or not logp.dtype.is_floating_point:
        raise TypeError(f"logp must be a floating-point torch.Tensor, got {_describe(logp)}")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {_describe(mask)}")
    if logp.ndim != 2:
        raise ValueError(f"logp must have shape [B, T], got {list(logp.shape)}")
    if mask.shape != logp.shape:
        raise ValueError(f"mask must have the shape of logp [B, T] = {list(logp.shape)}, got {list(mask.shape)}")
    tokens = mask.to(device=logp.device) != 0
    # Clamp like the statistics do: low precision can round logp above 0.
    safe_logp = torch.where(tokens, logp.clamp(max=0.0), torch.zeros((), dtype=logp.dtype, device=logp.device))
    if sft_coef == "phi":
        prob = safe_logp.detach().exp()
        weight = torch.where(tokens, prob * (1.0 - prob), torch.zeros_like(prob))
    else:
        weight = tokens.to(logp.dtype)
    return -weight * safe_logp


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, *, sft_coef: str = "phi") -> torch.Tensor:
    """Token-mean SFT loss on expert tokens, CHORD-weighted by default.

    ``logp`` ``[B, T]`` holds the policy's log-probabilities of the expert
    tokens (with gradient), ``mask`` ``[B, T]`` marks them (nonzero = token).
    The loss is the mean of ``sft_token_loss`` over all masked-in tokens of
    the batch (0 when there are none).
    """
    per_token = sft_token_loss(logp, mask, sft_coef=sft_coef)
    count = (mask.to(device=logp.device) != 0).sum().clamp(min=1).to(logp.dtype)
    return per_token.sum() / count


def mix(loss_sft: torch.Tensor, loss_rl: torch.Tensor, mu: float | torch.Tensor) -> torch.Tensor:
    """``mu * loss_sft + (1 - mu) * loss_rl``, with no gradient through ``mu``.

    ``mu`` is the controller's output: a Python float, or the 0-d tensor that
    ``Controller.update``/``step`` return for torch inputs (it is used on the
    losses' device without a host read). A Python ``mu`` must lie in [0, 1].
    """
    for name, loss in (("loss_sft", loss_sft), ("loss_rl", loss_rl)):
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise ValueError(f"{name} must be a 0-d torch.Tensor (a reduced loss), got {_describe(loss)}")
    if isinstance(mu, torch.Tensor):
        if mu.ndim != 0:
            raise ValueError(f"mu must be a number or a 0-d tensor, got shape {list(mu.shape)}")
        weight = mu.detach().to(device=loss_rl.device, dtype=loss_rl.dtype)
    elif isinstance(mu, numbers.Real) and not isinstance(mu, bool) and 0.0 <= float(mu) <= 1.0:
        weight = float(mu)
    else:
        raise ValueError(f"mu must be a number in [0, 1] or a 0-d tensor, got {mu!r}")
    return weight * loss_sft + (1 - weight) * loss_rl


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return type(value).__name__
