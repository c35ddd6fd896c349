"""Reduction of the controller's statistics over a ``torch.distributed`` group.

Row results hold one fixed-size tensor per field, one entry per row of the
batch. Gathering every rank's rows and concatenating them in rank order gives
every rank the exact row results of the concatenated global batch, so each
rank finalizes the same proxies (sums, Chan merges and the SFT rows' NLL
values for the trimmed variance alike) and computes the same, deterministic
``mu``: no float reduction order depends on the collective's algorithm.

Ranks may hold different numbers of rows (dynamic batching, a last partial
batch): the row counts are gathered first (one tiny collective of one integer
per rank, read on the host to size the payload), every rank pads its rows to
the largest count, and the padding is dropped again before the rows are
concatenated, so the result is exactly the rows of the concatenated batch.
The tensors must live where the group's backend communicates (CPU for gloo,
the rank's CUDA device for NCCL).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch
import torch.distributed as dist

RowsT = TypeVar("RowsT")

# The gathered block is float64: it holds every float64 row field exactly, and
# integer counts exactly up to 2**53, so one collective carries all fields.
_WIRE_DTYPE = torch.float64


@torch.no_grad()  # row results are statistics: no caller's graph travels or comes back
def all_gather_row_results(rows: RowsT, process_group: Any) -> RowsT:
    """The rows of every rank of ``process_group``, concatenated in rank order.

    ``rows`` is a dataclass whose fields are all 1-D tensors of one
    length ``B`` on one device; ``B`` may differ between ranks. The result is
    the same dataclass type with each field of length ``sum(B)`` over ranks
    and its original dtype. All fields travel in one ``all_gather``, after
    one ``all_gather`` of the row counts.
    """
    if not dataclasses.is_dataclass(rows) or isinstance(rows, type):
        raise TypeError(f"rows must be a dataclass instance of row tensors, got {type(rows).__name__}")
    names = [f.name for f in dataclasses.fields(rows)]
    columns = [getattr(rows, name) for name in names]
    _check_rows(names, columns)
    _check_initialized()
    packed = torch.stack([column.to(_WIRE_DTYPE) for column in columns])  # [n_fields, B]
    counts = _gather_row_counts(packed.shape[1], packed.device, process_group)
    widest = max(counts)
    if widest == 0:  # no rank has rows: every rank sees the same counts and skips alike
        return rows
    padded = torch.nn.functional.pad(packed, (0, widest - packed.shape[1]))
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded, group=process_group)
    merged = torch.cat([block[:, :count] for block, count in zip(gathered, counts, strict=True)], dim=1)
    return dataclasses.replace(
        rows,
        **{name: row.to(column.dtype) for name, row, column in zip(names, merged.unbind(0), columns, strict=True)},
    )


def _gather_row_counts(rows: int, device: torch.device, process_group: Any) -> list[int]:
    """Every rank's row count, in rank order. The counts size the payload, so
    they are read on the host: on NCCL, a copy of ``world_size`` integers."""
    mine = torch.tensor([rows], dtype=torch.int64, device=device)
    counts = [torch.empty_like(mine) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(counts, mine, group=process_group)
    return torch.cat(counts).tolist()


def mean_over_group(value: Any, process_group: Any, device: Any) -> torch.Tensor:
    """The mean of a scalar over every rank of ``process_group`` (0-d float64).

    ``value`` is a Python number or a 0-d tensor; ``device`` is where the
    group communicates (``None``: the CPU). A non-finite value on any rank
    makes the mean non-finite on every rank, so all ranks fall back alike.
    """
    _check_initialized()
    placement = torch.device("cpu") if device is None else device
    if isinstance(value, torch.Tensor):
        total = value.detach().to(device=placement, dtype=torch.float64).clone()
    else:
        total = torch.tensor(float(value), dtype=torch.float64, device=placement)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=process_group)
    return total / dist.get_world_size(process_group)


def _check_initialized() -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "process_group was given but torch.distributed is not initialized: "
            "call torch.distributed.init_process_group first"
        )


def _check_rows(names: list[str], columns: list[Any]) -> None:
    if not columns:
        raise ValueError("rows has no fields to gather")
    first = columns[0]
    for name, column in zip(names, columns, strict=False):
        if not isinstance(column, torch.Tensor) or column.ndim != 1:
            raise ValueError(f"rows.{name} must be a 1-D tensor of per-row values, got {column!r:.80}")
        if column.shape != first.shape or column.device != first.device:
            raise ValueError(
                f"rows.{name} has shape {list(column.shape)} on {column.device}; every field must "
                f"have shape {list(first.shape)} on {first.device} (one entry per row)"
            )
