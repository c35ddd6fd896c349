"""The close-step kernel's own Triton helpers: an observation by where it
comes from, the EMA fold, the SFT rows after the filter, the success prior.
Each mirrors the function of ``gaccore.step`` or ``gaccore.rows`` it names,
operation for operation in float64."""

import sys

import triton
import triton.language as tl

from gaccore import step

from ..triton_numerics import clip, f64, is_finite, nan

# Where an observation comes from (the kernel's *_FROM constexprs).
FROM_NONE = tl.constexpr(0)
FROM_HOST = tl.constexpr(1)
FROM_TENSOR = tl.constexpr(2)

F64_MAX = tl.constexpr(sys.float_info.max)  # the largest float64
MIN_FAILURE_RATE = tl.constexpr(step.MIN_FAILURE_RATE)


@triton.jit
def sft_rows(p_sft, p_demo, p_score, o_b, m_b, FILTER: tl.constexpr, FILTER_AT: tl.constexpr):
    """The SFT rows, less the demonstrations the filter drops (``gaccore.rows.kept_demos``)."""
    m_sft = m_b & (tl.load(p_sft + o_b, mask=m_b, other=0.0) != 0.0)
    if FILTER:
        m_demo = tl.load(p_demo + o_b, mask=m_b, other=0.0) != 0.0
        b_score = tl.load(p_score + o_b, mask=m_b, other=0.0)
        m_sft = m_sft & (~(b_score < f64(FILTER_AT)) | ~m_demo)
    return m_sft


@triton.jit
def fold(ema, has, value, beta):
    """``gaccore.step.fold``: a finite value into an EMA (the first one initializes it).
    Returns the new EMA, its flag, and whether the value was finite."""
    m_finite = is_finite(value)
    value = tl.where(m_finite, value, 0.0)
    folded = clip(tl.where(has, beta * ema + (1.0 - beta) * value, value), -f64(F64_MAX), f64(F64_MAX))
    return tl.where(m_finite, folded, ema), has | m_finite, m_finite


@triton.jit
def observation(p_value, host_value, FROM: tl.constexpr):
    """A step's observation: read from a tensor, a host value, or none (NaN)."""
    if FROM == FROM_TENSOR:
        value = tl.load(p_value).to(tl.float64)
    elif FROM == FROM_HOST:
        value = f64(host_value)
    else:
        value = nan()
    return value


@triton.jit
def success_prior(policy_success, has_policy_success, target, mu_peak, mu_valley):
    """``gaccore.step.success_prior``: mu_peak at no success, mu_valley at the target, a smoothstep between."""
    progress = clip(policy_success / target, 0.0, 1.0)
    handed_over = progress * progress * (3.0 - 2.0 * progress)
    value = mu_peak - (mu_peak - mu_valley) * handed_over
    return tl.where(has_policy_success, value, mu_peak)
