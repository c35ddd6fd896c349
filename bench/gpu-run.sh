#!/usr/bin/env bash
# The GPU check in one call on a lent CUDA machine: the card, the CUDA tests,
# bench/gpu.py, bench/gpu_host.py, bench/cpu_public_gac.py (PARTS picks some of
# them), then bench/gpu_summary.py's table of the targets, always, from
# whatever the parts wrote. Everything lands in $OUT (default ./gpu-out):
# each part's log and JSON, times.txt (each part's exit status and seconds)
# and summary.json.
#   bash bench/gpu-run.sh                     # on the GPU machine, from the repo root
#   PYTHON=.venv/bin/python GPU_ARGS="--device cpu --quick" OUT=/tmp/gpu-rehearsal bash bench/gpu-run.sh   # rehearsal on CPU
#
# Time budget. A lent machine gives about 15 minutes of device time in all,
# start-up and a possible rerun included, so one call must end within 8
# minutes (TOTAL_LIMIT_S, 480 s). Each part has its own limit, so a slow or
# hung one cannot take the others' time or logs, and no part is started with
# more time than is left of the total (less a reserve for the summary). The
# estimates come from the last H200 call (bench/results/gpu-h200.json): 188 s
# in all, of which bench/gpu.py 77 s by its JSON's "seconds"; the card, the
# tests and gpu_host.py shared the other ~110 s. The limits leave each part
# about twice its estimate:
#   part      estimate  limit (env)
#   card          10 s    20 s (CARD_LIMIT_S)
#   tests         70 s   140 s (TEST_LIMIT_S)   the tests' Triton compiles dominate (since
#                                               then test_close_step's CUDA cases: 8 more
#                                               compiles of a small kernel, and the replayed
#                                               update's CUDA test: 16 steps of recordings,
#                                               not yet timed)
#   bench        110 s   190 s (BENCH_LIMIT_S)  77 s last time; now 12 sweep settings
#                                               (9 then), 7 of them a fresh Triton
#                                               compile of a few seconds on that
#                                               host, and the public implementation timed at
#                                               each shape (about 1 s a shape)
#   host          30 s    70 s (HOST_LIMIT_S)   two torch.compile warm-ups
#   cpu           10 s    30 s (CPU_LIMIT_S)    (64, 1024) on one CPU thread
#   summary        1 s    10 s                  standard library only
# The limits sum to 460 s; a part that ignores its TERM is killed 5 s later.
# bench/gpu.py saves its JSON after every row and times the kernel sweep
# first, so one that runs out of time still reports the kernel's row.
set -uo pipefail
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
out=${OUT:-gpu-out}
mkdir -p "$out"
: >"$out/times.txt"
deadline=$((SECONDS + ${TOTAL_LIMIT_S:-480}))
summary_reserve=15 # the summary's limit and the kill grace before it

# part NAME LIMIT_S COMMAND...: run COMMAND with its output in $out/NAME.log,
# under the smaller of LIMIT_S and what is left of the total.
part() {
  local name=$1 limit=$2 left started rc
  shift 2
  left=$((deadline - SECONDS - summary_reserve))
  ((left < limit)) && limit=$left
  if ((limit < 5)); then
    echo "[gpu-run] $name skipped: the total time limit is spent" | tee "$out/$name.log"
    echo "$name skipped 0" >>"$out/times.txt"
    return
  fi
  started=$SECONDS
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  rc=${PIPESTATUS[0]}
  echo "$name $rc $((SECONDS - started))" >>"$out/times.txt"
  ((rc == 124 || rc == 137)) && echo "[gpu-run] $name stopped at its limit of $limit s"
  echo "[gpu-run] $name: exit $rc, $((SECONDS - started)) s"
}

# The machine's own torch and triton, no pip: gaccore's layout (kernels/ and
# bindings/ become gaccore.kernels and gaccore.bindings) assembled in a
# folder on PYTHONPATH; -P keeps the repo's plain gaccore/ off sys.path.
pkg=$(mktemp -d)
trap 'rm -rf "$pkg"' EXIT
cp -r gaccore "$pkg/" && cp -r kernels "$pkg/gaccore/kernels" && cp -r bindings "$pkg/gaccore/bindings" || exit 1
export PYTHONPATH=$pkg

card() {
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv 2>&1
  "$python" -P -c 'import sys, torch, triton, numpy, gaccore.kernels
print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "numpy", numpy.__version__)
print("cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0), "gaccore from", gaccore.kernels.__file__)'
}
export -f card
export python
part card "${CARD_LIMIT_S:-20}" bash -c card

parts=" ${PARTS:-tests bench host cpu} "
if [[ $parts == *" tests "* ]]; then
  part tests "${TEST_LIMIT_S:-140}" "$python" -P -m pytest -q -p no:cacheprovider -rs \
    tests/test_kernels.py tests/test_controller_torch.py tests/test_close_step.py -k cuda
fi
if [[ $parts == *" bench "* ]]; then
  # shellcheck disable=SC2086 # GPU_ARGS is a list of arguments
  part gpu "${BENCH_LIMIT_S:-190}" "$python" -P bench/gpu.py --out "$out/gpu.json" ${GPU_ARGS:-}
fi
if [[ $parts == *" host "* ]]; then
  # shellcheck disable=SC2086
  part host "${HOST_LIMIT_S:-70}" "$python" -P bench/gpu_host.py --out "$out/host.json" ${GPU_ARGS:-}
fi
if [[ $parts == *" cpu "* ]]; then
  # shellcheck disable=SC2086
  part cpu "${CPU_LIMIT_S:-30}" "$python" -P bench/cpu_public_gac.py --out "$out/cpu.json" ${GPU_ARGS:-}
fi
summary_reserve=0
part summary 10 "$python" -P bench/gpu_summary.py "$out"
echo "[gpu-run] $SECONDS s in all; $out/summary.json"
