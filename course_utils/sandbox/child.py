"""The child: one submission's code, run step by step as the grader asks.

Forked from the zygote (numpy, torch and the learner-facing runtime already imported), the
child first cuts itself off and caps itself (own working folder, stdio to /dev/null, no
inherited descriptors but its channel, address-space / CPU / file-size limits, the seccomp
filter), says ``("hello",)``, installs the traps, then serves the grader's commands on its
channel, one at a time:

    ("cell", index, source, filename)        run one cell   -> ("cell_done", index, error, patched)
    ("case", seq, name, module, qualname, case, forbidden)
                                             run one test case on the learner's ``name``
                                             -> ("case_done", seq, result, calls, patched, tampered)
    ("end",)                                 exit

``result`` is a :class:`~course_utils.exercises.running.CaseRun` in its wire form: the case
runs through the same :func:`~course_utils.exercises.running.run_case` as the in-notebook
check. The test case arrives pickled by the grader; the output goes back in :mod:`.wire`'s
plain-data format. The child never sees an expected value, and what it says decides nothing
by itself: the grader judges the outputs and owns every time limit.
"""

from __future__ import annotations

import builtins
import importlib
import linecache
import os
import pickle
import resource
import socket
import sys
import warnings
from typing import Any

from ..exercises.running import CaseRun, describe_exception, run_case
from . import seccomp, wire
from .traps import CallTrap, ModuleGuard

__all__ = ["child_main"]

# Captured at import, before any learner code runs: a submission that replaces
# CallTrap.armed or ModuleGuard.check_and_restore changes nothing here.
_ARMED = CallTrap.armed
_CHECK = ModuleGuard.check_and_restore


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
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc (macOS): close a generous range instead
        fds = list(range(3, 1024))
    for n in fds:
        if n not in keep:
            try:
                os.close(n)
            except OSError:
                pass


def _isolate(fd: int, limits: dict) -> str | None:
    """Cut the child off and cap it; the seccomp problem, if any (None: filter installed)."""
    try:
        os.setsid()  # own session and process group (before seccomp forbids it)
    except OSError:
        pass
    devnull = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(devnull, std)
    _close_inherited_fds(keep={0, 1, 2, fd})
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = sys.stderr = open(1, "w", closefd=False)  # noqa: SIM115
    workdir = limits["workdir"]
    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)
    os.environ["MPLBACKEND"] = "Agg"
    for res, value in (
        (resource.RLIMIT_AS, _vm_bytes() + int(limits["memory_mb"]) * 2**20),
        (resource.RLIMIT_CPU, max(1, int(limits["cpu_seconds"]))),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, 64 * 2**20),
        # no new process or thread (seccomp refuses them too; this holds where it cannot run,
        # for a grading user without privileges)
        (resource.RLIMIT_NPROC, 0),
    ):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass  # a limit the system will not lower; the grader's time limits still apply
    return seccomp.install()


def _exec_cell(source: str, filename: str, ns: dict) -> str | None:
    """Run one cell in the shared namespace; the error (one line) or None."""
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    shell = _Shell(ns, filename)
    ns["get_ipython"] = lambda: shell
    try:
        code = compile(source, filename, "exec")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(code, ns)
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
        return describe_exception(e)
    return None


def _driver(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _run_case(
    name: str, driver: Any, case: Any, ns: dict, trap: CallTrap
) -> tuple[CaseRun, dict[str, None]]:
    if name not in ns:
        return CaseRun("missing"), {}
    with _ARMED(trap):
        run = run_case(driver, ns[name], case, interruptible=False)
    return run, dict(trap.calls)


def _raised(error: str) -> tuple:
    return CaseRun("raised", error=error).to_wire()


def _send(sock: socket.socket, message: tuple) -> None:
    try:
        payload = wire.encode(message)
    except BaseException as e:  # noqa: BLE001 - a hostile container (a __len__ that raises...)
        kind, key = message[0], message[1]
        if kind != "case_done":
            raise
        error = f"could not send the output back: {describe_exception(e)}"
        payload = wire.encode((kind, key, _raised(error)) + tuple(message[3:]))
    if len(payload) > wire.MAX_FRAME:
        error = f"the output is {len(payload) >> 20} MiB; the limit is 64 MiB"
        payload = wire.encode(message[:2] + (_raised(error),) + tuple(message[3:]))
    wire.send_frame(sock, payload)


def _namespace() -> dict:
    return {"__name__": "__main__", "__builtins__": builtins, "display": lambda *a, **k: None}


def child_main(fd: int, limits: dict) -> None:
    """Serve the grader on channel ``fd``; never returns (ends with ``os._exit``).

    Args:
        fd: the child's end of its channel (a connected stream socket).
        limits: ``workdir``, ``memory_mb``, ``cpu_seconds``, ``forbidden`` (every forbidden
            name of the job's exercises, for the call trap).
    """
    code = 0
    try:
        _isolate(fd, limits)
        sock = socket.socket(fileno=fd)
        _send(sock, ("hello",))  # the kernel tells the grader this process's pid with it
        trap = CallTrap(limits.get("forbidden", ()))
        trap.install()
        guard = ModuleGuard()  # after the traps: the wrappers are the baseline
        ns = _namespace()
        while True:
            try:
                msg = wire.recv_pickle(sock)
            except EOFError:
                break
            kind = msg[0]
            if kind == "cell":
                _, index, source, filename = msg
                error = _exec_cell(source, filename, ns)
                _send(sock, ("cell_done", index, error, _CHECK(guard)))
            elif kind == "case":
                _, seq, name, module, qualname, payload = msg
                case = pickle.loads(payload)
                driver = _driver(module, qualname)
                run, calls = _run_case(name, driver, case, ns, trap)
                tampered = trap.tampered
                patched = _CHECK(guard)
                _send(sock, ("case_done", seq, run.to_wire(), list(calls), patched, tampered))
            else:
                break
    except BaseException:  # noqa: BLE001 - the grader sees the channel close and says why
        code = 70
    finally:
        os._exit(code)
