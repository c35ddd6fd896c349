"""Triton numerics shared by the row-statistics kernel and the close-step kernel.

fp32 has no accurate ``expm1`` in Triton's interpreter (libdevice is
GPU-only), so ``expm1`` and the k3 term use their Taylor series where the
direct form would cancel, with a band wide enough (|x| < 1) that the direct
form outside it loses no more than a few units in the last place. On a GPU,
Triton's fp32 ``exp`` is ``ex2.approx`` of ``x log2(e)``, relative error
about 6e-8 |x| plus 2 ulp: 4e-6 at the fp32 direct form's limit x = 64,
inside SPEC §5's 1e-5. Past it, k3 = (exp(x / 8))^8 carries eight times
exp(x / 8)'s error, 1e-5 at x ~ 150 (a KL of e^150 per token: its size, not
its fifth digit, is what a controller reads); x itself, an fp32 difference,
is off by up to half an ulp, 4e-6 relative in k3 at x = 100.

The close-step kernel's float64 helpers keep torch's NaN semantics, so its
results equal the plain path's: ``clip`` keeps NaN, ``masked_min`` and
``masked_max`` return NaN when a selected value is NaN (``torch.amin``).

Second moments are running (shift, mean, M2) triples updated by Welford's
rule and combined by Chan's merge, never ``sum(x^2) - n mean^2``.
"""

import math

import triton
import triton.language as tl

FLT_MAX = tl.constexpr(3.4028234663852886e38)  # padding for min/max of no tokens
INF = tl.constexpr(float("inf"))
# NaN by its bits: a NaN constexpr never equals itself, which Triton's check of a
# global's value between compilations rejects.
NAN_BITS = tl.constexpr(0x7FF8000000000000)
# Taylor coefficients 2 / (j + 2)! of Q (see exp_series_tail): Horner's
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
def is_finite(x):
    return tl.abs(x) < INF  # false for NaN and +-inf


@triton.jit
def nan():
    """A float64 NaN."""
    return tl.full([], NAN_BITS, tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def exp_series_tail(x):
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
def expm1_nonpos(x, b_exp):
    """``expm1(x)`` for ``x <= 0`` given ``b_exp = exp(x)``, in fp32: the series
    on (-1, 0], ``exp(x) - 1`` below (1 - exp(x) >= 0.63 there, so the
    subtraction loses nothing)."""
    return tl.where(x > -1.0, x * (1.0 + 0.5 * x * exp_series_tail(x)), b_exp - 1.0)


@triton.jit
def k3(x):
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
    b_lo = tl.where(tl.abs(x) < 1.0, 0.5 * x * x * exp_series_tail(x), b_e - 1.0 - x)
    b_pow = tl.where(m_hi, b_e, 0.0).to(tl.float64)  # exp(x / 8), squared thrice
    b_pow = b_pow * b_pow
    b_pow = b_pow * b_pow
    return tl.where(m_hi, 0.0, b_lo), b_pow * b_pow


@triton.jit
def welford(m_on, b_rn, b_x, l_k, l_m, l_m2):
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
def chan_combine(n1, ma1, mw1, m2a1, m2w1, caw1, n2, ma2, mw2, m2a2, m2w2, caw2):
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


# -- float64 scalars and masked reductions over a block of rows (the close-step kernel) --


@triton.jit
def f64(x):
    """``x`` as a float64 scalar: a Python float's every digit, a tensor converted."""
    return tl.full([], x, tl.float64)


@triton.jit
def clip(x, lo, hi):
    """``torch.clamp(x, lo, hi)``: NaN stays NaN."""
    return tl.where(x < lo, lo, tl.where(x > hi, hi, x))


@triton.jit
def at_least_one(x):
    return tl.where(x >= 1.0, x, 1.0)


@triton.jit
def count(m):
    return tl.sum(m.to(tl.int32)).to(tl.float64)


@triton.jit
def masked_sum(m, x):
    return tl.sum(tl.where(m, x, 0.0))


@triton.jit
def masked_min(m, x):
    """min of the selected values: +inf when none is, NaN when one is NaN (``torch.amin``)."""
    b_lo = tl.min(tl.where(m & (x == x), x, INF))
    return tl.where(tl.max((m & (x != x)).to(tl.int32)) > 0, nan(), b_lo)


@triton.jit
def masked_max(m, x):
    """max of the selected values: -inf when none is, NaN when one is NaN (``torch.amax``)."""
    b_hi = tl.max(tl.where(m & (x == x), x, -INF))
    return tl.where(tl.max((m & (x != x)).to(tl.int32)) > 0, nan(), b_hi)


@triton.jit
def masked_mean(m, x):
    """Mean of the selected values; NaN when none is selected."""
    b_n = count(m)
    return tl.where(b_n > 0.0, masked_sum(m, x) / at_least_one(b_n), nan())
