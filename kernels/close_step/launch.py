"""Launching the close-step kernel from the host: ``kernel_close_step`` and
``CloseStepKernel``, what the eager runner calls.

The config's numbers, its mode, ``per_mean`` and the filter, and
the step's layout (rows or none, where each observation comes from,
``BLOCK_B``) are constexprs: Triton compiles the kernel once for each
combination a run meets, on its first step of that layout (a few seconds
on a GPU host), much as the statistics kernel compiles once per class of T.
Host numbers (a ``kl`` passed as a float, the prior of the step) are
float64 arguments, so a new value compiles nothing and copies nothing to
the device; a CUDA graph, which freezes arguments, passes them as 0-d
tensors instead (``*_FROM``, ``graphs.py``).

"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import triton

from gaccore.config import Config
from gaccore.rows import ROW_FIELDS, RowResults
from gaccore.state import ControllerState
from gaccore.step import Closed

from .kernel import RANK_TILE, _close_step_kernel
from .layout import empty_outputs, pack_state, views
from .numerics import FROM_HOST, FROM_NONE, FROM_TENSOR

# Row counts above this take the plain close_step: the kernel's trimmed
# variance compares every row with every other (kernel.py's docstring).
MAX_ROWS = 2048


@functools.lru_cache(maxsize=16)  # a controller's config is fixed: built once
def _constants(config: Config) -> dict[str, Any]:
    """The config as the kernel's constexprs: one compiled variant per config
    (and layout), every value as the plain path uses it."""
    k_d, k_s, k_r = config.scale
    return {
        "MODE_VERIFIED": config.mode == "verified",
        "PRIOR_FROM_SUCCESS": config.prior_from == "success",
        "SUCCESS_TARGET": float(config.success_target),
        "MU_PEAK": float(config.mu_peak),
        "MU_VALLEY": float(config.mu_valley),
        "PER_MEAN": config.per_mean,
        "FILTER": config.filter_demos is not None,
        "FILTER_AT": None if config.filter_demos is None else float(config.filter_demos),
        "SUCCESS": config.success_threshold is not None,
        "SUCCESS_AT": None if config.success_threshold is None else float(config.success_threshold),
        "TRIM": float(config.trim),
        "STAT_BETA": float(config.stat_beta),
        "KL_BETA": float(config.kl_beta),
        "EMA_BETA": float(config.ema_beta),
        "KL_TARGET": float(config.kl_target),
        # rho_step's band edges, computed in Python as it computes them
        "KL_HIGH": config.kl_target * (1.0 + config.kl_band),
        "KL_LOW": config.kl_target * (1.0 - config.kl_band),
        "ETA_UP": float(config.eta_up),
        "ETA_DOWN": float(config.eta_down),
        "RHO_MIN": float(config.rho_min),
        "RHO_MAX": float(config.rho_max),
        "MU_MIN": float(config.mu_min),
        "MU_MAX": float(config.mu_max),
        "CAP": float(config.cap),
        "BLEND": float(config.blend),
        "LARGE_SHIFT": float(config.large_shift),
        "K_D": float(k_d),
        "K_S": float(k_s),
        "K_R": float(k_r),
    }


def _observation_args(value: Any, device: torch.device) -> tuple[int, torch.Tensor | None, float]:
    """(``*_FROM``, tensor, host value) of an observation: a tensor is read by
    the kernel where it lies (moved first if on another device); a host
    number goes in as a float64 argument, never through a device copy."""
    if value is None:
        return FROM_NONE.value, None, math.nan
    if isinstance(value, torch.Tensor):
        return FROM_TENSOR.value, value if value.device == device else value.to(device), math.nan
    return FROM_HOST.value, None, float(value)


@torch.no_grad()  # the controller's numbers, never part of a caller's graph
def kernel_close_step(
    packed_state: tuple[torch.Tensor, torch.Tensor],
    config: Config,
    observations: dict[str, Any],
    prior_value: Any,
    rows: RowResults | None,
    out: torch.Tensor,
    out_flags: torch.Tensor,
    out_mu: torch.Tensor,
) -> Closed:
    """``gaccore.step.close_step`` in one launch: the new state and the
    step's batch (``None`` without ``rows``) as 0-d views of ``out`` and
    ``out_flags``, and the new ``mu`` as float32 in ``out_mu``, which is what
    ``update`` returns (``empty_outputs``; tests poison them).

    ``packed_state`` is ``pack_state(state)`` or the buffers of a state this
    returned; ``observations`` holds ``kl``, ``expert_success`` and
    ``policy_success`` and ``prior_value`` the prior at this step, each
    ``None``, a number or a 0-d tensor (a prior of ``None``: no blend). A
    tensor is read where it lies when the kernel runs, which is what lets a
    CUDA graph replay the launch with new values. At most ``MAX_ROWS`` rows.
    """
    floats, flags = packed_state
    device = floats.device
    n_rows = 0 if rows is None else rows.n_tokens.shape[0]
    if n_rows > MAX_ROWS:
        raise ValueError(f"kernel_close_step takes at most MAX_ROWS = {MAX_ROWS} rows, got {n_rows}")
    kl_from, kl, kl_value = _observation_args(observations["kl"], device)
    expert_from, expert, expert_value = _observation_args(observations["expert_success"], device)
    policy_from, policy, policy_value = _observation_args(observations["policy_success"], device)
    prior_from, prior, prior_host = _observation_args(prior_value, device)
    # A pointer the kernel never reads stands in for every absent tensor.
    row_args = {f"p_{name}": floats if rows is None else getattr(rows, name).contiguous() for name in ROW_FIELDS}
    block = triton.next_power_of_2(max(n_rows, 1))
    _close_step_kernel[(1,)](
        **row_args,
        n_rows=n_rows,
        p_state=floats,
        p_flags=flags,
        p_kl=floats if kl is None else kl,
        kl_value=kl_value,
        p_expert_success=floats if expert is None else expert,
        expert_success_value=expert_value,
        p_policy_success=floats if policy is None else policy,
        policy_success_value=policy_value,
        p_prior=floats if prior is None else prior,
        prior_value=prior_host,
        p_out=out,
        p_out_flags=out_flags,
        p_out_mu=out_mu,
        HAS_ROWS=rows is not None,
        KL_FROM=kl_from,
        EXPERT_SUCCESS_FROM=expert_from,
        POLICY_SUCCESS_FROM=policy_from,
        PRIOR_FROM=prior_from,
        BLOCK_B=block,
        CHUNK_B=min(block, max(1, RANK_TILE // block)),
        num_warps=1 if rows is None else 4 if block <= 512 else 8,
        # torch rounds every product and sum on its own: no fused multiply-adds
        enable_fp_fusion=False,
        **_constants(config),
    )
    state, batch = views(out, out_flags, has_rows=rows is not None)
    return state, batch, out_mu


class CloseStepKernel:
    """One controller's ``close_step`` through ``kernel_close_step``.

    It keeps the buffers of the state it returned last: when the controller
    passes that state back (every step, unless a state was loaded or moved
    in between), the kernel reads it there, and nothing is stacked.
    ``__call__`` returns ``None`` for more than ``MAX_ROWS`` rows: the
    caller runs the plain ``close_step`` then.
    """

    def __init__(self) -> None:
        self._last: tuple[ControllerState[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None

    def __call__(
        self,
        device: torch.device,
        state: ControllerState[torch.Tensor],
        config: Config,
        observations: dict[str, Any],
        prior_value: float | None,
        rows: RowResults | None,
    ) -> Closed | None:
        if rows is not None and rows.n_tokens.shape[0] > MAX_ROWS:
            return None
        last = self._last
        packed = last[1] if last is not None and last[0] is state else pack_state(state)
        out, out_flags, out_mu = empty_outputs(device, has_rows=rows is not None)
        closed = kernel_close_step(packed, config, observations, prior_value, rows, out, out_flags, out_mu)
        self._last = (closed[0], (out, out_flags))
        return closed
