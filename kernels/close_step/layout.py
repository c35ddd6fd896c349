"""Where the close-step kernel finds and leaves each number.

The state's floats come first in the kernel's float64 output (in
``gaccore.state.STATE_FLOATS`` order), the step's batch statistics after
them (``gaccore.rows.BATCH_FIELDS``, counts as float64 like the plain path's
placed batch); the state's flags go to a bool buffer (``STATE_FLAGS``
order: Triton reads and writes a bool pointer as bytes); ``mu`` as float32
goes to a 0-d buffer of its own, the value ``update`` returns. The kernel
addresses each value by the constexpr position named after it below, so
the layout follows the dataclasses by construction.
"""

from __future__ import annotations

import torch
import triton.language as tl

from gaccore.rows import BATCH_FIELDS, BatchStats
from gaccore.state import STATE_FLAGS, STATE_FLOATS, ControllerState

_FLOAT = {name: tl.constexpr(i) for i, name in enumerate(STATE_FLOATS)}
_FLAG = {name: tl.constexpr(i) for i, name in enumerate(STATE_FLAGS)}
_BATCH = {name: tl.constexpr(len(STATE_FLOATS) + i) for i, name in enumerate(BATCH_FIELDS)}

# The state's floats.
MU = _FLOAT["mu"]
MU_BAR = _FLOAT["mu_bar"]
RHO = _FLOAT["rho"]
EMA_DISAGREEMENT = _FLOAT["ema_disagreement"]
EMA_VAR_SFT = _FLOAT["ema_var_sft"]
EMA_VAR_RL = _FLOAT["ema_var_rl"]
EMA_KL = _FLOAT["ema_kl"]
EMA_EXPERT_SUCCESS = _FLOAT["ema_expert_success"]
EMA_POLICY_SUCCESS = _FLOAT["ema_policy_success"]
ESTIMATE = _FLOAT["estimate"]
N_LARGE_SHIFTS = _FLOAT["n_large_shifts"]
KL_DRIFT_AREA = _FLOAT["kl_drift_area"]
N_SKIPPED_DISAGREEMENT = _FLOAT["n_skipped_disagreement"]
N_SKIPPED_VAR_SFT = _FLOAT["n_skipped_var_sft"]
N_SKIPPED_VAR_RL = _FLOAT["n_skipped_var_rl"]
N_NONFINITE_ROWS = _FLOAT["n_nonfinite_rows"]
# The state's flags.
HAS_DISAGREEMENT = _FLAG["has_disagreement"]
HAS_VAR_SFT = _FLAG["has_var_sft"]
HAS_VAR_RL = _FLAG["has_var_rl"]
HAS_KL = _FLAG["has_kl"]
HAS_EXPERT_SUCCESS = _FLAG["has_expert_success"]
HAS_POLICY_SUCCESS = _FLAG["has_policy_success"]
HAS_ESTIMATE = _FLAG["has_estimate"]
# The batch statistics, after the state's floats.
BATCH_VAR_SFT = _BATCH["var_sft"]
BATCH_VAR_RL = _BATCH["var_rl"]
BATCH_DISAGREEMENT = _BATCH["disagreement"]
BATCH_KL = _BATCH["kl"]
BATCH_N_SFT = _BATCH["n_sft"]
BATCH_N_RL = _BATCH["n_rl"]
BATCH_N_TOKENS = _BATCH["n_tokens"]
BATCH_N_NONFINITE_ROWS = _BATCH["n_nonfinite_rows"]
BATCH_EXPERT_SUCCESS = _BATCH["expert_success"]
BATCH_POLICY_SUCCESS = _BATCH["policy_success"]
BATCH_N_DEMOS = _BATCH["n_demos"]


def pack_state(state: ControllerState[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The state as the kernel reads it: float64 ``[len(STATE_FLOATS)]`` and
    bool ``[len(STATE_FLAGS)]`` (one stack each)."""
    floats = torch.stack([getattr(state, name) for name in STATE_FLOATS])
    flags = torch.stack([getattr(state, name) for name in STATE_FLAGS])
    return floats, flags


def empty_outputs(device: torch.device, *, has_rows: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh ``out`` (float64: the state, then the batch when there are rows),
    ``out_flags`` (bool) and ``out_mu`` (0-d float32) for the kernel."""
    floats = len(STATE_FLOATS) + (len(BATCH_FIELDS) if has_rows else 0)
    return (
        torch.empty(floats, dtype=torch.float64, device=device),
        torch.empty(len(STATE_FLAGS), dtype=torch.bool, device=device),
        torch.empty((), dtype=torch.float32, device=device),
    )


def views(
    out: torch.Tensor, out_flags: torch.Tensor, *, has_rows: bool
) -> tuple[ControllerState[torch.Tensor], BatchStats[torch.Tensor, torch.Tensor] | None]:
    """The state, and the batch where the step had rows, as 0-d views of the
    kernel's buffers (one ``unbind`` each: host time counts here)."""
    values = out.unbind()
    state = ControllerState(
        **dict(zip(STATE_FLOATS, values, strict=False)),
        **dict(zip(STATE_FLAGS, out_flags.unbind(), strict=True)),
    )
    batch = BatchStats(**dict(zip(BATCH_FIELDS, values[len(STATE_FLOATS) :], strict=True))) if has_rows else None
    return state, batch
