"""Exercises: the registry, the in-notebook checks and hints.

Each lesson's exercises are declared in ``lessonNN.py`` with :class:`Exercise` and
:func:`register`; the notebooks call :func:`check` and :func:`hint`, the grader
(:mod:`course_utils.grade`) runs the same exercises' hidden cases.
"""

from .core import (
    Case,
    Exercise,
    autograd_gradients,
    compare,
    gradient_diagnosis,
    numerical_gradient,
    rel_error,
    running_stats_diagnosis,
    train_eval_diagnosis,
)
from .notebook import Verdict, check, hint, reset_hints, verify
from .registry import all_exercises, get_exercise, lesson_exercises, register

__all__ = [
    "Case",
    "Exercise",
    "compare",
    "numerical_gradient",
    "rel_error",
    "autograd_gradients",
    "gradient_diagnosis",
    "running_stats_diagnosis",
    "train_eval_diagnosis",
    "Verdict",
    "check",
    "hint",
    "reset_hints",
    "verify",
    "all_exercises",
    "get_exercise",
    "lesson_exercises",
    "register",
]
