"""The GPU run's scripts work on CPU: bench/gpu.py runs every code path
(--device cpu --quick; the replayed update through its CPU stand-in),
bench/cpu_public_gac.py runs, and
bench/gpu_summary.py turns their JSON into the targets' table, so the call a
GPU session will make is known not to crash before it reaches the GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

# find_spec, not import: triton must not be imported before conftest's TRITON_INTERPRET matters.
for _module in ("torch", "triton"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"could not import {_module!r}: not installed", allow_module_level=True)

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", BENCH / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _by_id(summary: dict) -> dict[str, dict]:
    return {row["id"]: row for row in summary["targets"]}


def test_gpu_scripts_smoke(tmp_path):
    run = {"check": True, "capture_output": True, "timeout": 240}
    smoke = ["--device", "cpu", "--quick", "--no-compile", "--out", str(tmp_path / "gpu.json")]
    subprocess.run([sys.executable, str(BENCH / "gpu.py"), *smoke], **run)
    subprocess.run(
        [sys.executable, str(BENCH / "cpu_public_gac.py"), "--quick", "--out", str(tmp_path / "cpu.json")], **run
    )
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert len(results["rows"]) == 4
    for row in results["rows"]:
        assert row["update_syncs"] == 0
        # the replayed update needs no torch.compile: it runs (its CPU stand-in) even with --no-compile
        assert row["update_graphs_syncs"] == 0 and row["update_graphs_wall_s"] > 0, row.get("update_graphs_error")
        assert "update_compiled_s" not in row
        assert row["naive_syncs"] > 0
        assert row["kernel_s"] > 0 and row["update_pct_logprob"] > 0
        assert row["public_wall_s"] > 0 and row["speedup_vs_public"] > 0
    (split,) = results["split"]
    assert split["chunks"] > 1 and split["split_s"] > 0 and split["unsplit_s"] > 0
    assert all("error" not in row and row["kernel_s"] > 0 for row in results["sweep"])
    forced = [row for row in results["sweep"] if row["warps"] != 1 and not row["default"]]
    assert forced, "the sweep times a warp count other than the launcher's"

    summary = _summary_module().summarize(tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["rehearsal"] and len(summary["targets"]) == 7
    rows = _by_id(summary)
    assert rows["host_syncs"]["measured"] == 0 and rows["host_syncs"]["met"] is True
    for name in ("eager_host", "kernel_pct_copy", "eager_vs_public", "cpu_vs_public"):
        assert rows[name]["measured"] > 0, name
    assert (
        rows["eager_gpu_beyond_kernel"]["measured"] is None and "CUDA only" in rows["eager_gpu_beyond_kernel"]["detail"]
    )
    assert rows["replayed_host"]["measured"] > 0
    assert "[B, T]" in rows["cpu_vs_public"]["detail"]


def _gpu_row(logp: str, **values) -> dict:
    return {"B": 256, "T": 4096, "logp": logp, **values}


def test_summary_reads_the_worst_dtype_and_falls_back_to_the_sweep():
    summary = _summary_module()
    gpu = {
        "device": "NVIDIA H200",
        "target_shapes": {"update": [256, 4096], "kernel": [1024, 32768]},
        "rows": [
            _gpu_row(
                "bfloat16",
                update_wall_s=250e-6,
                update_busy_beyond_kernel_s=40e-6,
                update_graphs_wall_s=45e-6,
                speedup_vs_public=6.0,
                update_syncs=0,
                update_graphs_syncs=0,
            ),
            _gpu_row(
                "float32",
                update_wall_s=350e-6,
                update_busy_beyond_kernel_s=30e-6,
                speedup_vs_public=4.0,
                update_syncs=0,
                update_compiled_syncs=2,
            ),
        ],
        "sweep": [
            {"B": 1024, "T": 32768, "block_t": 1024, "chunks": 1, "warps": 4, "default": "yes", "pct_copy": 40.0},
            {"B": 1024, "T": 32768, "block_t": 1024, "chunks": 1, "warps": 8, "default": "", "pct_copy": 55.0},
        ],
    }
    cpu = {
        "rows": [
            {"B": 64, "T": 1024, "adv": "[B]", "ratio_median": 1.2, "ratio_min": 1.1},
            {"B": 64, "T": 1024, "adv": "[B, T]", "ratio_median": 0.9, "ratio_min": 0.8},
        ]
    }
    host = {"host_us": {"update, compile_step='reduce-overhead'": 48.0}}
    rows = summary.targets(gpu, host, cpu)
    got = [(row["measured"], row["met"]) for row in rows]
    assert got[0] == (pytest.approx(350), False)  # fp32's host time decides
    assert got[1] == (pytest.approx(40), True)
    assert got[2] == (pytest.approx(45), True) and "gpu_host.py: 48 us" in rows[2]["detail"]
    assert got[3] == (40.0, False)  # table 1 lacks the row: the sweep's default setting
    assert "from the sweep's default" in rows[3]["detail"] and "warps 8" in rows[3]["detail"]
    assert got[4] == (4.0, False)
    assert got[5] == (0.9, False)  # both advantage layouts must reach 1x
    assert got[6] == (2, False)  # a compiled update's syncs count
    text = summary.render(rows, gpu["device"])
    assert "2 of 7 targets met, 0 not measured" in text and "rehearsal" not in text


def test_summary_without_any_results(tmp_path):
    summary = _summary_module().summarize(tmp_path)
    assert [row["met"] for row in summary["targets"]] == [None] * 7
    assert summary["parts_found"] == {"gpu": False, "host": False, "cpu": False}
