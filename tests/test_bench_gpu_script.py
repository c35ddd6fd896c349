"""bench/gpu.py runs every code path on CPU (--device cpu --quick), so the
script that a GPU session will run is known not to crash."""

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

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def test_gpu_script_smoke(tmp_path):
    out = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--no-compile", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    results = json.loads(out.read_text())
    assert len(results["rows"]) == 4
    for row in results["rows"]:
        assert row["update_syncs"] == 0
        assert row["naive_syncs"] > 0
        assert row["kernel_s"] > 0 and row["update_pct_logprob"] > 0
