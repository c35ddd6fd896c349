"""How the fused kernel is launched: block size, warps, chunks per row.

Every choice is a function of the batch's shape (B, T) only, never of the
GPU, so the kernel's results never depend on the card it runs on.
"""

from __future__ import annotations

import torch
import triton

from gaccore.rows import ROW_FIELDS

from ..tensors import ROW_DTYPE

# 1024-token blocks: 8 tokens a thread at 4 warps (a 16-byte load of bf16),
# each of those 8 lanes holding a dozen running statistics in registers. The
# loop costs the same per token at 2048 (8 warps); 1024 halves the lane merge
# at the end of a chunk and the padding of a row's last block, and with the
# former per-block reductions it was 8% faster than 2048 at (1024, 32768)
# bf16 on an H200 (bench/RESULTS.md). Not yet timed with lane accumulators.
MAX_BLOCK_T = 1024
# Rows split into chunks when few and long (see chunk_count): an H100 has 132
# SMs, and 1024 programs of at least 8192 tokens keep each busy for several
# blocks. Chosen without a GPU to measure on; bench/gpu.py times the split shapes.
TARGET_PROGRAMS = 1024
MIN_CHUNK_TOKENS = 8192


def block_size(tokens: int) -> int:
    """Tokens per loop iteration: the whole row up to ``MAX_BLOCK_T``."""
    return max(16, min(triton.next_power_of_2(max(tokens, 1)), MAX_BLOCK_T))


def warps(block: int) -> int:
    """8 tokens per thread: a 16-byte load of bf16 per thread, 1 to 8 warps."""
    return min(8, max(1, block // 256))


def chunk_count(rows: int, tokens: int) -> int:
    """Chunks per row: enough programs to fill a large GPU (``TARGET_PROGRAMS``)
    when rows are few and long, each chunk at least ``MIN_CHUNK_TOKENS`` long."""
    wanted = triton.cdiv(TARGET_PROGRAMS, max(rows, 1))
    return max(1, min(wanted, triton.cdiv(tokens, MIN_CHUNK_TOKENS)))


def chunk_plan(tokens: int, block: int, wanted: int) -> tuple[int, int]:
    """(tokens per chunk, chunks per row) for ``wanted`` chunks of whole
    blocks: a row may get fewer chunks than wanted."""
    chunk_len = triton.cdiv(triton.cdiv(max(tokens, 1), wanted), block) * block
    return chunk_len, triton.cdiv(max(tokens, 1), chunk_len)


def empty_out(rows: int, device: torch.device | str) -> torch.Tensor:
    """A fresh output buffer for ``row_results(..., out=)``: one row per field of the row results."""
    return torch.empty(len(ROW_FIELDS), rows, dtype=ROW_DTYPE, device=device)
