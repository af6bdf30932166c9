"""The claims audit: does every claim of the course hold on other seeds, with margin?

    python -m course_utils.claims                 # every notebook, seed offsets 0 and 4 shifted
    python -m course_utils.claims --shifts 2 --no-original --out test-artifacts/claims.md  # CI
    python -m course_utils.claims --notebooks 03 06 --offsets 0,100   # a quick look

Every solution notebook is executed once per seed offset, two notebooks at a time, each in a
fresh kernel whose environment sets ``COURSE_SEED_OFFSET`` (every generator of the course is
seeded through :mod:`course_utils.seeds`, so that one variable shifts them all) and
``COURSE_CLAIMS_RECORD`` (so :func:`course_utils.claim` records each claim's statistic,
threshold and margin instead of stopping at the first failure). The claim-check cells are the
code cells tagged ``claim``; their metadata ``course.claim`` names the claim. The report
(``docs/claims.md`` by default) has one row per checked statement: the value on each seed, the
smallest margin, and a verdict: **robust** when the statement holds on every seed with a
margin of at least 10% of its threshold, else **fragile**. The exit status is 1 when a
statement is fragile, a claim cell recorded nothing, a ``claim`` call sits outside a claim
cell, or a cell raised; else 0.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .claim_check import MIN_MARGIN, RECORD_ENV
from .seeds import ENV as OFFSET_ENV

__all__ = [
    "DEFAULT_OFFSETS",
    "CLAIM_TAG",
    "claim_cells",
    "run_notebook",
    "Run",
    "Row",
    "collect",
    "report",
    "audit",
    "main",
]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OFFSETS = (100, 200, 300, 400)  # the shifted seed sets; offset 0 is the original
CLAIM_TAG = "claim"
SKIP_TAGS = ("progress",)  # cells that only report the learner's progress: nothing to audit


def claim_cells(nb: dict) -> list[tuple[int, str]]:
    """``(cell index, claim id)`` of every claim-check cell of a notebook (a JSON dict).

    A claim-check cell is a code cell tagged ``claim``; its id is ``metadata.course.claim``.
    Raises ValueError for a tagged cell without an id, or two cells with the same id.
    """
    found, seen = [], set()
    for i, cell in enumerate(nb.get("cells", [])):
        meta = cell.get("metadata", {})
        if cell.get("cell_type") != "code" or CLAIM_TAG not in meta.get("tags", []):
            continue
        cid = meta.get("course", {}).get("claim")
        if not cid:
            raise ValueError(f"cell {i} is tagged {CLAIM_TAG!r} but has no metadata.course.claim")
        if cid in seen:
            raise ValueError(f"claim id {cid!r} is used by two cells")
        seen.add(cid)
        found.append((i, cid))
    return found


# ---------------------------------------------------------------------------------------------
# one notebook, one offset (runs in its own process: python -m course_utils.claims --run-one)
# ---------------------------------------------------------------------------------------------


def _prepared(nb_path: Path):
    """The notebook, with a ``begin(claim id)`` cell before every claim cell and a
    ``begin(None)`` after it, and the progress cells dropped; and the claim ids in order."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    ids = dict(claim_cells(nb))
    cells = []
    for i, cell in enumerate(nb.cells):
        if any(t in cell.metadata.get("tags", []) for t in SKIP_TAGS):
            continue
        if i in ids:
            cells.append(
                nbformat.v4.new_code_cell(
                    f"import course_utils.claim_check as _cc; _cc.begin({ids[i]!r})",
                    metadata={"course": {"audit": "begin"}},
                )
            )
        cell.metadata.setdefault("course", {})["audit_index"] = i
        cells.append(cell)
        if i in ids:  # a claim() in a later, untagged cell must not count for this claim
            cells.append(
                nbformat.v4.new_code_cell("_cc.begin(None)", metadata={"course": {"audit": "end"}})
            )
    nb.cells = cells
    return nb, list(ids.values())


def run_notebook(nb_path: Path, record: Path, timeout: int = 600) -> dict:
    """Execute one notebook in a fresh kernel (the environment carries the offset and the
    record file); return ``{"seconds", "errors": [{"cell", "claim", "error"}]}``."""
    from nbclient import NotebookClient

    nb, _ = _prepared(nb_path)
    os.environ[RECORD_ENV] = str(record)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(nb_path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    errors = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                course = cell.metadata.get("course", {})
                errors.append(
                    {
                        "cell": course.get("audit_index"),
                        "claim": course.get("claim"),
                        "error": f"{out.get('ename')}: {out.get('evalue')}"[:300],
                    }
                )
    return {"seconds": seconds, "errors": errors}


# ---------------------------------------------------------------------------------------------
# the audit: every notebook x every offset, two at a time
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One notebook executed at one seed offset."""

    notebook: str
    offset: int
    seconds: float = math.nan
    records: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


def _run_job(nb_path: Path, offset: int, timeout: int, workdir: Path) -> Run:
    record = workdir / f"{nb_path.stem}.{offset}.jsonl"
    result = workdir / f"{nb_path.stem}.{offset}.json"
    env = dict(os.environ, **{OFFSET_ENV: str(offset), RECORD_ENV: str(record)})
    cmd = [sys.executable, "-m", "course_utils.claims", "--run-one", str(nb_path)]
    cmd += ["--record", str(record), "--result", str(result), "--timeout", str(timeout)]
    run = Run(nb_path.name, offset)
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout * 3, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        run.errors.append({"cell": None, "claim": None, "error": "the notebook timed out"})
        proc = None
    if proc is not None and result.exists():
        out = json.loads(result.read_text())
        run.seconds, run.errors = out["seconds"], out["errors"]
    elif proc is not None:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        run.errors.append({"cell": None, "claim": None, "error": " | ".join(tail)[:300]})
    if record.exists():
        run.records = [json.loads(line) for line in record.read_text().splitlines() if line]
    return run


@dataclass
class Row:
    """One checked statement of one claim, over every offset."""

    notebook: str
    claim_id: str
    statement: str
    op: str
    threshold: float
    values: dict[int, float] = field(default_factory=dict)
    margins: dict[int, float] = field(default_factory=dict)
    holds: dict[int, bool] = field(default_factory=dict)

    def min_margin(self, offsets: Sequence[int]) -> float:
        return min((self.margins.get(o, -math.inf) for o in offsets), default=-math.inf)

    def robust(self, offsets: Sequence[int], min_margin: float = MIN_MARGIN) -> bool:
        return (
            all(self.holds.get(o, False) for o in offsets)
            and self.min_margin(offsets) >= min_margin
        )


def collect(runs: Sequence[Run], claim_ids: dict[str, list[str]]) -> tuple[list[Row], list[str]]:
    """Rows (one per notebook, claim and statement) and a list of problems: cell errors,
    claim cells that recorded nothing, ``claim`` calls outside claim cells."""
    rows: dict[tuple[str, str, str], Row] = {}
    problems = []
    for run in sorted(runs, key=lambda r: (r.notebook, r.offset)):
        seen_ids = set()
        for rec in run.records:
            cid = rec.get("claim_id")
            if cid is None:
                problems.append(
                    f"{run.notebook} (offset {run.offset}): claim({rec['statement']!r}) is "
                    f"called outside a cell tagged {CLAIM_TAG!r}"
                )
                continue
            seen_ids.add(cid)
            key = (run.notebook, cid, rec["statement"])
            row = rows.setdefault(
                key, Row(run.notebook, cid, rec["statement"], rec["op"], rec["threshold"])
            )
            row.values[run.offset] = rec["value"]
            row.margins[run.offset] = rec["margin"]
            row.holds[run.offset] = rec["holds"]
        for cid in claim_ids.get(run.notebook, []):
            if cid not in seen_ids:
                problems.append(
                    f"{run.notebook} (offset {run.offset}): claim {cid} recorded nothing"
                )
        for err in run.errors:
            where = f"cell {err['cell']}" if err.get("cell") is not None else "notebook"
            problems.append(f"{run.notebook} (offset {run.offset}), {where}: {err['error']}")
    order = {nb: i for i, nb in enumerate(sorted(claim_ids))}
    ids_order = {(nb, cid): k for nb, cids in claim_ids.items() for k, cid in enumerate(cids)}
    ordered = sorted(
        rows.values(),
        key=lambda r: (order.get(r.notebook, 99), ids_order.get((r.notebook, r.claim_id), 99)),
    )
    return ordered, problems


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.2e}"
    return f"{v:.4g}"


def report(
    rows: Sequence[Row],
    problems: Sequence[str],
    runs: Sequence[Run],
    offsets: Sequence[int],
    min_margin: float = MIN_MARGIN,
    seconds: float | None = None,
    command: str = "python -m course_utils.claims",
) -> str:
    """The Markdown report: summary, one table row per statement, problems, run times."""
    robust = [r for r in rows if r.robust(offsets, min_margin)]
    fragile = [r for r in rows if not r.robust(offsets, min_margin)]
    claims = {(r.notebook, r.claim_id) for r in rows}
    today = _dt.date.today().isoformat()
    lines = [
        "# Claims audit",
        "",
        f"Generated by `{command}` on {today}: every claim-check cell of every solution "
        f"notebook, run with the seed offsets {', '.join(str(o) for o in offsets)} (0 is the "
        "original; an offset is added to every seed of the notebook and of the experiments it "
        "calls; the data split, grids, steps and thresholds are unchanged). A statement is "
        f"**robust** when it holds on every offset with a margin of at least {min_margin:.0%} "
        "of its threshold (margin = distance from the threshold / |threshold|, or the scale "
        "the claim names), otherwise **fragile**.",
        "",
        f"**{len(rows)} statements in {len(claims)} claims: {len(robust)} robust, "
        f"{len(fragile)} fragile.**"
        + (f" {len(problems)} problems (below)." if problems else " No problems."),
        "",
    ]
    if rows:
        worst = sorted(rows, key=lambda r: r.min_margin(offsets))[:5]
        lines.append(
            "Smallest margins: "
            + "; ".join(
                f"{r.notebook[:2]} `{r.claim_id}` {r.statement} ({r.min_margin(offsets):+.0%})"
                for r in worst
            )
            + "."
        )
        lines.append("")
    head = ["lesson", "claim", "statement", "needs"] + [f"seed +{o}" for o in offsets]
    head += ["smallest margin", "verdict"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [
            r.notebook[:2],
            f"`{r.claim_id}`",
            r.statement.replace("|", "\\|"),
            f"{r.op} {_fmt(r.threshold)}",
        ]
        for o in offsets:
            v = r.values.get(o)
            mark = "" if r.holds.get(o, False) else " ✗"
            cells.append("missing" if v is None else _fmt(v) + mark)
        cells.append(f"{r.min_margin(offsets):+.0%}")
        cells.append("robust" if r.robust(offsets, min_margin) else "**fragile**")
        lines.append("| " + " | ".join(cells) + " |")
    constant = [
        r
        for r in rows
        if len(offsets) > 1 and len(r.values) == len(offsets) and len(set(r.values.values())) == 1
    ]
    if constant:
        lines += [
            "",
            "Statements whose value did not change with the seeds (a property of the data or "
            "the code that the seed shift does not test): "
            + "; ".join(f"`{r.claim_id}` {r.statement}" for r in constant)
            + ".",
        ]
    if problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in problems]
    lines += [
        "",
        "## Run times",
        "",
        "Seconds per notebook (wall clock, two notebooks at a time, including kernel start):",
        "",
    ]
    nbs = sorted({r.notebook for r in runs})
    lines += [
        "| notebook | " + " | ".join(f"seed +{o}" for o in offsets) + " |",
        "|" + " --- |" * (len(offsets) + 1),
    ]
    by = {(r.notebook, r.offset): r for r in runs}
    for nb in nbs:
        vals = [by.get((nb, o)) for o in offsets]
        lines.append(f"| {nb} | " + " | ".join(_fmt(v.seconds) if v else "" for v in vals) + " |")
    if seconds is not None:
        lines += ["", f"Whole audit: {seconds / 60:.1f} minutes wall clock."]
    return "\n".join(lines) + "\n"


def audit(
    notebooks: Sequence[Path],
    offsets: Sequence[int],
    jobs: int = 2,
    timeout: int = 600,
    progress: bool = True,
) -> tuple[list[Row], list[str], list[Run]]:
    """Run every notebook at every offset (``jobs`` at a time) and collect the rows."""
    import nbformat

    claim_ids = {
        p.name: [cid for _, cid in claim_cells(nbformat.read(p, as_version=4))] for p in notebooks
    }
    # the slowest notebooks first, so two workers finish together
    order = sorted(notebooks, key=lambda p: -p.stat().st_size)
    jobs_list = [(p, o) for o in offsets for p in order]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="claims-") as tmp:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(_run_job, p, o, timeout, Path(tmp)) for p, o in jobs_list]
            for fut in futures:
                run = fut.result()
                runs.append(run)
                if progress:
                    n_bad = sum(not r["holds"] for r in run.records)
                    print(
                        f"{run.notebook} seed +{run.offset}: {len(run.records)} checks, "
                        f"{n_bad} failing, {len(run.errors)} errors, {run.seconds:.1f} s",
                        flush=True,
                    )
    rows, problems = collect(runs, claim_ids)
    return rows, problems, runs


def _select(names: Sequence[str] | None, folder: Path) -> list[Path]:
    all_nbs = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return all_nbs
    chosen = [p for p in all_nbs if any(p.name.startswith(n) for n in names)]
    if not chosen:
        raise SystemExit(f"no notebook in {folder} matches {list(names)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", nargs="*", help="notebook prefixes (default: all)")
    parser.add_argument("--offsets", help="comma-separated seed offsets (overrides --shifts)")
    parser.add_argument(
        "--shifts",
        type=int,
        default=len(DEFAULT_OFFSETS),
        help=f"how many of the shifted offsets {DEFAULT_OFFSETS} to run (default: all)",
    )
    parser.add_argument("--no-original", action="store_true", help="skip offset 0")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks at a time (default 2)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--min-margin", type=float, default=MIN_MARGIN)
    parser.add_argument("--solutions", type=Path, default=ROOT / "solutions")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "claims.md")
    parser.add_argument("--run-one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_one:  # the worker: one notebook, the offset and record file in the environment
        out = run_notebook(args.run_one, args.record, args.timeout)
        args.result.write_text(json.dumps(out))
        return 0

    if args.offsets:
        offsets = [int(o) for o in args.offsets.split(",") if o.strip()]
    else:
        offsets = ([] if args.no_original else [0]) + list(DEFAULT_OFFSETS[: args.shifts])
    if not offsets:
        parser.error("no seed offsets to run")
    notebooks = _select(args.notebooks, args.solutions)
    start = time.perf_counter()
    rows, problems, runs = audit(notebooks, offsets, args.jobs, args.timeout)
    seconds = time.perf_counter() - start
    command = (
        "python -m course_utils.claims"
        + (" " + " ".join(argv) if argv else " " + " ".join(sys.argv[1:])).rstrip()
    )
    text = report(rows, problems, runs, offsets, args.min_margin, seconds, command.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    fragile = [r for r in rows if not r.robust(offsets, args.min_margin)]
    print(text.split("\n| lesson")[0].strip())
    for r in fragile:
        print(
            f"FRAGILE {r.notebook[:2]} {r.claim_id}: {r.statement} "
            f"(smallest margin {r.min_margin(offsets):+.0%})"
        )
    for p in problems:
        print(f"PROBLEM {p}")
    print(f"report written to {args.out} ({seconds / 60:.1f} minutes)")
    return 1 if (fragile or problems) else 0


if __name__ == "__main__":
    sys.exit(main())
