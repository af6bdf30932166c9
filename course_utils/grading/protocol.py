"""The strict schema of what a sandboxed child may send back, checked before anything uses it.

A child answers exactly the step the grader asked for, once: a cell's error and patches, or a
case's result and the trap's reports. Anything else (another kind, another index, a field of
the wrong type or size, an unrequested message) is a protocol error: the grader stops the
child and charges the step.
"""

from __future__ import annotations

from typing import Any

from ..sandbox.wire import WireError, decode

__all__ = ["hello", "cell_reply", "case_reply", "WireError"]

_MAX_TEXT = 2_000
_MAX_ITEMS = 200


def _text(v: Any, what: str, limit: int = _MAX_TEXT) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise WireError(f"{what} must be a string of at most {limit} characters")
    return v


def _texts(v: Any, what: str) -> list[str]:
    if not isinstance(v, list) or len(v) > _MAX_ITEMS:
        raise WireError(f"{what} must be a list of at most {_MAX_ITEMS} strings")
    return [_text(x, what, 300) for x in v]


def _message(payload: bytes, kind: str, size: int) -> tuple:
    msg = decode(payload)
    if not isinstance(msg, tuple) or not msg or msg[0] != kind or len(msg) != size:
        got = msg[0] if isinstance(msg, tuple) and msg and isinstance(msg[0], str) else "?"
        raise WireError(f"expected a {kind!r} message, got {got[:40]!r}")
    return msg


def hello(payload: bytes) -> None:
    """``("hello",)``: the child's first message, sent before any learner code runs (the
    kernel attaches the child's pid to it, which the grader's clocks need)."""
    _message(payload, "hello", 1)


def cell_reply(payload: bytes, index: int) -> tuple[str | None, list[str]]:
    """``("cell_done", index, error, patched)`` for cell ``index``: (error, patched)."""
    _, i, error, patched = _message(payload, "cell_done", 4)
    if i != index or type(i) is not int:
        raise WireError(f"a reply for cell {i!r} while cell {index} was running")
    if error is not None:
        error = _text(error, "a cell's error")
    return error, _texts(patched, "the patched names")


def case_reply(payload: bytes, seq: int) -> tuple[tuple, list[str], list[str], bool]:
    """``("case_done", seq, result, calls, patched, tampered)`` for request ``seq``.

    Returns:
        (result, calls, patched, tampered); ``result`` is ``("ok", output)``,
        ``("missing",)``, ``("placeholder",)`` or ``("raised", message)``.
    """
    _, s, result, calls, patched, tampered = _message(payload, "case_done", 6)
    if s != seq or type(s) is not int:
        raise WireError(f"a reply for request {s!r} while request {seq} was running")
    if not isinstance(result, tuple) or not result:
        raise WireError("a malformed result")
    if result[0] == "ok" and len(result) == 2:
        pass
    elif result[0] in ("missing", "placeholder") and len(result) == 1:
        pass
    elif result[0] == "raised" and len(result) == 2:
        result = ("raised", _text(result[1], "an error message"))
    else:
        raise WireError("a malformed result")
    if type(tampered) is not bool:
        raise WireError("a malformed trap report")
    return (
        result,
        _texts(calls, "the recorded calls"),
        _texts(patched, "the patched names"),
        tampered,
    )
