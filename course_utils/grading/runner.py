"""The grader's event loop: sandboxed workers, one child per job at a time, every time limit.

Each worker is a zygote in its own sandbox (:mod:`.isolation`); a job runs in a child the
zygote forks, over a fresh socket pair the grader hands it. The grader sends one step at a
time (a cell, then one test case at a time) and owns every time limit: a step's clock starts
when the grader sends it, and nothing the child sends extends it. A child that overruns,
breaks the protocol or dies is stopped (by its zygote, else with its whole sandbox), the step
is charged, and a fresh child carries on with the rest of the job. A single thread does all
of it; no lock, no fork in the grader.

The clock a limit counts is the child's own time: wall time minus the time the kernel kept
it waiting for a CPU (``/proc/PID/schedstat``; the child's pid comes from the kernel with its
first message, ``SO_PASSCRED``). So a busy machine, or a classmate's CPU hog, never makes a
correct solution time out, while a child that loops or sleeps does. A wall-clock backstop
(:data:`_WALL_FACTOR` times the limit) still applies, and where the kernel gives no such
figure (not Linux) the limit is wall time.
"""

from __future__ import annotations

import array
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..sandbox import wire
from . import protocol
from .expected import ExpectedCache
from .isolation import start_zygote
from .jobs import Job, Step
from .scoring import judge_result

__all__ = ["run_jobs", "describe_exit", "SandboxFailure"]

_START_TIMEOUT = 240.0  # importing torch in a fresh sandbox, on a busy machine
_END_GRACE = 5.0  # after "end", how long a child may take to exit
_KILL_GRACE = 10.0  # after asking the zygote to kill a child, before killing the sandbox
_WALL_FACTOR = 4.0  # wall-clock backstop: this many times a step's limit (plus _WALL_EXTRA)
_WALL_EXTRA = 30.0
_TICK = 0.25  # how often running children's clocks are read
_MAX_RESTARTS = 3  # a worker that fails to start this many times in a row is given up
_READ_CHUNK = 1 << 20
_SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", -1)


class SandboxFailure(RuntimeError):
    """No worker could be started (the message says why, from the zygote's log)."""


def describe_exit(status: int, timed_out: bool, limit: float, protocol_error: str | None) -> str:
    """One line for a child that stopped without finishing its step."""
    if timed_out:
        return f"ran longer than the {limit:g} s time limit (an infinite loop?)"
    if protocol_error:
        return f"sent back something the grader cannot accept: {protocol_error}"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGSEGV:
            return "crashed the Python process (segmentation fault)"
        if sig == signal.SIGXFSZ:
            return "wrote a file larger than 64 MiB and was stopped"
        if sig == signal.SIGXCPU:
            return "used up its CPU time and was stopped"
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


@dataclass
class _Run:
    """One child of one job, on one worker."""

    job: Job
    chan: socket.socket
    cells: deque
    task_i: int = 0
    case_i: int = 0
    step: Step | None = None
    limit: float = 0.0  # seconds the current window may use
    t0: float = 0.0  # the current step's start (wall clock)
    d0: float = 0.0  # the child's CPU-wait time then
    used: float = 0.0  # what the current exercise's earlier cases used
    pid: int | None = None  # the child's pid, from the kernel
    hello: bool = False
    seq: int = 0
    reader: wire.FrameReader = field(default_factory=wire.FrameReader)
    out: bytearray = field(default_factory=bytearray)
    timed_out: bool = False
    error: str | None = None
    kill_sent: float | None = None
    eof: bool = False


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen | None = None
    ctrl: socket.socket | None = None
    log: str = ""
    state: str = "new"  # new, starting, idle, busy, dead
    started: float = 0.0
    run: _Run | None = None
    failures: int = 0
    reader: wire.FrameReader = field(default_factory=lambda: wire.FrameReader(1 << 16))


def _waited(pid: int | None) -> float:
    """Seconds the process has spent runnable but waiting for a CPU (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _charged(run: _Run, now: float) -> float:
    """The child's own time in the current step (wall time minus waiting for a CPU)."""
    return max(0.0, (now - run.t0) - max(0.0, _waited(run.pid) - run.d0))


def _seconds(value: object) -> float:
    return float(value) if type(value) in (int, float) and 0 <= value < 1e7 else 0.0


def _log_tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 2000))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines[-3:])[-400:]


class _Loop:
    def __init__(
        self,
        jobs: Sequence[Job],
        timeout: float,
        memory_mb: int,
        workers: int,
        workdir: str,
        mode: str,
        driver_files: dict[str, str],
        preload: list[str],
        on_done: Callable[[Job], None],
    ) -> None:
        self.queue = deque(jobs)
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.workdir = workdir
        self.mode = mode
        self.driver_files = driver_files
        self.preload = preload
        self.on_done = on_done
        self.cache = ExpectedCache()
        self.sel = selectors.DefaultSelector()
        n = max(1, min(workers, len(jobs)))
        self.workers = [_Worker(i) for i in range(n)]
        self.start_problem = ""
        self.stats = {"sandbox_cpu_s": 0.0, "zygotes_started": 0}

    # -- workers -------------------------------------------------------------------------
    def start_worker(self, w: _Worker) -> None:
        w.proc, w.ctrl, w.log = start_zygote(
            self.mode, w.index, self.workdir, self.driver_files, self.preload
        )
        w.ctrl.setblocking(False)
        w.state, w.started, w.run = "starting", time.monotonic(), None
        w.reader = wire.FrameReader(1 << 16)
        self.sel.register(w.ctrl, selectors.EVENT_READ, ("ctrl", w))

    def stop_worker(self, w: _Worker, gently: bool = False) -> None:
        """Stop a worker's sandbox: ``gently`` lets an idle zygote exit on its own (so its
        CPU time is accounted to the grader), else everything in it is killed at once."""
        if w.ctrl is not None:
            try:
                self.sel.unregister(w.ctrl)
            except (KeyError, ValueError):
                pass
            w.ctrl.close()  # an idle zygote exits when its control channel closes
            w.ctrl = None
        if w.proc is not None:
            try:
                w.proc.wait(timeout=5 if gently else 0.001)
            except subprocess.TimeoutExpired:
                for kill in (os.killpg, os.kill):
                    try:
                        kill(w.proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                try:
                    w.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
            w.proc = None
        w.state = "dead"

    def worker_died(self, w: _Worker, why: str) -> None:
        """The zygote (or its whole sandbox) is gone: charge what ran, start a new one."""
        run = w.run
        was_starting = w.state == "starting"
        self.stop_worker(w)
        if run is not None:
            self.end_run(w, run, None, f"stopped its sandbox ({why})")
        if was_starting:
            w.failures += 1
            self.start_problem = f"{why}: {_log_tail(w.log)}".strip(": ")
        if w.failures < _MAX_RESTARTS and (self.queue or any(x.run for x in self.workers)):
            self.start_worker(w)

    # -- runs ----------------------------------------------------------------------------
    def start_run(self, w: _Worker, job: Job) -> None:
        grader_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        if hasattr(socket, "SO_PASSCRED"):
            grader_end.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        forbidden = sorted({name for ex in job.exercises for name in ex.forbidden})
        budget = self.timeout * (len(job.cells()) + 2) + sum(t.budget for t in job.pending())
        limits = {
            "memory_mb": self.memory_mb,
            "cpu_seconds": int(budget + 10),
            "forbidden": forbidden,
        }
        try:
            w.ctrl.setblocking(True)  # a small frame, to a zygote that is waiting for it
            w.ctrl.sendmsg(
                [_ctrl_frame(("job", limits))],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [child_end.fileno()]))],
            )
        except OSError as e:
            grader_end.close()
            child_end.close()
            self.queue.appendleft(job)
            self.worker_died(w, f"the control channel failed ({e.strerror})")
            return
        finally:
            if w.ctrl is not None:
                w.ctrl.setblocking(False)
        child_end.close()
        grader_end.setblocking(False)
        run = _Run(job=job, chan=grader_end, cells=deque(job.cells()))
        w.run, w.state = run, "busy"
        self.sel.register(grader_end, selectors.EVENT_READ, ("chan", w))
        self.advance(w, run)

    def send(self, w: _Worker, run: _Run, message: tuple, step: Step, limit: float) -> None:
        run.out += _frame(message)
        run.step, run.limit = step, limit
        run.t0, run.d0 = time.monotonic(), _waited(run.pid)
        self.flush(w, run)

    def flush(self, w: _Worker, run: _Run) -> None:
        try:
            while run.out:
                n = run.chan.send(run.out[: 1 << 20])
                del run.out[:n]
        except BlockingIOError:
            pass
        except OSError:
            run.out.clear()  # the child is gone: its zygote reports how
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if run.out else 0)
        if not run.eof:
            self.sel.modify(run.chan, events, ("chan", w))

    def advance(self, w: _Worker, run: _Run) -> None:
        """Send the job's next step (a cell, a case, or the end)."""
        job = run.job
        if run.cells:
            cell = run.cells.popleft()
            message = ("cell", cell.index, cell.source, cell.filename)
            self.send(w, run, message, Step("cell", cell.index), self.timeout)
            return
        while run.task_i < len(job.tasks):
            task = job.tasks[run.task_i]
            outcome = job.outcome(task.exercise_id)
            if outcome.done or run.case_i >= len(task.cases):
                run.task_i, run.case_i, run.used = run.task_i + 1, 0, 0.0
                continue
            key = (task.share, run.case_i)
            if key in job.shared:  # another part of the same exercise ran this case already
                shared = job.shared[key]
                if isinstance(shared, str):  # the child died on it
                    outcome.died = shared
                else:
                    judge_result(task, run.case_i, shared, outcome, self.cache)
                run.case_i += 1
                continue
            run.seq += 1
            module, qualname = task.driver
            message = (
                "case",
                run.seq,
                task.exercise.name,
                module,
                qualname,
                task.payloads[run.case_i],
            )
            step = Step("case", run.case_i, task, run.seq)
            self.send(w, run, message, step, task.budget - run.used)
            return
        self.send(w, run, ("end",), Step("end"), _END_GRACE)

    def on_chan(self, w: _Worker, run: _Run, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self.flush(w, run)
        if not events & selectors.EVENT_READ:
            return
        try:
            chunk, anc, _, _ = run.chan.recvmsg(_READ_CHUNK, socket.CMSG_SPACE(12))
        except BlockingIOError:
            return
        except OSError:
            chunk, anc = b"", []
        for level, kind, data in anc:  # the sender's pid, as the kernel knows it
            if level == socket.SOL_SOCKET and kind == _SCM_CREDENTIALS and len(data) >= 4:
                pid = struct.unpack("i", data[:4])[0]
                if run.pid is None and pid > 0:
                    run.pid = pid
        if not chunk:
            run.eof = True
            self.sel.unregister(run.chan)  # the zygote's "done" says how the child ended
            return
        if run.error is not None:
            return  # already being stopped
        try:
            for payload in run.reader.feed(chunk):
                self.on_message(w, run, payload)
                if run.error is not None or run.step is None:
                    break
        except protocol.WireError as e:
            self.stop_child(w, run, str(e))

    def on_message(self, w: _Worker, run: _Run, payload: bytes) -> None:
        if not run.hello:  # the child's first words, before any learner code
            protocol.hello(payload)
            run.hello = True  # (d0 stays 0: the child was born after its first step began)
            return
        step = run.step
        if step is None or step.kind == "end":
            raise protocol.WireError("a message nobody asked for")
        job = run.job
        if step.kind == "cell":
            error, patched = protocol.cell_reply(payload, step.index)
            if error is not None:
                job.cell_errors[step.index] = error
            if patched:
                job.cell_patches[step.index] = patched
        else:
            task, index = step.task, step.index
            reply = protocol.case_reply(payload, step.seq)
            if job.is_shared(task):
                job.shared[(task.share, index)] = reply
            run.used += _charged(run, time.monotonic())
            judge_result(task, index, reply, job.outcome(task.exercise_id), self.cache)
            run.case_i = index + 1
            del reply
        run.step = None
        self.advance(w, run)

    def overrun(self, run: _Run, now: float) -> bool:
        """True when the current step has used up its time (its own, or the backstop)."""
        if run.step is None:
            return False
        wall = now - run.t0
        if wall > _WALL_FACTOR * run.limit + _WALL_EXTRA:
            return True
        if run.step.kind == "end":
            return wall > run.limit
        return _charged(run, now) > run.limit

    def stop_child(self, w: _Worker, run: _Run, protocol_error: str | None = None) -> None:
        """Ask the zygote to kill the child (a timeout or a protocol error)."""
        if run.kill_sent is not None:
            return
        run.error = protocol_error
        run.timed_out = protocol_error is None
        run.kill_sent = time.monotonic()
        try:
            w.ctrl.settimeout(5.0)  # a few bytes, which the waiting zygote reads at once
            w.ctrl.sendall(_ctrl_frame(("kill",)))
            w.ctrl.setblocking(False)
        except OSError:
            self.worker_died(w, "its control channel failed")

    def end_run(self, w: _Worker, run: _Run, status: int | None, died: str | None = None) -> None:
        """The child is gone: charge an unfinished step, then finish or requeue the job."""
        try:
            self.sel.unregister(run.chan)
        except (KeyError, ValueError):
            pass
        run.chan.close()
        w.run = None
        if w.state == "busy":
            w.state = "idle"
        job = run.job
        step = run.step
        if not run.hello and not run.timed_out:
            step = None  # it died before any learner code ran: not the first cell's fault
        if step is not None and step.kind != "end":
            if run.timed_out:
                limit = step.task.budget if step.task is not None else run.limit
                reason = describe_exit(0, True, limit, None)
            elif died is not None:
                reason = died
            else:
                reason = describe_exit(status or 0, False, run.limit, run.error)
            job.charge(step, reason)
        elif step is None and job.pending():
            job.charge(None, died or "the grader's worker failed to start a child")
        if job.pending():
            self.queue.appendleft(job)  # carry on with what is left, next
        else:
            self.on_done(job)

    def on_ctrl(self, w: _Worker) -> None:
        try:
            data = w.ctrl.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.worker_died(w, "its process ended")
            return
        try:
            messages = [wire.decode(frame) for frame in w.reader.feed(data)]
        except wire.WireError:
            self.worker_died(w, "its zygote sent an unreadable message")
            return
        for msg in messages:
            if w.ctrl is None:
                return
            self.on_control_message(w, msg)

    def on_control_message(self, w: _Worker, msg: object) -> None:
        if not isinstance(msg, tuple) or not msg:
            return
        if msg[0] == "ready" and w.state == "starting":
            w.state, w.failures = "idle", 0
            info = msg[1] if len(msg) == 2 and isinstance(msg[1], dict) else {}
            self.stats["sandbox_cpu_s"] += _seconds(info.get("cpu"))
            self.stats["zygotes_started"] += 1
        elif msg[0] == "done" and w.run is not None and len(msg) == 3 and type(msg[1]) is int:
            self.stats["sandbox_cpu_s"] += _seconds(msg[2])
            self.drain(w, w.run)
            if w.run is not None:
                self.end_run(w, w.run, msg[1])

    def drain(self, w: _Worker, run: _Run) -> None:
        """Read what the child wrote before it ended (its last reply may still be queued)."""
        for _ in range(64):
            if run.eof or run.error is not None or w.run is not run:
                return
            try:
                ready = run.chan.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                return
            except OSError:
                return
            self.on_chan(w, run, selectors.EVENT_READ)
            if not ready:
                return

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        for w in self.workers:
            self.start_worker(w)
        while self.queue or any(w.run for w in self.workers):
            alive = [w for w in self.workers if w.state != "dead"]
            if not alive:
                raise SandboxFailure(self.start_problem or "no worker could be started")
            for w in alive:
                if w.state == "idle" and self.queue:
                    job = self.queue.popleft()
                    if job.pending():
                        self.start_run(w, job)
                    else:
                        self.on_done(job)
            wait = _TICK if any(w.run for w in alive) else 1.0
            for key, events in self.sel.select(timeout=wait):
                kind, w = key.data
                if kind == "ctrl" and w.ctrl is not None and key.fileobj is w.ctrl:
                    self.on_ctrl(w)
                elif kind == "chan" and w.run is not None and key.fileobj is w.run.chan:
                    self.on_chan(w, w.run, events)
            now = time.monotonic()
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None and w.state != "dead":
                    self.worker_died(w, "its process ended")
                elif w.state == "starting" and now > w.started + _START_TIMEOUT:
                    self.worker_died(w, f"it did not start within {_START_TIMEOUT:g} s")
                elif w.run is not None:
                    run = w.run
                    if run.kill_sent is not None and now > run.kill_sent + _KILL_GRACE:
                        self.worker_died(w, "its zygote did not stop the child")
                    elif run.kill_sent is None and self.overrun(run, now):
                        ending = run.step is not None and run.step.kind == "end"
                        self.stop_child(w, run, None)
                        run.timed_out = not ending  # after "end" everything was done

    def close(self) -> None:
        for w in self.workers:
            if w.run is not None:
                try:
                    w.run.chan.close()
                except OSError:
                    pass
                w.run = None
            self.stop_worker(w, gently=w.state == "idle")
        self.sel.close()


def _ctrl_frame(message: tuple) -> bytes:
    """Grader to zygote: a frame in the sandbox's plain-data format."""
    payload = wire.encode(message)
    return struct.pack(">I", len(payload)) + payload


def _frame(message: tuple) -> bytes:
    """Grader to child: a pickled frame (the child trusts the grader, not the reverse)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack(">I", len(payload)) + payload


def run_jobs(
    jobs: Sequence[Job],
    *,
    timeout: float,
    memory_mb: int,
    workers: int,
    workdir: str,
    mode: str,
    driver_files: dict[str, str],
    preload: list[str],
    on_done: Callable[[Job], None],
) -> dict:
    """Run every job to completion, ``workers`` sandboxes at a time.

    Args:
        jobs: the submissions to run; their outcomes are filled in place.
        timeout: seconds allowed per cell, and per exercise at least (``Task.budget``).
        memory_mb: address space each child may add to what its zygote holds.
        workers: sandboxes (zygotes) running at once, one child each.
        workdir: the grader's private temporary folder (logs, the scratch of ``"none"``).
        mode: ``"sandbox"`` (bubblewrap) or ``"none"`` (plain processes, trusted code only).
        driver_files: module name -> file, for run drivers outside the course package.
        preload: modules each zygote imports before forking.
        on_done: called with each job as soon as it is finished (for scoring).
    Returns:
        ``{"sandbox_cpu_s", "zygotes_started"}``: CPU seconds the zygotes' imports and the
        children used (as their zygotes measured them), sandboxes started (restarts included).
    Raises:
        SandboxFailure: no worker could be started at all.
    """
    if not jobs:
        return {"sandbox_cpu_s": 0.0, "zygotes_started": 0}
    loop = _Loop(jobs, timeout, memory_mb, workers, workdir, mode, driver_files, preload, on_done)
    try:
        loop.run()
    finally:
        loop.close()
    return loop.stats
