#!/usr/bin/env bash
# The GPU check of issue 11 in one call on a lent CUDA machine: the card, the
# CUDA tests, bench/gpu.py, then bench/gpu_host.py (PARTS picks some of them). Everything lands in $OUT (default ./gpu-out);
# each part has its own time limit so a slow one cannot take the others' logs.
#   bash bench/gpu-run.sh                     # on the GPU machine, from the repo root
#   PYTHON=.venv/bin/python GPU_ARGS="--device cpu --quick" bash bench/gpu-run.sh   # rehearsal on CPU
set -uo pipefail
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
out=${OUT:-gpu-out}
mkdir -p "$out"
# The machine's own torch and triton, no pip: gaccore's layout (kernels/ and
# bindings/ become gaccore.kernels and gaccore.bindings) assembled in a
# folder on PYTHONPATH; -P keeps the repo's plain gaccore/ off sys.path.
pkg=$(mktemp -d)
cp -r gaccore "$pkg/" && cp -r kernels "$pkg/gaccore/kernels" && cp -r bindings "$pkg/gaccore/bindings" || exit 1
export PYTHONPATH=$pkg
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv 2>&1
  "$python" -P -c 'import sys, torch, triton, numpy, gaccore.kernels
print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "numpy", numpy.__version__)
print("cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0), "gaccore from", gaccore.kernels.__file__)'
} 2>&1 | tee "$out/card.txt"
parts=" ${PARTS:-tests bench host} "
if [[ $parts == *" tests "* ]]; then
  timeout "${TEST_LIMIT_S:-170}" "$python" -P -m pytest -q -p no:cacheprovider -rs \
    tests/test_kernels.py tests/test_controller_torch.py -k cuda 2>&1 | tee "$out/tests.log"
fi
if [[ $parts == *" bench "* ]]; then
  timeout "${BENCH_LIMIT_S:-300}" "$python" -P bench/gpu.py --out "$out/gpu.json" ${GPU_ARGS:-} 2>&1 | tee "$out/gpu.log"
fi
if [[ $parts == *" host "* ]]; then
  timeout "${HOST_LIMIT_S:-120}" "$python" -P bench/gpu_host.py --out "$out/host.json" ${GPU_ARGS:-} 2>&1 | tee "$out/host.log"
fi
