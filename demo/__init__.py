"""The ``gaccore demo``: hybrid SFT + RL training of a tiny transformer on
embedded two-digit arithmetic tasks (a suite of five kinds of expert), GAC
against today's mixing schedules.

Needs the ``demo`` extra (torch, matplotlib, tqdm). ``import gaccore`` never
imports this package. Run it with ``gaccore demo`` or ``python -m gaccore.demo``.
"""
