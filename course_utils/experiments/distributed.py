"""Run one function on several processes joined by ``torch.distributed`` (gloo, loopback),
or on ranks that stand in for them in one process, with the same ``all_reduce`` contract.

    results = run_processes(fn, world_size=2, args=(...,))   # real processes, gloo over TCP
    results = run_threads(fn, world_size=2, args=(...,))     # one process, threads
    results = run_replayed(fn, world_size=2, args=(...,))    # one thread, lockstep replay

``fn(rank, world_size, all_reduce, *args)`` must return plain data (numbers, lists, dicts,
tensors); ``all_reduce(t)`` sums the tensor ``t`` over the ranks in place and returns None, as
``torch.distributed.all_reduce`` does. For processes, ``fn`` must be importable (defined in a
module, not in a notebook): spawned processes find it by its module and name.

Processes are started with ``torch.multiprocessing``'s *spawn* method (a fresh interpreter, no
inherited threads or locks), rendezvous on a free TCP port of 127.0.0.1, talk over the loopback
interface only, and are always stopped: on success, on an error in any rank (which is raised
here with the rank's traceback) and after ``timeout`` seconds.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DistributedUnavailable",
    "distributed_available",
    "free_port",
    "run_processes",
    "run_threads",
    "ThreadGroup",
    "ReplayGroup",
    "run_replayed",
    "CommCounter",
]

AllReduce = Callable[[torch.Tensor], None]


class DistributedUnavailable(RuntimeError):
    """torch.distributed (gloo) cannot run here: the message says why and what to do."""


def distributed_available() -> tuple[bool, str]:
    """(True, "") when torch.distributed with the gloo backend is usable, else (False, why)."""
    import torch.distributed as dist

    if not dist.is_available():
        return False, "this torch build has no torch.distributed"
    if not dist.is_gloo_available():
        return False, "this torch build has no gloo backend"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
    except OSError as e:
        return False, f"cannot open a TCP socket on 127.0.0.1 ({e})"
    return True, ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _loopback_interface() -> str | None:
    """The loopback interface's name ("lo" on Linux, "lo0" on macOS), if one is listed."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((n for n in names if n.startswith("lo")), None)


class CommCounter:
    """Wraps an ``all_reduce`` and counts its calls and bytes, per tag.

    ``counter.tagged("batch norm")`` is an ``all_reduce`` that counts under that tag;
    ``counter.calls`` and ``counter.bytes`` map tag -> totals.
    """

    def __init__(self, all_reduce: AllReduce) -> None:
        self._all_reduce = all_reduce
        self.calls: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def tagged(self, tag: str) -> AllReduce:
        def all_reduce(t: torch.Tensor) -> None:
            start = time.perf_counter()
            self._all_reduce(t)
            self.seconds[tag] = self.seconds.get(tag, 0.0) + time.perf_counter() - start
            self.calls[tag] = self.calls.get(tag, 0) + 1
            self.bytes[tag] = self.bytes.get(tag, 0) + t.numel() * t.element_size()

        return all_reduce

    def reset(self) -> None:
        self.calls, self.bytes, self.seconds = {}, {}, {}


# ------------------------------------------------------------------------------------------
# threads: one process, world_size ranks
# ------------------------------------------------------------------------------------------


class ThreadGroup:
    """``world_size`` ranks as threads of this process, with a summing ``all_reduce``.

    Every rank must call ``all_reduce`` the same number of times with tensors of one shape
    (as with real processes). A rank left waiting (another rank failed, returned, or took
    longer than ``timeout`` seconds) gets a RuntimeError saying so instead of hanging.
    """

    def __init__(self, world_size: int, timeout: float = 10.0) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.timeout = timeout
        self._cond = threading.Condition()
        self._arrived = 0
        self._generation = 0
        self._broken = False
        self._finished: list[int] = []
        self._slots: list[torch.Tensor | None] = [None] * world_size
        self.calls = [0] * world_size
        self.bytes = [0] * world_size

    def all_reduce_for(self, rank: int) -> AllReduce:
        """The ``all_reduce`` rank ``rank`` calls."""

        def all_reduce(tensor: torch.Tensor) -> None:
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(
                    f"all_reduce takes a torch.Tensor (it sums it in place), got "
                    f"{type(tensor).__name__}"
                )
            self.calls[rank] += 1
            self.bytes[rank] += tensor.numel() * tensor.element_size()
            self._slots[rank] = tensor.detach().clone()
            self._wait(rank)  # every rank has posted its tensor
            shapes = {tuple(t.shape) for t in self._slots if t is not None}
            if len(shapes) != 1:
                self.abort()
                raise RuntimeError(
                    f"all_reduce got tensors of different shapes on different ranks: "
                    f"{sorted(shapes)}; every rank must reduce the same shape"
                )
            total = self._slots[0].clone()
            for t in self._slots[1:]:
                total += t  # the same order on every rank: identical results
            self._wait(rank)  # every rank has read the slots before any posts again
            with torch.no_grad():
                tensor.copy_(total)

        return all_reduce

    def _wait(self, rank: int) -> None:
        """A barrier that also gives up when a rank has returned or failed."""
        with self._cond:
            if self._broken or self._finished:
                raise RuntimeError(self._mismatch(rank))
            generation = self._generation
            self._arrived += 1
            if self._arrived == self.world_size:
                self._arrived = 0
                self._generation += 1
                self._cond.notify_all()
                return
            released = self._cond.wait_for(
                lambda: self._generation != generation or self._broken or bool(self._finished),
                self.timeout,
            )
            if self._generation != generation:
                return  # released, whatever happened since
            self._broken = True
            self._cond.notify_all()
            if not released:
                raise RuntimeError(
                    f"rank {rank} waited more than {self.timeout:g} s in all_reduce "
                    f"(calls so far by rank: {self.calls})"
                )
            raise RuntimeError(self._mismatch(rank))

    def _mismatch(self, rank: int) -> str:
        done = f" (rank {self._finished[0]} had already returned)" if self._finished else ""
        return (
            f"rank {rank} waited in all_reduce for ranks that never came{done}: every rank "
            f"must call all_reduce equally often (calls so far by rank: {self.calls})"
        )

    def abort(self) -> None:
        """Wake every waiting rank with an error (a rank failed)."""
        with self._cond:
            self._broken = True
            self._cond.notify_all()

    def _finish(self, rank: int) -> None:
        """A rank returned: nobody may wait for it any more."""
        with self._cond:
            self._finished.append(rank)
            self._cond.notify_all()

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """Run ``fn(rank, world_size, all_reduce, *args)`` on every rank; the results by rank.

        The first exception a rank raised (one not caused by waiting for a failed rank) is
        raised again here, unchanged.
        """
        results: list[Any] = [None] * self.world_size
        errors: list[BaseException | None] = [None] * self.world_size

        def target(rank: int) -> None:
            try:
                results[rank] = fn(rank, self.world_size, self.all_reduce_for(rank), *args)
                self._finish(rank)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors[rank] = e
                self.abort()

        threads = [
            threading.Thread(target=target, args=(r,), daemon=True, name=f"rank{r}")
            for r in range(self.world_size)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.timeout * 4
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            self.abort()
            raise TimeoutError(f"a rank was still running after {self.timeout * 4:g} s")
        # a rank that failed on its own is the story; the ranks left waiting are its echo
        waiting = [e for e in errors if isinstance(e, RuntimeError) and "in all_reduce" in str(e)]
        first = next((e for e in errors if e is not None and e not in waiting), None)
        if first is None and waiting:
            first = waiting[0]
        if first is not None:
            raise first
        return results


def run_threads(
    fn: Callable[..., Any], world_size: int = 2, args: Sequence[Any] = (), timeout: float = 60.0
) -> list[Any]:
    """``fn(rank, world_size, all_reduce, *args)`` on ``world_size`` threads; results by rank."""
    return ThreadGroup(world_size, timeout=timeout).run(fn, *args)


# ------------------------------------------------------------------------------------------
# lockstep replay: one thread, world_size ranks (where no thread may start: the grader's sandbox)
# ------------------------------------------------------------------------------------------


class _Paused(BaseException):
    """Stops a rank's run at the all_reduce call being collected (a BaseException, so that an
    ``except Exception`` in the rank's code does not swallow it)."""


class ReplayGroup:
    """``world_size`` ranks in this one thread, kept in lockstep by replaying them.

    No thread or process is started, so it runs where none may (the grader's sandbox). Pass
    ``k`` runs every rank's ``fn`` from the start: its all_reduce calls 1..k-1 get the sums
    already known, and call ``k`` records the rank's tensor and stops that run (with a private
    ``BaseException``, which propagates through autograd's backward unchanged). When every rank
    has posted call ``k``, the sums of call ``k`` are formed (in rank order, so identical on
    every rank) and the next pass begins, until every rank returns. A rank's computation must
    therefore be deterministic: the same tensors at every replay (checked, bit for bit).
    ``c`` all_reduce calls cost ``c + 1`` runs of each rank.

    Bad ranks get a clear error, never a hang: ranks that call all_reduce unequally often,
    tensors of different shapes on different ranks, a rank that catches the interruption and
    carries on, a replay that posts a different tensor, more than ``max_calls`` calls.
    ``calls[r]`` and ``bytes[r]`` count rank r's all_reduce calls and bytes in its current
    run (after :meth:`run`: its final, complete one), as :class:`ThreadGroup`'s do.
    """

    def __init__(self, world_size: int, max_calls: int = 64) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.max_calls = max_calls
        self.calls = [0] * world_size
        self.bytes = [0] * world_size

    def _all_reduce(self, rank: int, sums: list[torch.Tensor], posted: list, state: dict):
        """The all_reduce of one run of rank ``rank``: answers the known calls, stops at the
        next one. ``posted[i]`` is what this rank posted at call i in earlier passes."""

        def all_reduce(tensor: torch.Tensor) -> None:
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(
                    f"all_reduce takes a torch.Tensor (it sums it in place), got "
                    f"{type(tensor).__name__}"
                )
            if state["stopped"]:
                raise RuntimeError(
                    f"rank {rank} called all_reduce again after the check interrupted it: do "
                    "not catch BaseException (or use a bare except) around all_reduce"
                )
            i = self.calls[rank]
            self.calls[rank] += 1
            self.bytes[rank] += tensor.numel() * tensor.element_size()
            mine = tensor.detach().clone()
            if i < len(sums):
                if not _same_bits(mine, posted[i]):
                    raise RuntimeError(
                        f"rank {rank} sent all_reduce call {i + 1} a different tensor when its "
                        "computation was repeated: the check replays each rank's forward and "
                        "backward, so they must compute the same numbers every time (no "
                        "randomness, no state kept between calls)"
                    )
                with torch.no_grad():
                    tensor.copy_(sums[i])
                return
            if i >= self.max_calls:
                raise RuntimeError(
                    f"rank {rank} called all_reduce more than {self.max_calls} times"
                )
            state["stopped"] = True
            posted.append(mine)
            raise _Paused

        return all_reduce

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """Run ``fn(rank, world_size, all_reduce, *args)`` on every rank; the results by rank.

        An exception a rank raises (other than the interruption) is raised here, unchanged.
        """
        sums: list[torch.Tensor] = []
        posted: list[list[torch.Tensor]] = [[] for _ in range(self.world_size)]
        while True:
            k = len(sums)
            results: list[Any] = [None] * self.world_size
            done: list[int] = []
            for rank in range(self.world_size):
                state = {"stopped": False}
                self.calls[rank] = self.bytes[rank] = 0
                all_reduce = self._all_reduce(rank, sums, posted[rank], state)
                try:
                    results[rank] = fn(rank, self.world_size, all_reduce, *args)
                except _Paused:
                    continue
                if state["stopped"]:
                    raise RuntimeError(
                        f"rank {rank} returned although the check interrupted it inside "
                        "all_reduce: do not catch BaseException (or use a bare except) around "
                        "all_reduce"
                    )
                if self.calls[rank] != k:
                    raise RuntimeError(
                        f"rank {rank} called all_reduce {self.calls[rank]} times when its "
                        f"computation was repeated, and {k} or more times before: the check "
                        "replays each rank, so it must compute the same thing every time"
                    )
                done.append(rank)
            if len(done) == self.world_size:
                return results
            if done:
                more = [r for r in range(self.world_size) if r not in done]
                raise RuntimeError(
                    f"rank {done[0]} returned after {k} all_reduce call{'s' if k != 1 else ''} "
                    f"while rank {more[0]} called all_reduce a {_ordinal(k + 1)} time: every "
                    "rank must call all_reduce equally often (with real processes the others "
                    "would wait for ever)"
                )
            latest = [p[k] for p in posted]
            shapes = sorted({tuple(t.shape) for t in latest})
            if len(shapes) != 1:
                raise RuntimeError(
                    f"all_reduce call {k + 1} got tensors of different shapes on different "
                    f"ranks: {shapes}; every rank must reduce the same shape"
                )
            total = latest[0].clone()
            for t in latest[1:]:
                total += t  # in rank order: every rank gets the same bits
            sums.append(total)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and values (NaN where the other has NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    return torch.equal(a, b)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def run_replayed(
    fn: Callable[..., Any], world_size: int = 2, args: Sequence[Any] = ()
) -> list[Any]:
    """``fn(rank, world_size, all_reduce, *args)`` on ``world_size`` ranks in this thread, by
    lockstep replay (:class:`ReplayGroup`); results by rank."""
    return ReplayGroup(world_size).run(fn, *args)


# ------------------------------------------------------------------------------------------
# processes: torch.multiprocessing (spawn) + torch.distributed (gloo on 127.0.0.1)
# ------------------------------------------------------------------------------------------


def _worker(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: Sequence[Any],
    out_dir: str,
    timeout: float,
) -> None:
    """What each spawned process runs: join the group, run ``fn``, save its result."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout),
    )
    in_collective = False
    try:

        def all_reduce(t: torch.Tensor) -> None:
            nonlocal in_collective
            in_collective = True
            dist.all_reduce(t)
            in_collective = False

        try:
            result = fn(rank, world_size, all_reduce, *args)
        except BaseException:
            # Written down for the parent, which reports the rank that failed on its own
            # rather than the peers that then lost their connection to it.
            kind = "echo" if in_collective else "cause"
            (Path(out_dir) / f"rank{rank}.{kind}").write_text(traceback.format_exc())
            raise
        tmp = Path(out_dir) / f"rank{rank}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(result, f)
        tmp.rename(Path(out_dir) / f"rank{rank}.pkl")
        dist.barrier()  # nobody leaves while another rank may still talk to it
    finally:
        dist.destroy_process_group()


def _root_cause(out_dir: str, raised: BaseException) -> str:
    """The traceback of a rank that failed by itself (not one that failed waiting in a
    collective for it), else what torch reported first."""
    for kind in ("cause", "echo"):
        found = sorted(Path(out_dir).glob(f"rank*.{kind}"))
        if found:
            rank = found[0].name.split(".")[0]
            return f"-- {rank} failed:\n{found[0].read_text()}"
    return str(raised)


def _stop(processes: list) -> None:
    """Terminate, then kill, every process still alive, and reap them all."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 3.0
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(2.0)


def run_processes(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: Sequence[Any] = (),
    timeout: float = 60.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, all_reduce, *args)`` in ``world_size`` spawned processes.

    Args:
        fn: an importable function (module level); its result must pickle.
        timeout: seconds for the whole run; a rank that waits longer for another in a
            collective raises instead of hanging.
    Returns:
        The results, by rank.
    Raises:
        DistributedUnavailable: torch.distributed or gloo is missing, or no local socket.
        RuntimeError: a rank failed (its traceback is in the message) or the run timed out.
            No process is left behind either way.
    """
    ok, why = distributed_available()
    if not ok:
        raise DistributedUnavailable(why)
    if getattr(fn, "__module__", "__main__") == "__main__" or "<locals>" in fn.__qualname__:
        raise ValueError(
            f"{fn.__qualname__} must be defined at module level in an importable module "
            "(spawned processes import it); a function defined in a notebook is not"
        )
    import torch.multiprocessing as mp

    env_keys = ("GLOO_SOCKET_IFNAME",)
    saved_env = {k: os.environ.get(k) for k in env_keys}
    lo = _loopback_interface()
    if lo is not None and not os.environ.get("GLOO_SOCKET_IFNAME"):
        os.environ["GLOO_SOCKET_IFNAME"] = lo  # children inherit it: talk over loopback only
    try:
        with tempfile.TemporaryDirectory(prefix="course-dist-") as out_dir:
            context = mp.start_processes(
                _worker,
                args=(world_size, free_port(), fn, tuple(args), out_dir, timeout),
                nprocs=world_size,
                join=False,
                start_method="spawn",
            )
            deadline = time.monotonic() + timeout
            try:
                while not context.join(timeout=0.2):
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the {world_size} processes did not finish within {timeout:g} s; "
                            "they were stopped"
                        )
            except mp.ProcessRaisedException as e:
                _stop(context.processes)
                raise RuntimeError(f"a process failed:\n{_root_cause(out_dir, e)}") from None
            except mp.ProcessExitedException as e:
                raise RuntimeError(f"a process died: {e}") from None
            finally:
                _stop(context.processes)
            results = []
            for rank in range(world_size):
                with open(Path(out_dir) / f"rank{rank}.pkl", "rb") as f:
                    results.append(pickle.load(f))
            return results
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
