"""The channel between the tester and the student's kernel: data only, never pickle (``THREAT_MODEL.md``).

The tester (``tester.py``, a plain ``python -I`` process that runs the master's locked cells) calls the student's
functions through proxies; each call crosses a Unix socket to the kernel, where ``serve`` — run by the grader as a
cell of its own — looks the name up in the kernel's globals, calls it and sends the result back. Every message is
one frame::

    u64 length, JSON header | u64 length, safetensors of the torch tensors | u64 length, safetensors of the arrays

What may cross (``encode`` / ``decode``): ``None``, ``bool``, ``int``, ``float``, ``str``, lists, tuples, dicts
with string keys, numpy scalars of a numeric dtype, numpy arrays and torch tensors (dense, of a dtype safetensors
knows: their values only, as plain ``Tensor``/``ndarray``, never a subclass). From the tester only, also: a
``torch.Generator`` (its state), ``torch.dtype``, a *reference* to an object a locked setup cell made (the
kernel's global of the same name), and a *callback* (a function of the test, which the kernel may call back with
data). Decoding what the kernel sent builds nothing but data: a reference or a callback from the kernel is refused.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

MAX_FRAME = 256 * 2**20  # bytes of one message; a kernel sending more loses its connection
_LENGTH = struct.Struct(">Q")
_NUMERIC_KINDS = "biuf"  # numpy dtype kinds that may cross (no objects, no strings, no complex)


class NotData(TypeError):
    """A value that may not cross the channel (an object, a subclass with behaviour, a lambda from the kernel)."""


class ChannelLost(ConnectionError):
    """The other side closed the connection, sent a malformed or oversized frame, or never answered."""


# --- values <-> (header, blobs) -------------------------------------------------------------------------------


def encode(value, refer=None, check_tensor=None) -> tuple[object, dict, dict]:
    """(JSON-able header, {key: tensor}, {key: array}). ``refer(obj, walk)`` returns a header for a value that is
    not data (a reference, a callback), or raises; without it, every such value raises ``NotData``.
    ``check_tensor(tensor, key)`` sees each tensor (the tester notes those that need their gradient)."""
    tensors, arrays = {}, {}
    torch = sys.modules.get("torch")
    np = sys.modules.get("numpy")

    def walk(x):
        kind = type(x)
        if x is None or kind in (bool, str):
            return x
        if kind is int:
            return x
        if kind is float:
            return x if x == x and abs(x) != float("inf") else {"__float__": repr(x)}
        if kind in (list, tuple):
            items = [walk(item) for item in x]
            return items if kind is list else {"__tuple__": items}
        if kind is dict:
            if not all(type(k) is str for k in x):
                raise NotData("a dict whose keys are not all strings")
            return {"__dict__": {k: walk(v) for k, v in x.items()}}
        if torch is not None:
            if isinstance(x, torch.Tensor):
                if x.layout != torch.strided or x.is_complex() or x.is_quantized:
                    raise NotData(f"a tensor of layout {x.layout} and dtype {x.dtype}")
                key = f"t{len(tensors)}"
                if check_tensor is not None:
                    check_tensor(x, key)
                tensors[key] = x.detach().cpu().contiguous().clone()
                return {"__tensor__": key}
            if kind is torch.Size:
                return {"__tuple__": [int(n) for n in x]}
            if kind is torch.dtype:
                return {"__dtype__": str(x).removeprefix("torch.")}
        if np is not None:
            if isinstance(x, np.ndarray):
                if x.dtype.kind not in _NUMERIC_KINDS:
                    raise NotData(f"an array of dtype {x.dtype}")
                key = f"a{len(arrays)}"
                arrays[key] = np.ascontiguousarray(np.asarray(x)).copy()
                return {"__ndarray__": key}
            if isinstance(x, np.generic) and x.dtype.kind in _NUMERIC_KINDS:
                return {"__npscalar__": x.dtype.str, "value": walk(x.item())}
        if refer is not None:
            return refer(x, walk)
        raise NotData(f"a {kind.__module__}.{kind.__qualname__}")

    return walk(value), tensors, arrays


def decode(header, tensors: dict, arrays: dict, resolve=None):
    """The value ``header`` describes. ``resolve(tag, payload)`` builds what is not data (the kernel's side: a
    reference, a generator, a callback); without it, such a header raises ``NotData``."""

    def walk(h):
        if h is None or type(h) in (bool, int, float, str):
            return h
        if type(h) is list:
            return [walk(item) for item in h]
        if type(h) is not dict or len(h) not in (1, 2):
            raise NotData(f"malformed value {str(h)[:80]}")
        if "__tuple__" in h:
            return tuple(walk(item) for item in h["__tuple__"])
        if "__dict__" in h:
            return {str(k): walk(v) for k, v in dict(h["__dict__"]).items()}
        if "__float__" in h:
            return float(h["__float__"])  # nan, inf, -inf
        if "__tensor__" in h:
            return tensors[h["__tensor__"]]
        if "__ndarray__" in h:
            return arrays[h["__ndarray__"]]
        if "__npscalar__" in h:
            import numpy as np

            dtype = np.dtype(str(h["__npscalar__"]))
            if dtype.kind not in _NUMERIC_KINDS:
                raise NotData(f"a numpy scalar of dtype {dtype}")
            return dtype.type(walk(h["value"]))
        if "__dtype__" in h:
            import torch

            dtype = getattr(torch, str(h["__dtype__"]), None)
            if not isinstance(dtype, torch.dtype):
                raise NotData(f"no dtype {h['__dtype__']}")
            return dtype
        if resolve is not None:
            [(tag, payload)] = h.items()
            return resolve(tag, payload, walk)
        raise NotData(f"{next(iter(h))} may not come from the kernel")

    return walk(header)


# --- frames -------------------------------------------------------------------------------------------------------


def send(sock: socket.socket, header: dict, tensors: dict | None = None, arrays: dict | None = None) -> None:
    parts = [json.dumps(header).encode()]
    if tensors:
        from safetensors.torch import save as save_torch

        parts.append(save_torch(tensors))
    else:
        parts.append(b"")
    if arrays:
        from safetensors.numpy import save as save_numpy

        parts.append(save_numpy(arrays))
    else:
        parts.append(b"")
    if sum(map(len, parts)) > MAX_FRAME:
        raise NotData(f"a message over {MAX_FRAME // 2**20} MB")
    sock.sendall(b"".join(_LENGTH.pack(len(part)) + part for part in parts))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 2**20))
        if not chunk:
            raise ChannelLost("the other side closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket) -> tuple[dict, dict, dict]:
    """(header, tensors, arrays) of the next frame; a malformed or oversized one raises ``ChannelLost``."""
    parts, total = [], 0
    for _ in range(3):
        (size,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
        total += size
        if total > MAX_FRAME:
            raise ChannelLost(f"a message over {MAX_FRAME // 2**20} MB")
        parts.append(_read_exactly(sock, size))
    try:
        header = json.loads(parts[0])
        tensors, arrays = {}, {}
        if parts[1]:
            from safetensors.torch import load as load_torch

            tensors = load_torch(parts[1])
        if parts[2]:
            from safetensors.numpy import load as load_numpy

            arrays = load_numpy(parts[2])
    except Exception as err:  # noqa: BLE001 (whatever a malformed frame raises)
        raise ChannelLost(f"a malformed message ({type(err).__name__})") from None
    if type(header) is not dict:
        raise ChannelLost("a malformed message")
    return header, tensors, arrays


def error_header(err: BaseException) -> dict:
    return {"op": "raise", "ename": type(err).__name__, "evalue": str(err)[:2000]}


def rebuild_error(header: dict) -> BaseException:
    """The exception the other side raised, as an exception of the same name (a builtin one when it is one, so
    that ``NotImplementedError`` reads as 'not answered yet'); never a class the other side defined."""
    ename, evalue = str(header.get("ename", "Exception"))[:200], str(header.get("evalue", ""))[:2000]
    builtin = getattr(__import__("builtins"), ename, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception) and builtin is not StopIteration:
        try:
            return builtin(evalue) if evalue else builtin()
        except Exception:  # noqa: BLE001 (a builtin that wants other arguments: UnicodeDecodeError, …)
            pass
    return type(ename if ename.isidentifier() else "Error", (Exception,), {})(evalue)


# --- the kernel's side --------------------------------------------------------------------------------------------


def serve(path: str, namespace: dict, connect_s: float = 30.0) -> None:
    """Answer the tester's calls until it says ``end`` (run in the kernel by the grader, one cell per tested cell).
    A student may replace this function: that changes only what their own functions appear to return."""
    import time

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + connect_s
    while True:
        try:
            sock.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
    graphs = []  # (output, inputs) of the calls whose gradient the tests may ask for
    try:
        while True:
            try:
                header, tensors, arrays = receive(sock)
            except ChannelLost:
                return
            if header.get("op") == "call":
                _answer(sock, header, tensors, arrays, namespace, graphs)
            elif header.get("op") == "backward":
                _backward(sock, header, tensors, graphs)
            else:
                return  # end
    finally:
        sock.close()


def _kernel_resolve(sock, namespace):
    def resolve(tag, payload, walk):
        if tag == "__ref__":
            return namespace[payload]
        if tag == "__generator__":
            import torch

            generator = torch.Generator()
            generator.set_state(walk(payload))
            return generator
        if tag == "__callback__":
            return _Callback(sock, payload, namespace)
        raise NotData(f"unknown tag {tag}")

    return resolve


def _answer(sock, header, tensors, arrays, namespace, graphs) -> None:
    try:
        if header.get("name") not in namespace:
            raise NameError(f"name '{header.get('name')}' is not defined")
        function = namespace[header["name"]]
        inputs = [tensors[key].requires_grad_(True) for key in header.get("grad", [])]  # the tests' leaves
        args, kwargs = decode(header["args"], tensors, arrays, _kernel_resolve(sock, namespace))
        result = function(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 (the student's error, for the tester to raise)
        send(sock, error_header(err))
        return
    try:
        value, tensors, arrays = encode(result)
        reply = {"op": "return", "value": value}
        torch = sys.modules.get("torch")
        if inputs and torch is not None and isinstance(result, torch.Tensor) and result.requires_grad:
            graphs.append((result, inputs))
            reply["graph"] = len(graphs) - 1
        send(sock, reply, tensors, arrays)
    except NotData as err:
        send(sock, {"op": "raise", "ename": "NotData",
                    "evalue": f"{header['name']} returned {err}: only numbers, strings, lists, tuples, dicts, "
                              "arrays and tensors cross to the tests"})


def _backward(sock, header, tensors, graphs) -> None:
    """The gradients of the inputs of call ``graph``, for the gradient of its output the tests send."""
    try:
        import torch

        output, inputs = graphs[int(header["graph"])]
        grads = torch.autograd.grad(output, inputs, tensors["t0"], retain_graph=True, allow_unused=True)
        value, tensors, arrays = encode(list(grads))
        send(sock, {"op": "return", "value": value}, tensors, arrays)
    except Exception as err:  # noqa: BLE001
        send(sock, error_header(err))


class _Callback:
    """A function of the tests, called from the kernel: its arguments and result cross as data."""

    def __init__(self, sock, number, namespace):
        self.sock, self.number, self.namespace = sock, number, namespace

    def __call__(self, *args, **kwargs):
        value, tensors, arrays = encode((args, kwargs))
        send(self.sock, {"op": "callback", "id": self.number, "args": value}, tensors, arrays)
        header, tensors, arrays = receive(self.sock)
        if header.get("op") == "raise":
            raise rebuild_error(header)
        return decode(header.get("value"), tensors, arrays, _kernel_resolve(self.sock, self.namespace))
