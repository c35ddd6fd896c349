"""The torch twin of the fused kernel: the same row results in plain torch ops.

It is the one reference that tests and benchmarks compare the Triton kernel
with, and the statistics path on devices without Triton (``backend="auto"``
on CPU). Row results are computed in float64 from the inputs as given, with
the same semantics as the float64 numpy reference ``gaccore.stats`` (SPEC
§2): the mask is binarized, masked-out positions never enter arithmetic
(padding may be NaN or -inf), logp is clamped to ``<= 0``.
"""

from __future__ import annotations

import math

import torch

from gaccore.kernels.rows import ROW_DTYPE, RowResults, check_inputs, with_roles

# Below this |x| the k3 term expm1(x) - x is evaluated by its series, as in
# gaccore.stats (float64 has the headroom; the fp32 kernel uses a wider band).
K3_SERIES_BELOW = 1e-3


def k3(x: torch.Tensor) -> torch.Tensor:
    """The k3 KL term ``exp(x) - x - 1`` as ``expm1(x) - x``, by its series
    for tiny ``|x|`` where the subtraction would cancel."""
    series = 0.5 * x * x * (1 + x / 3 * (1 + x / 4 * (1 + x / 5 * (1 + x / 6))))
    return torch.where(x.abs() < K3_SERIES_BELOW, series, torch.expm1(x) - x)


def sft_coefficient(logp: torch.Tensor, sft_coef: str) -> torch.Tensor:
    """``w_t``: ``p (1 - p)`` ("phi") or ``1 - p`` ("nll"), with ``1 - p = -expm1(logp)``."""
    one_minus_p = -torch.expm1(logp)
    return torch.exp(logp) * one_minus_p if sft_coef == "phi" else one_minus_p


def _row_moments(
    on: torch.Tensor, values: torch.Tensor, count: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked mean, deviations from it (0 where masked out) and their sum of squares, per row."""
    mean = torch.where(on, values, 0.0).sum(dim=1) / count
    dev = torch.where(on, values - mean[:, None], 0.0)
    return mean, dev, (dev * dev).sum(dim=1)


def _row_extreme(on: torch.Tensor, values: torch.Tensor, *, largest: bool) -> torch.Tensor:
    limit = torch.finfo(ROW_DTYPE).max
    fill = -limit if largest else limit
    masked = torch.where(on, values, fill)
    if masked.shape[1] == 0:  # no tokens at all (T = 0): a shape, not a value
        return masked.new_full((masked.shape[0],), fill)
    return masked.amax(dim=1) if largest else masked.amin(dim=1)


@torch.no_grad()  # statistics of the inputs, never part of the caller's graph
def row_results(
    logp: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    expert: torch.Tensor | None = None,
    *,
    ref_logp: torch.Tensor | None = None,
    sft_coef: str = "phi",
) -> RowResults:
    """Row results of one batch in float64 torch ops (inputs validated)."""
    check_inputs(logp, mask, adv, expert, ref_logp, sft_coef)
    on = mask != 0
    logp64 = logp.to(ROW_DTYPE)
    finite = torch.isfinite(logp64)
    if ref_logp is not None:
        finite &= torch.isfinite(ref_logp)
    n_tokens = on.sum(dim=1).to(ROW_DTYPE)
    valid = (n_tokens > 0) & (finite | ~on).all(dim=1)
    count = n_tokens.clamp(min=1)

    clamped = torch.where(on, logp64.clamp(max=0.0), 0.0)
    weight = torch.where(on, sft_coefficient(clamped, sft_coef), 0.0)
    mean_w, dev_w, m2_w = _row_moments(on, weight, count)
    if adv.ndim == 1:
        # One advantage per row: a_t is constant along the row, so its mean
        # is adv_i and its M2 and co-moment are exactly 0.
        mean_a = adv.to(ROW_DTYPE)
        valid &= torch.isfinite(mean_a)
        m2_a = c_aw = torch.zeros_like(mean_a)
        limit = torch.finfo(ROW_DTYPE).max
        min_a = torch.where(n_tokens > 0, mean_a, limit)
        max_a = torch.where(n_tokens > 0, mean_a, -limit)
    else:
        token_adv = adv.to(ROW_DTYPE)
        valid &= (torch.isfinite(token_adv) | ~on).all(dim=1)
        mean_a, dev_a, m2_a = _row_moments(on, token_adv, count)
        c_aw = (dev_a * dev_w).sum(dim=1)
        min_a = _row_extreme(on, token_adv, largest=False)
        max_a = _row_extreme(on, token_adv, largest=True)
    if ref_logp is None:
        kl_sum = torch.full_like(n_tokens, math.nan)
    else:
        kl_sum = torch.where(on, k3(ref_logp.to(ROW_DTYPE) - clamped), 0.0).sum(dim=1)

    rows = RowResults(
        n_tokens=n_tokens,
        valid=valid.to(ROW_DTYPE),
        rl=valid.to(ROW_DTYPE),
        sft=valid.to(ROW_DTYPE),
        nll=-clamped.sum(dim=1) / count,
        seq_adv=mean_a,
        mean_a=mean_a,
        mean_w=mean_w,
        m2_a=m2_a,
        m2_w=m2_w,
        c_aw=c_aw,
        min_a=min_a,
        max_a=max_a,
        min_w=_row_extreme(on, weight, largest=False),
        max_w=_row_extreme(on, weight, largest=True),
        kl_sum=kl_sum,
    )
    return with_roles(rows, expert)
