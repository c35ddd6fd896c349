"""The compiled CPU pass (gaccore.kernels.row_stats.cpu_pass) against the float64 numpy
reference and the torch twin: every output written, repeats bit-identical,
the SFT coefficient and k3 at their extremes, validity at every row length,
and how "auto" picks it (its property test beside the twin's is in
test_kernels.py)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

import numpy as np  # noqa: E402
from kernel_cases import RTOL, assert_rows_match_twin, assert_stats_close, make_batch, numpy_stats, rows_from  # noqa: E402

from gaccore import batch_stats, registry  # noqa: E402
from gaccore.batch import TokenBatch  # noqa: E402
from gaccore.kernels import TORCH_BACKEND  # noqa: E402
from gaccore.kernels.row_stats import cpu_pass, twin  # noqa: E402
from gaccore.kernels.tensors import as_tensors  # noqa: E402
from gaccore.rows import ROW_FIELDS, RowResults, finalize  # noqa: E402
from gaccore.stats import k3 as gaccore_k3  # noqa: E402


def _poisoned_runs(batch):
    """Runs into an output poisoned with NaN, then a finite sentinel, then NaN:
    equal bits show every output written (the unscored score, and kl_sum
    without ref_logp, are NaN by design) and repeats bit-identical."""
    rows = batch["logp"].shape[0]
    runs = []
    for poison in (math.nan, 1234.5, math.nan):
        out = np.full((len(ROW_FIELDS), rows), poison)
        last = as_tensors(rows_from(cpu_pass, batch, out=out))
        runs.append(out.copy())
    for run in runs[1:]:
        assert np.array_equal(run.view(np.int64), runs[0].view(np.int64)), (
            "an output left unwritten, or a repeat differs"
        )
    return last


@pytest.mark.parametrize("adv_per_token", [False, True])
@pytest.mark.parametrize("ref", [True, False])
def test_writes_every_output_and_is_bit_identical(adv_per_token, ref):
    batch = make_batch(9, 131, seed=13, adv_per_token=adv_per_token, ref=ref)
    rows = _poisoned_runs(batch)
    assert_stats_close(finalize(rows), numpy_stats(batch), RTOL[torch.float32])


@pytest.mark.parametrize("expert", ["bool", "int", "none"])
@pytest.mark.parametrize("ref", [True, False])
@pytest.mark.parametrize("adv_per_token", [False, True])
def test_every_field_matches_the_twin(expert, ref, adv_per_token):
    """ROW_FIELDS name each slot the pass writes: every field of every row
    with tokens equals the twin's (the extremes of token-less rows are fill
    values), the roles and the NaNs of no score and no ref_logp included."""
    batch = make_batch(7, 40, seed=17, adv_per_token=adv_per_token, expert=expert != "none", ref=ref, mask_rate=0.5)
    batch["mask"][2] = False
    if expert == "int":
        batch["expert"] = batch["expert"].to(torch.int32) * 3
    assert_rows_match_twin(as_tensors(rows_from(cpu_pass, batch)), batch)


@pytest.mark.parametrize("sft_coef", ["phi", "nll"])
def test_extreme_log_probs_and_kl(sft_coef):
    """The written-out exp and the expm1 series at their seams (x = -1,
    exp's range reduction, below fp32's normal range), logp near 0 where
    1 - p cancels, positive logp clamped, and k3 from its series to fp64's
    direct form far from the reference."""
    values = [0.0, -1e-9, -3e-7, -1e-4, -0.3466, -0.6931, -0.99999, -1.0, -1.00001, -2.5, -20.0, -86.9, -87.5]
    values += [-100.0, -1e4, 1e-3, -1e-5, -0.05, -7.0, -40.0]
    logp = torch.tensor(values).repeat(6, 1)
    logp[1::2] = logp[1::2].flip(1)
    shift = torch.tensor([0.0, 1e-5, -2e-4, 0.7, -3.0, 60.0])[:, None]
    batch = {
        "logp": logp,
        "mask": torch.ones_like(logp, dtype=torch.bool),
        "adv": torch.tensor([0.5, -1.0, 2.0, 0.0, 1.5, -0.25]),
        "expert": torch.tensor([True, False, False, True, False, False]),
        "ref_logp": logp.clamp(max=0.0) + shift,
    }
    assert_stats_close(
        batch_stats(**batch, sft_coef=sft_coef, implementation="numba"),
        numpy_stats(batch, sft_coef=sft_coef),
        RTOL[torch.float32],
    )


def test_one_token_rows_give_each_coefficient_to_fp32_precision():
    """Rows of one token: the row's mean_w is that token's w and its kl_sum
    that token's k3, checked one by one (a statistic would average an error
    away): w within 4 fp32 ulp of p (1 - p) or 1 - p in float64, from logp
    near 0 (where 1 - exp(x) cancels) through exp's range reduction, and
    below fp32's normal range, where w is 0 to within 2e-38; k3 of the fp32 difference to float64 precision,
    across its series and its direct form."""
    exponents = torch.linspace(-10.0, math.log10(87.0), 301, dtype=torch.float64)
    x = torch.cat(
        [-(10.0**exponents), torch.tensor([0.0, -1.0, -1.0000001, -0.9999999, -0.5, -2.0, -88.0, -103.0, -1e4])]
    ).float()
    ref = torch.cat(
        [x[:150] + 10.0 ** torch.linspace(-9.0, 1.0, 150), x[150:] - 10.0 ** torch.linspace(-9.0, 2.0, 160)]
    )
    batch = {
        "logp": x[:, None],
        "mask": torch.ones(len(x), 1, dtype=torch.bool),
        "adv": torch.zeros(len(x)),
        "ref_logp": ref.float()[:, None],
    }
    x64 = x.double()
    one_minus_p = -torch.expm1(x64)
    for sft_coef, want in (("phi", torch.exp(x64) * one_minus_p), ("nll", one_minus_p)):
        got = torch.from_numpy(rows_from(cpu_pass, batch, sft_coef).mean_w)
        torch.testing.assert_close(got, want, rtol=4 * 2.0**-24, atol=2e-38, msg=lambda m, c=sft_coef: f"{c}: {m}")
    diff = (batch["ref_logp"][:, 0] - batch["logp"][:, 0]).double()
    want_k3 = torch.from_numpy(gaccore_k3(diff.numpy()))
    torch.testing.assert_close(torch.from_numpy(rows_from(cpu_pass, batch).kl_sum), want_k3, rtol=1e-13, atol=0.0)


def test_out_is_checked():
    batch = make_batch(3, 4)
    with pytest.raises(ValueError, match="out must be a C-contiguous float64 array of shape"):
        rows_from(cpu_pass, batch, out=np.zeros((len(ROW_FIELDS), 3), np.float32))


def test_auto_runs_the_pass_on_cpu(monkeypatch):
    def unexpected(*args, **kwargs):
        raise AssertionError("auto ran the twin on CPU although numba is installed")

    monkeypatch.setattr(twin, "row_results", unexpected)
    batch = make_batch(5, 9, seed=3)
    assert_stats_close(batch_stats(**batch), numpy_stats(batch), RTOL[torch.float32])


def test_without_numba_auto_runs_the_twin_and_numba_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "installed", lambda package: package != "numba")

    def unexpected(*args, **kwargs):
        raise AssertionError("the numba pass ran without numba")

    monkeypatch.setattr(cpu_pass, "row_results", unexpected)
    batch = make_batch(5, 9, seed=3)
    assert_stats_close(batch_stats(**batch), numpy_stats(batch), RTOL[torch.float32])
    with pytest.raises(ValueError, match=r'implementation="numba" needs numba: pip install gaccore\[cpu\]'):
        batch_stats(**batch, implementation="numba")


def test_numba_is_for_cpu_tensors():
    assert registry.choose("auto", "torch", "cpu").name == "numba"
    assert registry.choose("auto", "torch", "meta").name != "numba"
    assert registry.choose("torch", "torch", "cpu").name != "numba"
    with pytest.raises(ValueError, match='implementation="numba" runs on CPU tensors, got tensors on meta'):
        registry.choose("numba", "torch", "meta")


def test_a_host_controller_keeps_the_rows_in_numpy(monkeypatch):
    """Where the state lives on the host, the pass's rows stay numpy arrays
    up to finalize; tensors wherever a caller or a device state needs them."""
    batch = make_batch(5, 9, seed=4)
    scores = torch.rand(5, dtype=torch.float64)
    tokens = TokenBatch(**batch, scores=scores)
    host_rows = TORCH_BACKEND.row_results(tokens, "phi")
    assert isinstance(host_rows.n_tokens, np.ndarray) and isinstance(host_rows.score, np.ndarray)
    assert not np.shares_memory(host_rows.score, scores.numpy())
    assert isinstance(batch_stats(**batch, scores=scores).n_rl, torch.Tensor)
    monkeypatch.setattr(TORCH_BACKEND, "host_on_cpu", False)
    device_rows = TORCH_BACKEND.row_results(tokens, "phi")
    assert isinstance(device_rows.n_tokens, torch.Tensor)
    for name in RowResults.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(device_rows, name).numpy(), getattr(host_rows, name), err_msg=name)


@pytest.mark.parametrize("tokens", [1, 7, 9, 33, 64, 100])
@pytest.mark.parametrize(
    "field,value",
    [
        ("logp", math.nan),
        ("logp", math.inf),
        ("logp", -math.inf),
        ("adv", math.inf),
        ("adv_t", math.nan),
        ("ref", math.nan),
    ],
)
def test_a_masked_in_non_finite_value_invalidates_its_row_only(tokens, field, value):
    """At every row length (vectorized loop, remainder, both), in every input."""
    batch = make_batch(3, tokens, seed=tokens, adv_per_token=field == "adv_t", mask_rate=0.0)
    position = tokens // 2
    if field == "logp":
        batch["logp"][1, position] = value
    elif field == "adv":
        batch["adv"][1] = value
    elif field == "adv_t":
        batch["adv"][1, position] = value
    else:
        batch["ref_logp"][1, position] = value
    rows = rows_from(cpu_pass, batch)
    np.testing.assert_array_equal(rows.valid, [1.0, 0.0, 1.0])


@pytest.mark.skipif(
    not hasattr(__import__("numba").config, "CACHE_LOCATOR_CLASSES"), reason="this numba has no locator setting"
)
def test_without_a_writable_cache_the_pass_compiles_in_the_process():
    """Where numba finds no place to keep machine code (a read-only install and
    home; here no cache locator applies), the pass still imports and runs."""
    code = (
        "import torch\n"
        "from gaccore import batch_stats\n"
        "from gaccore.kernels.row_stats import cpu_pass\n"
        "assert type(cpu_pass._rows_kernel._cache).__name__ == 'NullCache'\n"
        "stats = batch_stats(-torch.rand(3, 5), torch.ones(3, 5, dtype=torch.bool), torch.randn(3), "
        "implementation='numba')\n"
        "assert stats.n_rl.item() == 3\n"
    )
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"}  # applies to zipped modules only
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
