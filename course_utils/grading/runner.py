"""The grader side of the sandbox: fork children, watch them, enforce time limits.

A single-threaded event loop keeps up to ``workers`` children running at once. Each child
is forked from the grader itself (numpy, torch and course_utils already imported, torch on
one thread), which costs milliseconds instead of the second a fresh interpreter needs.
Forking only from this one thread keeps the fork safe (no other thread can hold a lock).
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import wire
from .jobs import Job
from .sandbox import ChildSpec, child_main

__all__ = ["run_jobs", "describe_exit"]

_READ_CHUNK = 1 << 20
_END_GRACE_S = 5.0  # after "end", how long a child may take to close its pipe


@dataclass
class _Child:
    job: Job
    pid: int
    fd: int
    deadline: float
    reader: wire.FrameReader = field(default_factory=wire.FrameReader)
    stage: tuple[str, object] | None = ("start", None)
    limit: float = 0.0  # the time limit of the current stage
    ended: bool = False
    timed_out: bool = False
    protocol_error: str | None = None


def describe_exit(status: int, timed_out: bool, timeout: float, protocol_error: str | None) -> str:
    """One line for a child that stopped without finishing its step."""
    if timed_out:
        return f"ran longer than the {timeout:g} s time limit (an infinite loop?)"
    if protocol_error:
        return f"sent back something the grader cannot accept: {protocol_error}"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGSEGV:
            return "crashed the Python process (segmentation fault)"
        if sig == signal.SIGXFSZ:
            return "wrote a file larger than 64 MiB and was stopped"
        if sig == signal.SIGKILL:
            return "was killed (out of memory?)"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"crashed the Python process ({name})"
    if os.WIFEXITED(status):
        return (
            f"ended the Python process (exit code {os.WEXITSTATUS(status)}), "
            "for example with os._exit() - return a value instead"
        )
    return "stopped unexpectedly"


def _spawn(job: Job, spec: ChildSpec, timeout: float, forget: Callable[[], None]) -> _Child:
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: never returns into the grader's code
        try:
            os.close(r)
            child_main(w, spec, forget)
        finally:
            os._exit(70)
    os.close(w)
    os.set_blocking(r, False)
    return _Child(job, pid, r, time.monotonic() + timeout)


def _reap(child: _Child) -> int:
    """Kill the child's process group (leftover grandchildren included) and collect it."""
    for kill in (os.killpg, os.kill):
        try:
            kill(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _, status = os.waitpid(child.pid, 0)
    os.close(child.fd)
    return status


def _handle(child: _Child, msg: object, timeout: float) -> None:
    """Apply one message from a child to its job."""
    if not isinstance(msg, tuple) or not msg or not isinstance(msg[0], str):
        raise wire.WireError("malformed message")
    kind = msg[0]
    job = child.job
    now = time.monotonic()
    child.limit = timeout
    if kind == "cell" and len(msg) == 2 and isinstance(msg[1], int):
        child.stage, child.deadline = ("cell", msg[1]), now + timeout
    elif kind == "cell_done" and len(msg) == 4 and isinstance(msg[1], int):
        _, index, error, patched = msg
        if error is not None:
            job.cell_errors[index] = str(error)
        if patched:
            job.cell_patches[index] = [str(p) for p in patched]
        child.stage, child.deadline = None, now + timeout
    elif kind == "ex" and len(msg) == 2 and isinstance(msg[1], str):
        task = next((t for t in job.tasks if t.exercise_id == msg[1]), None)
        child.limit = max(timeout, (task.time_limit or 0.0) if task else 0.0)
        child.stage, child.deadline = ("ex", msg[1]), now + child.limit
    elif kind == "ex_done" and len(msg) == 3 and isinstance(msg[2], dict):
        job.outcomes[str(msg[1])] = msg[2]
        child.stage, child.deadline = None, now + timeout
    elif kind == "end":
        child.ended, child.stage, child.deadline = True, None, now + _END_GRACE_S
    else:
        raise wire.WireError(f"unexpected message {kind!r}")


def run_jobs(
    jobs: Sequence[Job],
    *,
    timeout: float,
    memory_mb: int,
    workers: int,
    workdir: str,
    on_done: Callable[[Job], None] | None = None,
    forget: Callable[[], None] = lambda: None,
) -> None:
    """Run every job to completion, ``workers`` children at a time.

    Args:
        jobs: the submissions to run; their outcomes are filled in place.
        timeout: seconds allowed per cell and per exercise (all its cases together).
        memory_mb: address space each child may add to what it inherits.
        workers: children running at once.
        workdir: a folder under which each job gets an empty working directory.
        on_done: called with each job as soon as it is finished (for scoring).
        forget: called in each child before any learner code, to wipe what the child must
            not see (the expected outputs the grader has cached).
    """
    queue = deque(enumerate(jobs))
    active: dict[int, _Child] = {}
    sel = selectors.DefaultSelector()

    def finish(child: _Child) -> None:
        sel.unregister(child.fd)
        del active[child.fd]
        status = _reap(child)
        job = child.job
        if not child.ended:
            limit = child.limit or timeout
            reason = describe_exit(status, child.timed_out, limit, child.protocol_error)
            job.charge(child.stage if child.stage and child.stage[0] != "start" else None, reason)
        elif job.pending():  # said "end" without doing everything: never loop on it
            job.charge(None, "the worker ended before running every exercise")
        queue.appendleft((index_of[id(job)], job))  # carry on with what is left, next

    index_of = {id(job): i for i, job in enumerate(jobs)}
    try:
        while queue or active:
            while queue and len(active) < max(1, workers):
                i, job = queue.popleft()
                spec = job.next_spec(memory_mb, os.path.join(workdir, f"job{i}"))
                if spec is None:
                    if on_done is not None:
                        on_done(job)
                    continue
                child = _spawn(job, spec, timeout, forget)
                active[child.fd] = child
                sel.register(child.fd, selectors.EVENT_READ, child)
            if not active:
                continue
            wait = max(0.0, min(c.deadline for c in active.values()) - time.monotonic())
            for key, _ in sel.select(timeout=wait):
                child = key.data
                try:
                    chunk = os.read(child.fd, _READ_CHUNK)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    try:
                        for msg in child.reader.feed(chunk):
                            _handle(child, msg, timeout)
                    except wire.WireError as e:
                        child.protocol_error = str(e)
                if not chunk or child.protocol_error:
                    finish(child)
            now = time.monotonic()
            for child in [c for c in active.values() if now > c.deadline]:
                child.timed_out = not child.ended
                finish(child)
    finally:
        for child in list(active.values()):  # interrupted: leave no child behind
            sel.unregister(child.fd)
            _reap(child)
        sel.close()
