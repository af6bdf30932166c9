"""The grader: scores students' notebooks with hidden tests; their code runs in a sandbox.

Modules, one job each: :mod:`.notebooks` (reading a submission), :mod:`.scan` (static
checks), :mod:`.isolation` (the bubblewrap sandbox), :mod:`.runner` (the event loop and every
time limit), :mod:`.protocol` (what a child may send back), :mod:`.jobs` (a submission's
state across children), :mod:`.scoring` (verdicts, points and feedback), :mod:`.expected`
(the answers' outputs), :mod:`.secret` (the instructor's seed), :mod:`.report` (table, JSON,
CSV), :mod:`.grader` (all of it together). What runs inside the sandbox is
:mod:`course_utils.sandbox`; the command line is :mod:`course_utils.grade`.
"""

from .grader import DEFAULT_TIMEOUT, GradeError, default_catalog, grade
from .results import ExerciseResult, SubmissionResult

__all__ = [
    "grade",
    "default_catalog",
    "GradeError",
    "DEFAULT_TIMEOUT",
    "ExerciseResult",
    "SubmissionResult",
]
