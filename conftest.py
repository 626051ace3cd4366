"""Loaded by pytest before any test module, notebook or kernel: the environment every test inherits.

OMP_WAIT_POLICY=PASSIVE must be set before torch is first imported (see text3d_edu/__init__.py); the kernels
that nbval starts for the notebooks inherit it from this process.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
