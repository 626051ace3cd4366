"""Grading a class past one machine: ``text3d-edu grade ... --scheduler ADDRESS`` fans the notebooks out over a
Dask distributed cluster, one task per notebook.

Each task runs the local grader's own ``grader.grade_submission`` on a worker, with the same ``Limits``, in a
kernel confined as *that worker's* machine allows (``jail.probe`` there, once per worker process). What travels:

* **to the workers, as data**: the masters (sent once, as a task's result) and each submission's bytes. No
  shared file system is needed; a worker writes the submission into a private folder under its own file name
  (the master is found by it), which its kernels cannot see, and removes it after grading;
* **back, as plain data**: ``SubmissionResult.as_record()``, renamed to the path as given, so that the progress
  log, ``--resume``, the reports and the exit status treat it exactly as a local result.

Nothing is dropped: a worker that dies mid-task has its task rerun elsewhere (Dask's ``allowed-failures``), a
task that raises is retried (``RETRIES``), and a task that still fails becomes that notebook's entry,
``could not be graded: ...`` with ``grader_failed`` (exit status 2), never a missing row.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from text3d_edu.grading import jail
from text3d_edu.grading.grader import SubmissionResult, grade_submission, load_masters, not_graded
from text3d_edu.grading.sandbox import Confinement, Limits

RETRIES = 2  # reruns of a task that raised (a flaky node); a killed worker's task is rerun by the scheduler
CONNECT_TIMEOUT_S = 5  # an unreachable scheduler fails this fast


def _distributed():
    """``distributed``, imported only when a cluster is asked for: it is an optional dependency."""
    try:
        import distributed
    except ImportError as err:
        raise ValueError('--scheduler needs Dask\'s distributed scheduler: pip install "text3d-edu[cluster]"') \
            from err
    return distributed


def connect(address: str):
    """A ``distributed.Client`` of the scheduler at ``address``, or a ValueError naming it within
    ``CONNECT_TIMEOUT_S`` seconds."""
    distributed = _distributed()
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError) as err:
        raise ValueError(f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT_S} s: start it "
                         f"(dask scheduler) or pass the address it prints to --scheduler ({err})") from err


def grade_on_cluster(
    paths: list[str | Path],
    address: str,
    solutions: Path,
    limits: Limits,
    on_result: Callable[[SubmissionResult], None] | None = None,
    files_to_hide: list[Path] = (),
) -> list[SubmissionResult]:
    """Grade ``paths`` against the masters in ``solutions`` on the cluster at ``address``; results in the order
    given, ``on_result`` called on each as soon as it comes back (in the order they finish).

    A worker that shares this machine's file system hides from its kernels what a local batch hides: the
    masters' folder, every submission's folder, and ``files_to_hide`` (the progress log)."""
    distributed = _distributed()
    masters = load_masters(solutions)
    hidden = ([Path(solutions).absolute(), *(Path(path).parent.absolute() for path in paths)],
              [Path(path).absolute() for path in [*paths, *files_to_hide]])  # as Confinement.for_batch hides
    results: dict[int, SubmissionResult] = {}

    def finish(index: int, result: SubmissionResult) -> None:
        results[index] = result
        if on_result:
            on_result(result)

    with connect(address) as client:
        shared_masters = client.submit(_masters, masters, pure=False)  # a task, not scattered data: a worker
        # that dies holding it takes nothing that cannot be recomputed
        futures = {}
        for index, path in enumerate(paths):
            try:
                content = Path(path).read_bytes()
            except OSError as err:  # reported as the local grader reports a file it cannot read
                finish(index, not_graded(Path(path), None, err))
                continue
            future = client.submit(grade_remotely, Path(path).name, content, shared_masters, limits, hidden,
                                   key=f"grade {path} {uuid.uuid4().hex}", retries=RETRIES)  # named in dashboards
            futures[future] = index
        for future in distributed.as_completed(futures):
            path = paths[futures[future]]
            try:
                result = SubmissionResult.from_record(future.result())
            except (Exception, asyncio.CancelledError) as err:  # KilledWorker, an error past the retries, cancelled
                result = not_graded(Path(path), None, err, grader_failed=True)
            result.notebook = str(Path(path))  # as the local grader names it
            finish(futures[future], result)
    return [results[index] for index in range(len(paths))]


# --- on a worker ------------------------------------------------------------------------------------------


def grade_remotely(name: str, content: bytes, masters: dict, limits: Limits, hidden: tuple[list, list]) -> dict:
    """The task: stage the submission under its own file name, grade it as the local grader does, and return
    ``SubmissionResult.as_record()`` (its ``notebook`` is the staged path; the client renames it). ``hidden``:
    the client's (folders, files) to hide, wherever this worker sees them too."""
    scratch = _distributed().get_worker().local_directory  # Dask clears it of a killed worker's leftovers
    folder = Path(tempfile.mkdtemp(prefix="submission-", dir=scratch))  # mode 700: no kernel's user may enter it
    try:
        staged = folder / name
        staged.write_bytes(content)
        hidden_folders, hidden_files = hidden
        confinement = Confinement(_protections(), (folder, *hidden_folders), (staged, *hidden_files))
        return asyncio.run(grade_submission(staged, masters, limits, confinement)).as_record()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _masters(masters: dict) -> dict:
    """The masters, held on the workers for every task of the batch."""
    return masters


@functools.cache
def _protections() -> jail.Protections:
    """What this worker's machine lets the grader do (probed once per worker process)."""
    return jail.probe()
