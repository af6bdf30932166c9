"""Where a learner stands: every lesson's exercises passed / failed / not started.

    python -m course_utils.progress            # the lessons in this folder (or in ./lessons)
    python -m course_utils.progress ~/lessons  # the lessons in another folder
    python -m course_utils.progress --json     # the same, machine-readable

In a notebook, ``course_utils.progress.show("03")`` prints that lesson's line, and says when
the notebook holds changes that are not saved yet.

The learner's saved notebooks are run with the *visible* tests only (the same tests as the
``check`` cells), each notebook's code in its own time-limited process (the grader's), so a
broken or endless notebook cannot hang the report.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from .exercises.core import Exercise
from .exercises.registry import all_exercises, lesson_exercises
from .exercises.running import Status
from .lesson_files import LessonFolderError, is_lesson_file, learners_folder

__all__ = [
    "ExerciseProgress",
    "LessonProgress",
    "lesson_progress",
    "show",
    "format_progress",
    "unsaved_exercises",
    "main",
]

STATUS_MARK = {"passed": "[x]", "failed": "[!]", "not started": "[ ]"}


class ExerciseProgress(NamedTuple):
    """Where one exercise stands (the grader's status and one line of feedback)."""

    status: Status  # "passed", "failed" or "not started"
    feedback: str


@dataclasses.dataclass
class LessonProgress:
    """One lesson's line: ``exercises`` maps exercise id -> its :class:`ExerciseProgress`."""

    lesson: str
    path: str
    exercises: dict[str, ExerciseProgress]
    note: str = ""

    @property
    def passed(self) -> int:
        return sum(e.status == "passed" for e in self.exercises.values())


def _visible_only(ex: Exercise) -> Exercise:
    def cases(rng, hidden):
        return [] if hidden else ex.cases(rng, False)

    return dataclasses.replace(ex, cases=cases)


def _run_visible_checks(paths: Sequence[Path], timeout: float) -> list:
    """The grader's results for ``paths`` with the visible tests only (the one call into the
    grader: it runs each notebook's setup and exercise cells in a time-limited process)."""
    from .grading.grader import grade

    catalog: dict[str, list[Exercise]] = {}
    for ex in all_exercises().values():
        catalog.setdefault(ex.lesson, []).append(_visible_only(ex))
    # the learner's own notebooks on their own machine: the sandbox where bubblewrap runs
    return grade(list(paths), timeout=timeout, catalog=catalog, seed=0, isolation="auto")


def lesson_progress(paths: Sequence[Path], timeout: float = 30.0) -> list[LessonProgress]:
    """Run the visible checks of each saved notebook in ``paths``; one line per notebook."""
    return [
        LessonProgress(
            res.lesson,
            res.path,
            {e.id: ExerciseProgress(e.status, e.feedback) for e in res.exercises},
            res.note,
        )
        for res in _run_visible_checks(paths, timeout)
    ]


def format_progress(rows: list[LessonProgress], verbose: bool = False) -> str:
    """The report as text: one line per lesson, then (verbose) one line per failed exercise."""
    lines = []
    for row in rows:
        name = Path(row.path).name
        total = len(row.exercises)
        marks = " ".join(
            f"{STATUS_MARK[e.status]} {i.split('.', 1)[1]}" for i, e in row.exercises.items()
        )
        lines.append(f"{name:<44} {row.passed}/{total} passed   {marks}".rstrip())
        if row.note:
            lines.append(f"    note: {row.note}")
        if verbose:
            for ex_id, (status, feedback) in row.exercises.items():
                if status == "failed":
                    lines.append(f"    {ex_id}: {status}: {feedback}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# unsaved changes: what the kernel ran against what the saved file holds
# ------------------------------------------------------------------------------------------


def _defines(source: str, name: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def _same(a: str, b: str) -> bool:
    def norm(s: str) -> list[str]:
        return [line.rstrip() for line in s.strip().splitlines()]

    return norm(a) == norm(b)


def unsaved_exercises(saved: dict, lesson: str, ran: Sequence[str]) -> list[str]:
    """The exercises whose code the kernel ran is not the code in the saved notebook.

    Args:
        saved: the saved notebook (its JSON).
        lesson: its lesson number, e.g. "03".
        ran: the code cells the kernel ran, oldest first (IPython's input history).
    Returns:
        The names (``batch_norm_forward``, ...) whose last definition the kernel ran differs
        from the saved notebook's exercise cell; exercises the kernel never defined are left
        out (nothing unsaved to report).
    """
    cells = [
        (c.get("metadata", {}).get("course", {}).get("exercise"), "".join(c["source"]))
        for c in saved.get("cells", [])
        if c.get("cell_type") == "code" and isinstance(c.get("source"), (str, list))
    ]
    ids_by_name: dict[str, set[str]] = {}
    for ex in lesson_exercises(lesson):  # several ids may grade one function (the capstone)
        ids_by_name.setdefault(ex.name, set()).add(ex.id)
    names: dict[str, str | None] = {}
    for name, ids in ids_by_name.items():
        tagged = [src for ex_id, src in cells if ex_id in ids]
        defining = [src for _, src in cells if _defines(src, name)]
        names[name] = (tagged or defining or [None])[-1]
    unsaved = []
    for name, saved_source in names.items():
        last = next((src for src in reversed(ran) if _defines(src, name)), None)
        if last is not None and (saved_source is None or not _same(last, saved_source)):
            unsaved.append(name)
    return unsaved


def _kernel_history() -> list[str] | None:
    """The cells this IPython kernel ran (raw, oldest first), or None outside a kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    return list(shell.history_manager.input_hist_raw[1:])


def _this_notebook(lesson: str, folder: Path) -> Path | None:
    """The saved notebook of ``lesson``: the notebook this kernel belongs to when Jupyter says
    which (``__session__``), else the lesson's notebook in ``folder``."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        session = shell.user_ns.get("__session__") if shell is not None else None
    except ImportError:
        session = None
    if session:
        path = Path(session)
        path = path if path.is_absolute() else folder / path.name
        if path.is_file() and path.name.startswith(f"{lesson}_"):
            return path
    paths = sorted(p for p in folder.glob(f"{lesson}_*.ipynb") if is_lesson_file(p))
    return paths[0] if paths else None


def show(lesson: str, lessons: Path | None = None, timeout: float = 30.0) -> None:
    """Print one lesson's progress line from its *saved* notebook.

    Looks for ``NN_*.ipynb`` in ``lessons`` (default: the current folder, which is the
    notebook's own folder in Jupyter). In a notebook, also says when the code the kernel ran
    differs from the saved file (unsaved changes), since the report reads the saved file.
    Use :func:`lesson_progress` for the data itself.
    """
    lesson = f"{int(lesson):02d}"
    folder = lessons or Path.cwd()
    path = _this_notebook(lesson, folder)
    if path is None:
        print(f"no saved notebook for lesson {lesson} in {folder}")
        return
    rows = lesson_progress([path], timeout)
    print(format_progress(rows, verbose=True))
    ran = _kernel_history()
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    unsaved = unsaved_exercises(saved, lesson, ran) if ran is not None and saved else []
    if unsaved:
        which = ", ".join(unsaved)
        print(
            f"\nUnsaved changes: the {which} your kernel ran is not the one in the saved "
            f"notebook, and this report reads the saved file. Save (Ctrl+S), then run this "
            f"cell again."
        )
    else:
        print("(from the saved notebook: save first to include recent work)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Show which exercises you have passed.")
    parser.add_argument(
        "folder",
        nargs="?",
        type=Path,
        default=None,
        help="the folder of your lessons (default: this folder, or its lessons/ subfolder)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per exercise")
    args = parser.parse_args(argv)
    try:
        folder = learners_folder(args.folder)
    except LessonFolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = sorted(p for p in folder.glob("*.ipynb") if is_lesson_file(p))
    if not paths:
        print(f"error: no lessons (NN_name.ipynb) in {folder}", file=sys.stderr)
        return 2
    rows = lesson_progress(paths, args.timeout)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
    else:
        print(f"lessons in {folder}\n")
        print(format_progress(rows, verbose=True))
        done = sum(r.passed for r in rows)
        total = sum(len(r.exercises) for r in rows)
        print(f"\n{done} of {total} exercises passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
