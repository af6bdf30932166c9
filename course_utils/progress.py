"""Where a learner stands: every lesson's exercises passed / failed / not started.

    python -m course_utils.progress            # every lesson in lessons/
    python -m course_utils.progress --json     # the same, machine-readable

In a notebook, ``course_utils.progress.show("03")`` prints that lesson's line.

The learner's saved notebooks are run with the *visible* tests only (the same tests as the
``check`` cells), through the grader's sandbox: each notebook's code runs in its own process
with a time limit, so a broken or endless notebook cannot hang the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .build import ROOT
from .exercises.core import Exercise
from .exercises.registry import all_exercises

__all__ = ["LessonProgress", "lesson_progress", "show", "format_progress", "main"]

STATUS_MARK = {"passed": "[x]", "failed": "[!]", "not started": "[ ]"}


@dataclasses.dataclass
class LessonProgress:
    """One lesson's line: ``exercises`` maps exercise id -> (status, feedback)."""

    lesson: str
    path: str
    exercises: dict[str, tuple[str, str]]
    note: str = ""

    @property
    def passed(self) -> int:
        return sum(s == "passed" for s, _ in self.exercises.values())


def _visible_only(ex: Exercise) -> Exercise:
    def cases(rng, hidden):
        return [] if hidden else ex.cases(rng, False)

    return dataclasses.replace(ex, cases=cases)


def _status(score: float, max_score: float, feedback: str) -> str:
    if max_score and score >= max_score:
        return "passed"
    if "placeholder" in feedback or feedback.startswith("not attempted"):
        return "not started"
    return "failed"


def lesson_progress(paths: list[Path], timeout: float = 30.0) -> list[LessonProgress]:
    """Run the visible checks of each notebook in ``paths`` in sandboxed processes."""
    from .grading.grader import grade

    catalog: dict[str, list[Exercise]] = {}
    for ex in all_exercises().values():
        catalog.setdefault(ex.lesson, []).append(_visible_only(ex))
    out = []
    # the learner's own notebooks on their own machine: the sandbox where bubblewrap runs
    for res in grade(paths, timeout=timeout, catalog=catalog, seed=0, isolation="auto"):
        out.append(
            LessonProgress(
                res.lesson,
                res.path,
                {
                    e.id: (_status(e.score, e.max_score, e.feedback), e.feedback)
                    for e in res.exercises
                },
                res.note,
            )
        )
    return out


def format_progress(rows: list[LessonProgress], verbose: bool = False) -> str:
    """The report as text: one line per lesson, then (verbose) one line per exercise."""
    lines = []
    for row in rows:
        name = Path(row.path).name
        total = len(row.exercises)
        marks = " ".join(
            f"{STATUS_MARK[s]} {i.split('.', 1)[1]}" for i, (s, _) in row.exercises.items()
        )
        lines.append(f"{name:<44} {row.passed}/{total} passed   {marks}".rstrip())
        if row.note:
            lines.append(f"    note: {row.note}")
        if verbose:
            for ex_id, (status, feedback) in row.exercises.items():
                if status == "failed":
                    lines.append(f"    {ex_id}: {status}: {feedback}")
    return "\n".join(lines)


def show(lesson: str, lessons: Path | None = None) -> None:
    """Print one lesson's progress line from its *saved* notebook (save first: Ctrl+S).

    Looks for ``NN_*.ipynb`` in ``lessons`` (default: the current folder, which is the
    notebook's own folder in Jupyter). Use :func:`lesson_progress` for the data itself.
    """
    lessons = lessons or Path.cwd()
    wanted = f"{int(lesson):02d}_"
    paths = sorted(p for p in lessons.glob(f"{wanted}*.ipynb") if ".backup-" not in p.name)
    if not paths:
        print(f"no saved notebook for lesson {lesson} in {lessons}")
        return
    rows = lesson_progress(paths[:1])
    print(format_progress(rows, verbose=True))
    print("(from the last saved version of the notebook: save it first to include recent work)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Show which exercises you have passed.")
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT / "lessons")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per exercise")
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.folder.glob("*.ipynb") if ".backup-" not in p.name)
    if not paths:
        print(f"no lessons found in {args.folder}", file=sys.stderr)
        return 2
    rows = lesson_progress(paths, args.timeout)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
    else:
        print(format_progress(rows, verbose=True))
        done = sum(r.passed for r in rows)
        total = sum(len(r.exercises) for r in rows)
        print(f"\n{done} of {total} exercises passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
