"""Where exercises live: one module per lesson (``lessonNN.py``) registers its exercises."""

from __future__ import annotations

import importlib
import pkgutil

from .core import Exercise

__all__ = ["register", "get_exercise", "all_exercises", "lesson_exercises"]

_EXERCISES: dict[str, Exercise] = {}
_loaded = False


def register(*exercises: Exercise) -> None:
    """Add exercises to the registry (ids must be unique)."""
    for ex in exercises:
        if ex.id in _EXERCISES and _EXERCISES[ex.id] is not ex:
            raise ValueError(f"exercise id {ex.id!r} is registered twice")
        _EXERCISES[ex.id] = ex


def _load() -> None:
    global _loaded
    if _loaded:
        return
    from . import __path__ as pkg_path

    for info in sorted(pkgutil.iter_modules(pkg_path), key=lambda m: m.name):
        if info.name.startswith("lesson"):
            importlib.import_module(f"{__package__}.{info.name}")
    _loaded = True


def get_exercise(exercise_id: str) -> Exercise:
    """The :class:`Exercise` with this id; KeyError naming the known ids otherwise."""
    _load()
    try:
        return _EXERCISES[exercise_id]
    except KeyError:
        known = ", ".join(sorted(_EXERCISES)) or "none"
        raise KeyError(f"no exercise {exercise_id!r}; known exercises: {known}") from None


def all_exercises() -> dict[str, Exercise]:
    """Every registered exercise by id, in id order."""
    _load()
    return dict(sorted(_EXERCISES.items()))


def lesson_exercises(lesson: str) -> list[Exercise]:
    """The exercises of one lesson (``"03"``), in id order of registration."""
    _load()
    return [ex for ex in _EXERCISES.values() if ex.lesson == lesson]
