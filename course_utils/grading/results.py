"""What grading produces: one :class:`SubmissionResult` per notebook."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..exercises.running import Status

__all__ = ["ExerciseResult", "SubmissionResult"]


@dataclass
class ExerciseResult:
    """The points one exercise earned and why (``feedback`` is one line); ``status`` is
    "passed" (full points), "not started" (the placeholder is still there) or "failed"."""

    id: str
    score: float
    max_score: float
    feedback: str
    status: Status

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "score": self.score,
            "max_score": self.max_score,
            "feedback": self.feedback,
        }


@dataclass
class SubmissionResult:
    """One notebook's grade.

    Attributes:
        path: the notebook as given on the command line.
        lesson: ``"03"``, or ``"?"`` when it could not be recognised.
        exercises: one result per exercise of the lesson, in lesson order.
        note: a submission-level remark ("not valid JSON", "lesson recognised from ...").
        grader_error: the grader itself failed on this submission (its scores are 0 and the
            command exits non-zero); never set by anything a submission does.
    """

    path: str
    lesson: str
    exercises: list[ExerciseResult] = field(default_factory=list)
    note: str = ""
    grader_error: bool = False

    @property
    def score(self) -> float:
        return sum(e.score for e in self.exercises)

    @property
    def max_score(self) -> float:
        return sum(e.max_score for e in self.exercises)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "lesson": self.lesson,
            "score": self.score,
            "max_score": self.max_score,
            "note": self.note,
            "exercises": [e.to_dict() for e in self.exercises],
        }
