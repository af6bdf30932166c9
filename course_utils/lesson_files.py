"""Where a learner's lessons are: the folder they work in, and which of its files are lessons.

A learner's lessons are wherever the learner copied them (a home directory on JupyterHub, a
folder on a laptop), not only the course's own ``lessons/``. The commands that act on them
(``reset``, ``progress``) use, in this order: a folder given on the command line; the current
folder, if it holds course lessons; its ``lessons/`` subfolder, if that does.
"""

from __future__ import annotations

import re
from pathlib import Path

from .build import ROOT

__all__ = ["LessonFolderError", "course_lessons", "is_lesson_file", "learners_folder"]

_BACKUP = re.compile(r"\.backup-\d")


class LessonFolderError(Exception):
    """No folder of lessons could be found where the learner pointed (message says why)."""


def course_lessons(solutions: Path = ROOT / "solutions") -> list[str]:
    """The course's lesson file names, in order (``["00_start_here.ipynb", ...]``)."""
    return sorted(p.name for p in solutions.glob("*.ipynb"))


def is_lesson_file(path: Path) -> bool:
    """A notebook named like a lesson (``NN_name.ipynb``), not a backup or a checkpoint."""
    return (
        re.fullmatch(r"\d\d_.+\.ipynb", path.name) is not None
        and not _BACKUP.search(path.name)
        and "-checkpoint" not in path.name
    )


def _holds_lessons(folder: Path, names: list[str]) -> bool:
    return folder.is_dir() and any((folder / n).exists() for n in names)


def learners_folder(
    given: Path | None = None, cwd: Path | None = None, solutions: Path = ROOT / "solutions"
) -> Path:
    """The folder of lessons to act on.

    Args:
        given: a folder the learner named (used as it is, if it exists).
        cwd: where the learner is (default: the current folder).
    Raises:
        LessonFolderError: ``given`` is not a folder, or neither ``cwd`` nor ``cwd/lessons``
            holds any of the course's lessons.
    """
    if given is not None:
        if not given.is_dir():
            raise LessonFolderError(f"{given} is not a folder")
        return given
    cwd = cwd or Path.cwd()
    names = course_lessons(solutions)
    for folder in (cwd, cwd / "lessons"):
        if _holds_lessons(folder, names):
            return folder
    raise LessonFolderError(
        f"no course lessons in {cwd} or {cwd / 'lessons'}: go to the folder that holds your "
        "lessons (cd), or give its path"
    )
