"""gaccore.kernels: batch statistics for torch tensors, without host syncs.

``batch_stats`` computes the proxies of SPEC §2 with the fused Triton kernel
on CUDA (``gaccore.kernels.fused``) or its plain-torch twin elsewhere
(``gaccore.kernels.reference``, the reference for tests and benchmarks).
``TORCH_BACKEND`` is what ``gaccore.Controller`` uses for torch inputs.
"""

from gaccore.kernels.backend import TORCH_BACKEND, TorchBackend, batch_stats
from gaccore.kernels.rows import RowResults

__all__ = ["TORCH_BACKEND", "RowResults", "TorchBackend", "batch_stats"]
