"""Where the host time of one ``Controller.update`` goes on a GPU.

    python bench/gpu_host.py [--out host.json]     # on one CUDA GPU, < 1 min
    python bench/gpu_host.py --device cpu --quick  # smoke test (kernel interpreted)

At (256, 4096), bf16 logp, a quarter expert rows, per-row adv, ref_logp and
a kl tensor, it times each piece of the update path as host time per call
(many calls back to back, then one sync): an empty 0-d tensor op (the cost
of one launch), input validation, the statistics kernel with its output
views (roles included), the closing step as one kernel (the eager update
is these two), and for the replayed update its two pieces: the copy of
the step's tensors and numbers into the graph's buffers, and the graph
replay (statistics kernel and closing step); then the whole update in each
``compile_step`` mode, and ``cProfile``'s top functions over the replayed
update.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", type=Path)
parser.add_argument("--device", default="cuda")
parser.add_argument("--quick", action="store_true")
ARGS = parser.parse_args()
if ARGS.device == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import Timer, make_inputs  # noqa: E402

import gaccore  # noqa: E402
from gaccore.batch import TokenBatch  # noqa: E402
from gaccore.kernels import TORCH_BACKEND  # noqa: E402
from gaccore.kernels.close_step import graphs, launch, layout  # noqa: E402
from gaccore.kernels.row_stats import fused  # noqa: E402
from gaccore.kernels.row_stats.launch import empty_out  # noqa: E402
from gaccore.kernels.tensors import check_tensors  # noqa: E402
from gaccore.state import ControllerState  # noqa: E402


def main() -> None:
    device = torch.device(ARGS.device)
    TORCH_BACKEND.host_on_cpu = False
    TORCH_BACKEND.implementation = "triton"  # what "auto" is on CUDA; on CPU, interpreted
    rows, tokens = (8, 64) if ARGS.quick else (256, 4096)
    calls = 5 if ARGS.quick else 300
    batch = make_inputs(rows, tokens, torch.bfloat16, device)
    kl = torch.zeros((), device=device)
    out = empty_out(rows, device)
    results: dict[str, Any] = {"device": str(device), "B": rows, "T": tokens, "torch": torch.__version__}
    tokens_batch = TokenBatch(**batch)
    row_results = fused.row_results(tokens_batch, "phi", out=out)
    scalar = torch.zeros((), dtype=torch.float64, device=device)
    pieces: dict[str, Callable[[], Any]] = {
        "one 0-d op (add_)": lambda: scalar.add_(1.0),
        "check_tensors": lambda: check_tensors(tokens_batch),
        "fused row_results": lambda: fused.row_results(tokens_batch, "phi", out=out),
    }
    config = gaccore.Config()
    state = ControllerState.place(ControllerState.initial(config), TORCH_BACKEND, device)
    packed, outputs = layout.pack_state(state), layout.empty_outputs(device, has_rows=True)
    observations = {"kl": kl, "expert_success": None, "policy_success": None}
    pieces["kernel_close_step"] = lambda: launch.kernel_close_step(
        packed, config, observations, 0.5, row_results, *outputs
    )
    controllers = {
        mode: gaccore.Controller(compile_step=mode, update_every=1) for mode in (False, True, "reduce-overhead")
    }
    for mode, ctrl in controllers.items():
        pieces[f"update, compile_step={mode!r}"] = lambda ctrl=ctrl: ctrl.update(**batch, kl=kl)
    for _ in range(3):  # compile, record
        for ctrl in controllers.values():
            ctrl.update(**batch, kl=kl)
    (recording,) = controllers["reduce-overhead"]._runners["torch"]._updates._recordings.values()
    pieces["copy into the graph's buffers"] = lambda: graphs._load(recording, tokens_batch, observations, 0.5)
    pieces["graph replay alone"] = recording.replay
    results["host_us"] = {}
    timer = Timer(device, reps=1, warmup=3)
    for name, fn in pieces.items():
        seconds = timer.wall_per_call_s(fn, calls)
        results["host_us"][name] = seconds * 1e6
        print(f"{name:40s} {seconds * 1e6:10.1f} us", flush=True)
    profiler = cProfile.Profile()
    ctrl = controllers["reduce-overhead"]
    profiler.enable()
    for _ in range(calls):
        ctrl.update(**batch, kl=kl)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    results["profile"] = text.getvalue()
    print(text.getvalue()[-6000:])
    if ARGS.out:
        ARGS.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
