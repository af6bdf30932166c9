"""What crosses from a sandboxed submission to the grader: framed messages of plain data.

The child encodes the learner's outputs into a tree of builtins (``encode``) and sends
length-prefixed pickles of it. The grader unpickles with an unpickler that resolves no
globals at all, so a submission cannot make the grader construct objects or run code, and
then rebuilds numpy arrays from raw bytes (``decode``), checking every tag and size.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from typing import Any

import numpy as np

__all__ = ["encode", "decode", "send", "FrameReader", "MAX_FRAME", "WireError"]

MAX_FRAME = 64 * 2**20  # largest message the grader accepts: 64 MiB
_HEADER = struct.Struct(">I")
_MAX_DEPTH = 32
_MAX_STR = 10_000
_ARRAY_KINDS = "biufc"  # bool, int, uint, float, complex: never object arrays


class WireError(ValueError):
    """A message or an output that breaks the protocol."""


def encode(x: Any, depth: int = 0) -> tuple:
    """A tagged tree of builtins for ``x`` (runs in the child; tensors become arrays).

    Tags: ``n`` None, ``b`` bool, ``i`` int, ``f`` float, ``s`` str, ``a`` array
    (dtype string, shape, bytes), ``t`` tuple, ``l`` list, ``d`` dict, ``o`` anything else
    (only its type name travels, so the grader can say what it got).
    """
    if depth > _MAX_DEPTH:
        return ("o", "deeply nested container")
    if x is None:
        return ("n", None)
    if isinstance(x, (bool, np.bool_)):
        return ("b", bool(x))
    if isinstance(x, (int, np.integer)):
        return ("i", int(x))
    if isinstance(x, (float, np.floating)):
        return ("f", float(x))
    if isinstance(x, str):
        return ("s", x[:_MAX_STR])
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        try:
            x = t.resolve_conj().resolve_neg().numpy()
        except (TypeError, RuntimeError):
            return ("o", f"tensor of dtype {t.dtype}")
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in _ARRAY_KINDS or x.dtype.hasobject:
            return ("o", f"array of dtype {x.dtype}")
        a = np.ascontiguousarray(x)
        return ("a", a.dtype.str, tuple(int(n) for n in a.shape), a.tobytes())
    if isinstance(x, complex):
        return encode(np.asarray(x), depth + 1)
    if isinstance(x, tuple):
        return ("t", [encode(v, depth + 1) for v in x])
    if isinstance(x, list):
        return ("l", [encode(v, depth + 1) for v in x])
    if isinstance(x, dict):
        return ("d", [(encode(k, depth + 1), encode(v, depth + 1)) for k, v in x.items()])
    return ("o", type(x).__name__)


def _torch():
    import sys

    return sys.modules.get("torch")


class Unsupported:
    """Stands for an output the child could not send (its type name is kept)."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<{self.type_name}>"


def decode(tree: Any, depth: int = 0) -> Any:
    """Rebuild a value from :func:`encode`'s tree (runs in the grader; validates everything).

    Raises:
        WireError: on anything that is not a well-formed tree.
    """
    if depth > _MAX_DEPTH + 1 or not isinstance(tree, tuple) or not tree:
        raise WireError("malformed output")
    tag = tree[0]
    if tag == "n":
        return None
    if tag in ("b", "i", "f", "s") and len(tree) == 2:
        want = {"b": bool, "i": int, "f": float, "s": str}[tag]
        if type(tree[1]) is not want:
            raise WireError("malformed scalar")
        return tree[1]
    if tag == "a" and len(tree) == 4:
        _, dtype_str, shape, raw = tree
        if not (isinstance(dtype_str, str) and isinstance(shape, tuple) and type(raw) is bytes):
            raise WireError("malformed array")
        dtype = np.dtype(dtype_str)
        if dtype.kind not in _ARRAY_KINDS or dtype.hasobject:
            raise WireError(f"refused array dtype {dtype_str}")
        if not all(type(n) is int and n >= 0 for n in shape):
            raise WireError("malformed array shape")
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(raw):
            raise WireError("array size does not match its shape")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if tag in ("t", "l") and len(tree) == 2 and isinstance(tree[1], list):
        items = [decode(v, depth + 1) for v in tree[1]]
        return tuple(items) if tag == "t" else items
    if tag == "d" and len(tree) == 2 and isinstance(tree[1], list):
        out = {}
        for pair in tree[1]:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise WireError("malformed dict")
            key = decode(pair[0], depth + 1)
            if not isinstance(key, (str, int, float, bool, type(None), tuple)):
                raise WireError("malformed dict key")
            out[key] = decode(pair[1], depth + 1)
        return out
    if tag == "o" and len(tree) == 2 and isinstance(tree[1], str):
        return Unsupported(tree[1][:100])
    raise WireError(f"unknown tag {tag!r}")


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def loads(payload: bytes) -> Any:
    """Unpickle plain builtins only (no classes, no functions, no reduce of globals)."""
    return _NoGlobals(io.BytesIO(payload)).load()


def send(fd: int, message: Any) -> None:
    """Write one framed message (child side; blocks until written)."""
    payload = pickle.dumps(message, protocol=4)
    data = _HEADER.pack(len(payload)) + payload
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FrameReader:
    """Reassembles framed messages from non-blocking reads (grader side)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[Any]:
        """Add bytes read from the pipe; return the complete messages they finish.

        Raises:
            WireError: a frame longer than :data:`MAX_FRAME` or that does not unpickle.
        """
        self._buf += chunk
        out = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise WireError(f"a message of {size / 2**20:.0f} MiB (the limit is 64 MiB)")
            if len(self._buf) < _HEADER.size + size:
                break
            payload = bytes(self._buf[_HEADER.size : _HEADER.size + size])
            del self._buf[: _HEADER.size + size]
            try:
                out.append(loads(payload))
            except Exception as e:
                raise WireError(f"unreadable message ({type(e).__name__})") from None
        return out
