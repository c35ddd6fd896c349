"""The ``gaccore demo``: hybrid SFT + RL training of a tiny transformer on an
embedded two-digit addition task, GAC against today's mixing schedules.

Needs the ``demo`` extra (torch, matplotlib, tqdm). ``import gaccore`` never
imports this package. Run it with ``gaccore demo`` or ``python -m gaccore.demo``.
"""
