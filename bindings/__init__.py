"""Adapters that drop gaccore into the trainers people already run.

- ``gaccore.bindings.torch``: the CHORD token-weighted SFT loss and ``mix``
  for hand-written loops (needs the ``torch`` extra).
- ``gaccore.bindings.trl``: ``GACGRPOTrainer``, a TRL ``GRPOTrainer`` that
  mixes an expert SFT loss into GRPO with the controller's ``mu`` (extra ``trl``).
- ``gaccore.bindings.verl``: a driver-side hook computing ``mu`` on verl's
  global batch and a policy loss registered with verl (extra ``verl``).

Distributed statistics need no binding: pass ``process_group=`` to
``gaccore.Controller``. Nothing is imported here, so importing this package
costs nothing; import the submodule you use.
"""
