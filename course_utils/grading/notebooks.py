"""Reading a submission: which lesson it is and which cells the grader runs.

A submission is read once, read-only, and never written; a file that is not a plain regular
file (a symbolic link, a FIFO, a device) is refused with a reason rather than followed or
opened. Sizes are capped (:data:`MAX_NOTEBOOK_BYTES`, :data:`MAX_CELL_CHARS`) and each code
cell is parsed at most once. The lesson comes from the notebook metadata
(``metadata.course.lesson``); when that was lost, from the exercise ids in the cells'
metadata; then from the names of the functions and classes the cells define. The grader runs
the ``setup`` cells and one cell per exercise (the one tagged with its id, or else the last
cell defining its name), IPython syntax translated to plain Python.
"""

from __future__ import annotations

import ast
import json
import os
import re
import stat
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..exercises.core import Exercise

__all__ = [
    "Cell",
    "Submission",
    "read_submission",
    "to_python",
    "find_notebooks",
    "MAX_NOTEBOOK_BYTES",
    "MAX_CELL_CHARS",
]

Catalog = Mapping[str, Sequence[Exercise]]
MAX_NOTEBOOK_BYTES = 32 * 2**20  # a notebook with its outputs (plots) stays well below this
MAX_CELL_CHARS = 100_000  # code in one cell (~2,000 lines); a real exercise cell is ~1-5 kB
MAX_CODE_CELLS = 2_000


def _parse(source: str) -> ast.Module | None:
    """``ast.parse`` that turns every failure into None (huge or absurdly nested code too)."""
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None


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

    @cached_property
    def tree(self) -> ast.Module | None:
        """The parsed cell (None when it does not parse); parsed once."""
        return _parse(self.source)


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
        return f"{value:02d}" if 0 <= value < 1000 else None
    if isinstance(value, str) and value.strip():
        v = value.strip()[:20]
        # isdigit() is also true for "²": only ASCII digits are a lesson number
        return f"{int(v):02d}" if v.isascii() and v.isdigit() else v
    return None


def _source(cell: Mapping) -> str:
    src = cell.get("source", "")
    if isinstance(src, list):
        src = "".join(s for s in src if isinstance(s, str))
    return src if isinstance(src, str) else ""


def _defined_names(source: str) -> set[str]:
    """Top-level function and class names a cell defines (those a kernel keeps), read from
    the text without parsing it: only the cells the grader runs are ever parsed."""
    return set(re.findall(r"(?m)^(?:async[ \t]+def|def|class)[ \t]+([A-Za-z_]\w*)", source))


def _imports_only(cell: Cell) -> str:
    """The top-level import statements of a cell, as source (for notebooks lost their tags)."""
    if cell.tree is None:
        return ""
    return "\n".join(
        ast.unparse(n) for n in cell.tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
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
    head = text[:MAX_NOTEBOOK_BYTES]
    m = re.search(r'"lesson"\s*:\s*"?(\w+)', head)
    lesson = _normalise_lesson(m.group(1)) if m else None
    if lesson in catalog:
        sub.lesson, sub.how = lesson, "metadata"
        return sub
    ids = Counter(m.split(".")[0] for m in re.findall(r'"exercise"\s*:\s*"(\d+\.\w+)"', head))
    sub.lesson = _best_lesson(ids, catalog)
    if sub.lesson:
        sub.how = "exercise ids"
        return sub
    sub.lesson = _lesson_from_names([set(re.findall(r"(?:def|class)\s+(\w+)", head))], catalog)
    sub.how = "function names" if sub.lesson else ""
    return sub


def _read_bytes(path: Path) -> bytes | str:
    """The file's bytes, or why it cannot be read (never follows a link, never blocks)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"could not read the file ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return (
            f"is a symbolic link (to {os.readlink(path)}): submit the notebook file itself; "
            "the grader does not follow links"
        )
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a FIFO, device or socket): submit the notebook file"
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        return f"could not read the file ({e.strerror})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the lstat
            return "is not a regular file: submit the notebook file"
        chunks, size = [], 0
        while size <= MAX_NOTEBOOK_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > MAX_NOTEBOOK_BYTES:
        return (
            f"the notebook is larger than {MAX_NOTEBOOK_BYTES >> 20} MB (clear its outputs: "
            "Edit > Clear Outputs of All Cells, then save)"
        )
    return b"".join(chunks)


def read_submission(path: Path, catalog: Catalog) -> Submission:
    """Read one notebook (read-only) and pick the cells to grade; never raises.

    Args:
        path: an ``.ipynb`` file.
        catalog: lesson -> its exercises (what can be recognised and graded).
    Returns:
        A :class:`Submission`; ``problem`` says why when the file is not a readable
        notebook (the lesson is then guessed from the raw text, where possible).
    """
    try:
        return _read_submission(path, catalog)
    except Exception as e:  # noqa: BLE001 - one odd file must never stop the batch
        return Submission(path=path, problem=f"could not read the notebook ({type(e).__name__})")


def _read_submission(path: Path, catalog: Catalog) -> Submission:
    raw = _read_bytes(path)
    if isinstance(raw, str):
        return Submission(path=path, problem=raw)
    text = raw.decode("utf-8", errors="replace")
    del raw
    try:
        nb = json.loads(text)
    except RecursionError:
        return _from_raw_text(
            path, text, catalog, "the notebook is not valid JSON (nested too deeply)"
        )
    except ValueError as e:
        line = f" (line {e.lineno})" if hasattr(e, "lineno") else ""
        return _from_raw_text(path, text, catalog, f"the notebook is not valid JSON{line}")
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return _from_raw_text(path, text, catalog, "the file is not a Jupyter notebook")
    del text

    def meta(c: Mapping) -> Mapping:
        m = c.get("metadata")
        return m if isinstance(m, dict) else {}

    def course(c: Mapping) -> Mapping:
        m = meta(c).get("course")
        return m if isinstance(m, dict) else {}

    def tags(c: Mapping) -> list:
        t = meta(c).get("tags")
        return t if isinstance(t, list) else []

    nb_meta = nb.get("metadata") if isinstance(nb.get("metadata"), dict) else {}
    nb_course = nb_meta.get("course") if isinstance(nb_meta.get("course"), dict) else {}
    lesson = _normalise_lesson(nb_course.get("lesson"))

    def refused(problem: str) -> Submission:
        known = lesson if lesson in catalog else None  # so the row lists the lesson's exercises
        return Submission(path=path, lesson=known, how="metadata" if known else "", problem=problem)

    raw_cells = [c if isinstance(c, dict) else {} for c in nb["cells"]]
    code: list[tuple[int, Mapping, str]] = []
    for i, c in enumerate(raw_cells):
        if c.get("cell_type") != "code":
            continue
        src = _source(c)
        if len(src) > MAX_CELL_CHARS:
            return refused(
                f"cell {i} holds {len(src) / 1000:.0f} kB of code; a cell may hold at "
                f"most {MAX_CELL_CHARS // 1000} kB"
            )
        code.append((i, {"course": course(c), "tags": tags(c)}, src))
        if len(code) > MAX_CODE_CELLS:
            return refused(f"more than {MAX_CODE_CELLS} code cells")
    del nb, raw_cells  # outputs and markdown are never needed again

    names = {i: _defined_names(src) for i, _, src in code}
    sub = Submission(path=path)
    if lesson in catalog:
        sub.lesson, sub.how = lesson, "metadata"
    else:
        ids = Counter(
            str(m["course"].get("exercise")).split(".")[0]
            for _, m, _ in code
            if isinstance(m["course"].get("exercise"), str)
        )
        sub.lesson = _best_lesson(ids, catalog)
        sub.how = "exercise ids" if sub.lesson else ""
        if not sub.lesson:
            sub.lesson = _lesson_from_names(list(names.values()), catalog)
            sub.how = "function names" if sub.lesson else ""
        if not sub.lesson:
            sub.lesson = lesson  # keep what the metadata said, even if nothing is registered
            sub.how = "metadata" if lesson else ""
    if sub.lesson not in catalog:
        return sub

    # One cell per exercise: the (last) cell tagged with its id, else the last cell that
    # defines its name - what a kernel running the notebook top to bottom would keep.
    translated: dict[int, str] = {}

    def python(i: int, src: str) -> str:
        if i not in translated:
            translated[i] = to_python(src)
        return translated[i]

    for ex in catalog[sub.lesson]:
        tagged = [(i, src) for i, m, src in code if m["course"].get("exercise") == ex.id]
        named = [(i, src) for i, _, src in code if ex.name in names[i]]
        pick = tagged[-1] if tagged else named[-1] if named else None
        if pick is not None:
            sub.exercises[ex.id] = Cell(pick[0], python(*pick), "exercise", ex.id)

    exercise_cells = {c.index for c in sub.exercises.values()}
    setup = [(i, src) for i, m, src in code if "setup" in m["tags"] and i not in exercise_cells]
    if setup:
        sub.setup = [Cell(i, python(i, src), "setup") for i, src in setup]
    else:
        # Tags lost: keep only the import statements of the other cells, which is what a
        # setup cell holds; running arbitrary cells would run the whole lesson.
        others = [Cell(i, python(i, src), "setup") for i, _, src in code if i not in exercise_cells]
        sub.setup = [Cell(c.index, imp, "setup") for c in others if (imp := _imports_only(c))]
    # A cell that holds two exercises (the capstone's four parts) is one Cell: parsed once.
    shared: dict[int, Cell] = {}
    for ex_id, cell in list(sub.exercises.items()):
        sub.exercises[ex_id] = shared.setdefault(cell.index, cell)
    return sub


def find_notebooks(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Expand files and folders to notebook files (folders searched recursively, symbolic
    links to folders not followed; a linked or odd *file* is listed, and refused when read).

    Returns:
        (notebooks in a stable order without duplicates, error messages for bad paths).
    """
    found: list[Path] = []
    errors: list[str] = []
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            nbs = []
            for root, dirs, files in os.walk(p, followlinks=False):
                dirs[:] = sorted(d for d in dirs if d != ".ipynb_checkpoints")
                nbs += [Path(root) / f for f in files if f.endswith(".ipynb")]
            if not nbs:
                errors.append(f"{p}: no .ipynb files in this folder")
            found.extend(sorted(nbs))
        elif os.path.lexists(p):
            found.append(p)
        else:
            errors.append(f"{p}: no such file or folder")
    seen, unique = set(), []
    for p in found:
        key = os.path.normpath(os.path.abspath(p))  # the path itself: links are not merged
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique, errors
