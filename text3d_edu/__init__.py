"""text3d-edu: text-to-3D generation, taught by running it on a laptop CPU.

The library is a set of small, readable reference implementations. Start with
``toyworld`` (the Pocket World every method learns from and is judged on), then
``cameras`` → ``rendering`` → ``fields`` → ``nerf`` (lecture 01).
"""

__version__ = "0.1.0"

import os as _os
import sys as _sys
import warnings as _warnings

# On a busy machine, libgomp's worker threads spin-wait for work that a busy core cannot give them: with one
# other busy process on 2 cores, a 2-thread SDS step took 1.16 s instead of 0.19 s (benchmarks/threads.py).
# OMP_WAIT_POLICY=PASSIVE makes them sleep instead. OpenMP reads it once, when torch loads it, so it must be in
# the environment before the first ``import torch``: import text3d_edu first (the CLI, the notebooks, the test
# suite and the grader's kernels all do, or set it themselves).
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
elif _os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
    _warnings.warn("torch was imported before text3d_edu, without OMP_WAIT_POLICY=PASSIVE: on a busy machine "
                   "multi-threaded steps may run several times slower. Import text3d_edu before torch, or set "
                   "OMP_WAIT_POLICY=PASSIVE in the environment.", stacklevel=2)

import torch as _torch  # noqa: E402

# Optimising grids on a CPU drives Adam's second moments (squares of tiny gradients in empty space) into
# denormal floats, which x86 CPUs process ~20× slower: a 64³ grid fit went from 0.07 s to 1.5 s per step after
# 100 steps. Flushing denormals to zero changes no result we measure and keeps every loop at full speed.
_torch.set_flush_denormal(True)
