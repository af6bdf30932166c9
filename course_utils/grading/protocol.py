"""The strict schema of what a sandboxed child may send back, checked before anything uses it.

A child answers exactly the step the grader asked for, once: a cell's error and patches, or a
case's result and the trap's reports. Anything else (another kind, another index, a field of
the wrong type or size, an unrequested message) is a protocol error: the grader stops the
child and charges the step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..exercises.running import CaseRun
from ..sandbox.wire import WireError, decode

__all__ = ["hello", "cell_reply", "case_reply", "CaseReply", "WireError"]

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


class CaseReply(NamedTuple):
    """A child's report on one case: what running it gave, and what the traps saw."""

    run: CaseRun
    calls: list[str]  # forbidden calls recorded while it ran
    patched: list[str]  # numpy/torch attributes it changed (restored since)
    tampered: bool  # it switched the call trap off


def case_reply(payload: bytes, seq: int) -> CaseReply:
    """``("case_done", seq, result, calls, patched, tampered)`` for request ``seq``; ``result``
    is a :class:`~course_utils.exercises.running.CaseRun` in its wire form."""
    _, s, result, calls, patched, tampered = _message(payload, "case_done", 6)
    if s != seq or type(s) is not int:
        raise WireError(f"a reply for request {s!r} while request {seq} was running")
    try:
        run = CaseRun.from_wire(result)
    except ValueError as e:
        raise WireError(str(e)) from None
    if run.kind == "raised":
        _text(run.error, "an error message")
    if type(tampered) is not bool:
        raise WireError("a malformed trap report")
    return CaseReply(
        run,
        _texts(calls, "the recorded calls"),
        _texts(patched, "the patched names"),
        tampered,
    )
