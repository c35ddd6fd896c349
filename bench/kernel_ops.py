"""Per-token work of the statistics kernel's hot loop, counted in its machine code.

Compiles ``_row_stats_kernel`` ahead of time for an H100/H200 (sm_90) with
the Triton wheel's own ptxas, so no GPU is needed, disassembles it with the
wheel's cuobjdump, finds the loop over a row's blocks (the backward branch
with the longest body) and counts its SASS instructions by kind, divided by
the tokens one thread handles per iteration. The count is static: code under
a branch counts once whether or not a thread takes it (a division's
slow path is a call outside the loop, counted as the call), so it ranks
versions of the kernel; only a GPU run says what they cost in time.

    python bench/kernel_ops.py [--block 1024] [--adv-per-token]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gaccore.kernels.row_stats import fused, launch

# SASS opcodes by kind (the opcode's first word, modifiers dropped).
KINDS = {
    "fp32 add": ("FADD",),
    "fp32 mul": ("FMUL",),
    "fp32 fma": ("FFMA",),
    "division (call to its slow path)": ("CALL",),
    "exp2 / reciprocal (MUFU)": ("MUFU",),
    "fp64 (DADD/DMUL/DFMA/DSETP, F2F)": ("DADD", "DMUL", "DFMA", "DSETP", "DMNMX", "F2F"),
    "compare / select / min-max": ("FSETP", "FSEL", "FMNMX", "SEL", "ISETP", "PLOP3", "FCHK"),
    "cross-lane (SHFL, BAR)": ("SHFL", "BAR"),
}
BRANCH = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?P\d\s+)?BRA(?:\s+!?P\d,)?\s+0x([0-9a-f]+)")
INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T\d]\s+)?([A-Z][A-Z0-9_]*)")


def sass(block: int, adv_per_token: bool) -> tuple[str, str]:
    """The kernel's SASS and resource usage (registers, spills) for the
    benchmark's inputs: bf16 logp and ref_logp, a bool mask, phi."""
    kernel = fused._row_stats_kernel
    signature = {"p_logp": "*bf16", "p_mask": "*u8", "p_adv": "*fp32", "p_ref": "*bf16", "p_out": "*fp64"}
    signature |= {"T": "i32", "chunk_len": "i32"}
    signature |= {name: "i64" for name in kernel.arg_names if name.startswith("s_")}
    # What a launch on contiguous tensors specializes: token strides of 1 become
    # constants, pointers, T and row strides are multiples of 16.
    flags = {"ADV_PER_TOKEN": adv_per_token, "HAS_REF": True, "SFT_COEF_PHI": True, "SPLIT": False, "BLOCK_T": block}
    flags |= {name: 1 for name in ("s_logp_t", "s_mask_t", "s_adv_t", "s_ref_t")}
    signature |= dict.fromkeys(flags, "constexpr")
    constexprs = {(kernel.arg_names.index(name),): value for name, value in flags.items()}
    aligned = ("p_logp", "p_mask", "p_adv", "p_ref", "p_out", "T", "s_logp_b", "s_mask_b", "s_ref_b")
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": launch.warps(block)})
    cubin = Path(os.environ.get("TMPDIR", "/tmp")) / f"gaccore_row_stats_{os.getpid()}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    try:
        return tuple(
            subprocess.run([cuobjdump, flag, cubin], check=True, capture_output=True, text=True).stdout
            for flag in ("-sass", "-res-usage")
        )
    finally:
        cubin.unlink()


def loop_counts(text: str) -> collections.Counter[str]:
    """Opcodes of the longest loop: from a backward branch's target to the branch."""
    loops = [(int(t, 16), int(a, 16)) for a, t in BRANCH.findall(text) if int(t, 16) < int(a, 16)]
    start, end = max(loops, key=lambda loop: loop[1] - loop[0])
    return collections.Counter(op for a, op in INSTR.findall(text) if start <= int(a, 16) <= end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", type=int, default=launch.block_size(32768), help="BLOCK_T (default: T = 32768's)")
    parser.add_argument("--adv-per-token", action="store_true", help="adv of shape [B, T] instead of [B]")
    args = parser.parse_args()
    code, usage = sass(args.block, args.adv_per_token)
    counts = loop_counts(code)
    per_thread = args.block / (32 * launch.warps(args.block))  # tokens per thread per iteration
    print(f"BLOCK_T={args.block}, {launch.warps(args.block)} warps, {per_thread:g} tokens per thread per iteration")
    print("resources per thread:", " ".join(re.findall(r"(?:REG|STACK|LOCAL):\d+", usage)))
    print("| kind | per token |\n|---|---|")
    for kind, opcodes in KINDS.items():
        print(f"| {kind} | {sum(counts[op] for op in opcodes) / per_thread:.1f} |")
    print(f"| all instructions | {sum(counts.values()) / per_thread:.1f} |")


if __name__ == "__main__":
    main()
