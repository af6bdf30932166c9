"""Grade students' notebooks with hidden tests.

    python -m course_utils.grade SUBMISSION... [--json FILE] [--csv FILE]
                                 [--timeout SECONDS] [--seed N] [--feedback]

A SUBMISSION is a notebook or a folder of notebooks (one per student, any file names); the
lesson is recognised from the notebook's metadata. Each submission runs in its own sandboxed
process (only its setup and exercise cells), with a time limit per exercise and a memory
limit; the grader compares the outputs with the reference in its own process. Prints a table
of points; exits 0 whenever grading ran, 2 when it could not (bad arguments, no notebooks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .grading import DEFAULT_SEED, GradeError, grade
from .grading.report import format_feedback, format_table, write_csv, write_json

__all__ = ["main"]


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m course_utils.grade",
        description="Grade notebooks of the normalization course with hidden tests.",
    )
    p.add_argument(
        "submissions",
        nargs="+",
        type=Path,
        metavar="SUBMISSION",
        help="a notebook, or a folder of notebooks (searched recursively)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the full results as JSON")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write one row per submission as CSV")
    p.add_argument(
        "--timeout",
        type=_positive(float),
        default=10.0,
        metavar="SECONDS",
        help="time limit per exercise and per cell (default 10)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of the hidden tests (default {DEFAULT_SEED})",
    )
    p.add_argument(
        "--memory-mb",
        type=_positive(int),
        default=1024,
        metavar="MB",
        help="memory each submission may allocate (default 1024)",
    )
    p.add_argument(
        "--workers", type=_positive(int), default=2, help="submissions graded at once (default 2)"
    )
    p.add_argument(
        "--feedback", action="store_true", help="also print every exercise's feedback line"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the grader; the exit status (0: graded, 2: could not grade)."""
    parser = _parser()
    args = parser.parse_args(argv)
    for out in (args.json, args.csv):
        if out is not None and not out.parent.resolve().is_dir():
            parser.error(f"cannot write {out}: folder {out.parent} does not exist")
    try:
        results = grade(
            args.submissions,
            seed=args.seed,
            timeout=args.timeout,
            memory_mb=args.memory_mb,
            workers=args.workers,
        )
    except GradeError as e:
        print(f"grade: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    total = sum(r.score for r in results)
    possible = sum(r.max_score for r in results)
    print(
        f"\n{len(results)} submission(s) graded, seed {args.seed}: "
        f"{total:g}/{possible:g} points in all."
    )
    if args.feedback:
        print("\n" + format_feedback(results))
    else:
        print("Run with --feedback (or --json FILE) for the reason behind every score.")
    try:
        if args.json is not None:
            write_json(results, args.json, args.seed)
        if args.csv is not None:
            write_csv(results, args.csv)
    except OSError as e:
        print(f"grade: could not write a report: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
