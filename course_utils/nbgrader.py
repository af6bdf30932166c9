"""The course as nbgrader source assignments, one per lesson.

    python -m course_utils.nbgrader export COURSE_DIR [--seed N] [--lessons 03 06]

writes ``COURSE_DIR/source/NN_name/NN_name.ipynb`` for each solution notebook, and
``COURSE_DIR/nbgrader_config.py`` unless one exists. In each notebook:

- each exercise cell is an nbgrader solution cell ("Autograded answer"): nbgrader blanks the
  code between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` when it generates the
  student version;
- each ``check(...)`` cell becomes a locked test cell ("Autograder tests") worth the
  exercise's points, which *raises* unless the exercise passes its visible tests
  (:func:`course_utils.exercises.notebook.assert_passes`), followed, between nbgrader's
  ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` markers, by the hidden tests drawn
  from ``--seed`` (the same ones ``python -m course_utils.grade --seed N`` runs);
- the ``setup`` cells are read-only, so a learner cannot break the imports the tests need;
- the progress cell (the course's own progress tool) is left out.

nbgrader must run where ``course_utils`` is installed (``pip install -e .`` in the course, or
its wheel): the test cells import it, and without it every test fails with
``No module named 'course_utils'``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import secrets
import sys
from pathlib import Path

from .build import BEGIN, ROOT
from .exercises.core import Exercise
from .exercises.registry import lesson_exercises

__all__ = ["grade_id", "nbgrader_notebook", "export", "main"]

SCHEMA_VERSION = 3  # nbgrader's cell metadata schema (nbgrader 0.9)
HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"
HIDDEN_END = "### END HIDDEN TESTS"
# nbgrader's defaults run each cell for at most 30 s; the capstone's check trains twice
CONFIG = """\
# nbgrader settings for the normalization course (written by python -m course_utils.nbgrader)
c = get_config()  # noqa: F821
c.Execute.timeout = 300  # seconds per cell: some lessons' experiment cells train for ~10 s
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback"]
"""


def grade_id(exercise_id: str, suffix: str = "") -> str:
    """nbgrader's cell id for an exercise: "03.batch_norm_forward" -> "ex03_batch_norm_forward"."""
    return "ex" + re.sub(r"[^A-Za-z0-9_-]", "_", exercise_id) + suffix


def _meta(gid: str, *, grade: bool, solution: bool, locked: bool, points: int = 0) -> dict:
    meta = {
        "grade": grade,
        "grade_id": gid,
        "locked": locked,
        "schema_version": SCHEMA_VERSION,
        "solution": solution,
    }
    if grade:
        meta["points"] = points
    return meta


def _checked_names(source: str) -> set[str]:
    """The names passed as the object of ``check(...)`` calls in a cell (empty: no check)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "check"
            and len(node.args) == 2
            and isinstance(node.args[1], ast.Name)
        ):
            names.add(node.args[1].id)
    return names


def test_source(ex: Exercise, seed: int) -> str:
    """The source of an exercise's nbgrader test cell: visible tests, then hidden ones."""
    call = f'assert_passes("{ex.id}", {ex.name}'
    return (
        f"# Autograder tests for {ex.id} ({ex.points} point{'s' if ex.points != 1 else ''}): "
        f"this cell fails until your {ex.name} passes.\n"
        "from course_utils.exercises.notebook import assert_passes\n\n"
        f"{call})\n"
        f"{HIDDEN_BEGIN}\n"
        f"{call}, hidden_seed={seed})\n"
        f"{HIDDEN_END}"
    )


def nbgrader_notebook(solution: dict, seed: int) -> dict:
    """The nbgrader source notebook (a JSON dict) for one solution notebook.

    Raises:
        ValueError: the lesson's exercises and its check cells do not match one to one.
    """
    nb = copy.deepcopy(solution)
    lesson = nb.get("metadata", {}).get("course", {}).get("lesson")
    exercises = lesson_exercises(lesson) if lesson else []
    by_name: dict[str, list[Exercise]] = {}
    for ex in exercises:
        by_name.setdefault(ex.name, []).append(ex)
    tested: set[str] = set()
    cells, n_setup = [], 0
    for i, cell in enumerate(nb["cells"]):
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        meta = cell.setdefault("metadata", {})
        tags = meta.get("tags", [])
        if cell["cell_type"] != "code":
            cells.append(cell)
            continue
        cell["outputs"], cell["execution_count"] = [], None
        if "progress" in tags:
            continue  # the course's progress tool: nothing to do inside nbgrader
        ex_id = meta.get("course", {}).get("exercise")
        if ex_id:
            if BEGIN not in src:
                raise ValueError(f"lesson {lesson}, cell {i}: exercise {ex_id} has no {BEGIN}")
            meta["nbgrader"] = _meta(grade_id(ex_id), grade=False, solution=True, locked=False)
            cells.append(cell)
            continue
        if "setup" in tags:
            n_setup += 1
            meta["nbgrader"] = _meta(f"setup{n_setup}", grade=False, solution=False, locked=True)
            cells.append(cell)
            continue
        checked = [ex for name in _checked_names(src) for ex in by_name.get(name, [])]
        if not checked:
            cells.append(cell)
            continue
        for n, ex in enumerate(checked):
            if ex.id in tested:
                raise ValueError(f"lesson {lesson}: {ex.id} is checked in two cells")
            tested.add(ex.id)
            test = {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {
                    "nbgrader": _meta(
                        grade_id(ex.id, "_tests"),
                        grade=True,
                        solution=False,
                        locked=True,
                        points=ex.points,
                    )
                },
                "outputs": [],
                "source": test_source(ex, seed),
            }
            if "id" in cell:  # one check cell may become several test cells: keep ids unique
                test["id"] = cell["id"] if n == 0 else f"{cell['id'][:56]}-{n}"
            cells.append(test)
    missing = [ex.id for ex in exercises if ex.id not in tested]
    if missing:
        raise ValueError(f"lesson {lesson}: no check cell for {', '.join(missing)}")
    nb["cells"] = cells
    nb.get("metadata", {}).get("course", {}).pop("build_hash", None)
    return nb


def export(
    course_dir: Path,
    seed: int,
    solutions: Path = ROOT / "solutions",
    lessons: list[str] | None = None,
) -> list[Path]:
    """Write nbgrader source assignments (and a config, if none) into ``course_dir``.

    Args:
        course_dir: nbgrader's course directory (created if missing).
        seed: seeds the hidden tests written into the test cells.
        lessons: lesson numbers to export (default: every lesson with exercises).
    Returns:
        The source notebooks written, ``course_dir/source/NN_name/NN_name.ipynb``.
    """
    import nbformat

    wanted = {f"{int(n):02d}" for n in lessons} if lessons else None
    written = []
    for path in sorted(solutions.glob("*.ipynb")):
        solution = json.loads(path.read_text(encoding="utf-8"))
        lesson = solution.get("metadata", {}).get("course", {}).get("lesson")
        if (wanted is not None and lesson not in wanted) or not lesson_exercises(lesson or ""):
            continue
        nb = nbformat.from_dict(nbgrader_notebook(solution, seed))
        out = course_dir / "source" / path.stem / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(nbformat.writes(nb), encoding="utf-8")
        written.append(out)
    config = course_dir / "nbgrader_config.py"
    if not config.exists():
        config.write_text(CONFIG, encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the course as nbgrader assignments.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write nbgrader source assignments from solutions/")
    exp.add_argument("course_dir", type=Path, help="nbgrader's course directory")
    exp.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seeds the hidden tests (default: a random one, printed; keep it to yourself)",
    )
    exp.add_argument("--lessons", nargs="*", help="lesson numbers (default: all with exercises)")
    exp.add_argument("--solutions", type=Path, default=ROOT / "solutions")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    try:
        written = export(args.course_dir, seed, args.solutions, args.lessons)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not written:
        print("error: no lesson with exercises matched", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(f"hidden tests drawn from seed {seed}")
    print(
        f"next: cd {args.course_dir} && nbgrader generate_assignment {written[0].parent.name}"
        " (nbgrader's environment needs course_utils installed: pip install -e <the course>)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
