"""Torch-side helpers around ``gaccore.rows``: input validation for torch
tensors, and numpy views of CPU row results.

``RowResults``, ``with_roles`` and ``finalize`` live in ``gaccore.rows``
(shared with the numpy path) and are re-exported here. This module imports
torch only (no triton), so the twin works where triton is missing and the
kernel module is imported only when it is used.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch

from gaccore.rows import BatchStats, RowResults, finalize, trimmed_variance, with_roles
from gaccore.validation import (
    EXPERT_KINDS,
    FLOAT_KINDS,
    MASK_KINDS,
    check_batch_shapes,
    check_dtype_kind,
    check_sft_coef,
)

__all__ = [
    "ROW_DTYPE",
    "BatchStats",
    "RowResults",
    "check_inputs",
    "finalize",
    "numpy_kind",
    "on_host",
    "trimmed_variance",
    "with_roles",
]

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


def check_inputs(
    logp: Any,
    mask: Any,
    adv: Any,
    expert: Any,
    ref_logp: Any,
    sft_coef: str,
) -> tuple[int, int]:
    """Validate one batch of torch tensors (types, shapes, dtype kinds, one
    device) without reading any value; returns ``(B, T)``."""
    named = {"logp": logp, "mask": mask, "adv": adv, "expert": expert, "ref_logp": ref_logp}
    for name, value in named.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    shape = check_batch_shapes(
        logp.shape,
        mask.shape,
        adv.shape,
        None if expert is None else expert.shape,
        None if ref_logp is None else ref_logp.shape,
    )
    kinds = {
        "logp": FLOAT_KINDS,
        "mask": MASK_KINDS,
        "adv": FLOAT_KINDS,
        "expert": EXPERT_KINDS,
        "ref_logp": FLOAT_KINDS,
    }
    for name, value in named.items():
        if value is not None:
            check_dtype_kind(name, numpy_kind(value.dtype), kinds[name], value.dtype)
    for name, value in named.items():
        if value is not None and value.device != logp.device:
            raise ValueError(f"{name} is on {value.device} but logp is on {logp.device}: put all inputs on one device")
    check_sft_coef(sft_coef)
    return shape


def on_host(rows: RowResults) -> RowResults:
    """Row results of CPU tensors as numpy views of the same memory (no copy)."""
    return RowResults(**{f.name: getattr(rows, f.name).numpy() for f in fields(rows)})
