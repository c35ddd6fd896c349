"""The fused statistics kernel (SPEC §5): one pass over the token tensors.

One Triton program per row (or per chunk of a row, see below) walks it in
blocks of ``BLOCK_T`` tokens and reads every element of logp, mask, adv
(when per token) and ref_logp once, padding included: loading only where
the response mask is on would make every load's mask data-dependent, and
Triton vectorizes only loads whose mask is uniform over a vector. Values are
converted to fp32 right after the load (the interpreter computes bf16
arithmetic wrongly, and fp32 is the accumulation type anyway); masked-out
values never enter arithmetic.

Arithmetic, not memory bandwidth, bounded the kernel when each block ended
in a dozen cross-lane reductions and each token paid an fp64 ``exp``
(bench/RESULTS.md), so a token now costs fp32 element-wise work. Lane j of a program keeps running statistics of its tokens j,
j + BLOCK_T, ...: Welford updates of mean, M2 and the (a, w) co-moment about
the lane's first value (a shift, so advantages around 1e3 with unit spread
keep fp32's digits for the spread), a Kahan-compensated logp sum (row means
that differ by 1e-3 of their size need more than fp32's 24 bits), extremes
and the KL sum. Once per chunk, the lanes are combined by an exact Chan
merge in fp64 (a ``tl.reduce`` whose tree has a fixed shape), never by
``sum(x^2) - n mean^2``. Token tensors given in float64 are read as fp32
(the kernel's element type); a per-row ``adv`` of shape [B] is read in
float64.

Few long rows would leave most of a GPU idle, so rows are split into
``chunk_count(B, T)`` chunks of whole blocks (a function of the shape only):
each (row, chunk) program stores its chunk's running statistics, and a small
second kernel merges a row's chunks in chunk order with the same Chan
updates. The row results are stored as float64, the rows' roles with them
(SPEC §2: which rows are RL, SFT and demonstration rows, from the row's
validity and its expert flag), and finalized by ``gaccore.rows.finalize``,
shared with every other path. There are no
atomics: every output is written by one program, and merges run in a fixed
order, so results are bit-identical from run to run.

fp32 has no accurate ``expm1`` in the interpreter (libdevice is GPU-only),
so ``expm1`` and the k3 term use their Taylor series where the direct form
would cancel, with a band wide enough (|x| < 1) that the direct form outside
it loses no more than a few units in the last place. On a GPU, Triton's fp32
``exp`` is ``ex2.approx`` of ``x log2(e)``, relative error about 6e-8 |x|
plus 2 ulp: 4e-6 at the fp32 direct form's limit x = 64, inside SPEC §5's
1e-5. Past it, k3 = (exp(x / 8))^8 carries eight times exp(x / 8)'s error,
1e-5 at x ~ 150 (a KL of e^150 per token: its size, not its fifth digit,
is what a controller reads); x itself, an fp32 difference, is off by up to
half an ulp, 4e-6 relative in k3 at x = 100, as it always was.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch
import triton
import triton.language as tl

from gaccore.kernels.tensors import ROW_DTYPE, check_inputs
from gaccore.rows import RowResults

# The row results the kernel writes, every field of RowResults in its order:
# the roles (SPEC §2's rule, as gaccore.rows.with_roles applies it for the
# other paths) and the unscored NaN come from the kernel's epilogue, so no
# element-wise op follows the launch.
KERNEL_FIELDS = tuple(f.name for f in fields(RowResults))
# 1024-token blocks: 8 tokens a thread at 4 warps (a 16-byte load of bf16),
# each of those 8 lanes holding a dozen running statistics in registers. The
# loop costs the same per token at 2048 (8 warps); 1024 halves the lane merge
# at the end of a chunk and the padding of a row's last block, and with the
# former per-block reductions it was 8% faster than 2048 at (1024, 32768)
# bf16 on an H200 (bench/RESULTS.md). Not yet timed with lane accumulators.
MAX_BLOCK_T = 1024
# Rows split into chunks when few and long (see chunk_count): an H100 has 132
# SMs, and 1024 programs of at least 8192 tokens keep each busy for several
# blocks. Chosen without a GPU to measure on; bench/gpu.py times the split shapes.
TARGET_PROGRAMS = 1024
MIN_CHUNK_TOKENS = 8192

FLT_MAX = tl.constexpr(3.4028234663852886e38)  # padding for min/max of no tokens
INF = tl.constexpr(float("inf"))
# NaN by its bits: a NaN constexpr never equals itself, which Triton's check of a
# global's value between compilations rejects.
NAN_BITS = tl.constexpr(0x7FF8000000000000)
# Taylor coefficients 2 / (j + 2)! of Q (see _exp_series_tail): Horner's
# rule on them is one fma a term, with no division left to the compiler.
Q1 = tl.constexpr(2.0 / math.factorial(3))
Q2 = tl.constexpr(2.0 / math.factorial(4))
Q3 = tl.constexpr(2.0 / math.factorial(5))
Q4 = tl.constexpr(2.0 / math.factorial(6))
Q5 = tl.constexpr(2.0 / math.factorial(7))
Q6 = tl.constexpr(2.0 / math.factorial(8))
Q7 = tl.constexpr(2.0 / math.factorial(9))
Q8 = tl.constexpr(2.0 / math.factorial(10))
Q9 = tl.constexpr(2.0 / math.factorial(11))
# k3's direct form runs in fp32 below this x: exp(64) = 6e27 leaves fp32
# sums room for 1e10 such tokens. From here to fp64's limit (709.78) exp(x)
# is (exp(x / 8))^8, squared in fp64; exp(x / 8) still fits fp32.
K3_FP32_MAX_X = tl.constexpr(64.0)


@triton.jit
def _is_finite(x):
    return tl.abs(x) < INF  # false for NaN and +-inf


@triton.jit
def _nan():
    """A float64 NaN."""
    return tl.full([], NAN_BITS, tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _exp_series_tail(x):
    """``Q(x) = sum_j 2 x^j / (j + 2)!`` in Horner form, one fma per term: the
    common tail of ``expm1(x) = x (1 + x/2 Q(x))`` and ``k3(x) = x^2/2 Q(x)``
    (truncated after x^11/11!: < 5e-9 relative on |x| < 1)."""
    b_s = Q8 + x * Q9
    b_s = Q7 + x * b_s
    b_s = Q6 + x * b_s
    b_s = Q5 + x * b_s
    b_s = Q4 + x * b_s
    b_s = Q3 + x * b_s
    b_s = Q2 + x * b_s
    b_s = Q1 + x * b_s
    return 1.0 + x * b_s


@triton.jit
def _expm1_nonpos(x, b_exp):
    """``expm1(x)`` for ``x <= 0`` given ``b_exp = exp(x)``, in fp32: the series
    on (-1, 0], ``exp(x) - 1`` below (1 - exp(x) >= 0.63 there, so the
    subtraction loses nothing)."""
    return tl.where(x > -1.0, x * (1.0 + 0.5 * x * _exp_series_tail(x)), b_exp - 1.0)


@triton.jit
def _k3(x):
    """k3 ``exp(x) - x - 1`` as ``(fp32 part, fp64 part)``, their sum the value.

    The series ``x^2/2 Q(x)`` for |x| < 1; the direct form outside, in fp32
    below ``K3_FP32_MAX_X``, where it is nearly as accurate as fp32's ``exp``
    (the subtractions lose at most a factor e / (e - 2) < 4, at x = 1) and an
    fp64 ``exp`` would cost some thirty instructions per token. Past that,
    exp(x) leaves fp32's range (x ~ 88.7) while a policy that drifted far
    from its reference must still report its KL: there k3 is exp(x) to fp64
    precision ((x + 1) exp(-x) < 1e-25), from the same fp32 exp, of x / 8,
    raised to the 8th power in fp64. A ``tl.where`` evaluates both of its
    sides on every token, so those three fp64 products and one conversion
    are the whole fp64 cost, and every token pays it."""
    m_hi = x >= K3_FP32_MAX_X
    b_e = tl.exp(tl.where(m_hi, x * 0.125, x))
    b_lo = tl.where(tl.abs(x) < 1.0, 0.5 * x * x * _exp_series_tail(x), b_e - 1.0 - x)
    b_pow = tl.where(m_hi, b_e, 0.0).to(tl.float64)  # exp(x / 8), squared thrice
    b_pow = b_pow * b_pow
    b_pow = b_pow * b_pow
    return tl.where(m_hi, 0.0, b_lo), b_pow * b_pow


@triton.jit
def _welford(m_on, b_rn, b_x, l_k, l_m, l_m2):
    """One token per lane into the lanes' running (shift, mean, M2): Welford's
    update, which is Chan's merge of a one-token set, on ``b_x - l_k``.

    The shift is each lane's first token, so the fp32 mean and M2 hold
    deviations of the size of the spread, not of the values (advantages
    around 1e3 with unit spread keep fp32's digits for the spread).
    ``b_rn`` is 1 / the lane's new count. A masked-out token enters as its lane's
    mean, so they change nothing and their padding never enters arithmetic.
    Returns the deviation from the old mean and from the new one (the (a, w)
    co-moment multiplies one of each)."""
    b_d = tl.where(m_on, b_x - l_k, l_m)
    b_old = b_d - l_m
    l_m += b_old * b_rn
    b_new = b_d - l_m
    return l_m, l_m2 + b_old * b_new, b_old, b_new


@triton.jit
def _chan_combine(n1, ma1, mw1, m2a1, m2w1, caw1, n2, ma2, mw2, m2a2, m2w2, caw2):
    """Chan's merge of two sets' (count, means, M2s, co-moment), in fp64."""
    n = n1 + n2
    f = n2 / tl.maximum(n, 1.0)  # the second set's share
    g = n1 * f  # n1 n2 / n
    da = ma2 - ma1
    dw = mw2 - mw1
    return (
        n,
        ma1 + da * f,
        mw1 + dw * f,
        m2a1 + m2a2 + da * da * g,
        m2w1 + m2w2 + dw * dw * g,
        caw1 + caw2 + da * dw * g,
    )


@triton.jit
def _store_row(
    p_out,
    s_out_f,
    i_b,
    p_adv,
    s_adv_b,
    p_expert,
    s_expert_b,
    b_n,
    b_bad,
    b_lsum,
    b_ma,
    b_mw,
    b_m2a,
    b_m2w,
    b_caw,
    b_mina,
    b_maxa,
    b_minw,
    b_maxw,
    b_kl,
    ADV_PER_TOKEN: tl.constexpr,
    HAS_REF: tl.constexpr,
    HAS_EXPERT: tl.constexpr,
):
    """A row's running statistics as its row results, in KERNEL_FIELDS order,
    with the row's roles (``gaccore.rows.with_roles``: a valid expert row is
    an SFT row and a demonstration, a valid other row an RL row; without
    ``expert`` every valid row is both RL and SFT) and no verifier score."""
    b_valid = (b_n > 0.0) & (b_bad == 0)
    if ADV_PER_TOKEN:
        b_mina64 = b_mina.to(tl.float64)
        b_maxa64 = b_maxa.to(tl.float64)
    else:
        # One advantage per row: a_t is constant, so its moments are exact.
        b_ma = tl.load(p_adv + i_b * s_adv_b).to(tl.float64)
        b_valid = b_valid & _is_finite(b_ma)
        b_mina64 = tl.where(b_n > 0.0, b_ma, FLT_MAX)
        b_maxa64 = tl.where(b_n > 0.0, b_ma, -FLT_MAX)
    b_valid64 = b_valid.to(tl.float64)
    if HAS_EXPERT:
        b_demo = (b_valid & (tl.load(p_expert + i_b * s_expert_b) != 0)).to(tl.float64)
        b_rl = b_valid64 - b_demo
        b_sft = b_demo
    else:
        b_demo = tl.zeros((), tl.float64)
        b_rl = b_valid64
        b_sft = b_valid64
    b_nan = _nan()

    p_row = p_out + i_b
    tl.store(p_row + 0 * s_out_f, b_n)
    tl.store(p_row + 1 * s_out_f, b_valid64)
    tl.store(p_row + 2 * s_out_f, b_rl)
    tl.store(p_row + 3 * s_out_f, b_sft)
    tl.store(p_row + 4 * s_out_f, -b_lsum / tl.maximum(b_n, 1.0))
    tl.store(p_row + 5 * s_out_f, b_ma)  # the row's sequence advantage (Eq. 8)
    tl.store(p_row + 6 * s_out_f, b_ma)
    tl.store(p_row + 7 * s_out_f, b_mw)
    tl.store(p_row + 8 * s_out_f, b_m2a)
    tl.store(p_row + 9 * s_out_f, b_m2w)
    tl.store(p_row + 10 * s_out_f, b_caw)
    tl.store(p_row + 11 * s_out_f, b_mina64)
    tl.store(p_row + 12 * s_out_f, b_maxa64)
    tl.store(p_row + 13 * s_out_f, b_minw.to(tl.float64))
    tl.store(p_row + 14 * s_out_f, b_maxw.to(tl.float64))
    if HAS_REF:
        tl.store(p_row + 15 * s_out_f, b_kl)
    else:
        tl.store(p_row + 15 * s_out_f, b_nan)  # no ref_logp: no KL
    tl.store(p_row + 16 * s_out_f, b_demo)
    tl.store(p_row + 17 * s_out_f, b_nan)  # unscored: with_scores joins a verifier's scores


# T is specialized: Triton compiles at most three variants of an integer
# argument (== 1, divisible by 16, other), never one per value, and knowing
# T % 16 == 0 is what lets the in-range masks, and so the loads, vectorize.
@triton.jit
def _row_stats_kernel(
    p_logp,
    p_mask,
    p_adv,
    p_ref,
    p_expert,
    p_out,
    T,
    chunk_len,
    s_logp_b,
    s_logp_t,
    s_mask_b,
    s_mask_t,
    s_adv_b,
    s_adv_t,
    s_ref_b,
    s_ref_t,
    s_expert_b,
    s_out_f,
    ADV_PER_TOKEN: tl.constexpr,
    HAS_REF: tl.constexpr,
    HAS_EXPERT: tl.constexpr,
    SFT_COEF_PHI: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Program (row, chunk) reduces tokens [chunk * chunk_len, (chunk + 1) * chunk_len).

    Unsplit (one chunk per row) it stores the row results; split, it stores
    the chunk's raw running statistics (count, bad count, logp sum, moments,
    ranges, KL sum) in column ``row * n_chunks + chunk`` for
    ``_merge_chunks_kernel``."""
    i_b = tl.program_id(0).to(tl.int64)
    i_c = tl.program_id(1).to(tl.int64)
    o_t = tl.arange(0, BLOCK_T)
    t_start = i_c * chunk_len
    t_end = tl.minimum(t_start + chunk_len, T)
    # l_ values: running statistics of lane j (tokens j, j + BLOCK_T, ...), a
    # vector of BLOCK_T lanes in registers. Element-wise fp32 work only, and no
    # reduction across lanes (shuffles, barriers) until the chunk ends, where
    # one exact Chan merge in fp64 combines them.
    l_n = tl.zeros((BLOCK_T,), tl.float32)  # exact: fp32 counts to 2^24 tokens a lane
    l_bad = tl.zeros((BLOCK_T,), tl.int32)
    # The logp sum is Kahan-compensated: row means that differ by 1e-3 of
    # their size need more than fp32's 24 bits over a lane's tokens.
    l_lsum = tl.zeros((BLOCK_T,), tl.float32)
    l_lerr = tl.zeros((BLOCK_T,), tl.float32)
    l_kl = tl.zeros((BLOCK_T,), tl.float32)
    l_kl64 = tl.zeros((BLOCK_T,), tl.float64)
    l_ka = tl.zeros((BLOCK_T,), tl.float32)
    l_ma = tl.zeros((BLOCK_T,), tl.float32)
    l_m2a = tl.zeros((BLOCK_T,), tl.float32)
    l_kw = tl.zeros((BLOCK_T,), tl.float32)
    l_mw = tl.zeros((BLOCK_T,), tl.float32)
    l_m2w = tl.zeros((BLOCK_T,), tl.float32)
    l_caw = tl.zeros((BLOCK_T,), tl.float32)
    l_mina = tl.full((BLOCK_T,), FLT_MAX, tl.float32)
    l_maxa = tl.full((BLOCK_T,), -FLT_MAX, tl.float32)
    l_minw = tl.full((BLOCK_T,), FLT_MAX, tl.float32)
    l_maxw = tl.full((BLOCK_T,), -FLT_MAX, tl.float32)

    for t0 in range(t_start, t_end, BLOCK_T):
        o_tok = (t0 + o_t).to(tl.int64)
        m_in = o_tok < t_end
        b_mask = tl.load(p_mask + i_b * s_mask_b + o_tok * s_mask_t, mask=m_in, other=0)
        m_on = m_in & (b_mask != 0)
        b_l = tl.load(p_logp + i_b * s_logp_b + o_tok * s_logp_t, mask=m_in, other=0.0).to(tl.float32)
        m_ok = _is_finite(b_l)
        b_l = tl.where(m_on, tl.minimum(b_l, 0.0), 0.0)
        b_y = b_l - l_lerr
        b_t = l_lsum + b_y
        l_lerr = (b_t - l_lsum) - b_y
        l_lsum = b_t

        # SFT coefficient w = p (1 - p) or 1 - p, with 1 - p = -expm1(logp).
        b_p = tl.exp(b_l)
        b_q = -_expm1_nonpos(b_l, b_p)
        if SFT_COEF_PHI:
            b_w = b_p * b_q
        else:
            b_w = b_q

        l_n += m_on.to(tl.float32)
        b_rn = 1.0 / tl.maximum(l_n, 1.0)
        m_first = m_on & (l_n == 1.0)
        l_kw = tl.where(m_first, b_w, l_kw)
        l_mw, l_m2w, _, b_dw_new = _welford(m_on, b_rn, b_w, l_kw, l_mw, l_m2w)
        l_minw = tl.minimum(l_minw, tl.where(m_on, b_w, FLT_MAX))
        l_maxw = tl.maximum(l_maxw, tl.where(m_on, b_w, -FLT_MAX))

        if ADV_PER_TOKEN:
            b_a = tl.load(p_adv + i_b * s_adv_b + o_tok * s_adv_t, mask=m_in, other=0.0).to(tl.float32)
            m_ok = m_ok & _is_finite(b_a)
            l_ka = tl.where(m_first, b_a, l_ka)
            l_ma, l_m2a, b_da_old, _ = _welford(m_on, b_rn, b_a, l_ka, l_ma, l_m2a)
            l_caw += b_da_old * b_dw_new
            l_mina = tl.minimum(l_mina, tl.where(m_on, b_a, FLT_MAX))
            l_maxa = tl.maximum(l_maxa, tl.where(m_on, b_a, -FLT_MAX))

        if HAS_REF:
            b_r = tl.load(p_ref + i_b * s_ref_b + o_tok * s_ref_t, mask=m_in, other=0.0).to(tl.float32)
            m_ok = m_ok & _is_finite(b_r)
            b_k3, b_k3_64 = _k3(tl.where(m_on, b_r - b_l, 0.0))
            l_kl += b_k3
            l_kl64 += b_k3_64
        l_bad += (m_on & ~m_ok).to(tl.int32)

    # The lanes' statistics, merged once: a lane's mean is its shift plus its
    # mean deviation, in fp64, so the deviations between lanes keep every digit.
    b_zero = tl.zeros((BLOCK_T,), tl.float64)
    b_n, b_ma, b_mw, b_m2a, b_m2w, b_caw = tl.reduce(
        (
            l_n.to(tl.float64),
            l_ka.to(tl.float64) + l_ma.to(tl.float64) if ADV_PER_TOKEN else b_zero,
            l_kw.to(tl.float64) + l_mw.to(tl.float64),
            l_m2a.to(tl.float64) if ADV_PER_TOKEN else b_zero,
            l_m2w.to(tl.float64),
            l_caw.to(tl.float64) if ADV_PER_TOKEN else b_zero,
        ),
        0,
        _chan_combine,
    )
    b_bad = tl.sum(l_bad)
    b_lsum = tl.sum(l_lsum.to(tl.float64) - l_lerr.to(tl.float64))
    b_kl = tl.sum(l_kl.to(tl.float64) + l_kl64)
    b_mina = tl.min(l_mina)
    b_maxa = tl.max(l_maxa)
    b_minw = tl.min(l_minw)
    b_maxw = tl.max(l_maxw)

    if SPLIT:
        p_chunk = p_out + i_b * tl.num_programs(1) + i_c
        tl.store(p_chunk + 0 * s_out_f, b_n)
        tl.store(p_chunk + 1 * s_out_f, b_bad.to(tl.float64))
        tl.store(p_chunk + 2 * s_out_f, b_lsum)
        tl.store(p_chunk + 3 * s_out_f, b_ma)
        tl.store(p_chunk + 4 * s_out_f, b_mw)
        tl.store(p_chunk + 5 * s_out_f, b_m2a)
        tl.store(p_chunk + 6 * s_out_f, b_m2w)
        tl.store(p_chunk + 7 * s_out_f, b_caw)
        tl.store(p_chunk + 8 * s_out_f, b_mina.to(tl.float64))
        tl.store(p_chunk + 9 * s_out_f, b_maxa.to(tl.float64))
        tl.store(p_chunk + 10 * s_out_f, b_minw.to(tl.float64))
        tl.store(p_chunk + 11 * s_out_f, b_maxw.to(tl.float64))
        tl.store(p_chunk + 12 * s_out_f, b_kl)
    else:
        _store_row(
            p_out,
            s_out_f,
            i_b,
            p_adv,
            s_adv_b,
            p_expert,
            s_expert_b,
            b_n,
            b_bad,
            b_lsum,
            b_ma,
            b_mw,
            b_m2a,
            b_m2w,
            b_caw,
            b_mina,
            b_maxa,
            b_minw,
            b_maxw,
            b_kl,
            ADV_PER_TOKEN,
            HAS_REF,
            HAS_EXPERT,
        )


CHUNK_FIELDS = 13  # what a split program stores, in the order of its stores


@triton.jit
def _merge_chunks_kernel(
    p_chunks,
    p_adv,
    p_expert,
    p_out,
    n_chunks,
    s_chunk_f,
    s_adv_b,
    s_expert_b,
    s_out_f,
    ADV_PER_TOKEN: tl.constexpr,
    HAS_REF: tl.constexpr,
    HAS_EXPERT: tl.constexpr,
):
    """One program per row: Chan merges of the row's chunks, in chunk order
    (a fixed order, so results are bit-identical run to run), then the row
    results as the unsplit kernel stores them."""
    i_b = tl.program_id(0).to(tl.int64)
    b_n = tl.zeros((), tl.float64)
    b_bad = tl.zeros((), tl.float64)
    b_lsum = tl.zeros((), tl.float64)
    b_kl = tl.zeros((), tl.float64)
    b_ma = tl.zeros((), tl.float64)
    b_mw = tl.zeros((), tl.float64)
    b_m2a = tl.zeros((), tl.float64)
    b_m2w = tl.zeros((), tl.float64)
    b_caw = tl.zeros((), tl.float64)
    b_mina = tl.full((), FLT_MAX, tl.float32)
    b_maxa = tl.full((), -FLT_MAX, tl.float32)
    b_minw = tl.full((), FLT_MAX, tl.float32)
    b_maxw = tl.full((), -FLT_MAX, tl.float32)
    for i_c in range(0, n_chunks):
        p_chunk = p_chunks + i_b * n_chunks + i_c
        c_n = tl.load(p_chunk + 0 * s_chunk_f)
        c_ma = tl.load(p_chunk + 3 * s_chunk_f)
        c_mw = tl.load(p_chunk + 4 * s_chunk_f)
        b_ntot = b_n + c_n
        b_f = c_n / tl.maximum(b_ntot, 1.0)  # the chunk's share
        b_delta_a = c_ma - b_ma
        b_delta_w = c_mw - b_mw
        b_m2a += tl.load(p_chunk + 5 * s_chunk_f) + b_delta_a * b_delta_a * b_n * b_f
        b_m2w += tl.load(p_chunk + 6 * s_chunk_f) + b_delta_w * b_delta_w * b_n * b_f
        b_caw += tl.load(p_chunk + 7 * s_chunk_f) + b_delta_a * b_delta_w * b_n * b_f
        b_ma += b_delta_a * b_f
        b_mw += b_delta_w * b_f
        b_n = b_ntot
        b_bad += tl.load(p_chunk + 1 * s_chunk_f)
        b_lsum += tl.load(p_chunk + 2 * s_chunk_f)
        b_mina = tl.minimum(b_mina, tl.load(p_chunk + 8 * s_chunk_f).to(tl.float32))
        b_maxa = tl.maximum(b_maxa, tl.load(p_chunk + 9 * s_chunk_f).to(tl.float32))
        b_minw = tl.minimum(b_minw, tl.load(p_chunk + 10 * s_chunk_f).to(tl.float32))
        b_maxw = tl.maximum(b_maxw, tl.load(p_chunk + 11 * s_chunk_f).to(tl.float32))
        b_kl += tl.load(p_chunk + 12 * s_chunk_f)
    _store_row(
        p_out,
        s_out_f,
        i_b,
        p_adv,
        s_adv_b,
        p_expert,
        s_expert_b,
        b_n,
        b_bad,
        b_lsum,
        b_ma,
        b_mw,
        b_m2a,
        b_m2w,
        b_caw,
        b_mina,
        b_maxa,
        b_minw,
        b_maxw,
        b_kl,
        ADV_PER_TOKEN,
        HAS_REF,
        HAS_EXPERT,
    )


def block_size(tokens: int) -> int:
    """Tokens per loop iteration: the whole row up to ``MAX_BLOCK_T`` (a
    function of T only, so results never depend on the GPU)."""
    return max(16, min(triton.next_power_of_2(max(tokens, 1)), MAX_BLOCK_T))


def warps(block: int) -> int:
    """8 tokens per thread: a 16-byte load of bf16 per thread, 1 to 8 warps."""
    return min(8, max(1, block // 256))


def empty_out(rows: int, device: torch.device | str) -> torch.Tensor:
    """A fresh output buffer for ``kernel_row_results(..., out=)``."""
    return torch.empty(len(KERNEL_FIELDS), rows, dtype=ROW_DTYPE, device=device)


def chunk_count(rows: int, tokens: int) -> int:
    """Chunks per row: enough programs to fill a large GPU (``TARGET_PROGRAMS``)
    when rows are few and long, each chunk at least ``MIN_CHUNK_TOKENS`` long.
    A function of (B, T) only, so results never depend on the GPU."""
    wanted = triton.cdiv(TARGET_PROGRAMS, max(rows, 1))
    return max(1, min(wanted, triton.cdiv(tokens, MIN_CHUNK_TOKENS)))


@torch.no_grad()  # statistics of the inputs, never part of the caller's graph
def kernel_row_results(
    logp: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    expert: torch.Tensor | None = None,
    *,
    ref_logp: torch.Tensor | None = None,
    sft_coef: str = "phi",
    out: torch.Tensor | None = None,
    block_t: int | None = None,
    chunks: int | None = None,
    checked: bool = False,
) -> RowResults:
    """Row results of one batch from the fused kernel.

    Inputs are validated unless ``checked`` says the caller (``gaccore.kernels.
    backend.row_results``) already did.

    ``out``, a contiguous float64 ``[len(KERNEL_FIELDS), B]`` tensor on the
    inputs' device, receives the row results, roles included (tests poison
    it); the fields returned are views of it, so one launch (two for split
    rows) is the whole device work.
    ``block_t`` (a power of two) overrides ``block_size(T)`` and ``chunks``
    overrides ``chunk_count(B, T)``, so tests can cover many blocks and
    chunks per row with short rows. Chunks hold whole blocks, so a row may
    get fewer chunks than asked for.
    """
    rows, tokens = logp.shape if checked else check_inputs(logp, mask, adv, expert, ref_logp, sft_coef)
    if out is None:
        out = empty_out(rows, logp.device)
    elif out.shape != (len(KERNEL_FIELDS), rows) or out.dtype != ROW_DTYPE or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float64 tensor of shape [{len(KERNEL_FIELDS)}, {rows}]")
    # bool as its bytes: the same values, without relying on i1 pointer loads
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    if expert is not None and expert.dtype == torch.bool:
        expert = expert.view(torch.uint8)
    ref = logp if ref_logp is None else ref_logp  # never read without HAS_REF
    flags = logp if expert is None else expert  # never read without HAS_EXPERT
    block = block_size(tokens) if block_t is None else block_t
    wanted = chunk_count(rows, tokens) if chunks is None else chunks
    chunk_len = triton.cdiv(triton.cdiv(max(tokens, 1), wanted), block) * block
    n_chunks = triton.cdiv(max(tokens, 1), chunk_len)
    split = n_chunks > 1
    target = torch.empty(CHUNK_FIELDS, rows * n_chunks, dtype=ROW_DTYPE, device=logp.device) if split else out
    if rows > 0:
        _row_stats_kernel[(rows, n_chunks)](
            logp,
            mask,
            adv,
            ref,
            flags,
            target,
            tokens,
            chunk_len,
            logp.stride(0),
            logp.stride(1),
            mask.stride(0),
            mask.stride(1),
            adv.stride(0),
            adv.stride(1) if adv.ndim == 2 else 0,
            ref.stride(0),
            ref.stride(1),
            flags.stride(0),
            target.stride(0),
            ADV_PER_TOKEN=adv.ndim == 2,
            HAS_REF=ref_logp is not None,
            HAS_EXPERT=expert is not None,
            SFT_COEF_PHI=sft_coef == "phi",
            SPLIT=split,
            BLOCK_T=block,
            num_warps=warps(block),
        )
        if split:
            _merge_chunks_kernel[(rows,)](
                target,
                adv,
                flags,
                out,
                n_chunks,
                target.stride(0),
                adv.stride(0),
                flags.stride(0),
                out.stride(0),
                ADV_PER_TOKEN=adv.ndim == 2,
                HAS_REF=ref_logp is not None,
                HAS_EXPERT=expert is not None,
                num_warps=1,
            )
    return RowResults(**dict(zip(KERNEL_FIELDS, out.unbind(0), strict=True)))
