"""Exercises: the registry, the in-notebook checks and hints.

Each lesson's exercises are declared in ``lessonNN.py`` with :class:`Exercise` and
:func:`register`; the notebooks call :func:`check` and :func:`hint`, the grader
(:mod:`course_utils.grade`) runs the same exercises' hidden cases.
"""

from .core import Case, Exercise, compare, numerical_gradient, rel_error
from .notebook import Verdict, check, hint, verify
from .registry import all_exercises, get_exercise, lesson_exercises, register

__all__ = ["Case", "Exercise", "compare", "numerical_gradient", "rel_error", "Verdict", "check",
           "hint", "verify", "all_exercises", "get_exercise", "lesson_exercises", "register"]
