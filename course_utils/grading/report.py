"""Reports of a grading run: a text table, JSON, CSV."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .results import SubmissionResult

__all__ = [
    "format_table",
    "format_feedback",
    "to_json",
    "write_json",
    "write_csv",
    "report_path_problem",
]


def report_path_problem(path: Path) -> str | None:
    """Why a report cannot be written at ``path`` (None: it can)."""
    if not path.parent.resolve().is_dir():
        return f"folder {path.parent} does not exist"
    if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
        kind = "a symbolic link" if path.is_symlink() else "not a regular file"
        return f"{path} is {kind}; the grader writes reports only as regular files"
    return None


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a new file next to ``path``, then rename it over ``path``: a report
    is never half-written, and never written through a symbolic link or into a FIFO that
    stands at ``path`` (the rename replaces the link itself)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _pts(score: float, max_score: float) -> str:
    return f"{score:g}/{max_score:g}"


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(results: Sequence[SubmissionResult]) -> str:
    """One table per lesson: submission, lesson, points per exercise, total."""
    by_lesson: dict[str, list[SubmissionResult]] = {}
    for r in results:
        by_lesson.setdefault(r.lesson, []).append(r)
    blocks = []
    for lesson in sorted(by_lesson):
        group = by_lesson[lesson]
        ids = list(dict.fromkeys(e.id for r in group for e in r.exercises))
        header = ["submission", "lesson", *(i.split(".", 1)[-1] for i in ids), "total"]
        rows = []
        for r in group:
            scores = {e.id: _pts(e.score, e.max_score) for e in r.exercises}
            rows.append(
                [r.path, r.lesson, *(scores.get(i, "-") for i in ids), _pts(r.score, r.max_score)]
            )
        blocks.append(_grid(header, rows))
    return "\n\n".join(blocks)


def format_feedback(results: Sequence[SubmissionResult]) -> str:
    """Every exercise's feedback line, submission by submission."""
    lines = []
    for r in results:
        lines.append(
            f"{r.path} (lesson {r.lesson}): {_pts(r.score, r.max_score)}"
            + (f" - {r.note}" if r.note else "")
        )
        for e in r.exercises:
            lines.append(f"  {e.id} {_pts(e.score, e.max_score)}: {e.feedback}")
    return "\n".join(lines)


def to_json(results: Sequence[SubmissionResult], seed: int) -> dict:
    """``{"seed", "submissions": [{"path", "lesson", "score", "max_score", "note",
    "exercises": [{"id", "score", "max_score", "feedback"}]}]}``; ``seed`` is the one the
    hidden tests used (``--seed`` reproduces them: keep the file from the learners)."""
    return {"seed": seed, "submissions": [r.to_dict() for r in results]}


def write_json(results: Sequence[SubmissionResult], path: Path, seed: int) -> None:
    """Write :func:`to_json` to ``path`` (UTF-8, indented; atomically)."""
    _write_atomic(path, json.dumps(to_json(results, seed), indent=1, ensure_ascii=False) + "\n")


def write_csv(results: Sequence[SubmissionResult], path: Path) -> None:
    """One row per submission: path, lesson, one column per exercise id, score, max_score.

    An exercise of another lesson than the row's is left empty.
    """
    ids = sorted({e.id for r in results for e in r.exercises})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "lesson", *ids, "score", "max_score"])
    for r in results:
        scores = {e.id: f"{e.score:g}" for e in r.exercises}
        w.writerow(
            [
                r.path,
                r.lesson,
                *(scores.get(i, "") for i in ids),
                f"{r.score:g}",
                f"{r.max_score:g}",
            ]
        )
    _write_atomic(path, buf.getvalue())
