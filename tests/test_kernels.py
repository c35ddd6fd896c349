"""gaccore.batch_stats on torch tensors: the torch twin and the Triton kernel against
the float64 numpy reference, edge cases, validation, determinism."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

# Without a GPU the Triton kernel runs in the interpreter (conftest.py sets TRITON_INTERPRET).
import numpy as np  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from kernel_cases import RTOL, assert_rows_match_twin, assert_stats_close, make_batch, numpy_stats, rows_from  # noqa: E402

from gaccore import batch_stats, registry  # noqa: E402
from gaccore.kernels.row_stats import fused, launch, twin  # noqa: E402
from gaccore.rows import ROW_FIELDS, RowResults, finalize  # noqa: E402

needs_numba = pytest.mark.skipif(not registry.installed("numba"), reason="could not import 'numba'")
FORCED_METHODS = ["torch", pytest.param("numba", marks=needs_numba), "triton"]
DEVICE_METHODS = ["torch", "triton"]  # what runs on a GPU
SHAPES = [(1, 1), (3, 5), (7, 33), (37, 129)]


@pytest.mark.parametrize("method", FORCED_METHODS)
@pytest.mark.parametrize("rows,tokens", SHAPES)
@pytest.mark.parametrize("adv_per_token", [False, True])
def test_matches_numpy_on_odd_shapes(method, rows, tokens, adv_per_token):
    batch = make_batch(rows, tokens, seed=rows * 1000 + tokens, adv_per_token=adv_per_token)
    got = batch_stats(**batch, implementation=method)
    assert_stats_close(got, numpy_stats(batch), RTOL[torch.float32])


@pytest.mark.parametrize("method", FORCED_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sft_coef", ["phi", "nll"])
def test_logp_dtypes_and_sft_coefs(method, dtype, sft_coef):
    batch = make_batch(9, 65, seed=3, dtype=dtype, adv_per_token=True)
    got = batch_stats(**batch, sft_coef=sft_coef, implementation=method)
    assert_stats_close(got, numpy_stats(batch, sft_coef=sft_coef), RTOL[dtype])


@pytest.mark.parametrize("method", FORCED_METHODS)
@pytest.mark.parametrize("adv_per_token", [False, True])
def test_large_advantage_offset(method, adv_per_token):
    """Advantages around 1e3 with unit spread, log-probs near 0 (SPEC §5)."""
    batch = make_batch(37, 129, seed=11, adv_per_token=adv_per_token, adv_offset=1e3)
    assert_stats_close(batch_stats(**batch, implementation=method), numpy_stats(batch), RTOL[torch.float32])


@pytest.mark.parametrize("method", FORCED_METHODS)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.uint8, torch.float32])
def test_mask_dtypes(method, mask_dtype):
    batch = make_batch(5, 17, seed=5, mask_dtype=mask_dtype)
    assert_stats_close(batch_stats(**batch, implementation=method), numpy_stats(batch), RTOL[torch.float32])


@pytest.mark.parametrize("method", FORCED_METHODS)
@pytest.mark.parametrize("adv_dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("adv_per_token", [False, True])
def test_adv_ref_and_expert_dtypes(method, adv_dtype, adv_per_token):
    """float64 or bfloat16 advantages, a bfloat16 ref_logp, integer expert flags."""
    batch = make_batch(7, 23, seed=15, adv_per_token=adv_per_token)
    batch = {
        **batch,
        "adv": batch["adv"].to(adv_dtype),
        "ref_logp": batch["ref_logp"].to(torch.bfloat16),
        "expert": batch["expert"].to(torch.int32) * 3,
    }
    host = {**batch, "adv": batch["adv"].to(torch.float64)}
    assert_stats_close(batch_stats(**batch, implementation=method), numpy_stats(host), RTOL[torch.float32])


@pytest.mark.parametrize("method", FORCED_METHODS)
def test_non_contiguous_inputs(method):
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
    assert_stats_close(batch_stats(**strided, implementation=method), numpy_stats(base), RTOL[torch.float32])


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


# The interpreter evaluates both sides of tl.where, so invalid rows warn in numpy.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("method", FORCED_METHODS)
@pytest.mark.parametrize("name,batch", list(_edge_batches()), ids=[n for n, _ in _edge_batches()])
def test_edge_cases(method, name, batch):
    assert_stats_close(batch_stats(**batch, implementation=method), numpy_stats(batch), RTOL[torch.float32])


@pytest.mark.parametrize("adv_offset", [0.0, 1e3])
@pytest.mark.parametrize("adv_per_token", [False, True])
def test_kernel_merges_many_blocks(adv_per_token, adv_offset):
    """Rows longer than a block: Chan merges across 9 blocks of 16 tokens."""
    batch = make_batch(5, 129, seed=12, adv_per_token=adv_per_token, adv_offset=adv_offset)
    rows = rows_from(fused, batch, block_t=16)
    assert_stats_close(finalize(rows), numpy_stats(batch), RTOL[torch.float32])


def test_kernel_default_blocks_with_a_partial_last_block():
    """T = 4100 at the default block size: four full 1024-token blocks and a partial one."""
    batch = make_batch(2, 4100, seed=16, adv_per_token=True, adv_offset=1e3, mask_rate=0.1)
    assert launch.block_size(4100) == launch.MAX_BLOCK_T
    assert_stats_close(batch_stats(**batch, implementation="triton"), numpy_stats(batch), RTOL[torch.float32])


@settings(max_examples=15, deadline=None)
@given(
    rows=st.integers(1, 6),
    tokens=st.integers(1, 70),
    seed=st.integers(0, 2**16),
    adv_per_token=st.booleans(),
    mask_rate=st.floats(0.0, 1.0),
    block_t=st.sampled_from([16, 32, 128]),
    chunks=st.integers(1, 4),
)
def test_kernel_property(rows, tokens, seed, adv_per_token, mask_rate, block_t, chunks):
    """The kernel equals the numpy reference for any batch, block size and split."""
    batch = make_batch(rows, tokens, seed=seed, adv_per_token=adv_per_token, mask_rate=mask_rate)
    rows_out = rows_from(fused, batch, block_t=block_t, chunks=chunks)
    assert_stats_close(finalize(rows_out), numpy_stats(batch), RTOL[torch.float32])


def poisoned_runs(batch, rows, device="cpu", **options):
    """The kernel's output buffer after runs into a buffer poisoned with NaN,
    then with a finite sentinel, then NaN again: equal bits show that every
    output was written (the unscored ``score`` is NaN by design) and that
    repeats are bit-identical."""
    runs = []
    for poison in (math.nan, 1234.5, math.nan):
        out = torch.full((len(ROW_FIELDS), rows), poison, dtype=torch.float64, device=device)
        last = rows_from(fused, batch, out=out, **options)
        runs.append(out.clone())
    for run in runs[1:]:
        assert torch.equal(run.view(torch.int64), runs[0].view(torch.int64)), (
            "an output left unwritten, or a repeat differs"
        )
    return last


def test_kernel_writes_every_output_and_is_bit_identical():
    """Outputs poisoned before launch; runs agree bit for bit."""
    batch = make_batch(9, 129, seed=13, adv_per_token=True)
    rows = poisoned_runs(batch, 9, block_t=32)
    assert_stats_close(finalize(rows), numpy_stats(batch), RTOL[torch.float32])


@pytest.mark.parametrize("rows,tokens", [(1, 257), (3, 101), (5, 33)])
@pytest.mark.parametrize("adv_per_token", [False, True])
def test_kernel_split_rows(rows, tokens, adv_per_token):
    """Rows split in 3 chunks of whole 16-token blocks, T not a multiple of the
    block, advantages around 1e3: every output written, bit-identical run to
    run, equal to the numpy reference."""
    batch = make_batch(rows, tokens, seed=rows + tokens, adv_per_token=adv_per_token, adv_offset=1e3, mask_rate=0.2)
    chunk_len = math.ceil(math.ceil(tokens / 3) / 16) * 16
    assert math.ceil(tokens / chunk_len) == 3, "the shape must really split in 3"
    split = poisoned_runs(batch, rows, block_t=16, chunks=3)
    assert_stats_close(finalize(split), numpy_stats(batch), RTOL[torch.float32])


def test_chunk_count_splits_few_long_rows_only():
    """A function of (B, T): long rows of small batches split, others do not."""
    assert launch.chunk_count(8, 131072) == 16 and launch.chunk_count(4, 524288) == 64
    assert launch.chunk_count(256, 4096) == 1 and launch.chunk_count(1, 100) == 1
    assert launch.chunk_count(1024, 1 << 20) == 1


def test_kernel_many_rows():
    """Hundreds of rows (one program each; the interpreter runs them one by
    one, so thousands are left to the CUDA test) with B not a power of two."""
    batch = make_batch(300, 3, seed=14)
    assert_stats_close(batch_stats(**batch, implementation="triton"), numpy_stats(batch), RTOL[torch.float32])


def test_kernel_out_is_checked():
    batch = make_batch(3, 4)
    with pytest.raises(ValueError, match="out must be a contiguous float64 tensor"):
        rows_from(fused, batch, out=torch.zeros(len(ROW_FIELDS), 3))


@pytest.mark.parametrize("expert", ["bool", "int", "none"])
@pytest.mark.parametrize("ref", [True, False])
def test_kernel_field_order_matches_row_results(expert, ref):
    """ROW_FIELDS lists RowResults' fields in order, and the kernel stores
    each field in its slot: every field of every row equals the twin's, the
    roles the epilogue writes (bool, integer and no expert flags) and the
    NaN of an unscored row or of a batch without ref_logp included."""
    assert tuple(RowResults.__dataclass_fields__) == ROW_FIELDS
    batch = make_batch(7, 40, seed=17, adv_per_token=True, expert=expert != "none", ref=ref)
    if expert == "int":
        batch["expert"] = batch["expert"].to(torch.int32) * 3
    assert_rows_match_twin(rows_from(fused, batch), batch)


@pytest.mark.parametrize("trim", [0.0, 0.1, 0.25, 0.49])
def test_trim_drops_exact_counts(trim):
    batch = make_batch(23, 11, seed=6)
    assert_stats_close(
        batch_stats(**batch, trim=trim, implementation="torch"), numpy_stats(batch, trim=trim), RTOL[torch.float32]
    )


def test_micro_batches_merge_exactly():
    """Rows of two micro-batches concatenated = one batch holding both."""
    a, b = make_batch(5, 13, seed=1, adv_per_token=True), make_batch(8, 13, seed=2, adv_per_token=True)
    merged = rows_from(twin, a).merge(rows_from(twin, b))
    whole = {k: torch.cat([a[k], b[k]]) for k in a}
    assert_stats_close(finalize(merged), numpy_stats(whole), RTOL[torch.float32])
    for name, value in finalize(merged).__dict__.items():
        other = getattr(batch_stats(**whole, implementation="torch"), name)
        torch.testing.assert_close(value, other, rtol=0, atol=0, equal_nan=True, msg=name)  # bit-identical


@pytest.mark.parametrize("method", ["torch", pytest.param("numba", marks=needs_numba)])
@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    tokens=st.integers(0, 70),
    seed=st.integers(0, 2**16),
    adv_per_token=st.booleans(),
    expert=st.booleans(),
    ref=st.booleans(),
    mask_rate=st.floats(0.0, 1.0),
    sft_coef=st.sampled_from(["phi", "nll"]),
)
def test_twin_and_cpu_pass_property(method, rows, tokens, seed, adv_per_token, expert, ref, mask_rate, sft_coef):
    """The twin and the numba pass equal the numpy reference on arbitrary
    small batches, NaN and -inf padding included (within fp32 tolerances:
    both do the kernel's fp32 element-wise work)."""
    batch = make_batch(
        rows, tokens, seed=seed, adv_per_token=adv_per_token, expert=expert, ref=ref, mask_rate=mask_rate
    )
    assert_stats_close(
        batch_stats(**batch, sft_coef=sft_coef, implementation=method),
        numpy_stats(batch, sft_coef=sft_coef),
        RTOL[torch.float32],
    )


def test_validation_names_the_argument():
    batch = make_batch(3, 4)
    with pytest.raises(TypeError, match=r"mask must be a torch\.Tensor"):
        batch_stats(**{**batch, "mask": np.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"adv must have shape \[B\] = \[3\]"):
        batch_stats(**{**batch, "adv": torch.zeros(4)})
    with pytest.raises(TypeError, match="logp must have a floating-point dtype"):
        batch_stats(**{**batch, "logp": torch.zeros(3, 4, dtype=torch.int32)})
    with pytest.raises(TypeError, match="expert must have a bool or integer dtype"):
        batch_stats(**{**batch, "expert": torch.zeros(3)})
    with pytest.raises(ValueError, match="implementation must be one of"):
        batch_stats(**batch, implementation="cuda")
    with pytest.raises(ValueError, match="trim must be"):
        batch_stats(**batch, trim=0.5)
    with pytest.raises(ValueError, match="sft_coef must be"):
        batch_stats(**batch, sft_coef="kl")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="mask is on"):
            batch_stats(**{**batch, "mask": batch["mask"].cuda()})


def test_importing_kernels_does_not_import_triton():
    """The twin and the Controller's torch path work where triton is missing."""
    code = "import sys, gaccore.kernels; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_outputs_are_0d_on_the_inputs_device():
    stats = batch_stats(**make_batch(3, 4), implementation="torch")
    for value in stats.__dict__.values():
        assert value.shape == () and value.device == torch.device("cpu")
    assert stats.var_rl.dtype == torch.float64 and stats.n_rl.dtype == torch.int64


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("method", DEVICE_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "rows,tokens,adv_per_token",
    [(1, 1, False), (37, 129, True), (257, 4099, True), (3, 32768, True), (8, 131072, False), (4099, 17, False)],
)
def test_cuda_matches_numpy(method, dtype, rows, tokens, adv_per_token):
    batch = make_batch(rows, tokens, seed=rows + tokens, dtype=dtype, adv_per_token=adv_per_token, adv_offset=1e3)
    on_gpu = {k: None if v is None else v.cuda() for k, v in batch.items()}
    got = batch_stats(**on_gpu, implementation=method)
    assert got.var_rl.device.type == "cuda"
    assert_stats_close(got, numpy_stats(batch), RTOL[dtype])


@cuda
def test_cuda_kernel_poisoned_and_bit_identical():
    batch = {k: None if v is None else v.cuda() for k, v in make_batch(513, 5000, seed=21, adv_per_token=True).items()}
    poisoned_runs(batch, 513, device="cuda")


@pytest.mark.parametrize("method", FORCED_METHODS)
def test_kl_of_a_policy_far_from_its_reference_stays_finite(method):
    """x = ref - logp beyond fp32's exp range (~88.7): the KL is huge, not inf."""
    batch = make_batch(4, 9, seed=17)
    on = batch["mask"]
    batch["logp"] = torch.where(on, torch.full_like(batch["logp"], -95.0), batch["logp"])
    batch["ref_logp"] = torch.where(on, torch.full_like(batch["logp"], -0.1), batch["ref_logp"])
    got = batch_stats(**batch, implementation=method)
    assert math.isfinite(got.kl.item()) and got.kl.item() > 1e40
    assert_stats_close(got, numpy_stats(batch), RTOL[torch.float32])
