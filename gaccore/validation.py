"""Argument checks shared by every statistics backend (numpy, torch, Triton).

They read only shapes and dtype kinds, never values, so the torch path can
run them without touching device memory. Each error names the argument and
what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

from gaccore.batch import TokenBatch

# numpy dtype kinds: b bool, i signed int, u unsigned int, f float.
FLOAT_KINDS = "f"
MASK_KINDS = "biuf"
EXPERT_KINDS = "biu"
# The SFT token weightings: CHORD's p(1-p), or plain NLL.
SftCoef = Literal["phi", "nll"]
SFT_COEFS: tuple[str, ...] = get_args(SftCoef)


def check_batch_shapes(shapes: Mapping[str, Sequence[int]]) -> None:
    """Validate the shapes of one batch's inputs (``TokenBatch`` field names;
    an absent optional input is not in ``shapes``)."""
    logp = tuple(shapes["logp"])
    if len(logp) != 2:
        raise ValueError(f"logp must have shape [B, T], got a tensor of shape {list(logp)}")
    rows = logp[0]
    mask, adv = tuple(shapes["mask"]), tuple(shapes["adv"])
    if mask != logp:
        raise ValueError(f"mask must have the shape of logp [B, T] = {list(logp)}, got {list(mask)}")
    if adv not in ((rows,), logp):
        raise ValueError(f"adv must have shape [B] = [{rows}] or [B, T] = {list(logp)}, got {list(adv)}")
    if "expert" in shapes and tuple(shapes["expert"]) != (rows,):
        raise ValueError(f"expert must have shape [B] = [{rows}], got {list(shapes['expert'])}")
    if "scores" in shapes and tuple(shapes["scores"]) != (rows,):
        raise ValueError(
            f"scores must have shape [B] = [{rows}], one verifier score per row, got {list(shapes['scores'])}"
        )
    if "ref_logp" in shapes and tuple(shapes["ref_logp"]) != logp:
        raise ValueError(f"ref_logp must have the shape of logp [B, T] = {list(logp)}, got {list(shapes['ref_logp'])}")


# The dtype kinds each input of a batch may have.
INPUT_KINDS = {
    "logp": FLOAT_KINDS,
    "mask": MASK_KINDS,
    "adv": FLOAT_KINDS,
    "expert": EXPERT_KINDS,
    "ref_logp": FLOAT_KINDS,
    "scores": FLOAT_KINDS,
}


def check_batch(
    batch: TokenBatch[Any],
    *,
    array_type: type,
    type_name: str,
    kind_of: Callable[[Any], str],
) -> None:
    """Validate one batch without reading a value: every input given is an
    ``array_type`` (``type_name`` in the error), then the shapes and the
    dtype kinds (``kind_of`` maps a dtype to its numpy kind)."""
    given = batch.given()
    for name, value in given.items():
        if not isinstance(value, array_type):
            raise TypeError(f"{name} must be {type_name}, got {type(value).__name__}")
    check_batch_shapes({name: value.shape for name, value in given.items()})
    for name, value in given.items():
        check_dtype_kind(name, kind_of(value.dtype), INPUT_KINDS[name], value.dtype)


def check_dtype_kind(name: str, kind: str, allowed: str, dtype: object) -> None:
    """Raise TypeError unless the numpy dtype kind ``kind`` is one of ``allowed``."""
    if kind not in allowed:
        wanted = {
            FLOAT_KINDS: "a floating-point dtype",
            MASK_KINDS: "a bool, integer or floating-point dtype",
            EXPERT_KINDS: "a bool or integer dtype",
        }[allowed]
        raise TypeError(f"{name} must have {wanted}, got {dtype}")


def check_trim(trim: float) -> None:
    if isinstance(trim, bool) or not (isinstance(trim, (int, float)) and 0.0 <= trim < 0.5):
        raise ValueError(f"trim must be a number in [0, 0.5), got {trim!r}")


def check_threshold(name: str, value: float | None) -> None:
    """``filter_demos`` and ``success_threshold``: None or a finite number on the verifier's scale."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        what = "the lowest score kept" if name == "filter_demos" else "the lowest score that counts as a success"
        raise ValueError(f"{name} must be None or a finite number ({what}), got {value!r}")


def check_sft_coef(sft_coef: str) -> None:
    if sft_coef not in SFT_COEFS:
        raise ValueError(f"sft_coef must be one of {SFT_COEFS}, got {sft_coef!r}")
