"""gaccore.kernels.batch_stats: the torch twin and the Triton kernel against
the float64 numpy reference, edge cases, validation, determinism."""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")

# The Triton kernel runs on CPU under the interpreter; it must be set before
# gaccore.kernels.fused (and so triton.jit) is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from kernel_cases import RTOL, assert_stats_close, make_batch, numpy_stats  # noqa: E402

from gaccore.kernels import RowResults, batch_stats  # noqa: E402
from gaccore.kernels import reference  # noqa: E402
from gaccore.kernels.rows import finalize  # noqa: E402

BACKENDS = ["torch"]
SHAPES = [(1, 1), (3, 5), (7, 33), (37, 129)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows,tokens", SHAPES)
@pytest.mark.parametrize("adv_per_token", [False, True])
def test_matches_numpy_on_odd_shapes(backend, rows, tokens, adv_per_token):
    batch = make_batch(rows, tokens, seed=rows * 1000 + tokens, adv_per_token=adv_per_token)
    got = batch_stats(**batch, backend=backend)
    assert_stats_close(got, numpy_stats(batch), RTOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sft_coef", ["phi", "nll"])
def test_logp_dtypes_and_sft_coefs(backend, dtype, sft_coef):
    batch = make_batch(9, 65, seed=3, dtype=dtype, adv_per_token=True)
    got = batch_stats(**batch, sft_coef=sft_coef, backend=backend)
    assert_stats_close(got, numpy_stats(batch, sft_coef=sft_coef), RTOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("adv_per_token", [False, True])
def test_large_advantage_offset(backend, adv_per_token):
    """Advantages around 1e3 with unit spread, log-probs near 0 (SPEC §5)."""
    batch = make_batch(37, 129, seed=11, adv_per_token=adv_per_token, adv_offset=1e3)
    assert_stats_close(batch_stats(**batch, backend=backend), numpy_stats(batch), RTOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.uint8, torch.float32])
def test_mask_dtypes(backend, mask_dtype):
    batch = make_batch(5, 17, seed=5, mask_dtype=mask_dtype)
    assert_stats_close(batch_stats(**batch, backend=backend), numpy_stats(batch), RTOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    """Transposed and strided views give the same statistics as their copies."""
    base = make_batch(6, 21, seed=8, adv_per_token=True)
    strided = {
        "logp": base["logp"].t().contiguous().t(),
        "mask": torch.stack([base["mask"], ~base["mask"]], dim=2)[:, :, 0],
        "adv": base["adv"].t().contiguous().t(),
        "expert": torch.stack([base["expert"], base["expert"]], dim=1)[:, 1],
        "ref_logp": torch.stack([base["ref_logp"], base["ref_logp"]], dim=2)[:, :, 1],
    }
    assert not strided["logp"].is_contiguous() and not strided["mask"].is_contiguous()
    assert_stats_close(batch_stats(**strided, backend=backend), numpy_stats(base), RTOL[torch.float32])


def _edge_batches():
    """All masked, one row, no expert rows, only expert rows, expert=None,
    invalid rows, a single token, T = 0, and a degenerate coefficient."""
    full = make_batch(6, 9, seed=2, adv_per_token=True)
    yield "all_masked", {**full, "mask": torch.zeros(6, 9, dtype=torch.bool)}
    yield "one_row", make_batch(1, 9, seed=4, expert=False)
    yield "no_expert_rows", {**full, "expert": torch.zeros(6, dtype=torch.bool)}
    yield "only_expert_rows", {**full, "expert": torch.ones(6, dtype=torch.bool)}
    yield "expert_none", {**full, "expert": None}
    yield "no_ref", {**full, "ref_logp": None}
    bad_logp = full["logp"].clone()
    bad_logp[1, full["mask"][1].nonzero()[0]] = math.nan
    bad_adv = full["adv"].clone()
    bad_adv[2, full["mask"][2].nonzero()[0]] = math.inf
    yield "invalid_rows", {**full, "logp": bad_logp, "adv": bad_adv}
    one = torch.zeros(6, 9, dtype=torch.bool)
    one[3, 4] = True
    yield "one_token", {**full, "mask": one}
    yield "no_tokens_axis", make_batch(4, 0, seed=1)
    yield "constant_adv", {**make_batch(5, 7, seed=9), "adv": torch.full((5,), 2.5)}
    yield "positive_logp_clamped", {**full, "logp": full["logp"].abs() * 1e-3}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,batch", list(_edge_batches()), ids=[n for n, _ in _edge_batches()])
def test_edge_cases(backend, name, batch):
    assert_stats_close(batch_stats(**batch, backend=backend), numpy_stats(batch), RTOL[torch.float32])


@pytest.mark.parametrize("trim", [0.0, 0.1, 0.25, 0.49])
def test_trim_drops_exact_counts(trim):
    batch = make_batch(23, 11, seed=6)
    assert_stats_close(
        batch_stats(**batch, trim=trim, backend="torch"), numpy_stats(batch, trim=trim), RTOL[torch.float32]
    )


def test_micro_batches_merge_exactly():
    """Rows of two micro-batches concatenated = one batch holding both."""
    a, b = make_batch(5, 13, seed=1, adv_per_token=True), make_batch(8, 13, seed=2, adv_per_token=True)
    merged = reference.row_results(**a).merge(reference.row_results(**b))
    whole = {k: torch.cat([a[k], b[k]]) for k in a}
    assert_stats_close(finalize(merged), numpy_stats(whole), 1e-12)


def test_pack_round_trip():
    rows = reference.row_results(**make_batch(4, 6, seed=3))
    again = RowResults.unpack(rows.pack())
    for name in rows.__dataclass_fields__:
        torch.testing.assert_close(getattr(again, name), getattr(rows, name), equal_nan=True, rtol=0, atol=0)
    with pytest.raises(ValueError, match="packed row results"):
        RowResults.unpack(torch.zeros(3, 4))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    tokens=st.integers(1, 24),
    seed=st.integers(0, 2**16),
    adv_per_token=st.booleans(),
    expert=st.booleans(),
    mask_rate=st.floats(0.0, 1.0),
)
def test_twin_property(rows, tokens, seed, adv_per_token, expert, mask_rate):
    """The twin equals the numpy reference on arbitrary small batches."""
    batch = make_batch(
        rows, tokens, seed=seed, adv_per_token=adv_per_token, expert=expert, mask_rate=mask_rate
    )
    assert_stats_close(batch_stats(**batch, backend="torch"), numpy_stats(batch), 1e-9)


def test_validation_names_the_argument():
    batch = make_batch(3, 4)
    with pytest.raises(TypeError, match="logp must be a torch.Tensor"):
        batch_stats(**{**batch, "logp": np.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"adv must have shape \[B\] = \[3\]"):
        batch_stats(**{**batch, "adv": torch.zeros(4)})
    with pytest.raises(TypeError, match="logp must have a floating-point dtype"):
        batch_stats(**{**batch, "logp": torch.zeros(3, 4, dtype=torch.int32)})
    with pytest.raises(TypeError, match="expert must have a bool or integer dtype"):
        batch_stats(**{**batch, "expert": torch.zeros(3)})
    with pytest.raises(ValueError, match="backend must be one of"):
        batch_stats(**batch, backend="cuda")
    with pytest.raises(ValueError, match="trim must be"):
        batch_stats(**batch, trim=0.5)
    with pytest.raises(ValueError, match="sft_coef must be"):
        batch_stats(**batch, sft_coef="kl")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="mask is on"):
            batch_stats(**{**batch, "mask": batch["mask"].cuda()})


def test_outputs_are_0d_on_the_inputs_device():
    stats = batch_stats(**make_batch(3, 4), backend="torch")
    for value in stats.__dict__.values():
        assert value.shape == () and value.device == torch.device("cpu")
    assert stats.var_rl.dtype == torch.float64 and stats.n_rl.dtype == torch.int64
