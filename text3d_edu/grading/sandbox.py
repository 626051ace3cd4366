"""Run untrusted notebook cells so that one broken or hostile cell costs its own questions, never the batch.

Each notebook gets a fresh Jupyter kernel, started through ``jail.py``'s warden: on a Linux grader running as root
the kernel is an unprivileged user of its own in private namespaces, with process and memory limits, and cannot
signal the grader, read the masters or other submissions, or write outside its folder (``jail.py`` says how and
what it leaves open); elsewhere it still has its own session and a memory limit, and every result says which
protections were missing. The master's tests do not run here but in the tester (``tester.py``), which calls the
student's functions in this kernel through ``channel.serve`` (``THREAT_MODEL.md``). On top of the jail, this
module contains what broken student code does:

* **files** — the kernel starts in a temporary folder of its own (``work/``, also its ``HOME``) holding a copy of
  the notebook; relative paths (``os.remove("data.npz")``) land there, never next to the student's file;
* **endless loops** — a cell over its time limit is interrupted (``KeyboardInterrupt``); a kernel that does
  not answer within a grace period (signals ignored, stuck in C) is killed;
* **memory** — a blown heap limit is a ``MemoryError`` in the student's cell and the kernel lives on; polling
  RSS would have to kill it instead;
* **crashes** — a dead kernel (segfault, ``os._exit``, a killed stuck kernel) is replaced by a fresh one,
  which re-runs the cells that had completed, so the questions after the crash are graded on the same state;
* **time** — the whole notebook has a deadline; cells past it are not run;
* **output** — printed output is dropped as it arrives: a print loop must not fill the grader's memory, and an
  error's message is cut to ``MESSAGE_CHARS``.

Built on nbclient's ``NotebookClient`` (kernel start, execution, interrupt-on-timeout, dead-kernel detection);
this module adds the jailed start, a client the kernel cannot flood, the restart-and-replay and the folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import nbformat
import zmq
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from text3d_edu.grading import jail

INTERRUPT_GRACE_S = 5  # how long an interrupted kernel has to answer again before it is killed
MESSAGE_CHARS = 2000  # of an error's name and message kept for the report: the student writes them
MESSAGE_BYTES = 16 * 2**20  # a bigger message from a kernel is refused by zmq unread (its connection is reset)
BACKLOG = 16  # messages zmq queues for the grader per socket; output beyond it is dropped unread
SEND_WAIT_S = 5  # a request the kernel's connection does not take in this time: the kernel is lost
_CONNECTION_LOST = "the kernel's connection broke (a message over 16 MB, say)"
_TIMEOUT_ENAME = "CellTimeLimit"  # ename of the error nbclient reports for a cell over its time limit

# nbclient logs every timeout and dead kernel as an error; the grader reports them itself.
_log = logging.getLogger(__name__)
_log.addHandler(logging.NullHandler())
_log.propagate = False


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one submission may use. ``memory_mb`` below ~1000 leaves no room to import torch."""

    cell_timeout: float = 120.0  # s per cell
    notebook_timeout: float = 900.0  # s for the whole notebook
    memory_mb: int = 4096  # RLIMIT_DATA of the kernel, Linux only
    processes: int = 256  # RLIMIT_NPROC of the kernel's own user (threads count): when the grader runs as root


@dataclasses.dataclass(frozen=True)
class Confinement:
    """What the kernels of a batch run under: the protections ``jail.probe`` found, and what they must not see
    (the masters' folder, every submission's folder, the grader's progress log)."""

    protections: jail.Protections
    hidden_folders: tuple[Path, ...] = ()
    hidden_files: tuple[Path, ...] = ()

    @classmethod
    def for_batch(cls, solutions: Path, notebooks: list[Path], files: list[Path] = ()) -> Confinement:
        return cls(jail.probe(), (Path(solutions), *(Path(n).parent for n in notebooks)),
                   (*map(Path, notebooks), *map(Path, files)))


@dataclasses.dataclass(frozen=True)
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


class _BoundedClient(AsyncKernelClient):
    """A kernel client that a kernel cannot make fill the grader's memory or block it: a message over
    ``MESSAGE_BYTES`` resets the connection unread, messages beyond ``BACKLOG`` unread ones are dropped (a kernel
    printing faster than the grader reads; a reply is awaited one at a time), and a request the kernel does not
    take within ``SEND_WAIT_S`` fails (zmq.Again) instead of blocking the grader's event loop, e.g. once a reset
    connection is gone. Set on the client's own zmq context, so they hold from each socket's first message."""

    def _context_default(self) -> zmq.asyncio.Context:
        context = super()._context_default()
        context.setsockopt(zmq.MAXMSGSIZE, MESSAGE_BYTES)
        context.setsockopt(zmq.RCVHWM, BACKLOG)
        context.setsockopt(zmq.SNDTIMEO, SEND_WAIT_S * 1000)
        return context


class _JailedKernelManager(AsyncKernelManager):
    """Starts the kernel through the warden of ``jail.py`` with ``jail_spec``; talks to it with a
    ``_BoundedClient``."""

    jail_spec: jail.JailSpec | None = None
    client_factory = _BoundedClient

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        return self.jail_spec.command(super().format_kernel_cmd(extra_arguments))


class _Folder:
    """A notebook's private folder: ``root`` the grader's (connection files, the warden's reports; the kernel may
    enter it but not list or write it), ``work`` the kernel's (its cwd and HOME, with the notebook's copy)."""

    def __init__(self, root: Path, notebook: Path, uid: int | None):
        self.root, self.work, self.uid, self.kernels = root, root / "work", uid, 0
        self.work.mkdir()
        shutil.copyfile(notebook, self.work / Path(notebook).name)
        if uid is not None:
            root.chmod(0o711)
            for path in (self.work, self.work / Path(notebook).name):
                os.chown(path, uid, uid)

    def next_kernel(self) -> int:
        self.kernels += 1
        return self.kernels


class _Kernel:
    """One Jupyter kernel, limited, in its folder's ``work/``, executing one source at a time."""

    def __init__(self, folder: _Folder, limits: Limits, confinement: Confinement):
        placeholder = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell()])
        self.client = _QuietClient(
            placeholder,
            kernel_name="python3",  # the grader's own Python, whatever kernel the student's notebook names
            kernel_manager_class=_JailedKernelManager,
            allow_errors=True,
            interrupt_on_timeout=True,
            error_on_timeout={"ename": _TIMEOUT_ENAME, "evalue": "", "traceback": []},
            shutdown_kernel="immediate",
            iopub_timeout=1,  # outputs still in flight after a reply are dropped anyway
            log=_log,
        )
        self.client.on_cell_executed = self._keep_reply
        self.folder, self.limits, self.confinement = folder, limits, confinement
        self.reply: dict | None = None

    def _keep_reply(self, cell, cell_index, execute_reply):
        self.reply = execute_reply["content"]

    async def start(self) -> _Kernel:
        folder, number = self.folder, self.folder.next_kernel()
        km = self.client.create_kernel_manager()
        km.connection_file = str(folder.root / f"kernel-{number}.json")
        report = folder.root / f"jail-{number}.txt"
        km.jail_spec = self._jail_spec(km.connection_file, report)
        if km.jail_spec.confined:  # no network in the kernel's namespace: Unix sockets in a folder of its own
            sockets = folder.root / f"sockets-{number}"
            sockets.mkdir(mode=0o700)
            os.chown(sockets, folder.uid, folder.uid)
            km.transport, km.ip = "ipc", str(sockets / "kernel")
        # The kernel's own stdout/stderr (C extensions, os.write) would otherwise reach the grader's terminal.
        try:
            await self.client.async_start_new_kernel(cwd=str(folder.work), stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.DEVNULL,
                                                     env=jail.kernel_environment(str(folder.work)))
            await self.client.async_start_new_kernel_client()
        except Exception as err:
            await self.stop()
            if report.exists():  # the warden said why
                raise RuntimeError(report.read_text()) from err
            raise
        return self

    def _jail_spec(self, connection_file: str, report: Path) -> jail.JailSpec:
        folder, limits = self.folder, self.limits
        spec = jail.JailSpec(workdir=str(folder.work), memory_bytes=limits.memory_mb * 2**20,
                             connection_file=connection_file, report=str(report))
        if not self.confinement.protections.confined:
            return spec
        needed = jail.needed_paths()
        hidden_dirs, hidden_files = jail.hiding(list(self.confinement.hidden_folders),
                                                list(self.confinement.hidden_files), [*needed, str(folder.root)])
        return dataclasses.replace(spec, confined=True, uid=folder.uid, processes=limits.processes,
                                   hidden_dirs=hidden_dirs, hidden_files=hidden_files, needed=needed)

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
        except zmq.ZMQError:
            return CellOutcome("crash", evalue=_CONNECTION_LOST, kernel_lost=True)
        if self.reply is None or self.reply["status"] == "ok":  # None: nothing to run (empty cell)
            return CellOutcome("ok")
        if self.reply["ename"] == _TIMEOUT_ENAME:
            try:  # the interrupt was sent; a healthy kernel answers once the cell has stopped
                await self.client.kc.wait_for_ready(timeout=INTERRUPT_GRACE_S)
            except (RuntimeError, zmq.ZMQError):
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


class KernelSession:
    """A notebook's kernel for the grader: ``async with KernelSession(...) as session``, then ``await
    session.run(source)`` cell by cell. A lost kernel is replaced by a fresh one that re-runs the completed cells
    ``run`` recorded (``record=False``: the grader's own cells, such as the responder of ``channel.py``, are not
    re-run). The whole notebook shares one deadline."""

    def __init__(self, notebook: Path, limits: Limits, confinement: Confinement | None = None):
        self.notebook, self.limits = Path(notebook), limits
        self.confinement = confinement or Confinement(jail.probe(), (self.notebook.parent,), (self.notebook,))
        self.history: list[tuple[str, CellOutcome]] = []
        self.kernel: _Kernel | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> KernelSession:
        self.deadline = time.monotonic() + self.limits.notebook_timeout
        stack = self._stack
        try:
            self.uid = stack.enter_context(jail.claim_uid()) if self.confinement.protections.confined else None
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="text3d-grade-", ignore_cleanup_errors=True))
            self.folder = _Folder(Path(tmp), self.notebook, self.uid)
            self.kernel = await _Kernel(self.folder, self.limits, self.confinement).start()
            stack.push_async_callback(self._stop)
        except BaseException:
            await stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    async def _stop(self) -> None:
        await self.kernel.stop()

    def budget(self) -> float:
        return min(self.limits.cell_timeout, self.deadline - time.monotonic())

    async def run(self, source: str, record: bool = True) -> CellOutcome:
        budget = self.budget()
        if budget <= 0:
            return CellOutcome("not run", evalue=f"{self.limits.notebook_timeout:g} s")
        outcome = await self.kernel.run(source, budget)
        if record:
            self.history.append((source, outcome))
        if outcome.kernel_lost:
            replay = [src for src, done in self.history if done.completed]
            self.kernel = await _replace(self.kernel, replay, self.deadline)
        return outcome


async def run_cells(sources: list[str], notebook: Path, limits: Limits,
                    confinement: Confinement | None = None) -> list[CellOutcome]:
    """Execute ``sources`` in order next to a copy of ``notebook`` in a fresh temporary folder, in kernels
    confined as ``confinement`` says (by default: as this machine allows, hiding the notebook's folder).

    Returns one ``CellOutcome`` per source. A kernel that fails to start raises: nothing could be graded.
    """
    async with KernelSession(notebook, limits, confinement) as session:
        return [await session.run(source) for source in sources]


async def _replace(kernel: _Kernel, replay: list[str], deadline: float) -> _Kernel:
    """A fresh kernel that has re-run ``replay``; if a replayed cell now loses it too, a bare fresh kernel."""
    await kernel.stop()
    fresh = await _Kernel(kernel.folder, kernel.limits, kernel.confinement).start()
    for source in replay:
        budget = min(kernel.limits.cell_timeout, deadline - time.monotonic())
        if budget <= 0:
            break
        if (await fresh.run(source, budget)).kernel_lost:
            await fresh.stop()
            return await _Kernel(kernel.folder, kernel.limits, kernel.confinement).start()
    return fresh
