"""Build lessons/ from solutions/: blank the solutions, strip the outputs.

    python -m course_utils.build            # write lessons/
    python -m course_utils.build --check    # exit 1 if lessons/ is out of date

Every region between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's markers)
becomes ``raise NotImplementedError(...)`` naming the exercise (from the cell's
``metadata.course.exercise``). Outputs and execution counts are removed.

A lesson the learner has changed since the build wrote it (detected by the content hash the
build stores in the notebook's metadata) is first moved to a timestamped backup next to it,
so updating the course never loses a learner's work.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import json
import re
import sys
from pathlib import Path

__all__ = [
    "blank_source",
    "build_notebook",
    "build",
    "notebook_text",
    "content_hash",
    "backup_path",
    "learner_edited",
    "ROOT",
]

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
_CELL_KEYS_DROPPED = ("execution", "collapsed", "scrolled", "ExecuteTime")


def blank_source(source: str, exercise_id: str) -> str:
    """Replace each BEGIN/END SOLUTION region of a cell's source with a placeholder.

    The placeholder keeps the indentation of the BEGIN marker, so a function body stays a
    valid function body. Raises ValueError on unbalanced markers.
    """
    out, inside = [], False
    for line in source.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            if inside:
                raise ValueError(f"{exercise_id}: nested {BEGIN}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(
                f"{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError("
                f'"Exercise {exercise_id}: replace this line with your code")\n'
            )
        elif stripped.startswith(END):
            if not inside:
                raise ValueError(f"{exercise_id}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{exercise_id}: {BEGIN} without {END}")
    return "".join(out).rstrip("\n")


def content_hash(nb: dict) -> str:
    """SHA-256 of a notebook's cells and metadata, ignoring the stored hash itself."""
    nb = copy.deepcopy(nb)
    nb.get("metadata", {}).get("course", {}).pop("build_hash", None)
    blob = json.dumps({"cells": nb.get("cells"), "metadata": nb.get("metadata")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def build_notebook(solution: dict) -> dict:
    """The lesson notebook (a JSON dict) for one solution notebook."""
    nb = copy.deepcopy(solution)
    lesson_id = nb.get("metadata", {}).get("course", {}).get("lesson", "?")
    for i, cell in enumerate(nb["cells"]):
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        meta = cell.setdefault("metadata", {})
        for key in _CELL_KEYS_DROPPED:
            meta.pop(key, None)
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
            if BEGIN in src:
                ex_id = meta.get("course", {}).get("exercise")
                if not ex_id:
                    raise ValueError(
                        f"lesson {lesson_id}, cell {i}: solution markers but no "
                        "metadata.course.exercise id"
                    )
                src = blank_source(src, ex_id)
        elif BEGIN in src:
            raise ValueError(f"lesson {lesson_id}, cell {i}: solution markers in a markdown cell")
        cell["source"] = src
    nb.setdefault("metadata", {}).setdefault("course", {})["build_hash"] = ""
    nb["metadata"]["course"]["build_hash"] = content_hash(nb)
    return nb


def notebook_text(nb: dict) -> str:
    """Canonical JSON text of a notebook (stable key order, one-space indent, final newline)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def backup_path(path: Path, now: _dt.datetime | None = None) -> Path:
    """``NAME.backup-YYYYmmdd-HHMMSS.ipynb`` next to ``path``, never an existing file."""
    now = now or _dt.datetime.now()
    stamp = now.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.stem}.backup-{stamp}{path.suffix}")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.backup-{stamp}-{n}{path.suffix}")
        n += 1
    return candidate


def learner_edited(path: Path) -> bool:
    """True unless ``path`` is a lesson exactly as the build wrote it (its stored content hash
    matches): any edit, run or save by the learner, or an unreadable file, counts as edited."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # unreadable: keep it, the learner may want to rescue it
    stored = nb.get("metadata", {}).get("course", {}).get("build_hash")
    return stored != content_hash(nb)


def build(
    solutions: Path = ROOT / "solutions",
    lessons: Path = ROOT / "lessons",
    check: bool = False,
    quiet: bool = False,
) -> list[str]:
    """Write (or with ``check=True`` only compare) lessons/ from solutions/.

    Returns the list of lesson files that were out of date (check) or written (build).
    Edited lessons are backed up before being replaced; their backups are reported.
    """
    lessons.mkdir(exist_ok=True)
    changed = []
    for src in sorted(solutions.glob("*.ipynb")):
        text = notebook_text(build_notebook(json.loads(src.read_text(encoding="utf-8"))))
        dst = lessons / src.name
        old = dst.read_text(encoding="utf-8") if dst.exists() else None
        if old == text:
            continue
        changed.append(str(dst))
        if check:
            continue
        if old is not None and learner_edited(dst):
            bak = backup_path(dst)
            dst.rename(bak)
            if not quiet:
                print(f"kept your edited copy as {bak.name}")
        dst.write_text(text, encoding="utf-8")
        if not quiet:
            print(
                f"wrote {dst.relative_to(lessons.parent) if lessons.parent in dst.parents else dst}"
            )
    if not check:
        names = {p.name for p in solutions.glob("*.ipynb")}
        for stale in sorted(lessons.glob("*.ipynb")):
            if stale.name not in names and not re.search(r"\.backup-\d", stale.name) and not quiet:
                print(f"note: {stale} has no source in {solutions} (left untouched)")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report out-of-date lessons")
    parser.add_argument("--solutions", type=Path, default=ROOT / "solutions")
    parser.add_argument("--lessons", type=Path, default=ROOT / "lessons")
    args = parser.parse_args(argv)
    changed = build(args.solutions, args.lessons, check=args.check)
    if args.check:
        if changed:
            print("lessons/ is out of date with solutions/; run: python -m course_utils.build")
            for c in changed:
                print(f"  {c}")
            return 1
        print("lessons/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
