from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gaccore import warmup_cosine


def test_phases_and_endpoints() -> None:
    prior = warmup_cosine(10, 20, mu_peak=0.8, mu_valley=0.2, mu_start=0.1)
    assert prior(0) == pytest.approx(0.1)
    assert prior(5) == pytest.approx(0.45)
    assert prior(10) == pytest.approx(0.8)
    assert prior(20) == pytest.approx(0.5)
    assert prior(30) == pytest.approx(0.2)
    assert prior(10**9) == pytest.approx(0.2)


def test_zero_length_phases_are_skipped() -> None:
    assert warmup_cosine(0, 10, 0.9, 0.1)(0) == pytest.approx(0.9)
    assert warmup_cosine(5, 0, 0.9, 0.1)(5) == pytest.approx(0.1)
    assert warmup_cosine(0, 0, 0.9, 0.1)(0) == pytest.approx(0.1)


@given(
    warmup=st.integers(0, 50),
    decay=st.integers(0, 50),
    peak=st.floats(0, 1),
    valley=st.floats(0, 1),
    start=st.floats(0, 1),
    step=st.integers(0, 200),
)
def test_values_stay_between_the_knots(warmup, decay, peak, valley, start, step) -> None:
    value = warmup_cosine(warmup, decay, peak, valley, start)(step)
    lo, hi = min(peak, valley, start), max(peak, valley, start)
    assert lo - 1e-12 <= value <= hi + 1e-12


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(decay_steps=2.5), "decay_steps"),
        (dict(mu_peak=math.nan), "mu_peak"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field) -> None:
    args = dict(warmup_steps=1, decay_steps=1, mu_peak=0.5, mu_valley=0.1) | kwargs
    with pytest.raises(ValueError, match=field):
        warmup_cosine(**args)
