"""Restore a fresh copy of one lesson, keeping the learner's current file as a backup.

    python -m course_utils.reset 03                       # lesson 03 in the folder you are in
    python -m course_utils.reset 03 --folder ~/lessons    # ... in another folder
    python -m course_utils.reset ~/lessons/03_batch_norm.ipynb

The folder is the one you are in when it holds course lessons, else its ``lessons/``
subfolder (see :mod:`course_utils.lesson_files`); never the course's own copy unless that is
where you are. Your current file is first moved to ``NN_name.backup-YYYYmmdd-HHMMSS.ipynb``
next to it (a rename: its bytes are never rewritten), then the lesson is written afresh from
the course's solutions (exercises blank, no outputs). A file that is already a fresh copy, or
that you never changed, is replaced without a backup. Nothing is touched in a folder you
cannot write to, and nothing but the course's lesson files is ever touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

from .build import ROOT, backup_path, build_notebook, learner_edited, notebook_text
from .lesson_files import LessonFolderError, course_lessons, learners_folder

__all__ = ["ResetError", "Reset", "find_lesson", "reset_lesson"]


class ResetError(Exception):
    """The lesson cannot be reset (a bad name, a read-only folder); the message says why."""


@dataclasses.dataclass
class Reset:
    """What a reset did: ``path`` is the lesson; ``backup`` where the old file went (or None);
    ``written`` False when the file already was a fresh copy."""

    path: Path
    backup: Path | None
    written: bool


def _known(solutions: Path) -> str:
    return ", ".join(n[: -len(".ipynb")] for n in course_lessons(solutions))


def find_lesson(
    which: str, solutions: Path = ROOT / "solutions", lessons: Path | None = None
) -> tuple[Path, Path]:
    """The (solution, learner's lesson) paths for ``which``.

    Args:
        which: a lesson number ("3", "03") or the path of a lesson notebook
            (``NN_name.ipynb``, in any folder but the course's solutions).
        lessons: the learner's folder for a lesson number (default: see
            :func:`course_utils.lesson_files.learners_folder`).
    Raises:
        ResetError: ``which`` is not one of the course's lessons, or no folder was found.
    """
    names = course_lessons(solutions)
    which = which.strip()
    if re.fullmatch(r"\d+", which):
        if len(which) > 2:
            raise ResetError(
                f"{which!r} is not a lesson number: give the lesson's two digits, for example "
                f"03 (lessons: {_known(solutions)})"
            )
        matches = [n for n in names if n.startswith(f"{int(which):02d}_")]
        if not matches:
            raise ResetError(f"there is no lesson {which} (lessons: {_known(solutions)})")
        try:
            folder = learners_folder(lessons, solutions=solutions)
        except LessonFolderError as e:
            raise ResetError(str(e)) from None
        return solutions / matches[0], folder / matches[0]
    path = Path(which).expanduser()
    if path.name not in names:
        raise ResetError(
            f"{which!r} is not one of the course's lessons: give a lesson number (for example "
            f"03) or a lesson notebook's path (lessons: {_known(solutions)})"
        )
    path = path if path.is_absolute() else Path.cwd() / path
    if path.parent.resolve() == solutions.resolve():
        raise ResetError(f"refusing to reset {which}: that is the course's solution notebook")
    if not path.parent.is_dir():
        raise ResetError(f"{path.parent} is not a folder")
    return solutions / path.name, path


def _unchanged(path: Path, fresh: str) -> bool:
    """True when ``path`` holds nothing of the learner's: the fresh text, or a lesson as the
    build wrote it (an earlier version of the course, never edited or run)."""
    try:
        return path.read_text(encoding="utf-8") == fresh or not learner_edited(path)
    except (OSError, UnicodeDecodeError):
        return False


def reset_lesson(
    which: str, solutions: Path = ROOT / "solutions", lessons: Path | None = None
) -> Reset:
    """Back up the learner's copy of a lesson (if it holds their work) and write a fresh one.

    Raises:
        ResetError: a bad lesson name, no lessons folder, or a folder or file that cannot be
            written (then nothing has changed).
    """
    src, dst = find_lesson(which, solutions, lessons)
    fresh = notebook_text(build_notebook(json.loads(src.read_text(encoding="utf-8"))))
    exists = dst.exists()
    if exists and dst.read_bytes() == fresh.encode("utf-8"):
        return Reset(dst, None, False)
    if not os.access(dst.parent, os.W_OK | os.X_OK):
        raise ResetError(
            f"cannot write in {dst.parent} (read-only): nothing was changed. Copy the lessons to "
            f"a folder of your own (for example: cp -r {dst.parent} ~/lessons) and reset there"
        )
    backup = None
    if exists and not _unchanged(dst, fresh):
        backup = backup_path(dst)
        try:
            dst.rename(backup)  # a rename, never a copy-and-delete: the bytes are never rewritten
        except OSError as e:
            raise ResetError(
                f"could not move {dst} aside ({e.strerror}): nothing was changed"
            ) from None
    try:
        tmp = dst.with_name(f".{dst.name}.reset-tmp")
        tmp.write_text(fresh, encoding="utf-8")
        tmp.replace(dst)  # the old file (if no backup was needed) is replaced in one step
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if backup is not None and not dst.exists():
            backup.rename(dst)  # put the learner's file back where it was
        raise ResetError(f"could not write {dst} ({e.strerror}): your file is unchanged") from None
    return Reset(dst, backup, True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Restore a fresh copy of one lesson.")
    parser.add_argument("lesson", help="lesson number (e.g. 03) or a lesson's path NN_name.ipynb")
    parser.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="the folder of your lessons (default: this folder, or its lessons/ subfolder)",
    )
    args = parser.parse_args(argv)
    try:
        done = reset_lesson(args.lesson, lessons=args.folder)
    except ResetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not done.written:
        print(f"{done.path} is already a fresh copy: nothing to do")
        return 0
    if done.backup:
        print(f"your previous copy is kept as {done.backup}")
    print(f"wrote a fresh {done.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
