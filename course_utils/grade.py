"""Grade students' notebooks with hidden tests, each submission's code in a sandbox.

    python -m course_utils.grade SUBMISSION... [--json FILE] [--csv FILE] [--seed N]
                                 [--timeout SECONDS] [--workers N] [--feedback] [--no-sandbox]

A SUBMISSION is a notebook or a folder of notebooks (one per student, any file names); the
lesson is recognised from the notebook's metadata. Each submission's code runs in a
bubblewrap sandbox that holds no answers and decides nothing; the grader compares its outputs
with the answers in its own process. A file whose name looks like an option (``--seed=7``) is
a file when it exists, so ``grade submissions/*`` is safe.

Exit status: 0 graded; 2 could not grade (bad arguments, no notebooks, no sandbox, the seed
file); 3 graded, but the grader itself failed on a submission or could not write a report.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .grading import DEFAULT_TIMEOUT, GradeError, grade
from .grading.report import (
    format_feedback,
    format_table,
    report_path_problem,
    write_csv,
    write_json,
)
from .grading.secret import instructor_seed, seed_file

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


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**63 - 1: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m course_utils.grade",
        description="Grade notebooks of the normalization course with hidden tests.",
    )
    p.add_argument(
        "submissions",
        nargs="*",
        type=Path,
        metavar="SUBMISSION",
        help="a notebook, or a folder of notebooks (searched recursively)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the full results as JSON")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write one row per submission as CSV")
    p.add_argument(
        "--timeout",
        type=_positive(float),
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"time limit per exercise and per cell (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=None,
        help=f"seed of the hidden tests (default: your secret seed, kept in {seed_file()})",
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
    p.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run submissions without the bubblewrap sandbox: ONLY for notebooks you trust",
    )
    return p


def _split_files(argv: list[str]) -> tuple[list[str], list[str]]:
    """(options for argparse, submission paths). An argument that names an existing file or
    folder is a submission even if it starts with "-"; everything after "--" is too."""
    options, files = [], []
    for i, arg in enumerate(argv):
        if arg == "--":
            files += argv[i + 1 :]
            break
        if arg.startswith("-") and os.path.lexists(arg):
            files.append(arg)
        else:
            options.append(arg)
    return options, files


def main(argv: list[str] | None = None) -> int:
    """Run the grader; the exit status (0 graded, 2 could not grade, 3 a grader problem)."""
    parser = _parser()
    options, files = _split_files(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(options)
    submissions = list(args.submissions) + [Path(f) for f in files]
    if not submissions:
        parser.error("give at least one notebook or folder")
    for out in (args.json, args.csv):
        if out is not None and (problem := report_path_problem(out)):
            parser.error(f"cannot write {out}: {problem}")
    if args.seed is None:
        try:
            seed, origin = instructor_seed(), f"your secret seed from {seed_file()}"
        except (OSError, ValueError) as e:
            print(f"grade: cannot read or create the seed file {seed_file()}: {e}", file=sys.stderr)
            return 2
    else:
        seed, origin = args.seed, "given with --seed"
    try:
        results = grade(
            submissions,
            seed=seed,
            timeout=args.timeout,
            memory_mb=args.memory_mb,
            workers=args.workers,
            isolation="none" if args.no_sandbox else "sandbox",
        )
    except GradeError as e:
        print(f"grade: {e}", file=sys.stderr)
        return 2
    status = 0
    print(format_table(results))
    total = sum(r.score for r in results)
    possible = sum(r.max_score for r in results)
    print(
        f"\n{len(results)} submission(s) graded, seed {seed} ({origin}): "
        f"{total:g}/{possible:g} points in all."
    )
    failed = [r for r in results if r.grader_error]
    if failed:
        status = 3
        print(
            f"grade: the grader itself failed on {len(failed)} submission(s), scored 0: "
            + "; ".join(f"{r.path}: {r.note}" for r in failed[:3]),
            file=sys.stderr,
        )
    if args.feedback:
        print("\n" + format_feedback(results))
    else:
        print("Run with --feedback (or --json FILE) for the reason behind every score.")
    try:
        if args.json is not None:
            write_json(results, args.json, seed)
        if args.csv is not None:
            write_csv(results, args.csv)
    except OSError as e:
        print(f"grade: could not write a report: {e}", file=sys.stderr)
        return 3
    return status


if __name__ == "__main__":
    sys.exit(main())
