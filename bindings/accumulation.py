"""SPEC §3's gradient-accumulation rule, written once for every binding.

An optimizer step ``t`` may take several micro-batches. Every micro-batch of
step ``t`` is weighted with the ``mu`` left by step ``t - 1``; the controller
observes each micro-batch and steps once, when step ``t`` closes. With one
micro-batch per step there is nothing to accumulate, and SPEC weights the
step with its own ``mu``: observe, step, and use what the step returned.

``AccumulationWindow`` holds the micro-batches of one optimizer step (the
window) and decides when the controller observes and steps. Trainers say
where a step ends in one of two ways:

- at the optimizer boundary, known while the step's last micro-batch is
  being computed (TRL and ms-swift: ``accelerator.sync_gradients``):
  ``weight = window.micro_batch(..., last=sync)`` observes the micro-batch,
  steps the controller after the last one, and returns the micro-batch's
  weight as a 0-d tensor on the inputs' device, with no host read;
- when a new step number arrives (Trinity's loss sees micro-batches and a
  step number, never the boundary itself): ``window.begin(step)`` closes the
  previous step's window, then ``window.mu`` weights the micro-batch and
  ``window.observe(...)`` feeds it. Such a trainer cannot step before the
  step's last micro-batch, so every step is weighted with the ``mu`` of the
  steps before it.

Imports gaccore's core only; ``mu_tensor`` needs torch, as the controller's.
"""

from __future__ import annotations

from typing import Any

from gaccore import Controller

__all__ = ["AccumulationWindow"]


class AccumulationWindow:
    """The micro-batches of one optimizer step and the ``mu`` that weights them.

    ``controller``: the ``gaccore.Controller`` it observes and steps. A
    binding calls the controller's ``observe``/``step`` only through the
    window; it reads ``mu``, ``metrics()`` and the state from the controller.
    After ``controller.load_state_dict`` (a resumed run) call ``reset()``.
    """

    def __init__(self, controller: Controller) -> None:
        if not isinstance(controller, Controller):
            raise TypeError(f"controller must be a gaccore.Controller, got {type(controller).__name__}")
        self.controller = controller
        self.step: int | None = None  # the trainer's number of the step being observed (``begin``)
        self._observed = 0  # micro-batches observed in the open window
        self._mu: Any = None  # the window's mu as a tensor, made at its first ``mu_tensor`` call
        self._mu_device: Any = None  # the device it was asked for

    # -- the window's mu -----------------------------------------------------------

    @property
    def mu(self) -> float:
        """The ``mu`` weighting the open window, as a Python float (a host read)."""
        return self.controller.mu

    def mu_tensor(self, device: Any = None) -> Any:
        """The ``mu`` weighting the open window: ``controller.mu_tensor(device)``,
        a 0-d float32 tensor made once per window, without a host read."""
        if self._mu is None or device != self._mu_device:
            self._mu, self._mu_device = self.controller.mu_tensor(device), device
        return self._mu

    # -- trainers that know the optimizer boundary ---------------------------------

    def micro_batch(
        self,
        logp: Any,
        mask: Any,
        adv: Any,
        expert: Any = None,
        *,
        ref_logp: Any = None,
        scores: Any = None,
        last: bool,
    ) -> Any:
        """Observe one training micro-batch and return the ``mu`` weighting it
        (a 0-d float32 tensor on ``logp``'s device; no host read).

        ``last``: this micro-batch ends the optimizer step (TRL:
        ``accelerator.sync_gradients``); the controller steps after observing
        it. Its weight is the window's ``mu``, except in a window of this one
        micro-batch (no accumulation), which gets the step's own ``mu``.
        """
        mu = self.mu_tensor(logp.device)
        alone = self._observed == 0
        self.observe(logp, mask, adv, expert, ref_logp=ref_logp, scores=scores)
        if last:
            stepped = self.close()
            if alone:
                mu = stepped
        return mu

    # -- trainers that see step numbers ------------------------------------------

    def begin(self, step: int) -> bool:
        """A micro-batch of the trainer's step ``step`` arrives. When ``step``
        differs from the step being observed, that step's window closes (the
        controller steps if it observed anything) and a new one opens.
        Returns True when a new window opened, the very first call included;
        the number of the step before it is what ``self.step`` held."""
        if step == self.step:
            return False
        if self.step is not None:
            self.close()
        self.step = step
        return True

    def observe(
        self, logp: Any, mask: Any, adv: Any, expert: Any = None, *, ref_logp: Any = None, scores: Any = None
    ) -> None:
        """``controller.observe`` for one micro-batch of the open window."""
        self.controller.observe(logp, mask, adv, expert, ref_logp=ref_logp, scores=scores)
        self._observed += 1

    # -- both ------------------------------------------------------------------------

    def close(self) -> Any:
        """Close the open window: the controller steps if the window observed a
        micro-batch, and its ``mu`` returned (None when nothing was observed:
        the controller does not step). The next micro-batch opens a new window."""
        stepped = None
        if self._observed:
            stepped = self.controller.step()
        self._observed = 0
        self._mu = None
        return stepped

    def reset(self) -> None:
        """Forget the open window without stepping: after the controller's
        state was loaded from a checkpoint (its micro-batches are not saved)."""
        self._observed = 0
        self._mu = None
