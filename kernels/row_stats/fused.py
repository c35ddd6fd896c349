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
shared with every other path. There are no atomics: every output is
written by one program, and merges run in a fixed order, so results are
bit-identical from run to run.

The element-wise numerics (the series for ``expm1`` and k3, Welford and
Chan updates) are shared with the close-step kernel in
``gaccore.kernels.triton_numerics``; the launch choices (block size,
chunks) are in ``launch.py`` beside this file.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gaccore.batch import TokenBatch
from gaccore.rows import ROW_FIELDS, RowResults

from ..tensors import ROW_DTYPE
from ..triton_numerics import FLT_MAX, chan_combine, expm1_nonpos, is_finite, k3, nan, welford
from .launch import block_size, chunk_count, chunk_plan, empty_out, warps


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
    """A row's running statistics as its row results, in ROW_FIELDS order,
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
        b_valid = b_valid & is_finite(b_ma)
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
    b_nan = nan()

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
        m_ok = is_finite(b_l)
        b_l = tl.where(m_on, tl.minimum(b_l, 0.0), 0.0)
        b_y = b_l - l_lerr
        b_t = l_lsum + b_y
        l_lerr = (b_t - l_lsum) - b_y
        l_lsum = b_t

        # SFT coefficient w = p (1 - p) or 1 - p, with 1 - p = -expm1(logp).
        b_p = tl.exp(b_l)
        b_q = -expm1_nonpos(b_l, b_p)
        if SFT_COEF_PHI:
            b_w = b_p * b_q
        else:
            b_w = b_q

        l_n += m_on.to(tl.float32)
        b_rn = 1.0 / tl.maximum(l_n, 1.0)
        m_first = m_on & (l_n == 1.0)
        l_kw = tl.where(m_first, b_w, l_kw)
        l_mw, l_m2w, _, b_dw_new = welford(m_on, b_rn, b_w, l_kw, l_mw, l_m2w)
        l_minw = tl.minimum(l_minw, tl.where(m_on, b_w, FLT_MAX))
        l_maxw = tl.maximum(l_maxw, tl.where(m_on, b_w, -FLT_MAX))

        if ADV_PER_TOKEN:
            b_a = tl.load(p_adv + i_b * s_adv_b + o_tok * s_adv_t, mask=m_in, other=0.0).to(tl.float32)
            m_ok = m_ok & is_finite(b_a)
            l_ka = tl.where(m_first, b_a, l_ka)
            l_ma, l_m2a, b_da_old, _ = welford(m_on, b_rn, b_a, l_ka, l_ma, l_m2a)
            l_caw += b_da_old * b_dw_new
            l_mina = tl.minimum(l_mina, tl.where(m_on, b_a, FLT_MAX))
            l_maxa = tl.maximum(l_maxa, tl.where(m_on, b_a, -FLT_MAX))

        if HAS_REF:
            b_r = tl.load(p_ref + i_b * s_ref_b + o_tok * s_ref_t, mask=m_in, other=0.0).to(tl.float32)
            m_ok = m_ok & is_finite(b_r)
            b_k3, b_k3_64 = k3(tl.where(m_on, b_r - b_l, 0.0))
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
        chan_combine,
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


@torch.no_grad()  # statistics of the inputs, never part of the caller's graph
def row_results(
    batch: TokenBatch[torch.Tensor],
    sft_coef: str,
    *,
    out: torch.Tensor | None = None,
    block_t: int | None = None,
    chunks: int | None = None,
) -> RowResults:
    """Row results of one checked batch from the fused kernel, without its scores.

    ``out``, a contiguous float64 ``[len(ROW_FIELDS), B]`` tensor on the
    inputs' device, receives the row results, roles included (tests poison
    it); the fields returned are views of it, so one launch (two for split
    rows) is the whole device work.
    ``block_t`` (a power of two) overrides ``block_size(T)`` and ``chunks``
    overrides ``chunk_count(B, T)``, so tests can cover many blocks and
    chunks per row with short rows. Chunks hold whole blocks, so a row may
    get fewer chunks than asked for.
    """
    logp, mask, adv, expert, ref_logp = batch.logp, batch.mask, batch.adv, batch.expert, batch.ref_logp
    rows, tokens = batch.rows, batch.tokens
    if out is None:
        out = empty_out(rows, logp.device)
    elif out.shape != (len(ROW_FIELDS), rows) or out.dtype != ROW_DTYPE or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float64 tensor of shape [{len(ROW_FIELDS)}, {rows}]")
    # bool as its bytes: the same values, without relying on i1 pointer loads
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    if expert is not None and expert.dtype == torch.bool:
        expert = expert.view(torch.uint8)
    ref = logp if ref_logp is None else ref_logp  # never read without HAS_REF
    flags = logp if expert is None else expert  # never read without HAS_EXPERT
    block = block_size(tokens) if block_t is None else block_t
    chunk_len, n_chunks = chunk_plan(tokens, block, chunk_count(rows, tokens) if chunks is None else chunks)
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
    return RowResults(**dict(zip(ROW_FIELDS, out.unbind(0), strict=True)))
