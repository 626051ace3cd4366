"""text3d-edu: text-to-3D generation, taught by running it on a laptop CPU.

The library is a set of small, readable reference implementations. Start with
``toyworld`` (the Pocket World every method learns from and is judged on), then
``cameras`` → ``rendering`` → ``fields`` → ``nerf`` (lecture 01).
"""

__version__ = "0.1.0"
