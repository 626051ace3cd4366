"""Run untrusted notebook cells so that one broken cell costs one question, not the whole submission.

Containment, not security: the kernel runs as the grader's user, so code that goes looking for the
instructor's files can still reach them (grade in a container or as a throw-away user if that matters).
What is contained is what broken student code does by accident:

* **files** — the kernel starts in a private temporary folder holding a copy of the notebook; relative paths
  (``os.remove("data.npz")``, ``open("../x", "w")``) land there, never next to the student's file;
* **endless loops** — a cell over its time limit is interrupted (``KeyboardInterrupt``); a kernel that does
  not answer within a grace period (signals ignored, stuck in C) is killed;
* **memory** — ``RLIMIT_DATA`` caps the kernel's heap (Linux). Not ``RLIMIT_AS``: importing torch maps GBs of
  CUDA libraries and fails under it, while its data segment stays under ~1 GB. A blown limit is a
  ``MemoryError`` in the student's cell and the kernel lives on; polling RSS would have to kill it instead;
* **crashes** — a dead kernel (segfault, ``os._exit``, a killed stuck kernel) is replaced by a fresh one,
  which re-runs the cells that had completed, so the questions after the crash are graded on the same state;
* **time** — the whole notebook has a deadline; cells past it are not run;
* **output** — printed output is dropped as it arrives: a print loop must not fill the grader's memory.

Built on nbclient's ``NotebookClient`` (kernel start, execution, interrupt-on-timeout, dead-kernel detection);
this module adds the limits, the restart-and-replay and the temporary folder.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

try:
    import resource
except ImportError:  # Windows: no memory limit
    resource = None

INTERRUPT_GRACE_S = 5  # how long an interrupted kernel has to answer again before it is killed
MESSAGE_CHARS = 2000  # of an error's name and message kept for the report: the student writes them
_TIMEOUT_ENAME = "CellTimeLimit"  # ename of the error nbclient reports for a cell over its time limit

# nbclient logs every timeout and dead kernel as an error; the grader reports them itself.
_log = logging.getLogger(__name__)
_log.addHandler(logging.NullHandler())
_log.propagate = False


@dataclass(frozen=True)
class Limits:
    """What one submission may use. ``memory_mb`` below ~1000 leaves no room to import torch."""

    cell_timeout: float = 120.0  # s per cell
    notebook_timeout: float = 900.0  # s for the whole notebook
    memory_mb: int = 4096  # RLIMIT_DATA of the kernel, Linux only


@dataclass(frozen=True)
class CellOutcome:
    """How a cell ended: ``ok``, ``error`` (raised), ``timeout``, ``crash`` (kernel died) or ``not run``."""

    status: str
    ename: str = ""
    evalue: str = ""
    kernel_lost: bool = False  # the kernel had to be replaced after this cell

    @property
    def completed(self) -> bool:
        """The cell ran to its end or to its exception: re-running it rebuilds the state it left."""
        return self.status in ("ok", "error")


class _QuietClient(NotebookClient):
    """Drops outputs as they arrive; grading needs only each cell's reply (status, ename, evalue)."""

    def output(self, outs, msg, display_id, cell_index):
        return None


class _Kernel:
    """One Jupyter kernel, limited, in ``workdir``, executing one source at a time."""

    def __init__(self, workdir: Path, limits: Limits):
        placeholder = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell()])
        self.client = _QuietClient(
            placeholder,
            kernel_name="python3",  # the grader's own Python, whatever kernel the student's notebook names
            allow_errors=True,
            interrupt_on_timeout=True,
            error_on_timeout={"ename": _TIMEOUT_ENAME, "evalue": "", "traceback": []},
            shutdown_kernel="immediate",
            iopub_timeout=1,  # outputs still in flight after a reply are dropped anyway
            log=_log,
        )
        self.client.on_cell_executed = self._keep_reply
        self.workdir, self.limits = workdir, limits
        self.reply: dict | None = None

    def _keep_reply(self, cell, cell_index, execute_reply):
        self.reply = execute_reply["content"]

    async def start(self) -> _Kernel:
        self.client.create_kernel_manager()
        # The kernel's own stdout/stderr (C extensions, os.write) would otherwise reach the grader's terminal.
        # OMP_WAIT_POLICY=PASSIVE: several kernels grading at once must not spin-wait on each other's cores.
        await self.client.async_start_new_kernel(
            cwd=str(self.workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        )
        if resource is not None and hasattr(resource, "prlimit"):
            limit = self.limits.memory_mb * 2**20
            resource.prlimit(self.client.km.provisioner.pid, resource.RLIMIT_DATA, (limit, limit))
        await self.client.async_start_new_kernel_client()
        return self

    async def stop(self) -> None:
        if self.client.km is not None:  # not stopped yet (nbclient forgets the manager once it has)
            await self.client._async_cleanup_kernel()

    async def run(self, source: str, timeout: float) -> CellOutcome:
        self.reply = None
        self.client.timeout = max(1, math.ceil(timeout))
        try:
            await self.client.async_execute_cell(nbformat.v4.new_code_cell(source), 0)
        except DeadKernelError:
            return CellOutcome("crash", kernel_lost=True)
        if self.reply is None or self.reply["status"] == "ok":  # None: nothing to run (empty cell)
            return CellOutcome("ok")
        if self.reply["ename"] == _TIMEOUT_ENAME:
            try:  # the interrupt was sent; a healthy kernel answers once the cell has stopped
                await self.client.kc.wait_for_ready(timeout=INTERRUPT_GRACE_S)
            except RuntimeError:
                return CellOutcome("timeout", evalue=f"{self.client.timeout} s", kernel_lost=True)
            return CellOutcome("timeout", evalue=f"{self.client.timeout} s")
        return CellOutcome("error", _bounded(self.reply["ename"]), _bounded(self.reply["evalue"]))


def _bounded(text: object) -> str:
    """A student-written error text fit for a report: at most ``MESSAGE_CHARS``, and always encodable (a lone
    surrogate in an exception message would stop the CSV, or the terminal, that prints it)."""
    text = str(text)
    if len(text) > MESSAGE_CHARS:
        text = f"{text[:MESSAGE_CHARS]}… ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


async def run_cells(sources: list[str], notebook: Path, limits: Limits) -> list[CellOutcome]:
    """Execute ``sources`` in order next to a copy of ``notebook`` in a fresh temporary folder.

    Returns one ``CellOutcome`` per source. A kernel that fails to start raises: nothing could be graded.
    """
    deadline = time.monotonic() + limits.notebook_timeout
    outcomes: list[CellOutcome] = []
    with tempfile.TemporaryDirectory(prefix="text3d-grade-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp) / "work"  # so that "../" is still the private folder
        workdir.mkdir()
        shutil.copyfile(notebook, workdir / Path(notebook).name)
        kernel = await _Kernel(workdir, limits).start()
        try:
            for source in sources:
                budget = min(limits.cell_timeout, deadline - time.monotonic())
                if budget <= 0:
                    outcomes.append(CellOutcome("not run", evalue=f"{limits.notebook_timeout:g} s"))
                    continue
                outcome = await kernel.run(source, budget)
                outcomes.append(outcome)
                if outcome.kernel_lost:
                    replay = [src for src, done in zip(sources, outcomes) if done.completed]
                    kernel = await _replace(kernel, replay, deadline, limits)
        finally:
            await kernel.stop()
    return outcomes


async def _replace(kernel: _Kernel, replay: list[str], deadline: float, limits: Limits) -> _Kernel:
    """A fresh kernel that has re-run ``replay``; if a replayed cell now loses it too, a bare fresh kernel."""
    await kernel.stop()
    kernel = await _Kernel(kernel.workdir, limits).start()
    for source in replay:
        budget = min(limits.cell_timeout, deadline - time.monotonic())
        if budget <= 0:
            break
        if (await kernel.run(source, budget)).kernel_lost:
            await kernel.stop()
            return await _Kernel(kernel.workdir, limits).start()
    return kernel
