"""The channel between the tester and the student's kernel: data only, never pickle (``THREAT_MODEL.md``).

The tester (``tester.py``, a plain ``python -I`` process that runs the master's locked cells) calls the student's
functions through proxies; each call crosses a Unix socket to the kernel, where ``serve`` — run by the grader as a
cell of its own — looks the name up in the kernel's globals, calls it and sends the result back. Every message is
one frame::

    u64 length, JSON header | u64 length, safetensors of the torch tensors | u64 length, safetensors of the arrays

What may cross (``encode`` / ``decode``): ``None``, ``bool``, ``int``, ``float``, ``str``, lists, tuples, dicts
with string keys, numpy scalars of a numeric dtype, numpy arrays and torch tensors (dense, of a dtype safetensors
knows: their values only, as plain ``Tensor``/``ndarray``, never a subclass; a permuted one keeps its dimension
order), and the library's records (a dataclass of ``text3d_edu``, such as ``Conditioning``: rebuilt from its
fields, which must be data). From the tester only, also: a
``torch.Generator`` (its state), ``torch.dtype``, a *reference* to an object a locked setup cell made (the
kernel's global of the same name), a *callback* (a function of the test, which the kernel may call back with
data), a *callback object* (an object of a class the tests define: the kernel calls its public methods back) and
a *mirror* (a model or an optimiser the tests hold: the kernel works on its own copy — the global of the same name,
or one unpickled from the tester the first time it crosses — whose trainable parameters, or optimiser state, are
set from the tester's before each call and sent back after it; see ``THREAT_MODEL.md``). Decoding what the kernel
sent builds nothing but data: a reference, a callback or a pickle from the kernel is refused.
"""

from __future__ import annotations

import dataclasses
import importlib
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


def encode(value, refer=None, check_tensor=None, prefix: str = "") -> tuple[object, dict, dict]:
    """(JSON-able header, {key: tensor}, {key: array}). ``refer(obj, walk)`` returns a header for a value that is
    not data (a reference, a callback), or raises; without it, every such value raises ``NotData``.
    ``check_tensor(tensor, key)`` sees each tensor (the tester notes those that need their gradient). ``prefix``
    starts the blobs' keys, so that two encodings can share one message."""
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
                key = f"{prefix}t{len(tensors)}"
                if check_tensor is not None:
                    check_tensor(x, key)
                # a permuted tensor (images.permute(0, 3, 1, 2)) crosses with its dimension order, so that the
                # other side computes on the same memory layout (a convolution's rounding depends on it)
                order = sorted(range(x.ndim), key=lambda d: (-x.stride(d), d))
                if x.is_contiguous() or not x.permute(order).is_contiguous():
                    tensors[key] = x.detach().cpu().contiguous().clone()
                    return {"__tensor__": key}
                tensors[key] = x.detach().cpu().permute(order).clone()
                return {"__tensor__": key, "order": order}
            if kind is torch.Size:
                return {"__tuple__": [int(n) for n in x]}
            if kind is torch.dtype:
                return {"__dtype__": str(x).removeprefix("torch.")}
        if np is not None:
            if isinstance(x, np.ndarray):
                if x.dtype.kind not in _NUMERIC_KINDS:
                    raise NotData(f"an array of dtype {x.dtype}")
                key = f"{prefix}a{len(arrays)}"
                arrays[key] = np.ascontiguousarray(np.asarray(x)).copy()
                return {"__ndarray__": key}
            if isinstance(x, np.generic) and x.dtype.kind in _NUMERIC_KINDS:
                return {"__npscalar__": x.dtype.str, "value": walk(x.item())}
        if dataclasses.is_dataclass(x) and kind.__module__.partition(".")[0] == "text3d_edu" \
                and "." not in kind.__qualname__:  # a record of the library's (Conditioning, Cameras): its fields
            return {"__record__": f"{kind.__module__}:{kind.__qualname__}",
                    "fields": {f.name: walk(getattr(x, f.name)) for f in dataclasses.fields(x) if f.init}}
        if refer is not None:
            return refer(x, walk)
        raise NotData(f"a {kind.__module__}.{kind.__qualname__}")

    return walk(value), tensors, arrays


def decode(header, tensors: dict, arrays: dict, resolve=None, made: dict | None = None):
    """The value ``header`` describes. ``resolve(tag, payload)`` builds what is not data (the kernel's side: a
    reference, a generator, a callback); without it, such a header raises ``NotData``. ``made`` receives each
    tensor as it was decoded, by key."""

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
            tensor = tensors[h["__tensor__"]]
            if "order" in h:  # undo the permutation encode made contiguous
                order = [int(d) for d in h["order"]]
                if sorted(order) != list(range(tensor.ndim)):
                    raise NotData("a malformed dimension order")
                tensor = tensor.permute([order.index(d) for d in range(tensor.ndim)])
            if made is not None:
                made[h["__tensor__"]] = tensor
            return tensor
        if "__ndarray__" in h:
            return arrays[h["__ndarray__"]]
        if "__npscalar__" in h:
            import numpy as np

            dtype = np.dtype(str(h["__npscalar__"]))
            if dtype.kind not in _NUMERIC_KINDS:
                raise NotData(f"a numpy scalar of dtype {dtype}")
            return dtype.type(walk(h["value"]))
        if "__record__" in h:  # only a dataclass of the library, built from its fields
            module, _, name = str(h["__record__"]).partition(":")
            if module.partition(".")[0] != "text3d_edu" or not name.isidentifier() or type(h.get("fields")) is not dict:
                raise NotData(f"no record {h['__record__']}")
            record = getattr(importlib.import_module(module), name, None)
            if not (isinstance(record, type) and dataclasses.is_dataclass(record)):
                raise NotData(f"no record {h['__record__']}")
            names = {f.name for f in dataclasses.fields(record) if f.init}
            fields = {str(k): walk(v) for k, v in h["fields"].items()}
            if set(fields) != names:
                raise NotData(f"the fields of a {name} are {sorted(names)}")
            return record(**fields)
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


# --- mirrors: the state of the tests' models and optimisers, as data --------------------------------------------


def is_model(value) -> bool:
    """What crosses as a mirror: an optimiser, or a model — an ``nn.Module``, or any object whose class has
    ``parameters()`` (ε_φ, a LoRA on a U-Net it holds outside a Module)."""
    torch = sys.modules.get("torch")
    return torch is not None and (isinstance(value, torch.optim.Optimizer) or isinstance(value, torch.nn.Module)
                                  or callable(getattr(type(value), "parameters", None)))


def named_parameters(model) -> dict:
    """All of a model's parameters by name, frozen ones included: a Module's own names; for another object, those
    of the Modules among its attributes (ε_φ: ``unet.…`` — the LoRA inside it — and ``camera_mlp.…``)."""
    import torch

    if isinstance(model, torch.nn.Module):
        return dict(model.named_parameters())
    named, seen = {}, set()
    for attribute, value in vars(model).items():
        if isinstance(value, torch.nn.Module):
            for name, p in value.named_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    named[f"{attribute}.{name}"] = p
    return named


def state_of(obj) -> dict:
    """What a mirror carries across: a model's trainable parameters, or an optimiser's ``state_dict`` (its int
    keys as strings). Frozen parameters and buffers are not carried: both sides keep their own."""
    import torch

    if isinstance(obj, torch.optim.Optimizer):
        state = obj.state_dict()
        return {"optimiser": {"state": {str(k): v for k, v in state["state"].items()},
                              "param_groups": state["param_groups"]}}
    return {"params": {name: p.detach() for name, p in named_parameters(obj).items() if p.requires_grad}}


def set_state(obj, state: dict) -> None:
    """Make ``obj`` hold ``state`` (from ``state_of`` on the other side): the values of the trainable parameters,
    which parameters are trainable, or the optimiser's state."""
    import torch

    if "optimiser" in state:
        saved = state["optimiser"]
        obj.load_state_dict({"state": {int(k): v for k, v in saved["state"].items()},
                             "param_groups": saved["param_groups"]})
        return
    values = state["params"]
    with torch.no_grad():
        for name, p in named_parameters(obj).items():
            if name in values:
                if not torch.equal(p, values[name]):
                    p.copy_(values[name])
                p.requires_grad_(True)
            else:
                p.requires_grad_(False)


# --- the kernel's side --------------------------------------------------------------------------------------------

_COPIES: dict[str, object] = {}  # the kernel's copies of the tests' models and optimisers, by mirror key


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


def _mirror(key: str, namespace: dict):
    """The kernel's side of a mirror: ``ref:NAME`` is the kernel's global NAME, ``copy:N`` a copy the tester sent."""
    kind, _, name = str(key).partition(":")
    return namespace[name] if kind == "ref" else _COPIES[key]


def _load_copies(blob, keys: list, namespace: dict) -> None:
    """Unpickle the tester's new copies (pickles come only from the tester, which runs the master's code). What
    they share with earlier mirrors or with the setup's objects arrives as a reference to the kernel's own."""
    import io
    import pickle

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            kind, key, name = pid
            if kind == "ref":
                return namespace[key]
            if kind == "mirror":
                return _mirror(key, namespace)
            return named_parameters(_mirror(key, namespace))[name]  # "param"

    for key, obj in zip(keys, Unpickler(io.BytesIO(blob.numpy().tobytes())).load(), strict=True):
        _COPIES[key] = obj


def _kernel_resolve(sock, namespace):
    def resolve(tag, payload, walk):
        if tag == "__ref__":
            return namespace[payload]
        if tag == "__mirror__":
            return _mirror(payload, namespace)
        if tag == "__generator__":
            import torch

            generator = torch.Generator()
            generator.set_state(walk(payload))
            return generator
        if tag == "__callback__":
            return _Callback(sock, payload, namespace)
        if tag == "__object__":
            return _CallbackObject(sock, payload, namespace)
        raise NotData(f"unknown tag {tag}")

    return resolve


def _answer(sock, header, tensors, arrays, namespace, graphs) -> None:
    mirrors = []
    try:
        if header.get("name") not in namespace:
            raise NameError(f"name '{header.get('name')}' is not defined")
        function = namespace[header["name"]]
        if header.get("copies"):
            _load_copies(tensors["__copies__"], header["copies"], namespace)
        for key, state in decode(header.get("sync", {"__dict__": {}}), tensors, arrays).items():
            set_state(_mirror(key, namespace), state)
            mirrors.append(key)
        for key in header.get("grad", []):  # the tests' leaves
            tensors[key].requires_grad_(True)
        made = {}
        args, kwargs = decode(header["args"], tensors, arrays, _kernel_resolve(sock, namespace), made)
        inputs = [made[key] for key in header.get("grad", [])]  # as decoded (a permuted leaf keeps its order)
        result = function(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 (the student's error, for the tester to raise)
        send(sock, error_header(err))
        return
    try:
        leaves = [tensors[key] for key in header.get("grad", [])]  # the leaves behind ``inputs``
        value, tensors, arrays = encode(result)
        sync, sync_tensors, sync_arrays = encode({key: state_of(_mirror(key, namespace)) for key in mirrors},
                                                 prefix="s")
        reply = {"op": "return", "value": value, "sync": sync}
        torch = sys.modules.get("torch")
        if header.get("grad_mode") and torch is not None and isinstance(result, torch.Tensor) and result.requires_grad:
            # the inputs: the tests' tensors, then the mirrors' parameters that are trainable *now* (a function that
            # unfreezes a model's weights gives them gradients, as it would in the kernel)
            params = [(key, name, p) for key in mirrors for name, p in named_parameters(_mirror(key, namespace)).items()
                      if p.requires_grad]
            inputs, leaves = inputs + [p for *_, p in params], leaves + [p for *_, p in params]
            # which inputs the result depends on: the tests' graph gets an edge to those only (an edge without a
            # gradient would still make autograd walk a graph the tests may have freed already)
            reached = _leaves_behind(result)
            reply["used"] = [id(leaf) in reached for leaf in leaves]
            reply["param_grad"] = [[key, name] for key, name, _ in params]
            graphs.append((result, [x for x, used in zip(inputs, reply["used"]) if used]))
            reply["graph"] = len(graphs) - 1
        send(sock, reply, {**tensors, **sync_tensors}, {**arrays, **sync_arrays})
    except NotData as err:
        send(sock, {"op": "raise", "ename": "NotData",
                    "evalue": f"{header['name']} returned {err}: only numbers, strings, lists, tuples, dicts, "
                              "arrays and tensors cross to the tests"})


def _leaves_behind(output) -> set[int]:
    """The ids of the leaf tensors ``output``'s graph reaches."""
    seen, stack, leaves = set(), [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad: the leaf it feeds
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(following for following, _ in node.next_functions)
    return leaves


def _backward(sock, header, tensors, graphs) -> None:
    """The gradients of the inputs of call ``graph``, for the gradient of its output the tests send (``None`` for
    an input that no longer needs one: a parameter the student's function froze)."""
    try:
        import torch

        output, inputs = graphs[int(header["graph"])]
        live = [x for x in inputs if x.requires_grad]
        grads = iter(torch.autograd.grad(output, live, tensors["t0"], retain_graph=True, allow_unused=True))
        value, tensors, arrays = encode([next(grads) if x.requires_grad else None for x in inputs])
        send(sock, {"op": "return", "value": value}, tensors, arrays)
    except Exception as err:  # noqa: BLE001
        send(sock, error_header(err))


class _Callback:
    """A function of the tests (or a method of an object of theirs), called from the kernel: its arguments and
    result cross as data."""

    def __init__(self, sock, number, namespace, method: str | None = None):
        self.sock, self.number, self.namespace, self.method = sock, number, namespace, method

    def __call__(self, *args, **kwargs):
        value, tensors, arrays = encode((args, kwargs))
        send(self.sock, {"op": "callback", "id": self.number, "method": self.method, "args": value}, tensors, arrays)
        header, tensors, arrays = receive(self.sock)
        if header.get("op") == "raise":
            raise rebuild_error(header)
        return decode(header.get("value"), tensors, arrays, _kernel_resolve(self.sock, self.namespace))


class _CallbackObject:
    """An object of a class the tests define (``AddedNoise(eps)``): each public method is a callback."""

    def __init__(self, sock, number, namespace):
        self._sock, self._number, self._namespace = sock, number, namespace

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return _Callback(self._sock, self._number, self._namespace, method=name)
