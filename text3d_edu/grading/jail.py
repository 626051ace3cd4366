"""The jail of a student's kernel: what it may touch, signal and spend, enforced by the operating system.

Every kernel is started through this file, run as a script (``python -I jail.py SPEC -- KERNEL-COMMAND``; the
standard library only, so that nothing the student can change is imported by root). This *warden* stays the
kernel's parent for its whole life — a process between the kernel and the grader — and on Linux, when the grader
runs as root, it confines the kernel before exec'ing it:

* **an unprivileged user** of its own: a uid from ``FIRST_UID`` on, with no passwd entry and no groups, claimed
  by one kernel at a time (a lock file under ``/run``), so that two kernels grading side by side cannot signal
  each other or share a process count. Signals to the grader or the warden fail (``EPERM``), and files that are
  not world-writable cannot be written;
* **private namespaces**: a mount namespace in which the masters' folder and every submission's folder are
  covered by an empty read-only tmpfs (a single file, where its folder holds something the kernel needs, by
  ``/dev/null``), ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run/lock`` are fresh and private, and ``/proc``
  shows the kernel's own processes only; a PID namespace in which the kernel is process 1, so that when it dies
  every process it left behind dies with it; an IPC namespace; and a network namespace with no interface but
  loopback (the grader reaches the kernel over Unix sockets in the kernel's folder);
* **a process limit**: ``RLIMIT_NPROC`` for that uid — a fork bomb gets ``BlockingIOError`` at the limit;
* **a memory limit** (any Linux grader): ``RLIMIT_DATA``, the heap. Not ``RLIMIT_AS``: importing torch maps GBs
  of CUDA libraries and fails under it, while its data segment stays under ~1 GB.

Folders a non-root user cannot enter but the kernel needs (a Python installed under ``/root``) are shown in the
mount namespace through a tmpfs that holds only them. Without root (or where namespaces are refused) the warden
still sets the memory limit and the kernel still runs in its own session, and ``probe`` says what is missing:
the grader reports it with every result rather than pretend.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
    import pwd
    import resource
except ImportError:  # Windows: no limits, no jail
    fcntl = pwd = resource = None

FIRST_UID, UID_SLOTS = 61000, 100  # the kernels' uids (and gids): 61000 … 61099, none in /etc/passwd
CLAIMS = Path("/run/text3d-grade")  # lock files of the uids in use (root-only, outside every jail)
PRIVATE_TMP_MB = 512  # each of the kernel's private /tmp, /var/tmp, /dev/shm (memory-backed)
_PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # world-writable on a usual Linux
_ENVIRONMENT = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "VIRTUAL_ENV")  # what a kernel inherits
_ENVIRONMENT_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_")  # thread settings; tokens and keys stay with the grader

# The protections, as reports name them.
OWN_SESSION = "own session"
MEMORY_LIMIT = "memory limit"
UNPRIVILEGED_USER = "unprivileged user"
PROCESS_LIMIT = "process limit"
PRIVATE_FILES = "private file system"
PRIVATE_PROCESSES = "private process table"
NO_NETWORK = "no network"


@dataclass(frozen=True)
class Protections:
    """What confines the kernels of a batch (``active``), and what could not, with why (``missing``)."""

    active: tuple[str, ...]
    missing: tuple[str, ...] = ()

    @property
    def confined(self) -> bool:
        """The kernel runs as its own user in its own namespaces: it can neither kill the grader nor read the
        masters."""
        return UNPRIVILEGED_USER in self.active

    def as_dict(self) -> dict:
        return {"active": list(self.active), "missing": list(self.missing)}

    def __str__(self) -> str:
        missing = f"; MISSING: {'; '.join(self.missing)}" if self.missing else ""
        return f"sandbox: {', '.join(self.active)}{missing}"


def probe() -> Protections:
    """What this machine lets the grader do, found by trying it: a warden that confines a Python which imports
    ipykernel and finds text3d_edu, exactly as a kernel would start."""
    if os.name != "posix":
        return Protections((), ("every protection: the grader's jail needs Linux",))
    active = [OWN_SESSION]
    if sys.platform != "linux":
        return Protections(tuple(active), ("memory limit, own user, namespaces: Linux only",))
    active.append(MEMORY_LIMIT)
    confined = (UNPRIVILEGED_USER, PROCESS_LIMIT, PRIVATE_FILES, PRIVATE_PROCESSES, NO_NETWORK)
    if os.geteuid() != 0:
        return Protections(tuple(active), (f"{', '.join(confined)}: the grader does not run as root, so a kernel "
                                           "runs as the grader's user and could signal it or read what it reads",))
    check = "import ipykernel, importlib.util as u; assert u.find_spec('text3d_edu'), 'text3d_edu not found'"
    try:
        with claim_uid() as uid:
            spec = JailSpec(uid=uid, workdir="/", memory_bytes=2**31, processes=64, confined=True)
            trial = subprocess.run(spec.command([sys.executable, "-c", check]), env=kernel_environment("/"),
                                   capture_output=True, text=True, timeout=60)
        if trial.returncode != 0:
            raise OSError((trial.stderr.strip().splitlines() or [f"exit status {trial.returncode}"])[-1])
    except (OSError, subprocess.SubprocessError) as err:
        return Protections(tuple(active), (f"{', '.join(confined)}: a confined Python did not start ({err})",))
    return Protections((*active, *confined))


def kernel_environment(home: str) -> dict[str, str]:
    """The environment a kernel gets: where Python and the course are, thread settings, and a home of its own;
    not the grader's (a CI token in it would be the student's to print)."""
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}  # several kernels at once must not spin-wait on each other's cores
    if os.name != "posix":  # no jail: Windows' Python needs variables this list does not know
        return {**os.environ, **passive}
    env = {k: v for k, v in os.environ.items() if k in _ENVIRONMENT or k.startswith(_ENVIRONMENT_PREFIXES)}
    return {**env, "HOME": home, "TMPDIR": "/tmp", "USER": "student", "LOGNAME": "student", **passive}


@contextlib.contextmanager
def claim_uid() -> Iterator[int]:
    """``with claim_uid() as uid``: a kernel uid no other kernel on this machine holds until the block ends."""
    CLAIMS.mkdir(mode=0o700, exist_ok=True)
    for uid in range(FIRST_UID, FIRST_UID + UID_SLOTS):
        if _has_account(uid):
            continue
        with open(CLAIMS / f"uid-{uid}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another kernel's
                continue
            yield uid
            return
    raise OSError(f"all {UID_SLOTS} kernel uids from {FIRST_UID} are in use: grade with fewer --jobs")


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


@dataclass(frozen=True)
class JailSpec:
    """What the warden does for one kernel; it crosses to the warden as JSON on its command line."""

    workdir: str  # the kernel's folder: its cwd and HOME, owned by ``uid``
    memory_bytes: int  # RLIMIT_DATA
    processes: int = 0  # RLIMIT_NPROC of ``uid`` (confined only)
    confined: bool = False  # own uid + namespaces
    uid: int = -1
    connection_file: str = ""  # made readable by ``uid``
    hidden_dirs: list[str] = field(default_factory=list)  # covered by an empty read-only tmpfs
    hidden_files: list[str] = field(default_factory=list)  # covered by /dev/null
    needed: list[str] = field(default_factory=list)  # folders that must stay reachable (Python, the course)
    report: str = ""  # where the warden writes why it could not start the kernel (root-only)
    grader: int = field(default_factory=os.getpid)  # the warden's parent: it must not outlive it

    def command(self, kernel_command: list[str]) -> list[str]:
        """The kernel's command line, through the warden (on POSIX systems; elsewhere as it is)."""
        if os.name != "posix":
            return kernel_command
        spec = json.dumps(self.__dict__ | {"needed": self.needed or needed_paths()})
        return [sys.executable, "-I", str(Path(__file__).resolve()), spec, "--", *kernel_command]


def needed_paths() -> list[str]:
    """Folders a kernel reads to start: the Python installation, the virtual environment, the course's code."""
    import importlib.util

    found = [sys.prefix, sys.base_prefix, str(Path(sys.executable).parent)]
    found += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    spec = importlib.util.find_spec("text3d_edu")
    if spec and spec.origin:
        found.append(str(Path(spec.origin).parents[1]))
    return sorted({os.path.realpath(p) for p in found} | {os.path.abspath(p) for p in found})


def hiding(folders: list[Path], files: list[Path], needed: list[str]) -> tuple[list[str], list[str]]:
    """(folders to cover, files to cover): each of ``folders`` whole, unless the kernel needs something inside it
    (the course's own repository, say), in which case its notebooks one by one; ``files`` always one by one."""
    def holds_needed(folder: str) -> bool:
        return any(os.path.commonpath([folder, path]) == folder for path in needed)

    hidden_dirs, hidden_files = set(), {os.path.realpath(f) for f in files if Path(f).is_file()}
    for folder in {os.path.realpath(f) for f in folders if Path(f).is_dir()}:
        if holds_needed(folder) or folder == "/":
            hidden_files |= {str(p) for p in Path(folder).glob("*.ipynb")}
        else:
            hidden_dirs.add(folder)
    return _outermost(hidden_dirs), sorted(f for f in hidden_files if not _under_any(f, hidden_dirs))


def _under_any(path: str, folders) -> bool:
    return any(path.startswith(folder.rstrip("/") + "/") for folder in folders)


def _outermost(paths) -> list[str]:
    """``paths`` without those inside another one of them: mounting over a folder hides what is inside it."""
    paths = set(paths)
    return sorted(path for path in paths if not _under_any(path, paths))


# --- the warden: runs as root (when confined) between the grader and the kernel ---------------------------------

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWPID, _CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38


def _libc_call(name: str, *args) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        shown = ", ".join(a.decode() for a in args if isinstance(a, bytes))
        raise OSError(err, f"{name}({shown}): {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    _libc_call("mount", encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data))


def _die_with_parent() -> None:
    if sys.platform == "linux":
        _libc_call("prctl", _PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _fresh_tmpfs(top: str, keep: list[str], mode: int, readonly: bool = False) -> None:
    """``top`` replaced by an empty tmpfs, in which the folders of ``keep`` under it reappear as they were."""
    kept = [(path, os.open(path, os.O_PATH)) for path in _outermost(p for p in keep if _under_any(p, [top]))]
    _mount("tmpfs", top, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode={mode:o},size={PRIVATE_TMP_MB}m")
    for path, fd in kept:
        os.makedirs(path, mode=0o711, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
        os.close(fd)
    if readonly:
        _mount("tmpfs", top, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def _not_enterable(path: str) -> str | None:
    """The first folder on the way to ``path`` that other users cannot enter, or None."""
    parts = Path(path).parts
    for depth in range(2, len(parts) + 1):
        folder = str(Path(*parts[:depth]))
        if os.path.isdir(folder) and not os.stat(folder).st_mode & stat.S_IXOTH:
            return folder
    return None


def _build_mount_namespace(spec: dict) -> None:
    """The kernel's view of the file system (we are root in fresh mount and PID namespaces)."""
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)  # nothing mounted here leaks to the machine
    for folder in spec["hidden_dirs"]:
        _mount("tmpfs", folder, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "mode=0,size=4k")
    for file in spec["hidden_files"]:
        _mount("/dev/null", file, None, _MS_BIND)
    keep = [str(Path(spec["workdir"]).parent), *spec["needed"]]
    for folder in _PRIVATE_DIRS:
        if os.path.isdir(folder):
            _fresh_tmpfs(folder, keep, 0o1777)
    for folder in sorted({top for path in spec["needed"] if (top := _not_enterable(path))}):
        _fresh_tmpfs(folder, spec["needed"], 0o711, readonly=True)  # e.g. /root, holding a pyenv Python
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)


def _become_the_kernel(spec: dict, command: list[str], warden_alive: int) -> None:
    """In the child: confine, drop root, exec the kernel. Never returns. ``warden_alive`` is the read end of a
    pipe whose write end only the warden holds: it reads as closed once the warden is gone."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if spec["confined"]:
        _build_mount_namespace(spec)
        resource.setrlimit(resource.RLIMIT_NPROC, (spec["processes"], spec["processes"]))
        if spec["connection_file"]:
            os.chown(spec["connection_file"], spec["uid"], spec["uid"])
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])  # from here on, nothing root could do is left to do
        _libc_call("prctl", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # nor can a set-uid program (su, …) give it back
    if sys.platform == "linux":  # macOS refuses or ignores these limits
        resource.setrlimit(resource.RLIMIT_DATA, (spec["memory_bytes"], spec["memory_bytes"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _die_with_parent()  # again: a change of credentials clears it
    if select.select([warden_alive], [], [], 0)[0]:  # the warden died before the line above: no orphan kernel
        os._exit(70)
    os.chdir(spec["workdir"])
    os.execv(command[0], command)


def main(argv: list[str]) -> int:
    """``jail.py SPEC -- KERNEL-COMMAND``: start the kernel confined by SPEC, wait for it, exit as it did."""
    spec, command = json.loads(argv[0]), argv[2:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is for the kernel, which shares our group
    try:
        _die_with_parent()  # a grader killed with -9 takes its kernels with it …
        if os.getppid() != spec["grader"]:  # … also one killed while this Python was starting
            return 70
        if spec["confined"]:
            _libc_call("unshare", _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWNET)
        warden_alive, held_by_warden = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                os.close(held_by_warden)
                _become_the_kernel(spec, command, warden_alive)
            except BaseException as err:  # noqa: BLE001 (whatever stops the jail, the kernel must not start)
                _report(spec, err)
                os._exit(70)
        os.close(warden_alive)
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    except OSError as err:
        _report(spec, err)
        return 70


def _report(spec: dict, err: BaseException) -> None:
    message = f"the kernel's jail could not be built: {err}"
    if spec.get("report"):
        Path(spec["report"]).write_text(message)
    print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
