"""Restore a fresh copy of one lesson, keeping the learner's current file as a backup.

    python -m course_utils.reset 03            # by lesson number
    python -m course_utils.reset lessons/03_batch_norm.ipynb

The current file is first moved to ``NN_name.backup-YYYYmmdd-HHMMSS.ipynb`` next to it, then the
lesson is written afresh from solutions/ (exercises blank, no outputs). The command refuses to
touch anything that is not one of the course's lessons.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .build import ROOT, backup_path, build_notebook, notebook_text

__all__ = ["find_lesson", "reset_lesson"]


def find_lesson(
    which: str, solutions: Path = ROOT / "solutions", lessons: Path = ROOT / "lessons"
) -> tuple[Path, Path]:
    """The (solution, lesson) paths for ``which``: a lesson number ("3", "03") or a lesson path.

    Raises ValueError for anything that is not one of the course's lessons.
    """
    known = {p.name: p for p in sorted(solutions.glob("*.ipynb"))}
    if re.fullmatch(r"\d{1,2}", which.strip()):
        prefix = f"{int(which):02d}_"
        names = [n for n in known if n.startswith(prefix)]
        if len(names) != 1:
            raise ValueError(f"no lesson numbered {which}; lessons: {', '.join(known)}")
        name = names[0]
    else:
        path = Path(which)
        resolved = (Path.cwd() / path).resolve() if not path.is_absolute() else path.resolve()
        if resolved.parent != lessons.resolve() or resolved.name not in known:
            raise ValueError(
                f"refusing to reset {which}: only the course's lessons in "
                f"{lessons} can be reset ({', '.join(known)})"
            )
        name = resolved.name
    return known[name], lessons / name


def reset_lesson(
    which: str, solutions: Path = ROOT / "solutions", lessons: Path = ROOT / "lessons"
) -> Path | None:
    """Back up the learner's copy of a lesson (if any) and write a fresh one.

    Returns:
        The backup's path, or None when there was no file to back up.
    """
    src, dst = find_lesson(which, solutions, lessons)
    fresh = notebook_text(build_notebook(json.loads(src.read_text(encoding="utf-8"))))
    backup = None
    if dst.exists():
        backup = backup_path(dst)
        dst.rename(backup)  # a rename, never a copy-and-delete: the bytes are never rewritten
    lessons.mkdir(exist_ok=True)
    dst.write_text(fresh, encoding="utf-8")
    return backup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Restore a fresh copy of one lesson.")
    parser.add_argument("lesson", help="lesson number (e.g. 03) or path lessons/NN_name.ipynb")
    args = parser.parse_args(argv)
    try:
        backup = reset_lesson(args.lesson)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _, dst = find_lesson(args.lesson)
    if backup:
        print(f"your previous copy is kept as {backup}")
    print(f"wrote a fresh {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
