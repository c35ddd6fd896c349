"""gaccore.kernels: everything that runs on torch tensors, above the numpy core.

``batch_stats`` computes the proxies of SPEC §2 with the fused Triton kernel
on CUDA (``fused``) or its plain-torch twin elsewhere (``reference``, the
reference for tests and benchmarks). ``TorchBackend`` (``torch_backend``) is
what ``gaccore.Controller`` uses for torch inputs, with the distributed
gather (``distributed``) and the CUDA-graph replay of its step (``graphs``);
importing this package registers it with the core (``gaccore.backend``).
"""

from gaccore.backend import register_backend
from gaccore.kernels.torch_backend import STATS_METHODS, TORCH_BACKEND, TorchBackend, batch_stats

register_backend(TORCH_BACKEND)

__all__ = ["STATS_METHODS", "TORCH_BACKEND", "TorchBackend", "batch_stats"]
