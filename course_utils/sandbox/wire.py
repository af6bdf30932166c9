"""What crosses between the grader and its sandbox: framed messages of plain data.

Frames are a 4-byte big-endian length and a payload. Payloads from the sandbox use a small
tagged binary format (:func:`encode` / :func:`decode`) that can hold only None, booleans,
integers, floats, strings, NumPy arrays of numbers (dtype, shape, raw bytes, the way ``.npy``
stores them, never pickle), tuples, lists, dicts and the type name of anything else. The
decoder runs in the grader and checks every tag, length, dtype and size, so a submission can
make the grader build nothing but such values. What the grader sends into the sandbox (cells,
test cases) is pickled: the sandbox trusts the grader, never the other way round.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import socket
import struct
import sys
from typing import Any

import numpy as np

__all__ = [
    "encode",
    "decode",
    "Unsupported",
    "WireError",
    "FrameReader",
    "send_frame",
    "recv_frame",
    "send_pickle",
    "recv_pickle",
    "MAX_FRAME",
    "MAX_DEPTH",
]

MAX_FRAME = 64 * 2**20  # the largest message the grader accepts from a sandbox: 64 MiB
MAX_DEPTH = 32  # deeper containers are sent as their type name only
_MAX_STR = 100_000  # characters of one string (longer ones are cut)
_LEN = struct.Struct(">I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ARRAY_KINDS = "biufc"  # bool, int, uint, float, complex: never object arrays
_DTYPE = re.compile(r"^[<>|=]?[biufc][0-9]{1,2}$")


class WireError(ValueError):
    """A message that breaks the protocol."""


class Unsupported:
    """Stands for an output of a type that cannot travel (only its type name does)."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<{self.type_name}>"


# --------------------------------------------------------------------------------------------
# encoding (the sandbox side)
# --------------------------------------------------------------------------------------------


def _as_array(x: Any) -> Any:
    """A tensor as a NumPy array (bfloat16 / float16 widened), or None for other values."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(x, torch.Tensor):
        return None
    t = x.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    try:
        return t.resolve_conj().resolve_neg().numpy()
    except (TypeError, RuntimeError):
        return Unsupported(f"tensor of dtype {t.dtype}")


def _encode(x: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        x = Unsupported("deeply nested container")
    if x is None:
        out += b"N"
    elif isinstance(x, (bool, np.bool_)):
        out += b"T" if x else b"F"
    elif isinstance(x, (int, np.integer)):
        v = int(x)
        if -(2**63) <= v < 2**63:
            out += b"i" + _I64.pack(v)
        else:
            digits = str(v).encode() if len(str(abs(v))) <= 4000 else b"0"
            out += b"I" + _U32.pack(len(digits)) + digits
    elif isinstance(x, (float, np.floating)):
        out += b"f" + _F64.pack(float(x))
    elif isinstance(x, str):
        raw = x[:_MAX_STR].encode("utf-8", "replace")
        out += b"s" + _U32.pack(len(raw)) + raw
    elif isinstance(x, complex):
        _encode(np.asarray(x), out, depth + 1)
    elif isinstance(x, Unsupported):
        raw = x.type_name[:200].encode("utf-8", "replace")
        out += b"o" + _U32.pack(len(raw)) + raw
    elif isinstance(x, np.ndarray):
        if x.dtype.kind not in _ARRAY_KINDS or x.dtype.hasobject or x.dtype.fields:
            _encode(Unsupported(f"array of dtype {x.dtype}"), out, depth)
            return
        a = x if x.flags.c_contiguous else x.copy(order="C")  # keeps 0-d arrays 0-d
        dt = a.dtype.str.encode()
        out += b"a" + bytes([len(dt)]) + dt + bytes([a.ndim])
        for n in a.shape:
            out += _U64.pack(n)
        out += _U64.pack(a.nbytes)
        out += a.tobytes()
    elif isinstance(x, (tuple, list)):
        out += (b"t" if isinstance(x, tuple) else b"l") + _U32.pack(len(x))
        for v in x:
            _encode(v, out, depth + 1)
    elif isinstance(x, dict):
        out += b"d" + _U32.pack(len(x))
        for k, v in x.items():
            _encode(k, out, depth + 1)
            _encode(v, out, depth + 1)
    else:
        arr = _as_array(x)
        if arr is not None:
            _encode(arr, out, depth)
        else:
            _encode(Unsupported(type(x).__name__), out, depth)


def encode(x: Any) -> bytes:
    """The wire form of ``x``: tensors become arrays, anything unsupported its type name."""
    out = bytearray()
    _encode(x, out, 0)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# decoding (the grader side: nothing in the data is trusted)
# --------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise WireError("truncated message")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def count(self) -> int:
        n = self.u32()
        if n > len(self.data) - self.pos:  # every item takes at least one byte
            raise WireError("a container longer than its message")
        return n


def _key(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool, type(None))):
        return v
    if isinstance(v, tuple) and all(isinstance(i, (str, int, float, bool, type(None))) for i in v):
        return v
    raise WireError("a dict key that is not a plain value")


def _decode(r: _Reader, depth: int) -> Any:
    if depth > MAX_DEPTH + 2:
        raise WireError("nested too deeply")
    tag = bytes(r.take(1))
    if tag == b"N":
        return None
    if tag in (b"T", b"F"):
        return tag == b"T"
    if tag == b"i":
        return _I64.unpack(r.take(8))[0]
    if tag == b"I":
        n = r.u32()
        if n > 4001:
            raise WireError("an integer too long")
        text = bytes(r.take(n)).decode("ascii", "strict")
        if not re.fullmatch(r"-?[0-9]+", text):
            raise WireError("a malformed integer")
        return int(text)
    if tag == b"f":
        return _F64.unpack(r.take(8))[0]
    if tag in (b"s", b"o"):
        n = r.u32()
        text = bytes(r.take(n)).decode("utf-8", "replace")
        return text if tag == b"s" else Unsupported(text[:200])
    if tag == b"a":
        dt = bytes(r.take(r.take(1)[0])).decode("ascii", "replace")
        if not _DTYPE.match(dt):
            raise WireError(f"refused array dtype {dt!r}")
        try:
            dtype = np.dtype(dt)
        except TypeError:
            raise WireError(f"unknown array dtype {dt!r}") from None
        if dtype.kind not in _ARRAY_KINDS or dtype.hasobject:
            raise WireError(f"refused array dtype {dt!r}")
        ndim = r.take(1)[0]
        if ndim > 32:
            raise WireError("an array with too many dimensions")
        shape = tuple(_U64.unpack(r.take(8))[0] for _ in range(ndim))
        nbytes = _U64.unpack(r.take(8))[0]
        size = math.prod(shape)
        if size * dtype.itemsize != nbytes or nbytes > len(r.data) - r.pos:
            raise WireError("an array whose size does not match its shape")
        return np.frombuffer(r.take(nbytes), dtype=dtype).reshape(shape).copy()
    if tag in (b"t", b"l"):
        items = [_decode(r, depth + 1) for _ in range(r.count())]
        return tuple(items) if tag == b"t" else items
    if tag == b"d":
        out = {}
        for _ in range(r.count()):
            key = _key(_decode(r, depth + 1))
            out[key] = _decode(r, depth + 1)
        return out
    raise WireError(f"unknown tag {tag!r}")


def decode(data: bytes) -> Any:
    """Rebuild a value from :func:`encode`'s bytes.

    Raises:
        WireError: anything that is not exactly one well-formed value.
    """
    r = _Reader(data)
    try:
        value = _decode(r, 0)
    except (struct.error, UnicodeDecodeError, ValueError, OverflowError, MemoryError) as e:
        if isinstance(e, WireError):
            raise
        raise WireError(f"malformed message ({type(e).__name__})") from None
    if r.pos != len(r.data):
        raise WireError("trailing bytes after the message")
    return value


# --------------------------------------------------------------------------------------------
# framing
# --------------------------------------------------------------------------------------------


class FrameReader:
    """Reassembles frames from non-blocking reads (grader side)."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes read from the channel; return the payloads of the frames they complete.

        Raises:
            WireError: a frame longer than the limit.
        """
        self._buf += chunk
        out = []
        while len(self._buf) >= _LEN.size:
            (size,) = _LEN.unpack_from(self._buf)
            if size > self._limit:
                raise WireError(
                    f"a message of {size / 2**20:.0f} MiB (the limit is {self._limit >> 20} MiB)"
                )
            if len(self._buf) < _LEN.size + size:
                break
            out.append(bytes(self._buf[_LEN.size : _LEN.size + size]))
            del self._buf[: _LEN.size + size]
        return out


def send_frame(sock: socket.socket | int, payload: bytes) -> None:
    """Write one frame (blocking)."""
    data = _LEN.pack(len(payload)) + payload
    if isinstance(sock, int):
        view = memoryview(data)
        while view:
            view = view[os.write(sock, view) :]
    else:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("the channel closed")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, limit: int = 1 << 31) -> bytes:
    """Read one frame (blocking); EOFError when the channel closed."""
    (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if size > limit:
        raise WireError("a frame over the limit")
    return _recv_exact(sock, size)


def send_pickle(sock: socket.socket, message: Any) -> None:
    """Grader to sandbox: a pickled frame."""
    send_frame(sock, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def recv_pickle(sock: socket.socket) -> Any:
    """Sandbox side: the next pickled frame from the grader."""
    return pickle.loads(recv_frame(sock))
