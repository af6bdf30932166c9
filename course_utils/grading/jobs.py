"""The state of one submission's grading across child processes.

A job starts a child with the cells and exercises still to run. When a child dies or runs out
of time, the step it was on is charged (the cell is skipped from then on, or the exercise
gets its verdict) and a fresh child carries on with the rest, so one bad cell or exercise
never costs another one its points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..exercises.core import Exercise
from .notebooks import Submission
from .sandbox import ChildSpec, Task

__all__ = ["Job"]


@dataclass
class Job:
    """One submission being graded.

    Attributes:
        submission: the parsed notebook.
        exercises: the lesson's exercises, in order.
        tasks: one per exercise whose cell was found (same order).
        static: exercise id -> reasons found by the static scan.
        skip: indices of cells that killed a child or ran out of time (not run again).
        cell_errors: cell index -> the error it raised (or how it died).
        cell_patches: cell index -> numpy/torch attributes it changed.
        outcomes: exercise id -> the child's report, or ``{"died": reason}``.
    """

    submission: Submission
    exercises: list[Exercise]
    tasks: list[Task]
    static: dict[str, list[str]] = field(default_factory=dict)
    skip: set[int] = field(default_factory=set)
    cell_errors: dict[int, str] = field(default_factory=dict)
    cell_patches: dict[int, list[str]] = field(default_factory=dict)
    outcomes: dict[str, dict] = field(default_factory=dict)
    stray_failures: int = 0

    def pending(self) -> list[Task]:
        """Exercises without an outcome yet."""
        return [t for t in self.tasks if t.exercise_id not in self.outcomes]

    def next_spec(self, memory_mb: int, workdir: str) -> ChildSpec | None:
        """What the next child should run, or None when the job is finished."""
        tasks = self.pending()
        if not tasks:
            return None
        forbidden: set[str] = set()
        for ex in self.exercises:
            forbidden.update(ex.forbidden)
        cells = [c for c in self.submission.program if c.index not in self.skip]
        return ChildSpec(cells, tasks, forbidden, memory_mb, workdir)

    def charge(self, stage: tuple[str, object] | None, reason: str) -> None:
        """A child died (or timed out) during ``stage``: record it so the next child moves on.

        Args:
            stage: ``("cell", index)``, ``("ex", exercise id)`` or None (between steps).
            reason: one line saying how it died.
        """
        if stage is not None and stage[0] == "cell":
            index = int(stage[1])  # type: ignore[arg-type]
            self.skip.add(index)
            self.cell_errors[index] = reason
        elif stage is not None and stage[0] == "ex":
            self.outcomes[str(stage[1])] = {"died": reason}
        else:
            # Died outside any learner step (should not happen); give up after a few tries
            # rather than loop, charging what is left.
            self.stray_failures += 1
            if self.stray_failures >= 3:
                for t in self.pending():
                    self.outcomes[t.exercise_id] = {"died": f"the grader's worker failed: {reason}"}
