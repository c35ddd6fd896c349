"""Batches and comparisons shared by the torch-path tests.

Inputs are made in float32 on the host and converted per test, so the numpy
float64 reference sees exactly the values the torch paths see (bfloat16 and
float16 values are exact in float32).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import numpy as np
import torch

import gaccore
from gaccore.batch import TokenBatch
from gaccore.kernels.row_stats import twin
from gaccore.rows import RowResults

# float32 inputs: 1e-5 relative (SPEC §5). Low-precision logp is read exactly
# into fp32 by every path, so the arithmetic, and its tolerance, is the same;
# the looser float16 bound covers phi near p = 1, where float16's coarse logp
# grid leaves few distinct w values and D is a difference of close numbers.
RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 2e-5, torch.float64: 1e-12}
# SPEC §5: absolute 1e-6 for D near 0 and for variances below 1e-6.
ATOL = {
    "var_sft": 1e-6,
    "var_rl": 1e-6,
    "disagreement": 1e-6,
    "kl": 1e-9,
    "expert_success": 1e-12,
    "policy_success": 1e-12,
}
COUNTS = ("n_sft", "n_rl", "n_tokens", "n_nonfinite_rows", "n_demos")


def make_batch(
    rows: int,
    tokens: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    adv_per_token: bool = False,
    adv_offset: float = 0.0,
    mask_dtype: torch.dtype = torch.bool,
    expert: bool = True,
    ref: bool = True,
    mask_rate: float = 0.3,
) -> dict[str, torch.Tensor | None]:
    """A random batch with log-probs near 0, NaN/-inf padding under the mask."""
    gen = torch.Generator().manual_seed(seed)
    logp = -(torch.rand(rows, tokens, generator=gen) ** 3) * 4.0  # many values near 0
    on = torch.rand(rows, tokens, generator=gen) >= mask_rate
    pad = torch.where(torch.rand(rows, tokens, generator=gen) < 0.5, math.nan, -math.inf)
    logp = torch.where(on, logp, pad)
    shape = (rows, tokens) if adv_per_token else (rows,)
    adv = adv_offset + torch.randn(shape, generator=gen)
    if adv_per_token:
        adv = torch.where(on, adv, math.nan)
    batch: dict[str, torch.Tensor | None] = {
        "logp": logp.to(dtype),
        "mask": on.to(mask_dtype),
        "adv": adv,
        "expert": torch.rand(rows, generator=gen) < 0.4 if expert else None,
        "ref_logp": torch.where(on, logp + 0.05 * torch.randn(rows, tokens, generator=gen), math.nan) if ref else None,
    }
    return batch


def numpy_stats(batch: dict[str, torch.Tensor | None], **kwargs) -> gaccore.BatchStats:
    """The float64 numpy reference on exactly the same values."""

    def host(x: torch.Tensor | None) -> np.ndarray | None:
        if x is None:
            return None
        x = x.detach().cpu()
        return (x.float() if x.dtype in (torch.bfloat16, torch.float16) else x).numpy()

    return gaccore.batch_stats(
        host(batch["logp"]),
        host(batch["mask"]),
        host(batch["adv"]),
        host(batch["expert"]),
        ref_logp=host(batch["ref_logp"]),
        **kwargs,
    )


def assert_stats_close(got: gaccore.BatchStats, want: gaccore.BatchStats, rtol: float) -> None:
    """Every proxy within ``rtol`` (plus the SPEC's absolute floor), NaN where
    the reference is NaN, counts exact; the message names the first mismatch."""
    for f in fields(want):
        g, w = getattr(got, f.name), getattr(want, f.name)
        assert isinstance(g, torch.Tensor) and g.ndim == 0, f"{f.name}: expected a 0-d tensor, got {g!r}"
        g = g.item()
        if f.name in COUNTS:
            assert g == w, f"{f.name}: got {g}, want {w}"
        elif math.isnan(w):
            assert math.isnan(g), f"{f.name}: got {g}, want NaN"
        else:
            assert abs(g - w) <= rtol * abs(w) + ATOL[f.name], (
                f"{f.name}: got {g!r}, want {w!r} (rel err {abs(g - w) / max(abs(w), 1e-300):.2e})"
            )


def assert_rows_match_twin(got: RowResults, batch: dict[str, torch.Tensor | None]) -> None:
    """Every field of every row with tokens equals the torch twin's on
    ``batch`` (the extremes of token-less rows are fill values of each path's
    float type), the roles and the NaN of an unscored row or of a batch
    without ref_logp included; the message names the field."""
    want = rows_from(twin, batch)
    rows = want.n_tokens > 0
    for name in RowResults.__dataclass_fields__:
        torch.testing.assert_close(
            getattr(got, name)[rows],
            getattr(want, name)[rows],
            rtol=1e-5,
            atol=1e-6,
            equal_nan=name in ("score", "kl_sum"),  # no row is scored here; no KL without ref_logp
            msg=lambda m, name=name: f"{name}: {m}",
        )


def rows_from(
    implementation: Any, batch: dict[str, torch.Tensor | None], sft_coef: str = "phi", **options: Any
) -> RowResults:
    """``implementation.row_results`` (a module of ``gaccore.kernels.row_stats``) on a batch dict."""
    return implementation.row_results(TokenBatch(**batch), sft_coef, **options)
