"""The closing step of an optimizer step in one Triton program: finalize + advance.

Triton has no structs, so the state, the batch and the config travel as
sixty scalar arguments and locals: that alone makes the kernel (the
advance) and its finalize longer than a function should be.

``gaccore.step.close_step`` (``gaccore.rows.finalize`` of the step's
row results, then ``gaccore.step.advance``) is written once for numpy
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

The buffers are laid out in ``layout.py``; ``launch.py`` launches the
kernel from the host.

The same numbers as the plain path. Every operation of ``finalize`` and
``advance`` appears here in the same order on the same float64 values, with
float64 constants (``tl.full``, never a Python float that Triton could
round to fp32) and no contraction of a product and a sum into an fma, so
each element-wise result is bit for bit the plain path's (``** 0.5`` is a
correctly rounded square root in both; ``mu_star``'s ``- cov`` with
``cov = 0`` is left out, as subtracting 0.0 changes no float64). Only the
sums over rows run in another order (a tree, not torch's), which moves the
last bits of a statistic; the tests hold the kernel to the plain path
exactly where no sum has more than two terms. Where ``advance`` tells
``None`` from a non-finite value, so does the kernel, and where they are provably the same they share
one code path: a prior of ``None`` blends like a NaN prior, and a reward of
``None`` folds like a NaN one (a non-finite value leaves its EMA and flag
as they are); a ``kl`` of ``None`` is not a NaN ``kl`` on a step without
statistics (folding a NaN still clips ``kl_drift_area``), so ``KL_FROM``
keeps the three cases apart. The new ``mu`` is also stored as float32
(``out_mu``): the value ``update`` returns, rounded to nearest as torch's
cast rounds it, with no cast launched after the kernel. Comparisons
propagate NaN as torch does (``gaccore.kernels.triton_numerics``), and the
trimmed variance sorts NaN after +inf (``torch.sort``).

The trimmed variance (Eq. 9) ranks each SFT row by comparing it with every
other (torch.sort's stable order: NaN after +inf, ties by index),
``CHUNK_B`` rows at a time: B^2 comparisons in one program, which is why
``launch.MAX_ROWS`` bounds B (above it the plain ``close_step`` runs).
Compiled for sm_90 the kernel spills no register up to 4096 rows at 8
warps; the 2048-row bound is the comparisons' (docs/decisions.md).
"""

import triton
import triton.language as tl

from ..triton_numerics import (
    INF,
    at_least_one,
    clip,
    count,
    f64,
    is_finite,
    masked_max,
    masked_mean,
    masked_min,
    masked_sum,
    nan,
)
from .layout import (
    BATCH_DISAGREEMENT,
    BATCH_EXPERT_SUCCESS,
    BATCH_KL,
    BATCH_N_DEMOS,
    BATCH_N_NONFINITE_ROWS,
    BATCH_N_RL,
    BATCH_N_SFT,
    BATCH_N_TOKENS,
    BATCH_POLICY_SUCCESS,
    BATCH_VAR_RL,
    BATCH_VAR_SFT,
    EMA_DISAGREEMENT,
    EMA_EXPERT_SUCCESS,
    EMA_KL,
    EMA_POLICY_SUCCESS,
    EMA_VAR_RL,
    EMA_VAR_SFT,
    ESTIMATE,
    HAS_DISAGREEMENT,
    HAS_ESTIMATE,
    HAS_EXPERT_SUCCESS,
    HAS_KL,
    HAS_POLICY_SUCCESS,
    HAS_VAR_RL,
    HAS_VAR_SFT,
    KL_DRIFT_AREA,
    MU,
    MU_BAR,
    N_LARGE_SHIFTS,
    N_NONFINITE_ROWS,
    N_SKIPPED_DISAGREEMENT,
    N_SKIPPED_VAR_RL,
    N_SKIPPED_VAR_SFT,
    RHO,
)
from .numerics import F64_MAX, FROM_NONE, MIN_FAILURE_RATE, fold, observation, sft_rows, success_prior

# Rank comparisons of one loop iteration: BLOCK_B x CHUNK_B pairs at most.
RANK_TILE = 8192


@triton.jit
def _finalize_rows(
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
    p_out,
    FILTER: tl.constexpr,
    FILTER_AT: tl.constexpr,
    SUCCESS: tl.constexpr,
    SUCCESS_AT: tl.constexpr,
    TRIM: tl.constexpr,
    BLOCK_B: tl.constexpr,
    CHUNK_B: tl.constexpr,
):
    """``gaccore.rows.finalize`` of the step's rows: stores the batch
    statistics into ``p_out`` and returns what ``advance`` folds."""
    o_b = tl.arange(0, BLOCK_B)
    m_b = o_b < n_rows
    m_rl = m_b & (tl.load(p_rl + o_b, mask=m_b, other=0.0) != 0.0)
    m_demo = m_b & (tl.load(p_demo + o_b, mask=m_b, other=0.0) != 0.0)
    m_sft = sft_rows(p_sft, p_demo, p_score, o_b, m_b, FILTER, FILTER_AT)
    b_n_rl = count(m_rl)
    b_n_sft = count(m_sft)

    # Eq. 8: ddof=1 variance of the sequence advantages of RL rows.
    b_seq = tl.load(p_seq_adv + o_b, mask=m_b, other=0.0)
    b_seq_mean = masked_sum(m_rl, b_seq) / at_least_one(b_n_rl)
    b_seq_dev = b_seq - b_seq_mean
    b_seq_m2 = masked_sum(m_rl, b_seq_dev * b_seq_dev)
    var_rl = tl.where(b_n_rl >= 2.0, b_seq_m2 / at_least_one(b_n_rl - 1.0), nan())

    # Eq. 10: token moments of the RL rows merged across rows (Chan).
    b_n = tl.where(m_rl, tl.load(p_n_tokens + o_b, mask=m_b, other=0.0), 0.0)
    b_n_tokens = tl.sum(b_n)
    b_total = at_least_one(b_n_tokens)
    b_row_ma = tl.load(p_mean_a + o_b, mask=m_b, other=0.0)
    b_row_mw = tl.load(p_mean_w + o_b, mask=m_b, other=0.0)
    b_mean_a = masked_sum(m_rl, b_n * b_row_ma) / b_total
    b_mean_w = masked_sum(m_rl, b_n * b_row_mw) / b_total
    b_dev_a = b_row_ma - b_mean_a
    b_dev_w = b_row_mw - b_mean_w
    b_m2_a = masked_sum(m_rl, tl.load(p_m2_a + o_b, mask=m_b, other=0.0) + b_n * b_dev_a * b_dev_a)
    b_m2_w = masked_sum(m_rl, tl.load(p_m2_w + o_b, mask=m_b, other=0.0) + b_n * b_dev_w * b_dev_w)
    b_c_aw = masked_sum(m_rl, tl.load(p_c_aw + o_b, mask=m_b, other=0.0) + b_n * b_dev_a * b_dev_w)
    # A coefficient whose values are all equal has no z-score.
    m_degenerate = (
        masked_min(m_rl, tl.load(p_min_a + o_b, mask=m_b, other=0.0))
        == masked_max(m_rl, tl.load(p_max_a + o_b, mask=m_b, other=0.0))
    ) | (
        masked_min(m_rl, tl.load(p_min_w + o_b, mask=m_b, other=0.0))
        == masked_max(m_rl, tl.load(p_max_w + o_b, mask=m_b, other=0.0))
    )
    m_defined = (b_n_tokens >= 2.0) & ~m_degenerate & (b_m2_a > 0.0) & (b_m2_w > 0.0)
    b_pearson = b_c_aw / tl.sqrt(tl.where(m_defined, b_m2_a * b_m2_w, 1.0))
    disagreement = tl.where(m_defined, clip(2.0 * (1.0 - b_pearson), 0.0, 4.0), nan())

    b_kl = tl.where(b_n_tokens > 0.0, masked_sum(m_rl, tl.load(p_kl_sum + o_b, mask=m_b, other=0.0)) / b_total, nan())
    b_valid = tl.load(p_valid + o_b, mask=m_b, other=0.0)
    b_n_nonfinite_rows = count(m_b & (tl.load(p_n_tokens + o_b, mask=m_b, other=0.0) > 0.0) & (b_valid == 0.0))
    b_score = tl.load(p_score + o_b, mask=m_b, other=0.0)
    m_scored = tl.abs(b_score) < INF  # false for NaN and inf: not scored
    if SUCCESS:  # a score at or above the threshold is a success, one below a failure
        b_score = tl.where(b_score >= f64(SUCCESS_AT), f64(1.0), f64(0.0))
    b_expert_success = masked_mean(m_demo & m_scored, b_score)
    b_policy_success = masked_mean(m_rl & m_scored, b_score)

    # Eq. 9: sorted positions [k, n - k) of the SFT values, the other rows
    # +inf and NaN after +inf (torch.sort); a row's position is its rank.
    b_nll = tl.where(m_sft, tl.load(p_nll + o_b, mask=m_b, other=0.0), INF)
    m_nan = b_nll != b_nll
    b_rank = tl.zeros([BLOCK_B], tl.int32)
    for j0 in range(0, n_rows, CHUNK_B):
        o_j = j0 + tl.arange(0, CHUNK_B)
        m_j = o_j < n_rows
        b_nll_j = tl.where(
            sft_rows(p_sft, p_demo, p_score, o_j, m_j, FILTER, FILTER_AT),
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
    b_k = tl.floor(f64(TRIM) * b_n_sft)
    m_kept = m_b & (b_position >= b_k) & (b_position < b_n_sft - b_k)
    b_count = b_n_sft - 2.0 * b_k
    b_trim_mean = masked_sum(m_kept, b_nll) / at_least_one(b_count)
    b_trim_dev = b_nll - b_trim_mean
    b_trim_m2 = masked_sum(m_kept, b_trim_dev * b_trim_dev)
    var_sft = tl.where(b_count >= 2.0, b_trim_m2 / at_least_one(b_count - 1.0), nan())

    b_n_tokens_int = b_n_tokens.to(tl.int64).to(tl.float64)  # BatchStats.n_tokens is an integer count
    tl.store(p_out + BATCH_VAR_SFT, var_sft)
    tl.store(p_out + BATCH_VAR_RL, var_rl)
    tl.store(p_out + BATCH_DISAGREEMENT, disagreement)
    tl.store(p_out + BATCH_KL, b_kl)
    tl.store(p_out + BATCH_N_SFT, b_n_sft)
    tl.store(p_out + BATCH_N_RL, b_n_rl)
    tl.store(p_out + BATCH_N_TOKENS, b_n_tokens_int)
    tl.store(p_out + BATCH_N_NONFINITE_ROWS, b_n_nonfinite_rows)
    tl.store(p_out + BATCH_EXPERT_SUCCESS, b_expert_success)
    tl.store(p_out + BATCH_POLICY_SUCCESS, b_policy_success)
    tl.store(p_out + BATCH_N_DEMOS, count(m_demo))
    return var_sft, var_rl, disagreement, b_kl, b_n_sft, b_n_rl, b_n_nonfinite_rows, b_expert_success, b_policy_success


@triton.jit(do_not_specialize=["n_rows"])
def _close_step_kernel(
    # the row results, one float64 [n_rows] array each (passed by name)
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
    # the state (float64 and bool, in the order of layout.py)
    p_state,
    p_flags,
    # the observations: the tensor read where *_FROM is FROM_TENSOR, the value where FROM_HOST
    p_kl,
    kl_value: tl.float64,
    p_expert_success,
    expert_success_value: tl.float64,
    p_policy_success,
    policy_success_value: tl.float64,
    p_prior,
    prior_value: tl.float64,  # a non-finite prior: no blend
    p_out,
    p_out_flags,
    p_out_mu,
    HAS_ROWS: tl.constexpr,
    KL_FROM: tl.constexpr,
    EXPERT_SUCCESS_FROM: tl.constexpr,
    POLICY_SUCCESS_FROM: tl.constexpr,
    PRIOR_FROM: tl.constexpr,
    MODE_VERIFIED: tl.constexpr,
    PRIOR_FROM_SUCCESS: tl.constexpr,
    SUCCESS_TARGET: tl.constexpr,
    MU_PEAK: tl.constexpr,
    MU_VALLEY: tl.constexpr,
    PER_MEAN: tl.constexpr,
    FILTER: tl.constexpr,
    FILTER_AT: tl.constexpr,
    SUCCESS: tl.constexpr,
    SUCCESS_AT: tl.constexpr,
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
    stat_beta = f64(STAT_BETA)
    f64_max = f64(F64_MAX)
    mu = tl.load(p_state + MU)
    mu_bar = tl.load(p_state + MU_BAR)
    rho = tl.load(p_state + RHO)
    ema_d = tl.load(p_state + EMA_DISAGREEMENT)
    ema_s = tl.load(p_state + EMA_VAR_SFT)
    ema_r = tl.load(p_state + EMA_VAR_RL)
    ema_kl = tl.load(p_state + EMA_KL)
    ema_er = tl.load(p_state + EMA_EXPERT_SUCCESS)
    ema_pr = tl.load(p_state + EMA_POLICY_SUCCESS)
    estimate_prev = tl.load(p_state + ESTIMATE)
    n_large_shifts = tl.load(p_state + N_LARGE_SHIFTS)
    kl_drift_area = tl.load(p_state + KL_DRIFT_AREA)
    n_skipped_d = tl.load(p_state + N_SKIPPED_DISAGREEMENT)
    n_skipped_s = tl.load(p_state + N_SKIPPED_VAR_SFT)
    n_skipped_r = tl.load(p_state + N_SKIPPED_VAR_RL)
    n_nonfinite_rows = tl.load(p_state + N_NONFINITE_ROWS)
    has_d = tl.load(p_flags + HAS_DISAGREEMENT) != 0
    has_s = tl.load(p_flags + HAS_VAR_SFT) != 0
    has_r = tl.load(p_flags + HAS_VAR_RL) != 0
    has_kl = tl.load(p_flags + HAS_KL) != 0
    has_er = tl.load(p_flags + HAS_EXPERT_SUCCESS) != 0
    has_pr = tl.load(p_flags + HAS_POLICY_SUCCESS) != 0
    has_estimate = tl.load(p_flags + HAS_ESTIMATE) != 0

    kl = observation(p_kl, kl_value, KL_FROM)
    expert_success = observation(p_expert_success, expert_success_value, EXPERT_SUCCESS_FROM)
    policy_success = observation(p_policy_success, policy_success_value, POLICY_SUCCESS_FROM)

    if HAS_ROWS:
        var_sft, var_rl, disagreement, b_kl, b_n_sft, b_n_rl, b_n_nonfinite_rows, b_expert_success, b_policy_success = (
            _finalize_rows(
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
                p_out,
                FILTER,
                FILTER_AT,
                SUCCESS,
                SUCCESS_AT,
                TRIM,
                BLOCK_B,
                CHUNK_B,
            )
        )

        # -- advance, step 1: the proxies into their EMAs ---------------------
        if PER_MEAN:
            var_sft = var_sft / b_n_sft
            var_rl = var_rl / b_n_rl
        ema_d, has_d, m_finite = fold(ema_d, has_d, disagreement, stat_beta)
        n_skipped_d = n_skipped_d + tl.where(m_finite, 0.0, 1.0)
        ema_s, has_s, m_finite = fold(ema_s, has_s, var_sft, stat_beta)
        n_skipped_s = n_skipped_s + tl.where(m_finite, 0.0, 1.0)
        ema_r, has_r, m_finite = fold(ema_r, has_r, var_rl, stat_beta)
        n_skipped_r = n_skipped_r + tl.where(m_finite, 0.0, 1.0)
        n_nonfinite_rows = clip(n_nonfinite_rows + b_n_nonfinite_rows, 0.0, f64_max)
        # The caller's observations where finite, else the batch's.
        kl = tl.where(is_finite(kl), kl, b_kl)
        expert_success = tl.where(is_finite(expert_success), expert_success, b_expert_success)
        policy_success = tl.where(is_finite(policy_success), policy_success, b_policy_success)

    # 2. KL-controlled rho (Eq. 11/16), when there is an observation to fold.
    if HAS_ROWS or KL_FROM != FROM_NONE:
        ema_kl, has_kl, m_observed = fold(ema_kl, has_kl, kl, f64(KL_BETA))
        b_excess = clip(tl.where(m_observed, kl, 0.0) - f64(KL_TARGET), 0.0, f64_max)
        m_high = m_observed & (ema_kl > f64(KL_HIGH))
        m_low = m_observed & (ema_kl < f64(KL_LOW))
        b_raised = rho + f64(ETA_UP) * (f64(RHO_MAX) - rho)
        b_lowered = rho - f64(ETA_DOWN) * (rho - f64(RHO_MIN))
        rho = clip(tl.where(m_high, b_raised, tl.where(m_low, b_lowered, rho)), f64(RHO_MIN), f64(RHO_MAX))
        kl_drift_area = clip(kl_drift_area + tl.where(m_observed, b_excess, 0.0), 0.0, f64_max)

    # 2b. The verifier's success rates (a non-finite one leaves its EMA as it is).
    ema_er, has_er, _ = fold(ema_er, has_er, expert_success, stat_beta)
    ema_pr, has_pr, _ = fold(ema_pr, has_pr, policy_success, stat_beta)
    if MODE_VERIFIED:
        b_failures = clip(1.0 - ema_pr, f64(MIN_FAILURE_RATE), f64_max)
        b_advantage = clip((ema_er - ema_pr) / b_failures, 0.0, 1.0)
        b_verified_rho = clip(b_advantage, f64(RHO_MIN), f64(RHO_MAX))
        rho = tl.where(has_er & has_pr, b_verified_rho, rho)

    # 3. Estimate (Eq. 12 with Eq. 3, cov = 0).
    m_ready = has_d & has_s & has_r
    b_D = f64(K_D) * ema_d
    b_numerator = rho * b_D + f64(K_R) * ema_r
    b_denominator = b_D + f64(K_S) * ema_s + f64(K_R) * ema_r
    m_positive = b_denominator > 0.0
    b_quotient = b_numerator / tl.where(m_positive, b_denominator, 1.0)
    b_raw = tl.where(m_positive & is_finite(b_quotient), b_quotient, nan())
    m_defined = m_ready & is_finite(b_raw)
    estimate = clip(tl.where(m_defined, b_raw, 0.0), 0.0, 1.0)

    # 4. EMA of the estimate; 5. prior blend (a non-finite prior: none); 6. cap (Eq. 13).
    ema_beta = f64(EMA_BETA)
    mu_bar = tl.where(m_defined, ema_beta * mu_bar + (1.0 - ema_beta) * estimate, mu_bar)
    if PRIOR_FROM_SUCCESS:  # gaccore.step.success_prior, of this step's success-rate EMA
        prior = success_prior(ema_pr, has_pr, f64(SUCCESS_TARGET), f64(MU_PEAK), f64(MU_VALLEY))
    else:
        prior = observation(p_prior, prior_value, PRIOR_FROM)  # none: NaN, so no blend
    m_prior = is_finite(prior)
    blend = f64(BLEND)
    b_blended = blend * mu_bar + (1.0 - blend) * tl.where(m_prior, prior, 0.0)
    target = tl.where(m_prior, b_blended, mu_bar)
    cap = f64(CAP)
    mu = clip(mu + clip(target - mu, -cap, cap), f64(MU_MIN), f64(MU_MAX))

    # 7. Telemetry: large jumps of the defined estimate.
    m_jump = m_defined & has_estimate & (tl.abs(estimate - estimate_prev) > f64(LARGE_SHIFT))
    n_large_shifts = n_large_shifts + tl.where(m_jump, 1.0, 0.0)

    tl.store(p_out + MU, mu)
    tl.store(p_out_mu, mu.to(tl.float32))  # what update returns: no cast after the launch
    tl.store(p_out + MU_BAR, mu_bar)
    tl.store(p_out + RHO, rho)
    tl.store(p_out + EMA_DISAGREEMENT, ema_d)
    tl.store(p_out + EMA_VAR_SFT, ema_s)
    tl.store(p_out + EMA_VAR_RL, ema_r)
    tl.store(p_out + EMA_KL, ema_kl)
    tl.store(p_out + EMA_EXPERT_SUCCESS, ema_er)
    tl.store(p_out + EMA_POLICY_SUCCESS, ema_pr)
    tl.store(p_out + ESTIMATE, tl.where(m_defined, estimate, estimate_prev))
    tl.store(p_out + N_LARGE_SHIFTS, n_large_shifts)
    tl.store(p_out + KL_DRIFT_AREA, kl_drift_area)
    tl.store(p_out + N_SKIPPED_DISAGREEMENT, n_skipped_d)
    tl.store(p_out + N_SKIPPED_VAR_SFT, n_skipped_s)
    tl.store(p_out + N_SKIPPED_VAR_RL, n_skipped_r)
    tl.store(p_out + N_NONFINITE_ROWS, n_nonfinite_rows)
    tl.store(p_out_flags + HAS_DISAGREEMENT, has_d)
    tl.store(p_out_flags + HAS_VAR_SFT, has_s)
    tl.store(p_out_flags + HAS_VAR_RL, has_r)
    tl.store(p_out_flags + HAS_KL, has_kl)
    tl.store(p_out_flags + HAS_EXPERT_SUCCESS, has_er)
    tl.store(p_out_flags + HAS_POLICY_SUCCESS, has_pr)
    tl.store(p_out_flags + HAS_ESTIMATE, has_estimate | m_defined)
