"""The child side: run one submission's cells and exercises in a forked, limited process.

The grader forks this process from itself after importing numpy, torch and course_utils, so
a child starts in milliseconds. The child cuts itself off (own session, no inherited file
descriptors but its pipe, stdout and stderr to /dev/null, an empty working directory, an
address-space limit, no core dumps, a cap on file sizes), installs the traps, then runs the
setup and exercise cells one by one and each exercise's cases, sending a message before and
after each step. Only encoded outputs travel back; the grader judges them.

Messages (tuples of builtins):
    ("cell", index)                      before a cell runs
    ("cell_done", index, error, patched) error: str | None; patched: list[str]
    ("ex", id)                           before an exercise's cases run
    ("ex_done", id, report)              see :func:`_run_task`
    ("end",)                             all done
"""

from __future__ import annotations

import builtins
import linecache
import os
import resource
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..exercises.core import Case
from ..exercises.notebook import describe_exception
from . import wire
from .notebooks import Cell
from .traps import CallTrap, ModuleGuard

__all__ = ["Task", "ChildSpec", "child_main"]


@dataclass
class Task:
    """One exercise to run: the name to look up, the driver, and the labelled cases.

    ``run`` is captured from the :class:`Exercise` before any learner code runs, so a
    submission that reassigns ``Exercise.run`` changes nothing.
    """

    exercise_id: str
    name: str
    run: Any
    cases: list[tuple[str, Case, bool]]  # (label, case, hidden)
    time_limit: float | None = None  # Exercise.time_limit


@dataclass
class ChildSpec:
    """Everything one child needs (inherited through fork, never pickled)."""

    cells: list[Cell]
    tasks: list[Task]
    forbidden: set[str] = field(default_factory=set)
    memory_mb: int = 1024
    workdir: str = "/tmp"


class _Shell:
    """Stands in for ``get_ipython()``: magics do nothing, except that ``%%time`` and
    ``%%capture`` cells still run their body (they would in Jupyter)."""

    def __init__(self, ns: dict, filename: str) -> None:
        self._ns, self._filename = ns, filename

    def run_line_magic(self, name: str, line: str, *args: Any, **kwargs: Any) -> Any:
        if name == "time":
            exec(compile(line, self._filename, "exec"), self._ns)
        return None

    def run_cell_magic(self, name: str, line: str, body: str, *args: Any, **kwargs: Any) -> Any:
        if name in ("time", "capture", "timeit", "prun"):
            exec(compile(body, self._filename, "exec"), self._ns)
        return None

    def system(self, *args: Any, **kwargs: Any) -> None:
        return None  # shell escapes (!pip install ...) never run in the grader

    def getoutput(self, *args: Any, **kwargs: Any) -> list:
        return []

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def _vm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _close_inherited_fds(keep: set[int]) -> None:
    """Close every inherited descriptor but ``keep`` (other children's pipes, the grader's
    files), so learner code cannot read another submission's results or write to the grader."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: close a generous range instead
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fds = list(range(3, soft if 0 < soft < 1 << 16 else 1 << 16))
    for n in fds:
        if n not in keep:
            try:
                os.close(n)
            except OSError:
                pass  # the fd listdir itself used, already gone


def _isolate(fd: int, spec: ChildSpec) -> None:
    """Cut the child off from the grader and cap what it can use."""
    os.setsid()  # own process group: the grader kills the whole group on timeout
    devnull = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(devnull, std)
    _close_inherited_fds(keep={0, 1, 2, fd})
    # Fresh Python streams on the /dev/null descriptors (the inherited ones may be a test
    # runner's capture objects, whose files were just closed).
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = sys.stderr = open(1, "w", closefd=False)  # noqa: SIM115
    os.makedirs(spec.workdir, exist_ok=True)
    os.chdir(spec.workdir)
    os.environ["MPLBACKEND"] = "Agg"
    limit = _vm_bytes() + spec.memory_mb * 2**20
    for res, value in (
        (resource.RLIMIT_AS, limit),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, 64 * 2**20),
    ):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass  # a limit the system will not lower; the timeout still applies


def _exec_cell(cell: Cell, ns: dict) -> str | None:
    """Run one cell in the shared namespace; the error (one line) or None."""
    linecache.cache[cell.filename] = (
        len(cell.source),
        None,
        cell.source.splitlines(keepends=True),
        cell.filename,
    )
    shell = _Shell(ns, cell.filename)
    ns["get_ipython"] = lambda: shell
    try:
        code = compile(cell.source, cell.filename, "exec")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(code, ns)
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
        return describe_exception(e)
    return None


def _run_task(task: Task, ns: dict, trap: CallTrap, guard: ModuleGuard) -> dict:
    """Run one exercise's cases on the learner's object.

    Returns:
        ``{"missing": True}`` when the namespace lacks the name, else ``{"missing": False,
        "results": [...], "calls": [...], "patched": [...], "tampered": bool}``; each result
        is ``("ok", encoded output)``, ``("placeholder", "")`` or ``("raised", message)``.
        Cases stop at the first exception.
    """
    if task.name not in ns:
        return {"missing": True}
    obj = ns[task.name]
    results: list[tuple[str, Any]] = []
    calls: dict[str, None] = {}
    patched: list[str] = []
    tampered = False
    for _label, case, _hidden in task.cases:
        got: Any = None
        item: tuple[str, Any]
        try:
            with trap.armed(), warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                got = task.run(obj, case)
            item = ("ok", None)
        except NotImplementedError:
            item = ("placeholder", "")
        except BaseException as e:  # noqa: BLE001 - every learner failure becomes a result
            item = ("raised", describe_exception(e))
        calls.update(trap.calls)
        tampered = tampered or trap.tampered
        patched += [p for p in guard.check_and_restore() if p not in patched]
        if item[0] == "ok":
            try:
                item = ("ok", wire.encode(got))
            except BaseException as e:  # noqa: BLE001 - a hostile container type
                item = ("raised", f"could not send your output back: {describe_exception(e)}")
        results.append(item)
        if item[0] != "ok":
            break
    return {
        "missing": False,
        "results": results,
        "calls": list(calls),
        "patched": patched,
        "tampered": tampered,
    }


def _namespace() -> dict:
    return {"__name__": "__main__", "__builtins__": builtins, "display": lambda *a, **k: None}


def child_main(fd: int, spec: ChildSpec, forget: Callable[[], None] = lambda: None) -> None:
    """Run ``spec`` and report on ``fd``; never returns (ends with ``os._exit``).

    ``forget`` wipes what the child inherited but must not see (the grader's expected
    outputs); it runs before any learner code.
    """
    code = 0
    try:
        forget()
        _isolate(fd, spec)
        trap = CallTrap(spec.forbidden)
        trap.install()
        guard = ModuleGuard()  # after the traps: the wrappers are the baseline
        ns = _namespace()
        for cell in spec.cells:
            wire.send(fd, ("cell", cell.index))
            error = _exec_cell(cell, ns)
            wire.send(fd, ("cell_done", cell.index, error, guard.check_and_restore()))
        for task in spec.tasks:
            wire.send(fd, ("ex", task.exercise_id))
            wire.send(fd, ("ex_done", task.exercise_id, _run_task(task, ns, trap, guard)))
        wire.send(fd, ("end",))
    except BaseException:  # noqa: BLE001 - the grader sees the missing "end" and reports it
        code = 70
    finally:
        os._exit(code)
