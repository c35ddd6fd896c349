"""gaccore.kernels: everything that runs on torch tensors, above the numpy core.

- ``backend``: ``TorchBackend``, what ``gaccore.Controller`` and
  ``gaccore.batch_stats`` use for torch inputs (``gaccore.registry`` names
  it; nothing registers itself on import);
- ``row_stats/``: the implementations of the row statistics side by side,
  the fused Triton kernel (``fused.py``, launched by ``launch.py``), its
  plain-torch twin (``twin.py``) and the compiled CPU pass (``cpu_pass.py``,
  numba); the float64 numpy reference they are held to is ``gaccore.stats``;
- ``close_step/``: the step's finalize and advance in one Triton program
  (``kernel.py``, its buffers in ``layout.py``, launched by ``launch.py``)
  and the CUDA-graph replays (``graphs.py``);
- ``runners``: how a step runs for each ``compile_step``;
- ``triton_numerics``: the Triton numerics both kernels share;
- ``tensors``: the batch check and the row results' dtype;
- ``distributed``: the gather of row results over a process group.

Importing this package imports torch but not triton: the kernel modules are
imported when they are first used.
"""

from .backend import TORCH_BACKEND, TorchBackend

__all__ = ["TORCH_BACKEND", "TorchBackend"]
