"""The tester: the master's locked cells, tests included, run out of the student's reach (``THREAT_MODEL.md``).

A plain ``python -I`` process per notebook — no IPython, so no input transformers; its own torch, which no
student code ever ran in — started by the grader (``Tester``) and run as this file (``main``). It executes the
master's locked cells (setup, run cells, tests) in order in a namespace where every name the master's solution
cells define is a *proxy*: calling it sends the arguments as data through ``channel.py`` to the student's kernel,
where the grader runs ``channel.serve`` as a cell of its own, and returns the data the student's function
returned. The assertions of the test cells then run here, on that data, with the master's own code.

A model or an optimiser of the tests crosses as a *mirror*: the kernel works on its own copy (the global of the
same name when a locked setup cell made it, else a copy pickled towards the kernel the first time it crosses),
whose trainable parameters — or optimiser state — are set from the tester's before each call and come back after
it; the gradients of those parameters come back like a tensor's (``Remote``). An object of a class the tests
define crosses as a *callback object* (the kernel calls its public methods back, with data).

What cannot cross, *refuses* the cell (``Refused``), and the grader then runs that test in the student's kernel
as before and says so in the result: a model whose class the kernel cannot rebuild (one a test cell defines), or
anything else that is not data. Whether a cell refuses depends on the master's test code alone — never on what
the student's functions return: a result that is not data is the student's error.

Protocol with the grader: one JSON line per command on stdin (``{"run": n, "source": …}``, ``{"cancel": n}``:
the kernel's side of cell n has ended), one JSON line per cell on the grader's end of stdout
(``{"cell": n, "status": "ok" | "error" | "refused" | "lost", "ename": …, "evalue": …}``); the master's own prints
go to /dev/null.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import select
import socket
import sys
import types
from pathlib import Path

READY_S = 120  # for the tester to start (Python, before any import of the master's)
LOST_S = 30  # after the kernel's side of a cell ended, for the tester to report it


class Refused(BaseException):  # noqa: N818 (not an error of the test: it cannot run here). Not an Exception: a
    """This cell cannot run out of reach; the grader runs it in the kernel."""  # test's `except` must not eat it


# --- the grader's side ----------------------------------------------------------------------------------------


class Tester:
    """One tester process for one notebook: ``start``, then ``run(n, source)`` per locked cell, then ``stop``."""

    def __init__(self, folder: Path, names: list[str], kernel_uid: int | None, environment: dict[str, str]):
        self.folder, self.names, self.kernel_uid, self.environment = folder, names, kernel_uid, environment
        self.socket = str(folder / "channel.sock")
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Tester:
        self.folder.mkdir(mode=0o711, exist_ok=True)
        import text3d_edu

        config = {"names": self.names, "socket": self.socket, "uid": self.kernel_uid,
                  "path": [str(Path(text3d_edu.__file__).resolve().parents[1])]}
        log = open(self.folder / "tester.log", "wb")  # noqa: SIM115 (the child holds it)
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", str(Path(__file__).resolve()), json.dumps(config), cwd=str(self.folder),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                env={**self.environment, "HOME": str(self.folder), "MPLBACKEND": "Agg"}, limit=2**20)
        finally:
            log.close()
        ready = await asyncio.wait_for(self.process.stdout.readline(), READY_S)
        if json.loads(ready or b"{}").get("ready") is not True:
            raise RuntimeError(f"the tester did not start: {(self.folder / 'tester.log').read_text()[-2000:]}")
        return self

    def send(self, command: dict) -> None:
        self.process.stdin.write(json.dumps(command).encode() + b"\n")

    async def report(self, number: int) -> dict:
        """The tester's line for cell ``number`` (earlier lines, of cancelled cells, are skipped)."""
        while True:
            line = await self.process.stdout.readline()
            if not line:
                raise ConnectionError("the tester process died")
            report = json.loads(line)
            if report.get("cell") == number:
                return report

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


# --- the tester's side (``python -I tester.py CONFIG``) ------------------------------------------------------------


def _load_channel():
    """``channel.py`` as a module of its own: importing ``text3d_edu.grading`` would load the whole grader."""
    spec = importlib.util.spec_from_file_location("_t3d_channel", Path(__file__).with_name("channel.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Session:
    """The tester's state: the namespace the master's cells run in, the listening socket, the current cell."""

    def __init__(self, config: dict, channel, commands: int):
        self.channel, self.commands, self.buffer, self.pending = channel, commands, b"", []
        self.namespace: dict = {"__name__": "__main__"}
        for name in config["names"]:
            self.namespace[name] = _Proxy(name, self)
        self.shared: dict[int, tuple[str, object]] = {}  # id -> (name, object) made by a locked setup cell
        self.mirrors: dict[int, tuple[object, str]] = {}  # id -> (model or optimiser, its key in the kernel)
        self.mirror_params: dict[int, tuple[str, str]] = {}  # id of a mirrored model's parameter -> (key, name)
        self.call_mirrors: list[tuple[object, str]] = []  # the mirrors of the call being encoded
        self.new_copies: list[tuple[str, object]] = []  # … and those among them the kernel has no copy of yet
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(config["socket"])
        os.chmod(config["socket"], 0o666)  # the kernel's user connects to it
        self.listener.listen(8)
        self.cell, self.cancelled, self.connection, self.callbacks = -1, False, None, []

    # the grader's commands arrive while we wait on the kernel
    def _read_commands(self) -> None:
        chunk = os.read(self.commands, 65536)
        if not chunk:
            sys.exit(0)  # the grader is gone
        *lines, self.buffer = (self.buffer + chunk).split(b"\n")
        self.pending += [json.loads(line) for line in lines if line.strip()]

    def next_command(self) -> dict:
        """The next cell to run (cancels of cells already reported are dropped)."""
        while True:
            while self.pending:
                command = self.pending.pop(0)
                if "cancel" not in command:
                    return command
            self._read_commands()

    def wait(self, sock: socket.socket) -> None:
        """Until ``sock`` is readable; a cancel of the current cell raises ``ChannelLost``."""
        while True:
            if any(command.get("cancel") == self.cell for command in self.pending):
                self.pending = [command for command in self.pending if command.get("cancel") != self.cell]
                self.cancelled = True
            if self.cancelled:
                raise self.channel.ChannelLost("the kernel stopped answering (its responder ended or was replaced)")
            readable, _, _ = select.select([sock, self.commands], [], [])
            if sock in readable:
                return
            self._read_commands()

    def connect(self) -> socket.socket:
        if self.connection is None:
            self.wait(self.listener)
            self.connection, _ = self.listener.accept()
        return self.connection

    # what an argument becomes on its way to the kernel
    def refer(self, value, walk):
        torch = sys.modules.get("torch")
        if isinstance(value, _Proxy):
            return {"__ref__": value.name}
        if torch is not None and isinstance(value, torch.Generator):
            return {"__generator__": walk(value.get_state())}
        if self.channel.is_model(value):
            return {"__mirror__": self.mirror(value)}
        name, obj = self.shared.get(id(value), (None, None))
        if obj is value and self.namespace.get(name) is value:
            return {"__ref__": name}
        if isinstance(value, types.FunctionType) and value.__module__ == "__main__":  # a function of the tests
            self.callbacks.append(value)
            return {"__callback__": len(self.callbacks) - 1}
        kind = type(value)
        if kind.__module__ == "__main__" and isinstance(kind, type):  # an object of the tests: its methods
            self.callbacks.append(value)
            return {"__object__": len(self.callbacks) - 1}
        raise Refused(f"a {kind.__module__}.{kind.__qualname__} that no locked setup cell made cannot be named in the "
                      "kernel")

    def mirror(self, value) -> str:
        """The key of ``value``'s copy in the kernel: ``ref:NAME`` for a global of a locked setup cell, else
        ``copy:N``, pickled with this call the first time it crosses."""
        import torch

        known = self.mirrors.get(id(value))
        if known is None or known[0] is not value:
            name, obj = self.shared.get(id(value), (None, None))
            if obj is value and self.namespace.get(name) is value:
                key = f"ref:{name}"
            else:
                kind = type(value)
                if kind.__module__ == "__main__" and id(kind) not in self.shared:
                    raise Refused(f"a {kind.__qualname__} (a class of this cell) cannot be rebuilt in the kernel")
                key = f"copy:{len(self.mirrors)}"
                self.new_copies.append((key, value))
            self.mirrors[id(value)] = known = (value, key)
            if not isinstance(value, torch.optim.Optimizer):
                for param_name, p in self.channel.named_parameters(value).items():
                    self.mirror_params.setdefault(id(p), (key, param_name))
        if all(obj is not value for obj, _ in self.call_mirrors):
            self.call_mirrors.append(known)
        return known[1]

    def pickle_copies(self) -> bytes:
        """The call's new copies in one pickle (so that an optimiser and its model stay linked); what they share
        with earlier mirrors or with the setup's globals crosses as a reference to the kernel's own."""
        import io
        import pickle

        new = {id(obj) for _, obj in self.new_copies}
        new_keys = {key for key, _ in self.new_copies}
        session = self

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if id(obj) in new:
                    return None
                mirror = session.mirrors.get(id(obj))
                if mirror is not None and mirror[0] is obj:
                    return ("mirror", mirror[1], None)
                key, name = session.mirror_params.get(id(obj), (None, None))
                if key is not None and key not in new_keys:  # a parameter of a copy the kernel already has
                    return ("param", key, name)
                name, shared = session.shared.get(id(obj), (None, None))
                # never a singleton: a setup global that is None would make every None a reference, and the
                # reference's own None would be looked up again, without end
                if name is not None and shared is obj and session.namespace.get(name) is obj \
                        and not isinstance(obj, (type, int, float, str, bytes, tuple, frozenset, type(None),
                                                 type(...), type(NotImplemented))):
                    return ("ref", name, None)
                return None

        main = types.ModuleType("__main__")  # the classes of the setup cells, as pickle looks them up
        main.__dict__.update(self.namespace)
        saved, sys.modules["__main__"] = sys.modules["__main__"], main
        try:
            buffer = io.BytesIO()
            Pickler(buffer).dump([obj for _, obj in self.new_copies])
            return buffer.getvalue()
        finally:
            sys.modules["__main__"] = saved

    def refer_data(self, value, walk):
        """What a callback may return besides data: what ``refer`` allows, but no model or optimiser (the call
        that would carry its state is already under way)."""
        if self.channel.is_model(value):
            raise Refused("a callback of the tests returned a model or an optimiser")
        return self.refer(value, walk)

    def check_tensor(self, tensor, key: str) -> None:
        """A tensor that needs its gradient crosses as a leaf the kernel differentiates against (``_Proxy``)."""
        if tensor.requires_grad and sys.modules["torch"].is_grad_enabled():
            self.needs_grad.append((tensor, key))

    def remember_shared(self) -> None:
        """After a locked setup or run cell: what it made may cross by name."""
        self.shared = {id(value): (name, value) for name, value in self.namespace.items()
                       if not name.startswith("__") and not isinstance(value, _Proxy)}

    def run(self, number: int, source: str, setup: bool) -> dict:
        channel = self.channel
        self.cell, self.cancelled, self.callbacks = number, False, []
        try:
            try:
                exec(compile(source, f"<locked cell {number}>", "exec"), self.namespace)  # noqa: S102 (the master's)
            finally:
                self.end_cell()
            report = {"status": "ok"}
        except Refused as why:
            report = {"status": "refused", "evalue": str(why)}
        except channel.ChannelLost as err:
            report = {"status": "lost", "ename": "ChannelLost", "evalue": str(err)}
        except BaseException as err:  # noqa: BLE001 (the test's verdict, or the student's error raised here)
            report = {"status": "error", "ename": type(err).__name__, "evalue": str(err)}
        if setup:
            self.remember_shared()
        return {"cell": number, **report}

    def end_cell(self) -> None:
        """Tell the kernel's side this cell is over (it connects once per cell; a cancelled one never will)."""
        try:
            if not self.cancelled:
                connection = self.connect()
                self.channel.send(connection, {"op": "end"})
        except (OSError, self.channel.ChannelLost):
            pass
        finally:
            if self.connection is not None:
                self.connection.close()
            self.connection = None


class _Proxy:
    """A name the student defines: calling it calls their function in the kernel, with data in and out."""

    def __init__(self, name: str, session: _Session):
        self.name, self.session = name, session

    def __repr__(self) -> str:
        return f"<the student's {self.name}>"

    def __call__(self, *args, **kwargs):
        import torch

        session, channel = self.session, self.session.channel
        session.needs_grad, session.call_mirrors, session.new_copies = [], [], []
        try:
            header, tensors, arrays = channel.encode((args, kwargs), session.refer, session.check_tensor)
            sync, sync_tensors, sync_arrays = channel.encode(
                {key: channel.state_of(obj) for obj, key in session.call_mirrors}, prefix="s")
        except channel.NotData as err:
            raise Refused(f"an argument of {self.name}: {err}") from None
        inputs = [tensor for tensor, _ in session.needs_grad]
        request = {"op": "call", "name": self.name, "args": header, "grad": [key for _, key in session.needs_grad],
                   "sync": sync, "grad_mode": torch.is_grad_enabled()}
        if session.new_copies:
            request["copies"] = [key for key, _ in session.new_copies]
            sync_tensors["__copies__"] = torch.frombuffer(bytearray(session.pickle_copies()), dtype=torch.uint8)
        mirrors, session.new_copies = session.call_mirrors, []
        reply, value = self._exchange(request, {**tensors, **sync_tensors}, {**arrays, **sync_arrays})
        try:
            for obj, key in mirrors:  # what the student's function did to them
                channel.set_state(obj, reply["states"][key])
        except Exception as err:  # noqa: BLE001 (a state of the wrong shape, a missing one: the kernel's doing)
            raise channel.NotData(f"{self.name} sent back a malformed state ({type(err).__name__}: {err})") from None
        if "graph" in reply:  # the mirrors' parameters that were trainable after the call are inputs too
            by_key = {key: obj for obj, key in mirrors}
            try:
                inputs += [channel.named_parameters(by_key[key])[name] for key, name in reply.get("param_grad", [])]
            except (KeyError, TypeError, ValueError):
                raise channel.ChannelLost("a malformed message from the kernel") from None
            used = reply.get("used")
            if type(used) is not list or len(used) != len(inputs) or any(type(u) is not bool for u in used):
                raise channel.ChannelLost("a malformed message from the kernel")
            inputs = [x for x, u in zip(inputs, used) if u]  # what the result depends on
            if inputs and isinstance(value, torch.Tensor) and value.dtype.is_floating_point:
                return _Remote.apply(self, int(reply["graph"]), value, *inputs)
        return value

    def _exchange(self, request: dict, tensors: dict, arrays: dict) -> tuple[dict, object]:
        """Send ``request``; answer the kernel's callbacks until it returns (reply, decoded value) or raises."""
        session, channel = self.session, self.session.channel
        connection = session.connect()
        try:
            channel.send(connection, request, tensors, arrays)
            while True:
                session.wait(connection)
                reply, tensors, arrays = channel.receive(connection)
                if reply.get("op") == "return":
                    try:
                        value = channel.decode(reply.get("value"), tensors, arrays)
                        reply["states"] = channel.decode(reply.get("sync", {"__dict__": {}}), tensors, arrays)
                        return reply, value
                    except (channel.NotData, KeyError, TypeError, ValueError) as err:
                        raise channel.NotData(f"{self.name} returned something that is not data ({err})") from None
                if reply.get("op") == "raise":
                    raise channel.rebuild_error(reply)
                if reply.get("op") != "callback":
                    raise channel.ChannelLost("a malformed message from the kernel")
                self._callback(connection, reply, tensors, arrays)
        except OSError as err:
            raise channel.ChannelLost(f"the kernel's connection broke ({err})") from None

    def _callback(self, connection, request: dict, tensors: dict, arrays: dict) -> None:
        """The student's function calls a function of the test: run it here, on data."""
        channel, session = self.session.channel, self.session
        try:
            args, kwargs = channel.decode(request.get("args"), tensors, arrays)
            function = session.callbacks[int(request.get("id"))]
            method = request.get("method")
            if method is not None:  # a public method of an object of the tests
                if type(method) is not str or method.startswith("_"):
                    raise AttributeError(f"no method {method!r} may be called")
                function = getattr(function, method)
            value = function(*args, **kwargs)
            header, tensors, arrays = channel.encode(value, session.refer_data, session.check_tensor)
        except Refused as why:
            header, tensors, arrays = {"op": "raise", "ename": "NotData", "evalue": str(why)}, {}, {}
            channel.send(connection, header)
            return
        except Exception as err:  # noqa: BLE001 (the test's function raised: the student's function sees it)
            channel.send(connection, channel.error_header(err))
            return
        channel.send(connection, {"op": "return", "value": header}, tensors, arrays)


def _remote_function():
    import torch

    class Remote(torch.autograd.Function):
        """The student's function as a node of the tests' graph: its backward asks the kernel for the gradients."""

        @staticmethod
        def forward(ctx, proxy, graph, value, *inputs):
            ctx.proxy, ctx.graph, ctx.count = proxy, graph, len(inputs)
            return value.clone()

        @staticmethod
        def backward(ctx, grad_output):
            _, grads = ctx.proxy._exchange({"op": "backward", "graph": ctx.graph}, {"t0": grad_output.contiguous()}, {})
            if not isinstance(grads, list) or len(grads) != ctx.count:
                raise RuntimeError(f"{ctx.proxy.name}: no gradients came back")
            return (None, None, None, *grads)

    return Remote


class _Remote:
    @staticmethod
    def apply(*args):
        global _REMOTE
        if _REMOTE is None:
            _REMOTE = _remote_function()
        return _REMOTE.apply(*args)


_REMOTE = None


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    sys.path[:0] = config["path"]
    channel = _load_channel()
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the master's prints
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    session = _Session(config, channel, sys.stdin.fileno())
    replies.write(json.dumps({"ready": True}) + "\n")
    while True:
        command = session.next_command()
        report = session.run(int(command["run"]), command["source"], bool(command.get("setup")))
        replies.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
