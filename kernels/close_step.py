"""The closing step of an optimizer step in one Triton program: finalize + advance.

``gaccore.controller.close_step`` (``gaccore.rows.finalize`` of the step's
row results, then ``gaccore.controller.advance``) is written once for numpy
and torch alike, as some 300 element-wise operations on 0-d tensors. On a
GPU each of those is a kernel launch of a few microseconds of host time, so
the eager update spent milliseconds on the host for a few hundred flops.
``kernel_close_step`` does the same arithmetic in one program: it reads the
row results (roles, verifier scores and the demonstration filter included),
the controller's state and the step's observations, and writes the new
state, the step's ``BatchStats`` and so ``mu``, all in float64, and ``mu``
once more as the float32 that ``update`` returns, with no host read. Only
``torch.empty`` for its three outputs and the views of them that become the
state's 0-d fields run on the host.

Layout. The state's 16 floats come first in ``out`` (``STATE_FLOATS``), the
batch's 11 fields after them (``BATCH_FIELDS``, counts as float64 like the
plain path's placed batch); the 7 flags go to ``out_flags`` (bool: Triton
reads and writes a bool pointer as bytes); ``mu`` as float32 goes to
``out_mu``. The state's fields and the batch's are 0-d views of the first
two buffers. ``CloseStepKernel`` remembers
the buffers of the state it returned, so the next step reads that state
where it was written instead of stacking 23 scalars first.

Variants. The config's numbers, its mode, ``per_mean`` and the filter, and
the step's layout (rows or none, where each observation comes from,
``BLOCK_B``) are constexprs: Triton compiles the kernel once for each
combination a run meets, on its first step of that layout (a few seconds
on a GPU host), much as the statistics kernel compiles once per class of T.
Host numbers (a ``kl`` passed as a float, the prior of the step) are
float64 arguments, so a new value compiles nothing and copies nothing to
the device; a CUDA graph, which freezes arguments, passes them as 0-d
tensors instead (``*_FROM``, ``gaccore.kernels.graphs``).

The same numbers as the plain path. Every operation of ``finalize`` and
``advance`` appears here in the same order on the same float64 values, with
float64 constants (``tl.full``, never a Python float that Triton could
round to fp32) and no contraction of a product and a sum into an fma, so
each element-wise result is bit for bit the plain path's (``** 0.5`` is a
correctly rounded square root in both; ``mu_star``'s ``- cov`` with
``cov = 0`` is left out, as subtracting 0.0 changes no float64). Only the
sums over rows run in another order (a tree, not torch's), which moves the
last bits of a statistic; the tests hold the kernel to the plain path
exactly where no sum has more than two terms. Where ``advance`` tells ``None`` from a non-finite
value, so does the kernel, and where they are provably the same they share
one code path: a prior of ``None`` blends like a NaN prior, and a reward of
``None`` folds like a NaN one (a non-finite value leaves its EMA and flag
as they are); a ``kl`` of ``None`` is not a NaN ``kl`` on a step without
statistics (folding a NaN still clips ``kl_drift_area``), so ``KL_FROM``
keeps the three cases apart. The new ``mu`` is also stored as float32
(``out_mu``): the value ``update`` returns, rounded to nearest as torch's
cast rounds it, with no cast launched after the kernel. Comparisons propagate NaN as torch does:
``_clip`` keeps NaN, ``_masked_min``/``_masked_max`` return NaN when a
selected value is NaN (``torch.amin``), and the trimmed variance sorts NaN
after +inf (``torch.sort``).

The trimmed variance (Eq. 9, ``gaccore.rows.trimmed_variance``) keeps the
sorted positions [k, n - k) of the SFT rows' ``nll`` with every other row
padded to +inf. Here each row's position in that stable sort is its rank:
the rows whose value sorts before it, ties broken by index, counted by
comparing it with every other row, ``CHUNK_B`` rows at a time. That is
B^2 comparisons in one program, which is why ``MAX_ROWS`` bounds B: above
it ``CloseStepKernel`` returns ``None`` and the controller runs the plain
``close_step``. ``BLOCK_B`` is B rounded up to a power of two. Compiled for
sm_90 (ptxas, no GPU needed) the kernel spills no register up to 4096 rows
at 8 warps (1024 rows at 4 warps spill a little, hence 8 warps above 512);
the bound of 2048 rows is set by the comparisons instead, 4M of them on one
SM, which should stay some tens of microseconds, below the multi-op path's
host time. Chosen without a GPU to time it on: bench/gpu.py times the
eager update.
"""

from __future__ import annotations

import functools
import math
from dataclasses import fields
from typing import Any

import torch
import triton
import triton.language as tl

from gaccore._array import FLOAT_MAX
from gaccore.config import Config
from gaccore.controller import _MIN_FAILURE_RATE, ControllerState
from gaccore.kernels.fused import _is_finite, _nan
from gaccore.rows import BatchStats, RowResults

# The kernel addresses values by these positions: they must follow the dataclasses.
STATE_FLOATS = (
    "mu",
    "mu_bar",
    "rho",
    "ema_disagreement",
    "ema_var_sft",
    "ema_var_rl",
    "ema_kl",
    "ema_expert_reward",
    "ema_policy_reward",
    "estimate",
    "n_large_shifts",
    "kl_drift_area",
    "n_skipped_disagreement",
    "n_skipped_var_sft",
    "n_skipped_var_rl",
    "n_dropped",
)
STATE_FLAGS = (
    "has_disagreement",
    "has_var_sft",
    "has_var_rl",
    "has_kl",
    "has_expert_reward",
    "has_policy_reward",
    "has_estimate",
)
# The kernel's row arguments, in the order of its signature.
ROW_FIELDS = (
    "n_tokens",
    "valid",
    "rl",
    "sft",
    "nll",
    "seq_adv",
    "mean_a",
    "mean_w",
    "m2_a",
    "m2_w",
    "c_aw",
    "min_a",
    "max_a",
    "min_w",
    "max_w",
    "kl_sum",
    "demo",
    "score",
)
BATCH_FIELDS = (
    "var_sft",
    "var_rl",
    "disagreement",
    "kl",
    "n_sft",
    "n_rl",
    "n_tokens",
    "n_dropped",
    "expert_reward",
    "policy_reward",
    "n_demos",
)
_STATE_NAMES = tuple(f.name for f in fields(ControllerState))
if (
    tuple(n for n in _STATE_NAMES if not ControllerState.is_flag(n)) != STATE_FLOATS
    or tuple(n for n in _STATE_NAMES if ControllerState.is_flag(n)) != STATE_FLAGS
    or tuple(f.name for f in fields(BatchStats)) != BATCH_FIELDS
    or tuple(f.name for f in fields(RowResults)) != ROW_FIELDS
):
    raise ImportError("kernels/close_step.py: the kernel's layout no longer follows its dataclasses")

# Row counts above this take the plain close_step (see the module docstring).
MAX_ROWS = 2048
# Rank comparisons of one loop iteration: BLOCK_B x CHUNK_B pairs at most.
RANK_TILE = 8192

# Where an observation comes from (the kernel's *_FROM constexprs).
FROM_NONE = tl.constexpr(0)
FROM_HOST = tl.constexpr(1)
FROM_TENSOR = tl.constexpr(2)

INF = tl.constexpr(float("inf"))
F64_MAX = tl.constexpr(FLOAT_MAX)
MIN_FAILURE_RATE = tl.constexpr(_MIN_FAILURE_RATE)


@triton.jit
def _f64(x):
    """``x`` as a float64 scalar: a Python float's every digit, a tensor converted."""
    return tl.full([], x, tl.float64)


@triton.jit
def _clip(x, lo, hi):
    """``torch.clamp(x, lo, hi)``: NaN stays NaN."""
    return tl.where(x < lo, lo, tl.where(x > hi, hi, x))


@triton.jit
def _at_least_one(x):
    return tl.where(x >= 1.0, x, 1.0)


@triton.jit
def _count(m):
    return tl.sum(m.to(tl.int32)).to(tl.float64)


@triton.jit
def _masked_sum(m, x):
    return tl.sum(tl.where(m, x, 0.0))


@triton.jit
def _masked_min(m, x):
    """min of the selected values: +inf when none is, NaN when one is NaN (``torch.amin``)."""
    b_lo = tl.min(tl.where(m & (x == x), x, INF))
    return tl.where(tl.max((m & (x != x)).to(tl.int32)) > 0, _nan(), b_lo)


@triton.jit
def _masked_max(m, x):
    """max of the selected values: -inf when none is, NaN when one is NaN (``torch.amax``)."""
    b_hi = tl.max(tl.where(m & (x == x), x, -INF))
    return tl.where(tl.max((m & (x != x)).to(tl.int32)) > 0, _nan(), b_hi)


@triton.jit
def _masked_mean(m, x):
    """Mean of the selected values; NaN when none is selected."""
    b_n = _count(m)
    return tl.where(b_n > 0.0, _masked_sum(m, x) / _at_least_one(b_n), _nan())


@triton.jit
def _sft_rows(p_sft, p_demo, p_score, o_b, m_b, FILTER: tl.constexpr, FILTER_AT: tl.constexpr):
    """The SFT rows, less the demonstrations the filter drops (``gaccore.rows.kept_demos``)."""
    m_sft = m_b & (tl.load(p_sft + o_b, mask=m_b, other=0.0) != 0.0)
    if FILTER:
        m_demo = tl.load(p_demo + o_b, mask=m_b, other=0.0) != 0.0
        b_score = tl.load(p_score + o_b, mask=m_b, other=0.0)
        m_sft = m_sft & (~(b_score < _f64(FILTER_AT)) | ~m_demo)
    return m_sft


@triton.jit
def _fold(ema, has, value, beta):
    """``gaccore.controller._fold``: a finite value into an EMA (the first one initializes it).
    Returns the new EMA, its flag, and whether the value was finite."""
    m_finite = _is_finite(value)
    value = tl.where(m_finite, value, 0.0)
    folded = _clip(tl.where(has, beta * ema + (1.0 - beta) * value, value), -_f64(F64_MAX), _f64(F64_MAX))
    return tl.where(m_finite, folded, ema), has | m_finite, m_finite


@triton.jit
def _observation(p_value, host_value, FROM: tl.constexpr):
    """A step's observation: read from a tensor, a host value, or none (NaN)."""
    if FROM == FROM_TENSOR:
        value = tl.load(p_value).to(tl.float64)
    elif FROM == FROM_HOST:
        value = _f64(host_value)
    else:
        value = _nan()
    return value


@triton.jit(do_not_specialize=["n_rows"])
def _close_step_kernel(
    # the row results, one float64 [n_rows] array each (ROW_FIELDS)
    p_n_tokens,
    p_valid,
    p_rl,
    p_sft,
    p_nll,
    p_seq_adv,
    p_mean_a,
    p_mean_w,
    p_m2_a,
    p_m2_w,
    p_c_aw,
    p_min_a,
    p_max_a,
    p_min_w,
    p_max_w,
    p_kl_sum,
    p_demo,
    p_score,
    n_rows,
    # the state (STATE_FLOATS float64, STATE_FLAGS bool)
    p_state,
    p_flags,
    # the observations: the tensor read where *_FROM is FROM_TENSOR, the value where FROM_HOST
    p_kl,
    kl_value: tl.float64,
    p_expert_reward,
    expert_reward_value: tl.float64,
    p_policy_reward,
    policy_reward_value: tl.float64,
    p_prior,
    prior_value: tl.float64,  # a non-finite prior: no blend
    p_out,
    p_out_flags,
    p_out_mu,
    HAS_ROWS: tl.constexpr,
    KL_FROM: tl.constexpr,
    EXPERT_REWARD_FROM: tl.constexpr,
    POLICY_REWARD_FROM: tl.constexpr,
    PRIOR_FROM: tl.constexpr,
    MODE_VERIFIED: tl.constexpr,
    PER_MEAN: tl.constexpr,
    FILTER: tl.constexpr,
    FILTER_AT: tl.constexpr,
    TRIM: tl.constexpr,
    STAT_BETA: tl.constexpr,
    KL_BETA: tl.constexpr,
    EMA_BETA: tl.constexpr,
    KL_TARGET: tl.constexpr,
    KL_HIGH: tl.constexpr,
    KL_LOW: tl.constexpr,
    ETA_UP: tl.constexpr,
    ETA_DOWN: tl.constexpr,
    RHO_MIN: tl.constexpr,
    RHO_MAX: tl.constexpr,
    MU_MIN: tl.constexpr,
    MU_MAX: tl.constexpr,
    CAP: tl.constexpr,
    BLEND: tl.constexpr,
    LARGE_SHIFT: tl.constexpr,
    K_D: tl.constexpr,
    K_S: tl.constexpr,
    K_R: tl.constexpr,
    BLOCK_B: tl.constexpr,
    CHUNK_B: tl.constexpr,
):
    """One program: finalize (SPEC §2) when ``HAS_ROWS``, then advance (SPEC §3, steps 1-7)."""
    stat_beta = _f64(STAT_BETA)
    f64_max = _f64(F64_MAX)
    mu = tl.load(p_state + 0)
    mu_bar = tl.load(p_state + 1)
    rho = tl.load(p_state + 2)
    ema_d = tl.load(p_state + 3)
    ema_s = tl.load(p_state + 4)
    ema_r = tl.load(p_state + 5)
    ema_kl = tl.load(p_state + 6)
    ema_er = tl.load(p_state + 7)
    ema_pr = tl.load(p_state + 8)
    estimate_prev = tl.load(p_state + 9)
    n_large_shifts = tl.load(p_state + 10)
    kl_drift_area = tl.load(p_state + 11)
    n_skipped_d = tl.load(p_state + 12)
    n_skipped_s = tl.load(p_state + 13)
    n_skipped_r = tl.load(p_state + 14)
    n_dropped = tl.load(p_state + 15)
    has_d = tl.load(p_flags + 0) != 0
    has_s = tl.load(p_flags + 1) != 0
    has_r = tl.load(p_flags + 2) != 0
    has_kl = tl.load(p_flags + 3) != 0
    has_er = tl.load(p_flags + 4) != 0
    has_pr = tl.load(p_flags + 5) != 0
    has_estimate = tl.load(p_flags + 6) != 0

    kl = _observation(p_kl, kl_value, KL_FROM)
    expert_reward = _observation(p_expert_reward, expert_reward_value, EXPERT_REWARD_FROM)
    policy_reward = _observation(p_policy_reward, policy_reward_value, POLICY_REWARD_FROM)

    if HAS_ROWS:
        # -- finalize (gaccore.rows._finalize) ------------------------------------
        o_b = tl.arange(0, BLOCK_B)
        m_b = o_b < n_rows
        m_rl = m_b & (tl.load(p_rl + o_b, mask=m_b, other=0.0) != 0.0)
        m_demo = m_b & (tl.load(p_demo + o_b, mask=m_b, other=0.0) != 0.0)
        m_sft = _sft_rows(p_sft, p_demo, p_score, o_b, m_b, FILTER, FILTER_AT)
        b_n_rl = _count(m_rl)
        b_n_sft = _count(m_sft)

        # Eq. 8: ddof=1 variance of the sequence advantages of RL rows.
        b_seq = tl.load(p_seq_adv + o_b, mask=m_b, other=0.0)
        b_seq_mean = _masked_sum(m_rl, b_seq) / _at_least_one(b_n_rl)
        b_seq_dev = b_seq - b_seq_mean
        b_seq_m2 = _masked_sum(m_rl, b_seq_dev * b_seq_dev)
        var_rl = tl.where(b_n_rl >= 2.0, b_seq_m2 / _at_least_one(b_n_rl - 1.0), _nan())

        # Eq. 10: token moments of the RL rows merged across rows (Chan).
        b_n = tl.where(m_rl, tl.load(p_n_tokens + o_b, mask=m_b, other=0.0), 0.0)
        b_n_tokens = tl.sum(b_n)
        b_total = _at_least_one(b_n_tokens)
        b_row_ma = tl.load(p_mean_a + o_b, mask=m_b, other=0.0)
        b_row_mw = tl.load(p_mean_w + o_b, mask=m_b, other=0.0)
        b_mean_a = _masked_sum(m_rl, b_n * b_row_ma) / b_total
        b_mean_w = _masked_sum(m_rl, b_n * b_row_mw) / b_total
        b_dev_a = b_row_ma - b_mean_a
        b_dev_w = b_row_mw - b_mean_w
        b_m2_a = _masked_sum(m_rl, tl.load(p_m2_a + o_b, mask=m_b, other=0.0) + b_n * b_dev_a * b_dev_a)
        b_m2_w = _masked_sum(m_rl, tl.load(p_m2_w + o_b, mask=m_b, other=0.0) + b_n * b_dev_w * b_dev_w)
        b_c_aw = _masked_sum(m_rl, tl.load(p_c_aw + o_b, mask=m_b, other=0.0) + b_n * b_dev_a * b_dev_w)
        # A coefficient whose values are all equal has no z-score.
        m_degenerate = (
            _masked_min(m_rl, tl.load(p_min_a + o_b, mask=m_b, other=0.0))
            == _masked_max(m_rl, tl.load(p_max_a + o_b, mask=m_b, other=0.0))
        ) | (
            _masked_min(m_rl, tl.load(p_min_w + o_b, mask=m_b, other=0.0))
            == _masked_max(m_rl, tl.load(p_max_w + o_b, mask=m_b, other=0.0))
        )
        m_defined = (b_n_tokens >= 2.0) & ~m_degenerate & (b_m2_a > 0.0) & (b_m2_w > 0.0)
        b_pearson = b_c_aw / tl.sqrt(tl.where(m_defined, b_m2_a * b_m2_w, 1.0))
        disagreement = tl.where(m_defined, _clip(2.0 * (1.0 - b_pearson), 0.0, 4.0), _nan())

        b_kl = tl.where(
            b_n_tokens > 0.0, _masked_sum(m_rl, tl.load(p_kl_sum + o_b, mask=m_b, other=0.0)) / b_total, _nan()
        )
        b_valid = tl.load(p_valid + o_b, mask=m_b, other=0.0)
        b_n_dropped = _count(m_b & (tl.load(p_n_tokens + o_b, mask=m_b, other=0.0) > 0.0) & (b_valid == 0.0))
        b_score = tl.load(p_score + o_b, mask=m_b, other=0.0)
        m_scored = tl.abs(b_score) < INF  # false for NaN and inf: not scored
        b_expert_reward = _masked_mean(m_demo & m_scored, b_score)
        b_policy_reward = _masked_mean(m_rl & m_scored, b_score)

        # Eq. 9: sorted positions [k, n - k) of the SFT values, the other rows
        # +inf and NaN after +inf (torch.sort); a row's position is its rank.
        b_nll = tl.where(m_sft, tl.load(p_nll + o_b, mask=m_b, other=0.0), INF)
        m_nan = b_nll != b_nll
        b_rank = tl.zeros([BLOCK_B], tl.int32)
        for j0 in range(0, n_rows, CHUNK_B):
            o_j = j0 + tl.arange(0, CHUNK_B)
            m_j = o_j < n_rows
            b_nll_j = tl.where(
                _sft_rows(p_sft, p_demo, p_score, o_j, m_j, FILTER, FILTER_AT),
                tl.load(p_nll + o_j, mask=m_j, other=0.0),
                INF,
            )
            b_vi = b_nll[:, None]
            b_vj = b_nll_j[None, :]
            m_nan_i = m_nan[:, None]
            m_nan_j = b_vj != b_vj
            m_less = (b_vj < b_vi) | (m_nan_i & ~m_nan_j)
            m_tie = (b_vj == b_vi) | (m_nan_i & m_nan_j)
            m_before = m_j[None, :] & (m_less | (m_tie & (o_j[None, :] < o_b[:, None])))
            b_rank += tl.sum(m_before.to(tl.int32), axis=1)
        b_position = b_rank.to(tl.float64)
        b_k = tl.floor(_f64(TRIM) * b_n_sft)
        m_kept = m_b & (b_position >= b_k) & (b_position < b_n_sft - b_k)
        b_count = b_n_sft - 2.0 * b_k
        b_trim_mean = _masked_sum(m_kept, b_nll) / _at_least_one(b_count)
        b_trim_dev = b_nll - b_trim_mean
        b_trim_m2 = _masked_sum(m_kept, b_trim_dev * b_trim_dev)
        var_sft = tl.where(b_count >= 2.0, b_trim_m2 / _at_least_one(b_count - 1.0), _nan())

        b_n_tokens_int = b_n_tokens.to(tl.int64).to(tl.float64)  # BatchStats.n_tokens is an integer count
        tl.store(p_out + 16, var_sft)
        tl.store(p_out + 17, var_rl)
        tl.store(p_out + 18, disagreement)
        tl.store(p_out + 19, b_kl)
        tl.store(p_out + 20, b_n_sft)
        tl.store(p_out + 21, b_n_rl)
        tl.store(p_out + 22, b_n_tokens_int)
        tl.store(p_out + 23, b_n_dropped)
        tl.store(p_out + 24, b_expert_reward)
        tl.store(p_out + 25, b_policy_reward)
        tl.store(p_out + 26, _count(m_demo))

        # -- advance, step 1: the proxies into their EMAs ---------------------
        if PER_MEAN:
            var_sft = var_sft / b_n_sft
            var_rl = var_rl / b_n_rl
        ema_d, has_d, m_finite = _fold(ema_d, has_d, disagreement, stat_beta)
        n_skipped_d = n_skipped_d + tl.where(m_finite, 0.0, 1.0)
        ema_s, has_s, m_finite = _fold(ema_s, has_s, var_sft, stat_beta)
        n_skipped_s = n_skipped_s + tl.where(m_finite, 0.0, 1.0)
        ema_r, has_r, m_finite = _fold(ema_r, has_r, var_rl, stat_beta)
        n_skipped_r = n_skipped_r + tl.where(m_finite, 0.0, 1.0)
        n_dropped = _clip(n_dropped + b_n_dropped, 0.0, f64_max)
        # The caller's observations where finite, else the batch's.
        kl = tl.where(_is_finite(kl), kl, b_kl)
        expert_reward = tl.where(_is_finite(expert_reward), expert_reward, b_expert_reward)
        policy_reward = tl.where(_is_finite(policy_reward), policy_reward, b_policy_reward)

    # 2. KL-controlled rho (Eq. 11/16), when there is an observation to fold.
    if HAS_ROWS or KL_FROM != FROM_NONE:
        ema_kl, has_kl, m_observed = _fold(ema_kl, has_kl, kl, _f64(KL_BETA))
        b_excess = _clip(tl.where(m_observed, kl, 0.0) - _f64(KL_TARGET), 0.0, f64_max)
        m_high = m_observed & (ema_kl > _f64(KL_HIGH))
        m_low = m_observed & (ema_kl < _f64(KL_LOW))
        b_raised = rho + _f64(ETA_UP) * (_f64(RHO_MAX) - rho)
        b_lowered = rho - _f64(ETA_DOWN) * (rho - _f64(RHO_MIN))
        rho = _clip(tl.where(m_high, b_raised, tl.where(m_low, b_lowered, rho)), _f64(RHO_MIN), _f64(RHO_MAX))
        kl_drift_area = _clip(kl_drift_area + tl.where(m_observed, b_excess, 0.0), 0.0, f64_max)

    # 2b. The verifier's success rates (a non-finite one leaves its EMA as it is).
    ema_er, has_er, _ = _fold(ema_er, has_er, expert_reward, stat_beta)
    ema_pr, has_pr, _ = _fold(ema_pr, has_pr, policy_reward, stat_beta)
    if MODE_VERIFIED:
        b_failures = _clip(1.0 - ema_pr, _f64(MIN_FAILURE_RATE), f64_max)
        b_advantage = _clip((ema_er - ema_pr) / b_failures, 0.0, 1.0)
        b_verified_rho = _clip(b_advantage, _f64(RHO_MIN), _f64(RHO_MAX))
        rho = tl.where(has_er & has_pr, b_verified_rho, rho)

    # 3. Estimate (Eq. 12 with Eq. 3, cov = 0).
    m_ready = has_d & has_s & has_r
    b_D = _f64(K_D) * ema_d
    b_numerator = rho * b_D + _f64(K_R) * ema_r
    b_denominator = b_D + _f64(K_S) * ema_s + _f64(K_R) * ema_r
    m_positive = b_denominator > 0.0
    b_quotient = b_numerator / tl.where(m_positive, b_denominator, 1.0)
    b_raw = tl.where(m_positive & _is_finite(b_quotient), b_quotient, _nan())
    m_defined = m_ready & _is_finite(b_raw)
    estimate = _clip(tl.where(m_defined, b_raw, 0.0), 0.0, 1.0)

    # 4. EMA of the estimate; 5. prior blend (a non-finite prior: none); 6. cap (Eq. 13).
    ema_beta = _f64(EMA_BETA)
    mu_bar = tl.where(m_defined, ema_beta * mu_bar + (1.0 - ema_beta) * estimate, mu_bar)
    prior = _observation(p_prior, prior_value, PRIOR_FROM)  # none: NaN, so no blend
    m_prior = _is_finite(prior)
    blend = _f64(BLEND)
    b_blended = blend * mu_bar + (1.0 - blend) * tl.where(m_prior, prior, 0.0)
    target = tl.where(m_prior, b_blended, mu_bar)
    cap = _f64(CAP)
    mu = _clip(mu + _clip(target - mu, -cap, cap), _f64(MU_MIN), _f64(MU_MAX))

    # 7. Telemetry: large jumps of the defined estimate.
    m_jump = m_defined & has_estimate & (tl.abs(estimate - estimate_prev) > _f64(LARGE_SHIFT))
    n_large_shifts = n_large_shifts + tl.where(m_jump, 1.0, 0.0)

    tl.store(p_out + 0, mu)
    tl.store(p_out_mu, mu.to(tl.float32))  # what update returns: no cast after the launch
    tl.store(p_out + 1, mu_bar)
    tl.store(p_out + 2, rho)
    tl.store(p_out + 3, ema_d)
    tl.store(p_out + 4, ema_s)
    tl.store(p_out + 5, ema_r)
    tl.store(p_out + 6, ema_kl)
    tl.store(p_out + 7, ema_er)
    tl.store(p_out + 8, ema_pr)
    tl.store(p_out + 9, tl.where(m_defined, estimate, estimate_prev))
    tl.store(p_out + 10, n_large_shifts)
    tl.store(p_out + 11, kl_drift_area)
    tl.store(p_out + 12, n_skipped_d)
    tl.store(p_out + 13, n_skipped_s)
    tl.store(p_out + 14, n_skipped_r)
    tl.store(p_out + 15, n_dropped)
    tl.store(p_out_flags + 0, has_d)
    tl.store(p_out_flags + 1, has_s)
    tl.store(p_out_flags + 2, has_r)
    tl.store(p_out_flags + 3, has_kl)
    tl.store(p_out_flags + 4, has_er)
    tl.store(p_out_flags + 5, has_pr)
    tl.store(p_out_flags + 6, has_estimate | m_defined)


@functools.lru_cache(maxsize=16)  # a controller's config is fixed: built once
def _constants(config: Config) -> dict[str, Any]:
    """The config as the kernel's constexprs: one compiled variant per config
    (and layout), every value as the plain path uses it."""
    k_d, k_s, k_r = config.scale
    return {
        "MODE_VERIFIED": config.mode == "verified",
        "PER_MEAN": config.per_mean,
        "FILTER": config.filter_demos is not None,
        "FILTER_AT": None if config.filter_demos is None else float(config.filter_demos),
        "TRIM": float(config.trim),
        "STAT_BETA": float(config.stat_beta),
        "KL_BETA": float(config.kl_beta),
        "EMA_BETA": float(config.ema_beta),
        "KL_TARGET": float(config.kl_target),
        # rho_step's band edges, computed in Python as it computes them
        "KL_HIGH": config.kl_target * (1.0 + config.kl_band),
        "KL_LOW": config.kl_target * (1.0 - config.kl_band),
        "ETA_UP": float(config.eta_up),
        "ETA_DOWN": float(config.eta_down),
        "RHO_MIN": float(config.rho_min),
        "RHO_MAX": float(config.rho_max),
        "MU_MIN": float(config.mu_min),
        "MU_MAX": float(config.mu_max),
        "CAP": float(config.cap),
        "BLEND": float(config.blend),
        "LARGE_SHIFT": float(config.large_shift),
        "K_D": float(k_d),
        "K_S": float(k_s),
        "K_R": float(k_r),
    }


def _observation_args(value: Any, device: torch.device) -> tuple[int, torch.Tensor | None, float]:
    """(``*_FROM``, tensor, host value) of an observation: a tensor is read by
    the kernel where it lies (moved first if on another device); a host
    number goes in as a float64 argument, never through a device copy."""
    if value is None:
        return FROM_NONE.value, None, math.nan
    if isinstance(value, torch.Tensor):
        return FROM_TENSOR.value, value if value.device == device else value.to(device), math.nan
    return FROM_HOST.value, None, float(value)


def pack_state(state: ControllerState[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The state as the kernel reads it: float64 ``[16]`` in ``STATE_FLOATS``
    order and bool ``[7]`` in ``STATE_FLAGS`` order (one stack each)."""
    floats = torch.stack([getattr(state, name) for name in STATE_FLOATS])
    flags = torch.stack([getattr(state, name) for name in STATE_FLAGS])
    return floats, flags


def empty_outputs(device: torch.device, *, has_rows: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh ``out`` (float64: the state, then the batch when there are rows),
    ``out_flags`` (bool) and ``out_mu`` (0-d float32) for ``kernel_close_step``."""
    floats = len(STATE_FLOATS) + (len(BATCH_FIELDS) if has_rows else 0)
    return (
        torch.empty(floats, dtype=torch.float64, device=device),
        torch.empty(len(STATE_FLAGS), dtype=torch.bool, device=device),
        torch.empty((), dtype=torch.float32, device=device),
    )


Closed = tuple[ControllerState[torch.Tensor], BatchStats[torch.Tensor, torch.Tensor] | None, torch.Tensor]


@torch.no_grad()  # the controller's numbers, never part of a caller's graph
def kernel_close_step(
    packed_state: tuple[torch.Tensor, torch.Tensor],
    config: Config,
    observations: dict[str, Any],
    prior_value: Any,
    rows: RowResults | None,
    out: torch.Tensor,
    out_flags: torch.Tensor,
    out_mu: torch.Tensor,
) -> Closed:
    """``gaccore.controller.close_step`` in one launch: the new state and the
    step's batch (``None`` without ``rows``) as 0-d views of ``out`` and
    ``out_flags``, and the new ``mu`` as float32 in ``out_mu``, which is what
    ``update`` returns (``empty_outputs``; tests poison them).

    ``packed_state`` is ``pack_state(state)`` or the buffers of a state this
    returned; ``observations`` holds ``kl``, ``expert_reward`` and
    ``policy_reward`` and ``prior_value`` the prior at this step, each
    ``None``, a number or a 0-d tensor (a prior of ``None``: no blend). A
    tensor is read where it lies when the kernel runs, which is what lets a
    CUDA graph replay the launch with new values. At most ``MAX_ROWS`` rows.
    """
    floats, flags = packed_state
    device = floats.device
    n_rows = 0 if rows is None else rows.n_tokens.shape[0]
    if n_rows > MAX_ROWS:
        raise ValueError(f"kernel_close_step takes at most MAX_ROWS = {MAX_ROWS} rows, got {n_rows}")
    kl_from, kl, kl_value = _observation_args(observations["kl"], device)
    expert_from, expert, expert_value = _observation_args(observations["expert_reward"], device)
    policy_from, policy, policy_value = _observation_args(observations["policy_reward"], device)
    prior_from, prior, prior_host = _observation_args(prior_value, device)
    # A pointer the kernel never reads stands in for every absent tensor.
    row_args = [floats] * len(ROW_FIELDS) if rows is None else [getattr(rows, n).contiguous() for n in ROW_FIELDS]
    block = triton.next_power_of_2(max(n_rows, 1))
    _close_step_kernel[(1,)](
        *row_args,
        n_rows,
        floats,
        flags,
        floats if kl is None else kl,
        kl_value,
        floats if expert is None else expert,
        expert_value,
        floats if policy is None else policy,
        policy_value,
        floats if prior is None else prior,
        prior_host,
        out,
        out_flags,
        out_mu,
        HAS_ROWS=rows is not None,
        KL_FROM=kl_from,
        EXPERT_REWARD_FROM=expert_from,
        POLICY_REWARD_FROM=policy_from,
        PRIOR_FROM=prior_from,
        BLOCK_B=block,
        CHUNK_B=min(block, max(1, RANK_TILE // block)),
        num_warps=1 if rows is None else 4 if block <= 512 else 8,
        # torch rounds every product and sum on its own: no fused multiply-adds
        enable_fp_fusion=False,
        **_constants(config),
    )
    values = out.unbind()
    state = ControllerState(
        **dict(zip(STATE_FLOATS, values, strict=False)),
        **dict(zip(STATE_FLAGS, out_flags.unbind(), strict=True)),
    )
    batch = None if rows is None else BatchStats(**dict(zip(BATCH_FIELDS, values[len(STATE_FLOATS) :], strict=True)))
    return state, batch, out_mu


class CloseStepKernel:
    """One controller's ``close_step`` through ``kernel_close_step``.

    It keeps the buffers of the state it returned last: when the controller
    passes that state back (every step, unless a state was loaded or moved
    in between), the kernel reads it there, and nothing is stacked.
    ``__call__`` returns ``None`` for more than ``MAX_ROWS`` rows: the
    caller runs the plain ``close_step`` then.
    """

    def __init__(self) -> None:
        self._last: tuple[ControllerState[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None

    def __call__(
        self,
        device: torch.device,
        state: ControllerState[torch.Tensor],
        config: Config,
        observations: dict[str, Any],
        prior_value: float | None,
        rows: RowResults | None,
    ) -> Closed | None:
        if rows is not None and rows.n_tokens.shape[0] > MAX_ROWS:
            return None
        last = self._last
        packed = last[1] if last is not None and last[0] is state else pack_state(state)
        out, out_flags, out_mu = empty_outputs(device, has_rows=rows is not None)
        closed = kernel_close_step(packed, config, observations, prior_value, rows, out, out_flags, out_mu)
        self._last = (closed[0], (out, out_flags))
        return closed
