"""The row results on CPU in one compiled pass per row (numba).

The CPU counterpart of the fused Triton kernel (``gaccore.kernels.fused``):
each row of the batch is read once, its tokens' statistics are accumulated
in a few vectorized loops over the row, and every field of the row results,
the roles included, is written by that row's iteration. It replaces the torch twin
(``gaccore.kernels.reference``) on CPU where numba is installed
(``pip install gaccore[cpu]``): the twin makes some 40 passes over
batch-sized temporaries, each a separate torch call, and at small shapes
those calls cost more than the arithmetic.

Element-wise numerics are the kernel's: values converted to fp32 right
after they are read, masked-out positions replaced by 0 before any
arithmetic (padding may be NaN or inf), logp clamped to ``<= 0``, the SFT
coefficient from ``p = exp(x)`` and ``1 - p``, with ``1 - p = -expm1(x)`` by
its series on (-1, 0] where ``1 - exp(x)`` would cancel. Sums and second
moments accumulate in fp64, moments about the fp32-rounded row mean, as the
twin's do; k3 is fp64 (``gaccore.stats.k3``'s series and direct form).

``exp`` is written out (Cody-Waite reduction, a degree-6 polynomial, 2^k
from its exponent bits): numba calls the C library's scalar ``expf`` for
``math.exp``, about 15 ns a token here, against well under 1 ns for the
vectorized form, and the accuracy is the same (about 1 ulp).
Fast-math flags allow reassociation (what lets sums vectorize) but not
``nnan``/``ninf``: a NaN or inf that is masked in must reach the row's
finite-probe and make the row invalid.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from gaccore.rows import RowResults
from gaccore.stats import K3_SERIES_BELOW

# The row results this pass writes, every field of RowResults, in this order.
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
ZERO = f32(0.0)
ONE = f32(1.0)
FLT_MAX = f32(np.finfo(np.float32).max)
INT32_MAX = np.int32(np.iinfo(np.int32).max)
INT32_MIN = np.int32(np.iinfo(np.int32).min)
# exp(x) for x <= 0: x = k ln2 + r with ln2 split in two so k ln2 is exact,
# then 2^k (1 + r + r^2 P(r)). Below EXP_MIN_X, 2^k leaves fp32's normal
# range; p = exp(-87) = 1.6e-38 there is 0 to any statistic.
LOG2E = f32(1.4426950408889634)
LN2_HI = f32(0.693359375)
LN2_LO = f32(-2.12194440e-4)
EXP_MIN_X = f32(-87.0)
P0, P1, P2, P3, P4, P5 = (
    f32(5.0000001201e-1),
    f32(1.6666665459e-1),
    f32(4.1665795894e-2),
    f32(8.3334519073e-3),
    f32(1.3981999507e-3),
    f32(1.9875691500e-4),
)
# Taylor coefficients 2 / (j + 2)! of Q in expm1(x) = x (1 + x/2 Q(x)), the
# fused kernel's series (truncated after x^11/11!: < 5e-9 relative on |x| < 1).
Q1, Q2, Q3, Q4, Q5, Q6, Q7, Q8, Q9 = (f32(2.0 / math.factorial(j + 2)) for j in range(1, 10))


@numba.njit(fastmath=FAST_MATH, nogil=True, cache=True)
def _k3(x: float) -> float:  # pragma: no cover - compiled
    if abs(x) < K3_SERIES_BELOW:
        return 0.5 * x * x * (1.0 + x / 3.0 * (1.0 + x / 4.0 * (1.0 + x / 5.0 * (1.0 + x / 6.0))))
    return math.expm1(x) - x


@numba.njit(nogil=True, cache=True)
def _smallest(keys):  # pragma: no cover - compiled
    low = INT32_MAX
    for t in range(keys.shape[0]):
        key = keys[t]
        low = key if key < low else low
    return low


@numba.njit(nogil=True, cache=True)
def _largest(keys):  # pragma: no cover - compiled
    high = INT32_MIN
    for t in range(keys.shape[0]):
        key = keys[t]
        high = key if key > high else high
    return high


@numba.njit(fastmath=FAST_MATH, nogil=True, cache=True)
def _rows_kernel(logp, mask, adv, ref, expert, per_token, has_ref, has_expert, phi, out):  # pragma: no cover - compiled
    rows, tokens = logp.shape
    # Row scratch, reused row after row: each loop below is a separate
    # vectorized sweep over these (a loop that also reduced a min or max
    # would not vectorize).
    x_row = np.empty(tokens, np.float32)  # clamped logp, 0 where masked out
    off_row = np.empty(tokens, np.float32)  # 0 where masked in, FLT_MAX where out
    poly_row = np.empty(tokens, np.float32)  # exp(r) of x = k ln2 + r
    scale_bits = np.empty(tokens, np.int32)  # 2^k, as fp32 bits
    scale_row = scale_bits.view(np.float32)
    w_row = np.empty(tokens, np.float32)
    w_bits = w_row.view(np.int32)
    lifted_row = np.empty(tokens, np.float32)  # w + off_row
    lifted_bits = lifted_row.view(np.int32)
    a_row = np.empty(tokens, np.float32)
    a_bits = a_row.view(np.int32)
    extreme_bits = np.empty(2, np.int32)  # an extreme's key turned back to fp32 bits
    extreme = extreme_bits.view(np.float32)
    for i in range(rows):
        logp_i = logp[i]
        mask_i = mask[i]
        n = 0
        # The sum of 0 x every masked-in input: 0 exactly when all are finite
        # (0 x inf is NaN), and never an overflow.
        probe = ZERO
        logp_sum = 0.0
        for t in range(tokens):
            on = mask_i[t]
            raw = logp_i[t] if on else ZERO
            probe += raw * ZERO
            n += 1 if on else 0
            off_row[t] = ZERO if on else FLT_MAX
            x = raw if raw < ZERO else ZERO  # NaN becomes 0 here; the probe has it
            logp_sum += x
            x_row[t] = x
            v = x if x > EXP_MIN_X else EXP_MIN_X
            k = np.floor(v * LOG2E + f32(0.5))
            r = v - k * LN2_HI - k * LN2_LO
            p = P5 * r + P4
            p = p * r + P3
            p = p * r + P2
            p = p * r + P1
            p = p * r + P0
            poly_row[t] = p * r * r + r + ONE
            scale_bits[t] = (np.int32(k) + np.int32(127)) << np.int32(23)
        w_sum = 0.0
        for t in range(tokens):
            x = x_row[t]
            p = poly_row[t] * scale_row[t]
            s = Q8 + x * Q9
            s = Q7 + x * s
            s = Q6 + x * s
            s = Q5 + x * s
            s = Q4 + x * s
            s = Q3 + x * s
            s = Q2 + x * s
            s = Q1 + x * s
            s = ONE + x * s
            q = -(x * (ONE + f32(0.5) * x * s)) if x > -ONE else ONE - p  # 1 - p; 0 where masked out
            w = p * q if phi else q
            w_row[t] = w
            lifted_row[t] = w + off_row[t]
            w_sum += w
        count = np.float64(max(n, 1))
        mean_w = w_sum / count
        mean_w32 = f32(mean_w)
        m2_w = 0.0
        for t in range(tokens):
            d = np.float64(w_row[t] - mean_w32) if off_row[t] == ZERO else 0.0
            m2_w += d * d
        # Extremes as integer reductions of the fp32 bits (a float min or max
        # reduction does not vectorize): w >= 0, and non-negative floats
        # order as their bits do; masked-out tokens are lifted to FLT_MAX
        # for the minimum and hold w = 0 for the maximum.
        extreme_bits[0] = _smallest(lifted_bits)
        extreme_bits[1] = _largest(w_bits)
        min_w = extreme[0]
        max_w = extreme[1]

        if per_token:
            adv_i = adv[i]
            a_sum = 0.0
            for t in range(tokens):
                a = adv_i[t] if mask_i[t] else ZERO
                a_row[t] = a
                a_sum += a
                probe += a * ZERO
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
            # Advantages have either sign: each float's bits become an integer
            # key in the floats' order (negative floats' magnitude bits
            # flipped; the same map turns a key back), masked-out tokens at
            # the ends of that order, where 0 is neither extreme.
            low_key = INT32_MAX
            high_key = INT32_MIN
            for t in range(tokens):
                bits = a_bits[t]
                key = bits ^ ((bits >> np.int32(31)) & INT32_MAX)
                on = off_row[t] == ZERO
                low = key if on else INT32_MAX
                high = key if on else INT32_MIN
                low_key = low if low < low_key else low_key
                high_key = high if high > high_key else high_key
            extreme_bits[0] = low_key ^ ((low_key >> np.int32(31)) & INT32_MAX)
            extreme_bits[1] = high_key ^ ((high_key >> np.int32(31)) & INT32_MAX)
            min_a = extreme[0] if low_key != INT32_MAX else FLT_MAX
            max_a = extreme[1] if high_key != INT32_MIN else -FLT_MAX
            out[MIN_A, i] = min_a
            out[MAX_A, i] = max_a
        else:
            # One advantage per row: a_t is constant along the row, so its mean
            # and extremes are adv_i, its M2 and co-moment exactly 0.
            mean_a = np.float64(adv[i, 0])
            probe += adv[i, 0] * ZERO
            m2_a = 0.0
            c_aw = 0.0
            out[MIN_A, i] = mean_a
            out[MAX_A, i] = mean_a

        if has_ref:
            ref_i = ref[i]
            kl_sum = 0.0
            for t in range(tokens):
                r = ref_i[t] if mask_i[t] else ZERO
                probe += r * ZERO
                kl_sum += _k3(np.float64(r - x_row[t]))  # k3(0) = 0 where masked out
            out[KL_SUM, i] = kl_sum
        else:
            out[KL_SUM, i] = np.nan

        # The roles (SPEC §2), as gaccore.rows.with_roles sets them: without
        # expert flags every valid row is an RL row and the SFT statistic is
        # taken over the same rows, and no row is a demonstration.
        valid = 1.0 if n > 0 and probe == ZERO else 0.0
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
        out[MIN_W, i] = min_w
        out[MAX_W, i] = max_w


def _fp32(value: torch.Tensor) -> np.ndarray:
    return value.detach().to(torch.float32).contiguous().numpy()


def cpu_row_results(
    logp: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    expert: torch.Tensor | None = None,
    *,
    ref_logp: torch.Tensor | None = None,
    sft_coef: str = "phi",
    out: np.ndarray | None = None,
) -> RowResults:
    """Row results of one batch of CPU tensors (inputs already validated by
    the caller). ``out``, a float64 ``[len(ROW_FIELDS), B]`` array, receives
    them (tests poison it to see that every output is written); the fields
    are views of it."""
    rows = logp.shape[0]
    if out is None:
        out = np.empty((len(ROW_FIELDS), rows), np.float64)
    elif out.shape != (len(ROW_FIELDS), rows) or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float64 array of shape {(len(ROW_FIELDS), rows)}")
    logp32 = _fp32(logp)
    on = (mask.detach() if mask.dtype == torch.bool else mask.detach() != 0).contiguous().numpy()
    adv32 = _fp32(adv if adv.ndim == 2 else adv.reshape(rows, 1))
    # Without ref_logp the kernel never reads `ref`: logp stands in, so both
    # cases compile to one signature.
    ref32 = logp32 if ref_logp is None else _fp32(ref_logp)
    if expert is None:
        flags = NO_EXPERT_FLAGS
    else:
        flags = (expert.detach() if expert.dtype == torch.bool else expert.detach() != 0).contiguous().numpy()
    has = (ref_logp is not None, expert is not None)
    _rows_kernel(logp32, on, adv32, ref32, flags, adv.ndim == 2, *has, sft_coef == "phi", out)
    return RowResults(**dict(zip(ROW_FIELDS, torch.from_numpy(out).unbind(0), strict=True)))
