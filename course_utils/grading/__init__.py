"""The grader: scores students' notebooks with hidden tests, each in its own sandbox.

Modules, one job each: :mod:`.notebooks` (reading a submission), :mod:`.scan` (static
checks), :mod:`.sandbox` and :mod:`.traps` (the child process), :mod:`.wire` (what comes
back), :mod:`.runner` (forking and time limits), :mod:`.jobs` (restarting after a crash),
:mod:`.scoring` (points and feedback), :mod:`.report` (table, JSON, CSV), :mod:`.grader`
(all of it together). The command line is :mod:`course_utils.grade`.
"""

from .grader import DEFAULT_SEED, GradeError, default_catalog, grade
from .results import ExerciseResult, SubmissionResult

__all__ = [
    "grade",
    "default_catalog",
    "GradeError",
    "DEFAULT_SEED",
    "ExerciseResult",
    "SubmissionResult",
]
