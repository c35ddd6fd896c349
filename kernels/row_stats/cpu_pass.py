"""The row results on CPU in one compiled pass per row (numba).

The CPU counterpart of the fused Triton kernel (``fused.py`` beside this):
each row of the batch is read once, its tokens' statistics are accumulated
in a few vectorized loops over the row, and every field of the row results,
the roles included, is written by that row's iteration. It replaces the
torch twin (``twin.py``) on CPU where numba is installed
(``pip install gaccore[cpu]``): the twin makes some 40 passes over
batch-sized temporaries, each a separate torch call, and at small shapes
those calls cost more than the arithmetic.

Semantics are the twin's and the float64 reference's (SPEC §2): values
converted to fp32 right after they are read, masked-out positions replaced
by 0 before any arithmetic (padding may be NaN or inf), logp clamped to
``<= 0``. Sums and second moments accumulate in fp64, moments about the
fp32-rounded row mean, as the twin's do; k3 is fp64 (``gaccore.stats.k3``'s
series and direct form).

The SFT coefficient comes from one written-out ``expm1`` per token: with
``x = k ln2 + r`` (Cody-Waite, ``|r| <= ln2 / 2``) and ``e = expm1(r)`` by
its Taylor polynomial, ``p = 2^k (1 + e)`` and ``1 - p = (1 - 2^k) - 2^k e``,
both within 2 fp32 ulp, ``1 - p`` included where ``exp(x)`` is near 1
(``k = 0`` there, so it is ``-e``, never a difference of close numbers).
numba would call the C library's scalar ``expf``/``expm1f``, about 15 ns a
token here; the polynomial vectorizes, under 1 ns.

Fast-math: the loops allow reassociation, which lets their sums vectorize,
but never ``nnan``/``ninf``. Nothing that decides a result leans on float
semantics under those flags: a row's validity (every masked-in input
finite) is an integer test of the inputs' exponent bits, since LLVM 14
(numba 0.60) folds a float probe such as ``0 x`` to 0; min and max are
integer reductions of the floats' bits, which also vectorize where float
ones do not; and the coefficient is a function of its own without
reassociation, with which the compiler may rewrite ``1 - p`` as the
cancelling ``1 - 2^k (1 + e)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

from gaccore.batch import TokenBatch
from gaccore.rows import ROW_FIELDS, RowResults
from gaccore.stats import K3_SERIES_BELOW

# The output's rows, one per field of RowResults in its order.
(
    N_TOKENS,
    VALID,
    RL,
    SFT,
    NLL,
    SEQ_ADV,
    MEAN_A,
    MEAN_W,
    M2_A,
    M2_W,
    C_AW,
    MIN_A,
    MAX_A,
    MIN_W,
    MAX_W,
    KL_SUM,
    DEMO,
    SCORE,
) = range(len(ROW_FIELDS))
NO_EXPERT_FLAGS = np.zeros(0, np.bool_)  # stands in for expert=None: never read

FAST_MATH = {"reassoc", "contract", "arcp", "nsz"}
f32 = np.float32
i32 = np.int32
ZERO = f32(0.0)
ONE = f32(1.0)
FLT_MAX = f32(np.finfo(np.float32).max)
INT32_MAX = i32(np.iinfo(np.int32).max)
EXPONENT_BITS = i32(0x7F800000)  # of fp32: all set for NaN and inf, and only for them
# x = k ln2 + r with ln2 split in two, so that k ln2 is exact for the k of
# fp32's range. Below EXP_MIN_X, 2^k would leave fp32's normal range; p is
# taken as exp(-87) = 1.6e-38 there, 0 to any statistic.
LOG2E = f32(1.4426950408889634)
LN2_HI = f32(0.693359375)
LN2_LO = f32(-2.12194440e-4)
EXP_MIN_X = f32(-87.0)
# expm1(r) = r + r^2 (1/2! + r/3! + ... + r^7/9!): on |r| <= ln2 / 2 the
# next term is below 1e-8 of the value.
E2, E3, E4, E5, E6, E7, E8, E9 = (f32(1.0 / math.factorial(j)) for j in range(2, 10))


def _compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit``, keeping the machine code on disk where numba finds a
    writable place (``NUMBA_CACHE_DIR``, ``__pycache__``, the user's cache
    directory); where it finds none (a read-only install and home), numba
    refuses ``cache=True`` at import, and the pass compiles in each process
    instead."""

    def compile_(function: Callable[..., Any]) -> Any:
        try:
            return numba.njit(nogil=True, cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, **options)(function)

    return compile_


@intrinsic
def _float_of_bits(typingctx, bits):
    """The fp32 whose bits are the int32 ``bits``."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _bits_of_float(typingctx, value):
    """The bits of the fp32 ``value`` as an int32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@_compiled(fastmath={"contract"})
def _sft_coefficient(x, phi):
    """``w``: ``p (1 - p)`` (``phi``) or ``1 - p``, for fp32 ``x = logp <= 0``."""
    v = x if x > EXP_MIN_X else EXP_MIN_X
    k = np.floor(v * LOG2E + f32(0.5))
    r = v - k * LN2_HI - k * LN2_LO
    s = E8 + r * E9
    s = E7 + r * s
    s = E6 + r * s
    s = E5 + r * s
    s = E4 + r * s
    s = E3 + r * s
    s = E2 + r * s
    e = r + r * r * s
    scale = _float_of_bits(i32((i32(k) + i32(127)) << i32(23)))
    one_minus_p = (ONE - scale) - scale * e
    return (scale + scale * e) * one_minus_p if phi else one_minus_p


def _flip_negative(builder, bits):
    """Negative floats' magnitude bits flipped: ``bits ^ ((bits >> 31) & INT32_MAX)``
    in int32 (numba's own integer arithmetic would widen it to int64)."""
    sign = builder.ashr(bits, ir.Constant(ir.IntType(32), 31))
    return builder.xor(bits, builder.and_(sign, ir.Constant(ir.IntType(32), int(INT32_MAX))))


@intrinsic
def _exponent_bits(typingctx, value):
    """The exponent bits of the fp32 ``value`` as an int32: ``EXPONENT_BITS``
    exactly for NaN and inf. Integer work, which no fast-math flag can fold
    (a float test such as ``0 x`` is folded to 0 by some LLVM versions)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        bits = builder.bitcast(args[0], ir.IntType(32))
        return builder.and_(bits, ir.Constant(ir.IntType(32), int(EXPONENT_BITS)))

    return types.int32(types.float32), codegen


@intrinsic
def _order_key(typingctx, value):
    """An int32 key in the order of the fp32 ``value`` (the inverse is ``_float_of_key``)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return _flip_negative(builder, builder.bitcast(args[0], ir.IntType(32)))

    return types.int32(types.float32), codegen


@intrinsic
def _float_of_key(typingctx, key):
    """The fp32 whose ``_order_key`` is ``key``."""
    if key != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(_flip_negative(builder, args[0]), ir.FloatType())

    return types.float32(types.int32), codegen


@_compiled(fastmath=FAST_MATH)
def _k3(x):
    """``gaccore.stats.k3`` of one float64, compiled (that one is written for
    numpy arrays and tensors): its series below ``K3_SERIES_BELOW``,
    ``expm1(x) - x`` above."""
    if abs(x) < K3_SERIES_BELOW:
        return 0.5 * x * x * (1.0 + x / 3.0 * (1.0 + x / 4.0 * (1.0 + x / 5.0 * (1.0 + x / 6.0))))
    return math.expm1(x) - x


@_compiled(fastmath=FAST_MATH)
def _rows_kernel(logp, mask, adv, ref, expert, per_token, has_ref, has_expert, phi, out):
    rows, tokens = logp.shape
    # Row scratch, reused row after row. Each loop below is one vectorized
    # sweep; fp32 work and fp64 sums run in separate loops (mixing the
    # widths in one loop halves its vector width).
    x_row = np.empty(tokens, np.float32)  # clamped logp, 0 where masked out
    off_row = np.empty(tokens, np.float32)  # 0 where masked in, FLT_MAX where out
    w_row = np.empty(tokens, np.float32)  # 0 where masked out
    a_row = np.empty(tokens, np.float32)  # 0 where masked out
    for i in range(rows):
        logp_i = logp[i]
        mask_i = mask[i]
        # The largest exponent field of every masked-in input: EXPONENT_BITS
        # exactly when one of them is NaN or inf.
        exponent = i32(0)
        # w >= 0, and non-negative floats order as their bits do: the
        # extremes are integer reductions, the minimum over w lifted to
        # FLT_MAX where masked out, the maximum over w (0 where masked out).
        low_w = _bits_of_float(FLT_MAX)
        high_w = i32(0)
        for t in range(tokens):
            on = mask_i[t]
            raw = logp_i[t] if on else ZERO
            e = _exponent_bits(raw)
            exponent = e if e > exponent else exponent
            off = ZERO if on else FLT_MAX
            x = raw if raw < ZERO else ZERO  # NaN becomes 0 here; `exponent` has it
            w = _sft_coefficient(x, phi)
            off_row[t] = off
            x_row[t] = x
            w_row[t] = w
            lifted = _bits_of_float(w + off)
            bits = _bits_of_float(w)
            low_w = lifted if lifted < low_w else low_w
            high_w = bits if bits > high_w else high_w
        n = 0.0
        logp_sum = 0.0
        w_sum = 0.0
        for t in range(tokens):
            n += 1.0 if off_row[t] == ZERO else 0.0
            logp_sum += x_row[t]
            w_sum += w_row[t]
        count = max(n, 1.0)
        mean_w = w_sum / count
        mean_w32 = f32(mean_w)
        m2_w = 0.0
        for t in range(tokens):
            d = np.float64(w_row[t] - mean_w32) if off_row[t] == ZERO else 0.0
            m2_w += d * d
        out[MIN_W, i] = _float_of_bits(low_w)
        out[MAX_W, i] = _float_of_bits(high_w)

        if per_token:
            adv_i = adv[i]
            # Advantages have either sign: extremes over their order keys,
            # masked-out tokens lifted to FLT_MAX for the minimum and lowered
            # to -FLT_MAX for the maximum.
            low_a = _order_key(FLT_MAX)
            high_a = _order_key(-FLT_MAX)
            for t in range(tokens):
                a = adv_i[t] if mask_i[t] else ZERO
                e = _exponent_bits(a)
                exponent = e if e > exponent else exponent
                a_row[t] = a
                off = off_row[t]
                low = _order_key(a + off)
                high = _order_key(a - off)
                low_a = low if low < low_a else low_a
                high_a = high if high > high_a else high_a
            a_sum = 0.0
            for t in range(tokens):
                a_sum += a_row[t]
            mean_a = a_sum / count
            mean_a32 = f32(mean_a)
            m2_a = 0.0
            c_aw = 0.0
            for t in range(tokens):
                on = off_row[t] == ZERO
                da = np.float64(a_row[t] - mean_a32) if on else 0.0
                dw = np.float64(w_row[t] - mean_w32) if on else 0.0
                m2_a += da * da
                c_aw += da * dw
            out[MIN_A, i] = _float_of_key(low_a)
            out[MAX_A, i] = _float_of_key(high_a)
        else:
            # One advantage per row: a_t is constant along the row, so its mean
            # and extremes are adv_i, its M2 and co-moment exactly 0.
            mean_a = np.float64(adv[i, 0])
            e = _exponent_bits(adv[i, 0])
            exponent = e if e > exponent else exponent
            m2_a = 0.0
            c_aw = 0.0
            out[MIN_A, i] = mean_a
            out[MAX_A, i] = mean_a

        if has_ref:
            ref_i = ref[i]
            kl_sum = 0.0
            for t in range(tokens):
                r = ref_i[t] if mask_i[t] else ZERO
                e = _exponent_bits(r)
                exponent = e if e > exponent else exponent
                kl_sum += _k3(np.float64(r - x_row[t]))  # k3(0) = 0 where masked out
            out[KL_SUM, i] = kl_sum
        else:
            out[KL_SUM, i] = np.nan

        # The roles (SPEC §2), as gaccore.rows.with_roles sets them: without
        # expert flags every valid row is an RL row and the SFT statistic is
        # taken over the same rows, and no row is a demonstration.
        valid = 1.0 if n > 0.0 and exponent != EXPONENT_BITS else 0.0
        demo = valid if has_expert and expert[i] else 0.0
        out[N_TOKENS, i] = n
        out[VALID, i] = valid
        out[RL, i] = valid - demo
        out[SFT, i] = demo if has_expert else valid
        out[DEMO, i] = demo
        out[SCORE, i] = np.nan  # unscored: gaccore.rows.with_scores adds the verifier's scores
        out[NLL, i] = -logp_sum / count
        out[SEQ_ADV, i] = mean_a
        out[MEAN_A, i] = mean_a
        out[MEAN_W, i] = mean_w
        out[M2_A, i] = m2_a
        out[M2_W, i] = m2_w
        out[C_AW, i] = c_aw


def _fp32(values: torch.Tensor) -> np.ndarray:
    return values.detach().to(torch.float32).contiguous().numpy()


def _flags(values: torch.Tensor) -> np.ndarray:
    """A mask or expert flags as numpy bools (nonzero: set)."""
    values = values.detach()
    return (values if values.dtype == torch.bool else values != 0).contiguous().numpy()


def row_results(batch: TokenBatch[torch.Tensor], sft_coef: str, *, out: np.ndarray | None = None) -> RowResults:
    """Row results of one checked batch of CPU tensors, without its scores,
    as numpy arrays: the controller finalizes CPU rows on the host
    (``gaccore.kernels.tensors.as_tensors`` views them as tensors). ``out``,
    a float64 ``[len(ROW_FIELDS), B]`` array, receives them (tests poison it
    to see that every output is written); the fields are views of it."""
    rows = batch.rows
    if out is None:
        out = np.empty((len(ROW_FIELDS), rows), np.float64)
    elif out.shape != (len(ROW_FIELDS), rows) or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float64 array of shape {(len(ROW_FIELDS), rows)}")
    logp32, adv = _fp32(batch.logp), batch.adv
    # Without ref_logp the kernel never reads `ref`: logp stands in, so both
    # cases compile to one signature.
    _rows_kernel(
        logp32,
        _flags(batch.mask),
        _fp32(adv if adv.ndim == 2 else adv.reshape(rows, 1)),
        logp32 if batch.ref_logp is None else _fp32(batch.ref_logp),
        NO_EXPERT_FLAGS if batch.expert is None else _flags(batch.expert),
        adv.ndim == 2,
        batch.ref_logp is not None,
        batch.expert is not None,
        sft_coef == "phi",
        out,
    )
    return RowResults(*out)
