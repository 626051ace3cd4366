"""Exercises and autograding: one master notebook per exercise, a generated student copy, a contained grader.

Read in this order:

* ``exercises`` — the master's nbgrader metadata and regions, and the student copy made from it
  (``text3d-edu make-exercises``);
* ``jail`` — what confines a kernel: its own user, namespaces, process and memory limits (``probe`` says
  which this machine allows);
* ``sandbox`` — running untrusted cells in jailed kernels: private folder, time limits, restart after a crash;
* ``channel`` and ``tester`` — the master's tests in a process of their own, calling the student's functions in
  the kernel with data in and data out (``THREAT_MODEL.md``);
* ``grader`` — a submission against its master: which cells run, how each question scores
  (``text3d-edu grade``);
* ``progress`` — each result on disk as soon as it is graded, and ``--resume``;
* ``cluster`` — the same grading fanned out over a Dask cluster (``--scheduler``);
* ``report`` — the student's feedback, the ``--json`` file, the ``--csv`` gradebook and the ``--summary`` table;
* ``junit`` — the ``--junit`` report for CI systems.
"""

from text3d_edu.grading.exercises import make_exercises, stale_exercises, student_copy
from text3d_edu.grading.grader import SubmissionResult, grade_notebooks
from text3d_edu.grading.sandbox import Limits

__all__ = [
    "Limits",
    "SubmissionResult",
    "grade_notebooks",
    "make_exercises",
    "stale_exercises",
    "student_copy",
]
