"""Reports of a grading run: a text table, JSON, CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from .results import SubmissionResult

__all__ = ["format_table", "format_feedback", "to_json", "write_json", "write_csv"]


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
    "exercises": [{"id", "score", "max_score", "feedback"}]}]}``."""
    return {"seed": seed, "submissions": [r.to_dict() for r in results]}


def write_json(results: Sequence[SubmissionResult], path: Path, seed: int) -> None:
    """Write :func:`to_json` to ``path`` (UTF-8, indented)."""
    path.write_text(
        json.dumps(to_json(results, seed), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )


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
    path.write_text(buf.getvalue(), encoding="utf-8")
