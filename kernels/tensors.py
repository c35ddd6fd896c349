"""What every torch path shares about tensors: the batch check, the row
results' dtype, and CPU row results as numpy views of tensors and back.

It imports torch only (no triton), so the twin works where triton is missing
and the kernel modules are imported only when they are used.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import torch

from gaccore.batch import TokenBatch
from gaccore.rows import RowResults
from gaccore.validation import check_batch

__all__ = ["ROW_DTYPE", "as_tensors", "check_tensors", "is_host", "numpy_kind", "on_host"]

ROW_DTYPE = torch.float64


def numpy_kind(dtype: torch.dtype) -> str:
    """The numpy dtype kind ('b', 'i', 'u', 'f', 'c') of a torch dtype."""
    if dtype == torch.bool:
        return "b"
    if dtype.is_complex:
        return "c"
    if dtype.is_floating_point:
        return "f"
    return "i" if dtype.is_signed else "u"


def check_tensors(batch: TokenBatch[Any]) -> None:
    """Validate one batch of torch tensors (types, shapes, dtype kinds, one
    device) without reading any value."""
    check_batch(batch, array_type=torch.Tensor, type_name="a torch.Tensor", kind_of=numpy_kind)
    device = batch.logp.device
    for name, value in batch.given().items():
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but logp is on {device}: put all inputs on one device")


def is_host(rows: RowResults) -> bool:
    """Whether ``rows`` hold numpy arrays (else tensors)."""
    return isinstance(rows.n_tokens, np.ndarray)


def on_host(rows: RowResults) -> RowResults:
    """Row results of CPU tensors as numpy views of the same memory (no copy)."""
    return RowResults(**{f.name: getattr(rows, f.name).numpy() for f in fields(rows)})


def as_tensors(rows: RowResults) -> RowResults:
    """Row results of numpy arrays as CPU tensors viewing the same memory (no copy)."""
    return RowResults(**{f.name: torch.from_numpy(getattr(rows, f.name)) for f in fields(rows)})
