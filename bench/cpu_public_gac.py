"""gaccore's torch CPU update against the public GAC implementation's statistics path.

    python bench/cpu_public_gac.py [--out cpu.json]   # about 10 s
    python bench/cpu_public_gac.py --quick            # smoke test, a second

At (64, 1024), one torch thread, with one advantage per row [B] and one per
token [B, T]: host time of one step of the public implementation's re-implementation
(``bench/public_gac.py``: statistics, ``.item()`` reads and its mu update)
and of gaccore's whole ``Controller.update`` on the same CPU tensors. The
batch is ``bench/test_bench_public_gac.py``'s: float32 logp with 10% right
padding (zeros, which the public implementation's ``m * x`` needs), a quarter expert
rows, no ref_logp. The two sides alternate call by call, so load on a shared
machine falls on both alike; ratio = public time / gaccore time, above 1
gaccore is faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

# -P (gpu-run.sh) keeps the script's folder off sys.path; the public implementation lives there.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from public_gac import PublicGACController

import gaccore

SHAPE = (64, 1024)


def make_batch(rows: int, tokens: int, per_token: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(rows + tokens)
    mask = (torch.arange(tokens) < tokens - tokens // 10).expand(rows, tokens).contiguous()
    logp = torch.where(mask, -(torch.rand(rows, tokens, generator=gen) ** 3) * 4.0, 0.0)
    adv = torch.randn(rows, tokens, generator=gen) if per_token else torch.randn(rows, generator=gen)
    return {"logp": logp, "mask": mask, "adv": adv, "expert": torch.rand(rows, generator=gen) < 0.25}


def compare(rows: int, tokens: int, per_token: bool, rounds: int, warmup: int) -> dict[str, Any]:
    batch = make_batch(rows, tokens, per_token)
    public = PublicGACController()
    ctrl = gaccore.Controller()
    sides = {
        "public": lambda: public.update_stats(batch["logp"], batch["mask"], batch["adv"], batch["expert"]),
        "gaccore": lambda: ctrl.update(**batch),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(warmup + rounds):
        # Alternate which side goes first, so neither always follows the other's cache misses.
        for name in sorted(sides, reverse=i % 2 == 1):
            t0 = time.perf_counter()
            sides[name]()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    if not (0.05 <= ctrl.mu <= 0.9 and 0.05 <= public.mu <= 0.9):
        raise RuntimeError(f"mu out of range: gaccore {ctrl.mu}, public {public.mu}")
    row: dict[str, Any] = {"B": rows, "T": tokens, "adv": "[B, T]" if per_token else "[B]", "rounds": rounds}
    for name, values in times.items():
        row[f"{name}_min_s"], row[f"{name}_median_s"] = min(values), statistics.median(values)
    row["ratio_median"] = row["public_median_s"] / row["gaccore_median_s"]
    row["ratio_min"] = row["public_min_s"] / row["gaccore_min_s"]
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="few rounds")
    # Accepted so gpu-run.sh can pass GPU_ARGS to every part; this one always runs on CPU.
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rounds, warmup = (10, 2) if args.quick else (300, 20)
    results: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": []}
    print(f"{'B':>5} {'T':>6} {'adv':>7} {'public us':>21} {'gaccore us':>21} {'ratio':>13}")
    print(f"{'':>5} {'':>6} {'':>7} {'min / median':>21} {'min / median':>21} {'min / median':>13}")
    for per_token in (False, True):
        row = compare(*SHAPE, per_token, rounds, warmup)
        results["rows"].append(row)
        ref = f"{row['public_min_s'] * 1e6:.1f} / {row['public_median_s'] * 1e6:.1f}"
        ours = f"{row['gaccore_min_s'] * 1e6:.1f} / {row['gaccore_median_s'] * 1e6:.1f}"
        ratio = f"{row['ratio_min']:.2f} / {row['ratio_median']:.2f}"
        print(f"{row['B']:>5} {row['T']:>6} {row['adv']:>7} {ref:>21} {ours:>21} {ratio:>13}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
