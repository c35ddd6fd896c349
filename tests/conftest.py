"""Test session setup.

Without a GPU, Triton kernels can only run in Triton's interpreter, which
must be chosen before triton is first imported (triton reads the variable
at import), so it is set here, before any test module loads. It changes
nothing but how @triton.jit functions execute. The GPU is detected by its
device node rather than torch.cuda so that conftest imports no torch (core
tests check that `import gaccore` does not).
"""

import os

if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
