"""The row statistics of SPEC §2, one implementation per file, each a
``row_results(batch, sft_coef)`` for a checked ``gaccore.batch.TokenBatch``:

- ``fused.py``: the fused Triton kernel, one pass over the token tensors
  (``launch.py``: its block size, warps and chunks per row);
- ``twin.py``: the same row results in plain torch operations, on any device;
- ``cpu_pass.py``: the same in one compiled pass per row on CPU (numba).

All three are held to the float64 numpy reference, ``gaccore.stats``, in
the tests; ``gaccore.registry.IMPLEMENTATIONS`` says which runs where.
"""
