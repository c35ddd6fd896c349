"""The torch twin of the fused kernel: the same row results in plain torch ops.

It is the implementation wherever neither the Triton kernel nor the numba
pass runs (``implementation="auto"`` off CUDA where numba is not installed,
any device but CUDA and CPU, ``implementation="torch"``), and what the
benchmarks compare the kernel with. It follows the
kernel's element-wise numerics (fp32 work on values converted right after
they are read) and reduces in its own way, suited to whole-tensor torch ops:
sums that become means in fp64, second moments about the fp32-rounded row
mean (two passes, never ``sum(x^2) - n mean^2``), the k3 term in fp64.
Semantics are those of the float64 numpy reference ``gaccore.stats``
(SPEC §2): the mask is binarized, masked-out positions never enter
arithmetic (padding may be NaN or -inf), logp is clamped to ``<= 0``.

Every operation has a fixed shape (no boolean indexing, no host reads), so the
twin runs on any device without synchronizing. On CPU it walks the batch in
blocks of rows (``CPU_BLOCK_TOKENS``): allocating and touching batch-sized
temporaries (4 MB each at (256, 4096), fresh pages every call) costs more
than the arithmetic.
"""

from __future__ import annotations

import math

import torch

from gaccore.batch import TokenBatch
from gaccore.rows import RowResults, with_roles
from gaccore.stats import k3

from ..tensors import ROW_DTYPE

# Tokens per block of rows on CPU: large enough that the ~45 torch calls of a
# block cost little next to its arithmetic, small enough that no temporary is
# batch-sized (2^13 to 2^21 timed at (64, 1024) and (256, 4096) on the
# development machine: 2^17 was fastest).
CPU_BLOCK_TOKENS = 1 << 17


def sft_coefficient(logp: torch.Tensor, sft_coef: str) -> torch.Tensor:
    """``w_t``: ``p (1 - p)`` ("phi") or ``1 - p`` ("nll"), with ``1 - p = -expm1(logp)``.

    Both are 0 where ``logp`` is 0, which is what masked-out positions hold here."""
    one_minus_p = torch.expm1(logp).neg_()
    return one_minus_p.mul_(torch.exp(logp)) if sft_coef == "phi" else one_minus_p


def _row_min(off: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Smallest masked-in value of each row (+max float without tokens);
    ``off`` is 1.0 where masked out. Values of valid rows are finite, so
    adding ``off * max`` leaves them exact and lifts the rest out of the way."""
    limit = torch.finfo(values.dtype).max
    if values.shape[1] == 0:  # no tokens at all (T = 0): a shape, not a value
        return values.new_full((values.shape[0],), limit)
    return torch.addcmul(values, off, values.new_full((), limit)).amin(dim=1)


def _row_max(off: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Largest masked-in value of each row (-max float without tokens)."""
    return -_row_min(off, -values)


def _row_sum(values: torch.Tensor) -> torch.Tensor:
    return values.sum(dim=1, dtype=ROW_DTYPE)


def _block_rows(block: TokenBatch[torch.Tensor], sft_coef: str) -> dict[str, torch.Tensor]:
    """Row results of a block of rows, without the roles.

    A row is valid when it has tokens and the fp64 sums of its masked-in
    values are finite: a sum cannot overflow from fp32 values, and NaN or
    inf propagate into it; +inf in logp, which the clamp would hide, shows
    in the row's maximum, taken before the clamp."""
    logp, mask, adv, ref_logp = block.logp, block.mask, block.adv, block.ref_logp
    on = mask if mask.dtype == torch.bool else mask != 0
    # Masks as 0/1 floats multiply faster than torch.where selects; they are
    # used only on values that are finite in valid rows (masked-out logp may
    # be NaN, so the inputs themselves still go through where).
    on_f = on.view(torch.uint8).to(torch.float32)  # bool -> float directly is several times slower
    off_f = 1.0 - on_f
    n_tokens = on.sum(dim=1, dtype=torch.int32).to(ROW_DTYPE)
    count = n_tokens.clamp(min=1.0)
    logp32 = torch.where(on, logp.to(torch.float32), 0.0)
    logp_max = logp32.amax(dim=1) if logp32.shape[1] else torch.zeros_like(n_tokens)
    logp_sum = _row_sum(logp32.clamp_(max=0.0))
    # Every operation on [B] costs a dispatch as a [B, T] one does: the sums
    # that decide validity go into one probe, finite exactly when all are
    # (NaN, and inf of either sign or both, propagate into it).
    finite_probe = logp_sum + logp_max

    weight = sft_coefficient(logp32, sft_coef)  # 0 where masked out
    mean_w = _row_sum(weight) / count
    dev_w = (weight - mean_w.to(torch.float32)[:, None]).mul_(on_f)  # about the fp32-rounded mean
    m2_w = torch.linalg.vecdot(dev_w, dev_w)

    if adv.ndim == 1:
        # One advantage per row: a_t is constant along the row, so its mean
        # and extremes are adv_i and its M2 and co-moment exactly 0. (The
        # extremes of a row without tokens are never read: it is not valid.)
        mean_a = min_a = max_a = adv.to(ROW_DTYPE, copy=True)  # never the caller's tensor: it may change before step()
        finite_probe = finite_probe + mean_a
        m2_a = c_aw = torch.zeros_like(mean_a)
    else:
        adv32 = torch.where(on, adv.to(torch.float32), 0.0)
        adv_sum = _row_sum(adv32)
        finite_probe = finite_probe + adv_sum
        mean_a = adv_sum / count
        dev_a = (adv32 - mean_a.to(torch.float32)[:, None]).mul_(on_f)
        m2_a = torch.linalg.vecdot(dev_a, dev_a)
        c_aw = torch.linalg.vecdot(dev_a, dev_w)
        min_a, max_a = _row_min(off_f, adv32), _row_max(off_f, adv32)

    if ref_logp is None:
        kl_sum = torch.full_like(n_tokens, math.nan)
    else:
        ref32 = torch.where(on, ref_logp.to(torch.float32), 0.0)
        kl_sum = k3((ref32 - logp32).to(ROW_DTYPE)).sum(dim=1)  # 0 where masked out: k3(0) = 0
        finite_probe = finite_probe + _row_sum(ref32)

    fields = {
        "n_tokens": n_tokens,
        "valid": (n_tokens > 0) & torch.isfinite(finite_probe),
        "nll": -logp_sum / count,
        "seq_adv": mean_a,
        "mean_a": mean_a,
        "mean_w": mean_w,
        "m2_a": m2_a,
        "m2_w": m2_w,
        "c_aw": c_aw,
        "min_a": min_a,
        "max_a": max_a,
        "min_w": _row_min(off_f, weight),
        "max_w": weight.amax(dim=1) if weight.shape[1] else torch.zeros_like(n_tokens),  # w >= 0, 0 where masked out
        "kl_sum": kl_sum,
    }
    return {name: value.to(ROW_DTYPE) for name, value in fields.items()}


def rows_per_block(rows: int, tokens: int, device: torch.device) -> int:
    """All rows at once off CPU; on CPU, blocks of about ``CPU_BLOCK_TOKENS`` tokens."""
    if device.type != "cpu":
        return max(rows, 1)
    return max(1, CPU_BLOCK_TOKENS // max(tokens, 1))


def row_results(batch: TokenBatch[torch.Tensor], sft_coef: str) -> RowResults:
    """Row results of one checked batch, without its scores."""
    # Statistics of the inputs, never part of the caller's graph: detached at the boundary.
    ref_logp = None if batch.ref_logp is None else batch.ref_logp.detach()
    detached = TokenBatch(batch.logp.detach(), batch.mask.detach(), batch.adv.detach(), ref_logp=ref_logp)
    step = rows_per_block(batch.rows, batch.tokens, batch.logp.device)
    if step >= batch.rows:  # one block (or no rows at all)
        fields = _block_rows(detached, sft_coef)
    else:
        blocks = [
            _block_rows(detached.row_block(start, start + step), sft_coef) for start in range(0, batch.rows, step)
        ]
        fields = {name: torch.cat([block[name] for block in blocks]) for name in blocks[0]}
    placeholder = fields["valid"]  # rl and sft are set from valid by with_roles
    return with_roles(RowResults(**fields, rl=placeholder, sft=placeholder), batch.expert)
