"""The sandbox's long-lived process: imports the learner-facing runtime once, then forks one
child per submission, on the grader's request.

    python -I -m course_utils.sandbox.zygote CONTROL_FD CONFIG_JSON

The zygote holds numpy, torch, matplotlib and the parts of ``course_utils`` a notebook imports
(the exercises' drivers included), and nothing else: no answers (they are not in the sandbox),
no test case, no submission. It makes itself non-dumpable (no child can trace it or read its
memory), and after each child it kills every other process in the sandbox and wipes the
scratch folder, so a submission cannot reach the next one.

Control messages (:mod:`.wire` frames on a stream socket pair):

    zygote -> grader  ("ready", {"pid", "seccomp", "cpu"})   imports done (CPU seconds used)
    grader -> zygote  ("job", limits) + the child's channel (SCM_RIGHTS)
    grader -> zygote  ("kill",)                               stop the running child now
    zygote -> grader  ("done", wait status, CPU seconds)      the child has ended, all cleaned up
"""

from __future__ import annotations

import array
import ctypes
import importlib
import importlib.util
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import time

__all__ = ["main"]

_PR_SET_DUMPABLE = 4
_PRELOAD = (
    "numpy",
    "torch",
    "matplotlib",
    "matplotlib.pyplot",
    "course_utils",
    "course_utils.exercises.registry",
    "course_utils.sandbox.child",
)


def _recv(ctrl: socket.socket) -> tuple[object, list[int]]:
    """The next control frame and the descriptors that came with it (its first bytes)."""
    from . import wire

    fds = array.array("i")
    head = b""
    while len(head) < 4:
        data, anc, _, _ = ctrl.recvmsg(4 - len(head), socket.CMSG_SPACE(4 * fds.itemsize))
        if not data:
            raise EOFError
        head += data
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(raw[: len(raw) - (len(raw) % fds.itemsize)])
    size = int.from_bytes(head, "big")
    body = b""
    while len(body) < size:
        chunk = ctrl.recv(size - len(body))
        if not chunk:
            raise EOFError
        body += chunk
    return wire.decode(body), list(fds)


def _send(ctrl: socket.socket, message: tuple) -> None:
    from . import wire

    wire.send_frame(ctrl, wire.encode(message))


def _import_runtime(config: dict) -> None:
    for path in config.get("sys_path", []):
        if path not in sys.path:
            sys.path.append(path)
    for name in _PRELOAD + tuple(config.get("preload", ())):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a child that needs it reports the failed import
            pass
    import matplotlib

    matplotlib.use("Agg")
    from course_utils.exercises.registry import all_exercises

    all_exercises()  # every lesson module, with its drivers
    from .traps import trust

    for name, path in config.get("driver_files", {}).items():
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    trust(config.get("driver_files", {}).values())
    try:
        _warm_up()
    except Exception:  # noqa: BLE001 - a child pays the cost instead
        pass


def _warm_up() -> None:
    """Run, once in the zygote, what torch initialises lazily on first use (the first
    backward pass alone imports sympy, ~0.7 s), so no child pays for it again."""
    import numpy as np
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 8),
        nn.BatchNorm1d(8),
        nn.LayerNorm(8),
        nn.Tanh(),
        nn.Linear(8, 3),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(5, 2, 4, 4, requires_grad=True)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0, 1]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    torch.autograd.grad((x**2).sum(), x)
    with torch.no_grad():
        model.eval()(x)
    a = np.random.default_rng(0).normal(size=(8, 8))
    np.linalg.norm(a @ a.T)


def _make_undumpable() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def _wait_child(pid: int, ctrl: socket.socket) -> tuple[int, float]:
    """Wait for the child to end; a ("kill",) on the control channel ends it first.

    Returns:
        (its wait status, the CPU seconds it used)."""
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
    try:
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                return status, usage.ru_utime + usage.ru_stime
            watch = [ctrl] + ([pidfd] if pidfd is not None else [])
            ready, _, _ = select.select(watch, [], [], 5.0 if pidfd is not None else 0.02)
            if ctrl in ready:
                try:
                    msg, fds = _recv(ctrl)
                except (EOFError, OSError, ValueError):
                    msg, fds = ("kill",), []
                for fd in fds:
                    os.close(fd)
                if isinstance(msg, tuple) and msg and msg[0] == "kill":
                    os.kill(pid, signal.SIGKILL)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _clean_up(config: dict) -> None:
    """After a child: no process but this one left, an empty scratch folder."""
    if config.get("own_pid_namespace"):
        # Only safe in the sandbox's own PID namespace, where -1 means "every process of this
        # sandbox but the zygote and its init"; never outside it.
        for _ in range(50):
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                break
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass
            time.sleep(0.001)
    scratch = config["scratch"]
    for entry in os.listdir(scratch):
        path = os.path.join(scratch, entry)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            pass


def main(argv: list[str]) -> int:
    ctrl_fd, config = int(argv[0]), json.loads(argv[1])
    ctrl = socket.socket(fileno=ctrl_fd)
    _import_runtime(config)
    _make_undumpable()
    from . import seccomp

    usage = resource.getrusage(resource.RUSAGE_SELF)
    info = {"pid": os.getpid(), "seccomp": seccomp.supported()}
    _send(ctrl, ("ready", {**info, "cpu": usage.ru_utime + usage.ru_stime}))
    while True:
        try:
            msg, fds = _recv(ctrl)
        except (EOFError, OSError):
            return 0
        if not isinstance(msg, tuple) or not msg:
            continue
        if msg[0] != "job" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            if msg[0] == "exit":
                return 0
            continue
        limits = dict(msg[1])
        limits["workdir"] = os.path.join(config["scratch"], "work")
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                ctrl.close()
                from .child import child_main

                child_main(fds[0], limits)
            finally:
                os._exit(70)
        os.close(fds[0])
        status, cpu = _wait_child(pid, ctrl)
        _clean_up(config)
        _send(ctrl, ("done", status, float(cpu)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
