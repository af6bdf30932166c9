"""Reading a submission: which lesson it is and which cells the grader runs.

A submission is read once, read-only, and never written. The lesson comes from the notebook
metadata (``metadata.course.lesson``); when that was lost, from the exercise ids in the cells'
metadata; then from the names of the functions and classes the cells define. The grader runs
the ``setup`` cells and one cell per exercise (the one tagged with its id, or else the last
cell defining its name), IPython syntax translated to plain Python.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..exercises.core import Exercise

__all__ = ["Cell", "Submission", "read_submission", "to_python", "find_notebooks"]

Catalog = Mapping[str, Sequence[Exercise]]


@dataclass
class Cell:
    """One code cell the grader runs.

    Attributes:
        index: its position in the notebook (0-based, counting markdown cells).
        source: plain Python (IPython magics already translated to ``get_ipython()`` calls).
        kind: ``"setup"`` or ``"exercise"``.
        exercise_id: the exercise the cell holds (``None`` for setup cells).
    """

    index: int
    source: str
    kind: str
    exercise_id: str | None = None

    @property
    def filename(self) -> str:
        """The name tracebacks show for this cell (never a real file)."""
        return f"<submission cell {self.index}>"


@dataclass
class Submission:
    """What the grader needs from one notebook.

    Attributes:
        path: the notebook file.
        lesson: ``"03"``, or ``None`` when it could not be recognised.
        how: how the lesson was recognised ("metadata", "exercise ids", "function names").
        setup: setup cells in notebook order.
        exercises: exercise id -> its cell (absent when no cell holds the exercise).
        problem: why the notebook could not be read at all (``None`` when it could).
    """

    path: Path
    lesson: str | None = None
    how: str = ""
    setup: list[Cell] = field(default_factory=list)
    exercises: dict[str, Cell] = field(default_factory=dict)
    problem: str | None = None

    @property
    def program(self) -> list[Cell]:
        """Setup and exercise cells in notebook order, each once."""
        cells = {c.index: c for c in self.setup}
        cells.update({c.index: c for c in self.exercises.values()})
        return [cells[i] for i in sorted(cells)]


_TRANSFORMER = None


def to_python(source: str) -> str:
    """Translate IPython syntax (``%magic``, ``%%cell magic``, ``!shell``) to plain Python.

    Uses IPython's own translation when available (it knows about strings and
    continuations); the magics become ``get_ipython()`` calls that the sandbox answers with
    no-ops. Without IPython, such lines become ``pass``.
    """
    global _TRANSFORMER
    if "%" not in source and "!" not in source and "?" not in source:
        return source
    try:
        if _TRANSFORMER is None:
            from IPython.core.inputtransformer2 import TransformerManager

            _TRANSFORMER = TransformerManager()
        return _TRANSFORMER.transform_cell(source)
    except Exception:  # no IPython, or it chokes on the cell: fall back to the simple rule
        return re.sub(r"(?m)^(\s*)[%!].*$", r"\1pass", source)


def _normalise_lesson(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:02d}"
    if isinstance(value, str) and value.strip():
        v = value.strip()
        return f"{int(v):02d}" if v.isdigit() else v
    return None


def _source(cell: Mapping) -> str:
    src = cell.get("source", "")
    if isinstance(src, list):
        src = "".join(s for s in src if isinstance(s, str))
    return src if isinstance(src, str) else ""


def _defined_names(source: str) -> set[str]:
    """Top-level function and class names a cell defines (empty if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set(re.findall(r"(?m)^(?:def|class)\s+([A-Za-z_]\w*)", source))
    return {
        n.name
        for n in tree.body
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }


def _imports_only(source: str) -> str:
    """The top-level import statements of a cell, as source (for notebooks lost their tags)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    return "\n".join(
        ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
    )


def _best_lesson(counts: Counter, catalog: Catalog) -> str | None:
    known = [(n, lesson) for lesson, n in counts.items() if lesson in catalog and n > 0]
    if not known:
        return None
    best = max(n for n, _ in known)
    return min(lesson for n, lesson in known if n == best)  # ties: the earlier lesson


def _lesson_from_names(names: list[set[str]], catalog: Catalog) -> str | None:
    counts: Counter = Counter()
    for lesson, exercises in catalog.items():
        wanted = {ex.name for ex in exercises}
        counts[lesson] = sum(1 for w in wanted if any(w in ns for ns in names))
    return _best_lesson(counts, catalog)


def _from_raw_text(path: Path, text: str, catalog: Catalog, problem: str) -> Submission:
    """An unreadable notebook: recover the lesson from its text so the row still counts."""
    sub = Submission(path=path, problem=problem)
    m = re.search(r'"lesson"\s*:\s*"?(\w+)', text)
    lesson = _normalise_lesson(m.group(1)) if m else None
    if lesson in catalog:
        sub.lesson, sub.how = lesson, "metadata"
        return sub
    ids = Counter(m.split(".")[0] for m in re.findall(r'"exercise"\s*:\s*"(\d+\.\w+)"', text))
    sub.lesson = _best_lesson(ids, catalog)
    if sub.lesson:
        sub.how = "exercise ids"
        return sub
    sub.lesson = _lesson_from_names([set(re.findall(r"(?:def|class)\s+(\w+)", text))], catalog)
    sub.how = "function names" if sub.lesson else ""
    return sub


def read_submission(path: Path, catalog: Catalog) -> Submission:
    """Read one notebook (read-only) and pick the cells to grade.

    Args:
        path: an ``.ipynb`` file.
        catalog: lesson -> its exercises (what can be recognised and graded).
    Returns:
        A :class:`Submission`; ``problem`` says why when the file is not a readable
        notebook (the lesson is then guessed from the raw text, where possible).
    """
    try:
        with open(path, "rb") as f:  # read-only: the grader never writes a submission
            raw = f.read()
    except OSError as e:
        return Submission(path=path, problem=f"could not read the file ({e.strerror})")
    text = raw.decode("utf-8", errors="replace")
    try:
        nb = json.loads(text)
    except ValueError as e:
        line = f" (line {e.lineno})" if hasattr(e, "lineno") else ""
        return _from_raw_text(path, text, catalog, f"the notebook is not valid JSON{line}")
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return _from_raw_text(path, text, catalog, "the file is not a Jupyter notebook")

    cells = [c if isinstance(c, dict) else {} for c in nb["cells"]]
    code = [
        (i, c, to_python(_source(c))) for i, c in enumerate(cells) if c.get("cell_type") == "code"
    ]

    def meta(c: Mapping) -> Mapping:
        m = c.get("metadata")
        return m if isinstance(m, dict) else {}

    def course(c: Mapping) -> Mapping:
        m = meta(c).get("course")
        return m if isinstance(m, dict) else {}

    sub = Submission(path=path)
    nb_course = nb.get("metadata", {}) if isinstance(nb.get("metadata"), dict) else {}
    nb_course = nb_course.get("course", {}) if isinstance(nb_course.get("course"), dict) else {}
    lesson = _normalise_lesson(nb_course.get("lesson"))
    if lesson in catalog:
        sub.lesson, sub.how = lesson, "metadata"
    else:
        ids = Counter(
            str(course(c).get("exercise")).split(".")[0]
            for _, c, _ in code
            if isinstance(course(c).get("exercise"), str)
        )
        sub.lesson = _best_lesson(ids, catalog)
        sub.how = "exercise ids" if sub.lesson else ""
        if not sub.lesson:
            sub.lesson = _lesson_from_names([_defined_names(src) for _, _, src in code], catalog)
            sub.how = "function names" if sub.lesson else ""
        if not sub.lesson:
            sub.lesson = lesson  # keep what the metadata said, even if nothing is registered
            sub.how = "metadata" if lesson else ""
    if sub.lesson not in catalog:
        return sub

    # One cell per exercise: the (last) cell tagged with its id, else the last cell that
    # defines its name - what a kernel running the notebook top to bottom would keep.
    for ex in catalog[sub.lesson]:
        tagged = [(i, src) for i, c, src in code if course(c).get("exercise") == ex.id]
        named = [(i, src) for i, c, src in code if ex.name in _defined_names(src)]
        pick = tagged[-1] if tagged else named[-1] if named else None
        if pick is not None:
            sub.exercises[ex.id] = Cell(pick[0], pick[1], "exercise", ex.id)

    def tags(c: Mapping) -> list:
        t = meta(c).get("tags")
        return t if isinstance(t, list) else []

    exercise_cells = {c.index for c in sub.exercises.values()}
    setup = [(i, src) for i, c, src in code if "setup" in tags(c) and i not in exercise_cells]
    if not setup:
        # Tags lost: keep only the import statements of the other cells, which is what a
        # setup cell holds; running arbitrary cells would run the whole lesson.
        setup = [
            (i, imp)
            for i, _, src in code
            if i not in exercise_cells and (imp := _imports_only(src))
        ]
    sub.setup = [Cell(i, src, "setup") for i, src in setup]
    return sub


def find_notebooks(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Expand files and folders to notebook files (folders searched recursively).

    Returns:
        (notebooks in a stable order without duplicates, error messages for bad paths).
    """
    found: list[Path] = []
    errors: list[str] = []
    for p in paths:
        if p.is_dir():
            nbs = sorted(
                q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts and q.is_file()
            )
            if not nbs:
                errors.append(f"{p}: no .ipynb files in this folder")
            found.extend(nbs)
        elif p.is_file():
            found.append(p)
        else:
            errors.append(f"{p}: no such file or folder")
    seen, unique = set(), []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique, errors
