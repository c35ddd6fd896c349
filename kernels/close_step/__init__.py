"""The close step (finalize the step's row results, then advance the
controller's state) on a device: one Triton program (``kernel.py``) with its
buffer layout (``layout.py``) and host launcher (``launch.py``), and the
CUDA-graph replays of a whole update and of the compiled close step
(``graphs.py``). ``gaccore.step.close_step`` is the same arithmetic, written
once for numpy and torch; the tests hold the kernel to it.
"""
