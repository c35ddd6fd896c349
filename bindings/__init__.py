"""Adapters that drop gaccore into the trainers people already run.

- ``gaccore.bindings.losses``: the CHORD token-weighted SFT loss and ``mix``
  for hand-written loops (needs the ``torch`` extra).
- ``gaccore.bindings.trl``: ``GACGRPOTrainer``, a TRL ``GRPOTrainer`` that
  mixes an expert SFT loss into GRPO with the controller's ``mu`` (extra ``trl``);
  it also exports ``GACGRPOConfig`` (``trl_config``) and ``main`` (``trl_cli``,
  ``python -m gaccore.bindings.trl``). ``demonstrations`` draws, tokenizes and
  lays out the expert examples beside TRL's rollouts.
- ``gaccore.bindings.verl``: a driver-side hook computing ``mu`` on verl's
  global batch and the actor loss mixing with it (extra ``verl``);
  ``verl_v1`` registers GAC variants of verl's V1 trainers and
  ``python -m gaccore.bindings.verl_v1_main`` is verl's ``main_ppo`` with them.
- ``gaccore.bindings.trinity``: ``mix_gac``, Trinity-RFT's CHORD policy loss
  with ``mu`` from the controller (extra ``trinity``, a venv of its own).
- ``gaccore.bindings.swift``: ``GACGRPOTrainer``, ms-swift's GRPO trainer with
  CHORD's SFT term weighted by the controller's ``mu``, and
  ``python -m gaccore.bindings.swift rlhf`` (``swift rlhf`` with ``--gac_*``
  options: ``swift_args``, ``swift_cli``; extra ``swift``, a venv of its own).
- ``gaccore.bindings.common``: what every binding shares (checkpoint file,
  logged ``gac/*`` metrics); ``gaccore.bindings.accumulation``: the
  gradient-accumulation rule (``AccumulationWindow``: which ``mu`` weights a
  micro-batch, when the controller observes and steps); ``experts``: the
  demonstrations' order, score checks and the controller's batch (TRL, ms-swift).

Distributed statistics need no binding: pass ``process_group=`` to
``gaccore.Controller``. Nothing is imported here, so importing this package
costs nothing; import the submodule you use.
"""
