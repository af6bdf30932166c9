"""The grader's record of one submission while it is graded, across sandboxed children.

A :class:`Job` knows the cells to run and, per exercise, the :class:`Task` (driver and test
cases, built by the grader); it collects what each step produced. When a child dies or runs
out of time, the step it was on is charged (the cell is skipped from then on, or the
exercise gets its verdict) and a fresh child carries on with the rest, so one bad cell or
exercise never costs another one its points. Every verdict is decided here, in the grader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from ..exercises.cases import LabelledCase
from ..exercises.core import Exercise
from ..exercises.running import Status
from .notebooks import Cell, Submission

__all__ = ["Task", "Step", "Outcome", "Job"]


@dataclass
class Task:
    """One exercise as the grader runs it: the learner's name, the driver the sandbox
    imports by name, the labelled cases (visible first) and their pickled form.

    Attributes:
        share: exercises with the same ``share`` (seed group and driver) get the same outputs
            from one run of each case (the capstone's four parts: one training per seed).
        budget: seconds the exercise's cases may take together (set by the grader).
    """

    exercise: Exercise
    driver: tuple[str, str]  # (module, qualified name)
    cases: list[LabelledCase]  # visible first
    payloads: list[bytes]
    share: tuple
    budget: float

    @property
    def exercise_id(self) -> str:
        return self.exercise.id


class Step(NamedTuple):
    """What a child was asked to do: run a cell, run one case of a task, or end."""

    kind: Literal["cell", "case", "end"]
    index: int = -1  # the cell's index, or the case's index in task.cases
    task: Task | None = None  # for a case
    seq: int = 0  # for a case: the request's number, which its reply must carry


@dataclass
class Outcome:
    """What the grader learned about one exercise of a job.

    Attributes:
        missing: the learner's namespace had no object of the exercise's name.
        died: how the child died (or ran out of time) during the exercise.
        calls, patched, tampered: the best-effort trap's reports.
        status, feedback: the verdict from the cases, once decided (``status`` None before).
    """

    missing: bool = False
    died: str | None = None
    calls: list[str] = field(default_factory=list)
    patched: list[str] = field(default_factory=list)
    tampered: bool = False
    status: Status | None = None
    feedback: str = ""

    @property
    def done(self) -> bool:
        return self.missing or self.died is not None or self.status is not None

    def decide(self, status: Status, feedback: str) -> None:
        """Record the exercise's verdict (its remaining cases are not run)."""
        self.status, self.feedback = status, feedback


@dataclass
class Job:
    """One submission being graded.

    Attributes:
        submission: the parsed notebook.
        exercises: the lesson's exercises, in order.
        tasks: one per exercise whose cell was found and is to run (same order).
        static: exercise id -> reasons found by the static scan.
        skip: indices of cells that killed a child or ran out of time (not run again).
        cell_errors: cell index -> the error it raised (or how it died).
        cell_patches: cell index -> numpy/torch attributes it changed.
        outcomes: exercise id -> :class:`Outcome`.
        shared: (share, case index) -> a case's reply (:class:`~.protocol.CaseReply`), or how
            the child died on it (a string), for the exercises that share it.
        failures: children lost outside any step (the sandbox itself died); bounded.
    """

    submission: Submission
    exercises: list[Exercise]
    tasks: list[Task]
    static: dict[str, list[str]] = field(default_factory=dict)
    skip: set[int] = field(default_factory=set)
    cell_errors: dict[int, str] = field(default_factory=dict)
    cell_patches: dict[int, list[str]] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    shared: dict[tuple, Any] = field(default_factory=dict)
    failures: int = 0

    def outcome(self, exercise_id: str) -> Outcome:
        return self.outcomes.setdefault(exercise_id, Outcome())

    def pending(self) -> list[Task]:
        """Tasks without a decided outcome yet."""
        return [t for t in self.tasks if not self.outcome(t.exercise_id).done]

    def is_shared(self, task: Task) -> bool:
        """True when another task of the job shares ``task``'s case results."""
        return sum(1 for t in self.tasks if t.share == task.share) > 1

    def cells(self) -> list[Cell]:
        """The cells the next child runs (those that killed a child are skipped)."""
        return [c for c in self.submission.program if c.index not in self.skip]

    def charge(self, step: Step | None, reason: str) -> None:
        """A child died (or timed out) during ``step``: record it so the next child moves on.

        Args:
            step: a cell or a case; None: outside any learner step (the sandbox itself
                failed).
            reason: one line saying how it died.
        """
        if step is not None and step.kind == "cell":
            self.skip.add(step.index)
            self.cell_errors[step.index] = reason
        elif step is not None and step.task is not None:
            self.outcome(step.task.exercise_id).died = reason
            if self.is_shared(step.task):
                self.shared[(step.task.share, step.index)] = reason
        else:
            self.failures += 1
            if self.failures >= 3:  # never loop on a sandbox that keeps failing
                for t in self.pending():
                    self.outcome(t.exercise_id).died = f"could not be graded: {reason}"

    def release(self) -> None:
        """Drop what was kept for scoring (outputs, cells): the job is scored."""
        self.shared.clear()
        self.outcomes.clear()
        self.tasks = []
